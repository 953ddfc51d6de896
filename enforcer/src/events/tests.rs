use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use policy_compiler::EngineConfig;
use policy_compiler::abi::{self, VerdictEvent};
use policy_compiler::engine::Engine;
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::model::Direction;
use policy_compiler::rules::{PolicyRef, RuleRef};
use serde_json::{Value, json};

use super::clock::*;
use super::render::*;
use super::resolve::*;
use super::rotate::*;
use super::*;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-6d4f, uid: u1, controller: true}
spec:
  containers: [{name: c, image: x}]
status:
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  labels: {app: db}
spec:
  containers: [{name: c, image: x, ports: [{name: pg, containerPort: 5432}]}]
status:
  podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: nobody}}}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: pg}]
  - ports: [{port: 53, protocol: UDP}]
"#;

pub(super) fn engine() -> Engine {
    let loaded = load_str("test.yaml", MANIFESTS, &LoadOptions::default()).unwrap();
    Engine::compile(&loaded.cluster, EngineConfig::default())
        .unwrap()
        .0
}

fn ident(e: &Engine, key: &str) -> u32 {
    e.endpoint_identity(key).unwrap()
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a);
    b
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

pub(super) fn event(e: &Engine) -> VerdictEvent {
    VerdictEvent {
        time_ns: 5_000_000_123,
        saddr: v4([10, 0, 0, 1]),
        daddr: v4([10, 0, 0, 2]),
        sport_be: 40000u16.to_be(),
        dport_be: 5432u16.to_be(),
        protocol: 6,
        family: 4,
        direction: abi::DIRECTION_INGRESS,
        verdict: abi::EVENT_VERDICT_FORWARDED,
        kind: abi::EVENT_KIND_NEW_FLOW,
        tcp_flags: 0x02,
        drop_reason: 0,
        ifindex: 7,
        src_identity: ident(e, "shop/web-1"),
        dst_identity: ident(e, "shop/db-0"),
        rule_id: 0,
        revision: 3,
        proxy_port_be: 0,
        service: 0,
        packet_len: 60,
    }
}

fn rule_id(e: &Engine, policy: &str, index: usize) -> u32 {
    e.rules()
        .id(&RuleRef {
            policy: PolicyRef {
                kind: Default::default(),
                namespace: "shop".into(),
                name: policy.into(),
            },
            direction: Direction::Ingress,
            index,
        })
        .unwrap()
}

fn render(e: &Engine, ev: &VerdictEvent) -> Value {
    let r = EngineResolver::new(e).with_interfaces(HashMap::from([(7, "lxc-db".to_string())]));
    let line = render_line(
        ev,
        &r,
        "node-a",
        BootClock::with_offset(0).to_wall(ev.time_ns),
        "u-1",
    );
    assert!(!line.contains('\n'));
    serde_json::from_str(&line).unwrap()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn allowed_flow_names_policy_and_rule() {
    let e = engine();
    let mut ev = event(&e);
    ev.rule_id = rule_id(&e, "allow-web", 1);
    let v = render(&e, &ev);
    assert_eq!(v["node_name"], "node-a");
    assert_eq!(v["time"], "1970-01-01T00:00:05.000000123Z");
    let f = &v["flow"];
    assert_eq!(f["time"], v["time"]);
    assert_eq!(f["uuid"], "u-1");
    assert_eq!(f["verdict"], "FORWARDED");
    assert!(f.get("drop_reason").is_none());
    assert_eq!(f["IP"]["source"], "10.0.0.1");
    assert_eq!(f["IP"]["destination"], "10.0.0.2");
    assert_eq!(f["IP"]["ipVersion"], "IPv4");
    // Ports come from network byte order.
    assert_eq!(f["l4"]["TCP"]["source_port"], 40000);
    assert_eq!(f["l4"]["TCP"]["destination_port"], 5432);
    assert_eq!(f["l4"]["TCP"]["flags"], json!({"SYN": true}));
    assert_eq!(f["Type"], "L3_L4");
    assert_eq!(f["traffic_direction"], "INGRESS");
    assert_eq!(f["is_reply"], false);
    assert_eq!(f["event_type"], json!({"type": 5}));
    assert_eq!(f["interface"], json!({"index": 7, "name": "lxc-db"}));

    let src = &f["source"];
    assert_eq!(src["identity"], ev.src_identity);
    assert_eq!(src["namespace"], "shop");
    assert_eq!(src["pod_name"], "web-1");
    let labels: Vec<&str> = src["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(labels.contains(&"k8s:app=web"), "{labels:?}");
    assert!(labels.iter().all(|l| l.starts_with("k8s:")), "{labels:?}");
    assert_eq!(
        src["workloads"],
        json!([{"name": "web-6d4f", "kind": "ReplicaSet"}])
    );
    assert_eq!(f["destination"]["pod_name"], "db-0");
    assert!(
        f["destination"].get("workloads").is_none(),
        "a bare pod has no workload"
    );

    assert_eq!(
        f["ingress_allowed_by"],
        json!([{"name": "allow-web", "namespace": "shop", "kind": "NetworkPolicy", "revision": "3"}])
    );
    assert!(f.get("ingress_denied_by").is_none());
    assert!(f.get("egress_allowed_by").is_none());
    assert_eq!(f["extensions"]["@type"], EXTENSIONS_TYPE);
    assert_eq!(
        f["policy_match_type"], MATCH_L3_L4,
        "the rule names peers and ports"
    );
    let x = &f["extensions"]["value"];
    assert_eq!(x["rule_id"], ev.rule_id);
    assert_eq!(x["rule"], "shop/allow-web ingress rule #1");
    assert_eq!(x["rule_index"], 1);
    assert_eq!(x["kind"], "new_flow");
    assert_eq!(x["policy_revision"], 3);
    assert!(x.get("isolated_by").is_none());
    assert_eq!(
        f["Summary"],
        "TCP 10.0.0.1:40000 -> 10.0.0.2:5432 allowed by shop/allow-web ingress rule #1"
    );
}

#[test]
fn default_deny_drop_names_isolating_policies() {
    let e = engine();
    let mut ev = event(&e);
    ev.dport_be = 80u16.to_be();
    ev.verdict = abi::EVENT_VERDICT_DROPPED;
    ev.drop_reason = abi::DROP_POLICY_DENIED as u16;
    ev.rule_id = abi::RULE_ID_NONE;
    let f = render(&e, &ev)["flow"].clone();
    assert_eq!(f["verdict"], "DROPPED");
    assert_eq!(f["drop_reason"], 133);
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(f["event_type"], json!({"type": 1, "sub_type": 133}));
    // The destination (db) is isolated for ingress by both policies that select it.
    assert_eq!(
        names(&f["ingress_denied_by"]),
        vec!["shop/allow-web", "shop/default-deny"]
    );
    assert_eq!(f["ingress_denied_by"][0]["kind"], "NetworkPolicy");
    assert!(f.get("ingress_allowed_by").is_none());
    assert_eq!(
        f["extensions"]["value"]["isolated_by"],
        json!(["shop/allow-web", "shop/default-deny"])
    );
    assert!(f["extensions"]["value"].get("rule").is_none());
    assert_eq!(
        f["Summary"],
        "TCP 10.0.0.1:40000 -> 10.0.0.2:80 default deny, isolated by shop/allow-web, shop/default-deny"
    );

    // Egress default deny is attributed to the source's isolation (none here).
    ev.direction = abi::DIRECTION_EGRESS;
    let f = render(&e, &ev)["flow"].clone();
    assert_eq!(f["traffic_direction"], "EGRESS");
    assert!(f.get("egress_denied_by").is_none());
    assert_eq!(f["extensions"]["value"]["isolated_by"], json!([]));
}

#[test]
fn ipv6_udp_from_world_and_other_verdicts() {
    let e = engine();
    let mut ev = event(&e);
    ev.family = 6;
    ev.protocol = 17;
    ev.tcp_flags = 0;
    ev.saddr = v6("2001:db8::1");
    ev.daddr = v6("fd00::2");
    ev.sport_be = 5353u16.to_be();
    ev.dport_be = 53u16.to_be();
    ev.src_identity = abi::IDENTITY_WORLD_IPV6;
    ev.rule_id = rule_id(&e, "allow-web", 2);
    ev.kind = abi::EVENT_KIND_CT_CLOSE;
    let f = render(&e, &ev)["flow"].clone();
    assert_eq!(f["IP"]["ipVersion"], "IPv6");
    assert_eq!(f["IP"]["source"], "2001:db8::1");
    assert_eq!(f["IP"]["destination"], "fd00::2");
    assert_eq!(
        f["l4"],
        json!({"UDP": {"source_port": 5353, "destination_port": 53}})
    );
    assert_eq!(
        f["source"],
        json!({"identity": 10, "labels": ["reserved:world-ipv6"]})
    );
    assert_eq!(f["destination"]["pod_name"], "db-0");
    assert_eq!(f["extensions"]["value"]["kind"], "ct_close");
    assert_eq!(
        f["Summary"],
        "UDP [2001:db8::1]:5353 -> [fd00::2]:53 allowed by shop/allow-web ingress rule #2 (connection closed)"
    );

    // Explicit deny names the rule under denied_by.
    ev.kind = abi::EVENT_KIND_NEW_FLOW;
    ev.verdict = abi::EVENT_VERDICT_DROPPED;
    ev.drop_reason = abi::DROP_POLICY_DENY as u16;
    let f = render(&e, &ev)["flow"].clone();
    assert_eq!(f["drop_reason_desc"], "POLICY_DENY");
    assert_eq!(names(&f["ingress_denied_by"]), vec!["shop/allow-web"]);
    assert!(
        f["Summary"]
            .as_str()
            .unwrap()
            .ends_with("denied by shop/allow-web ingress rule #2")
    );

    // Redirect carries the proxy port; not-isolated allow has no policy.
    ev.verdict = abi::EVENT_VERDICT_REDIRECTED;
    ev.drop_reason = 0;
    ev.proxy_port_be = 15001u16.to_be();
    let f = render(&e, &ev)["flow"].clone();
    assert_eq!(f["verdict"], "REDIRECTED");
    assert_eq!(f["proxy_port"], 15001);
    assert_eq!(names(&f["ingress_allowed_by"]), vec!["shop/allow-web"]);

    ev.verdict = abi::EVENT_VERDICT_FORWARDED;
    ev.rule_id = abi::RULE_ID_NOT_ISOLATED;
    ev.direction = abi::DIRECTION_EGRESS;
    let f = render(&e, &ev)["flow"].clone();
    assert!(f.get("egress_allowed_by").is_none());
    assert_eq!(f["extensions"]["value"]["rule"], "not isolated");
    assert!(
        f["Summary"]
            .as_str()
            .unwrap()
            .ends_with("allowed, egress not isolated")
    );

    // Non-policy drop; ICMPv6 echo request (the datapath puts the type in tcp_flags).
    ev.verdict = abi::EVENT_VERDICT_DROPPED;
    ev.drop_reason = abi::DROP_INVALID_IDENTITY as u16;
    ev.rule_id = 0;
    ev.protocol = 58;
    ev.tcp_flags = 128;
    ev.sport_be = 77u16.to_be();
    ev.dport_be = 0;
    let f = render(&e, &ev)["flow"].clone();
    assert_eq!(f["drop_reason_desc"], "INVALID_IDENTITY");
    assert_eq!(f["l4"], json!({"ICMPv6": {"type": 128}}));
    assert_eq!(
        f["Summary"],
        "ICMPv6 2001:db8::1 -> fd00::2 dropped: INVALID_IDENTITY"
    );
}

#[test]
fn times_and_ids() {
    assert_eq!(WallTime(0).rfc3339(), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(
        WallTime(1_700_000_000_123_456_789).rfc3339(),
        "2023-11-14T22:13:20.123456789Z"
    );
    assert_eq!(
        WallTime(1_709_164_800 * 1_000_000_000).rfc3339(),
        "2024-02-29T00:00:00.000000000Z"
    );
    assert_eq!(WallTime(-1).rfc3339(), "1969-12-31T23:59:59.999999999Z");
    let c = BootClock::with_offset(1_000);
    assert_eq!(c.to_wall(5), WallTime(1_005));
    let sys = BootClock::from_system().unwrap();
    let now = WallTime::now().0;
    // The monotonic clock is below the realtime clock on any machine booted after 1970.
    assert!((sys.to_wall(0).0 - now).abs() < now);

    let mut ids = FlowIds::with_seed(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let a = ids.next_id();
    let b = ids.next_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    assert_eq!(&a[14..15], "4", "{a}");
    assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    let mut seen = std::collections::HashSet::new();
    let mut ids = FlowIds::new();
    for _ in 0..10_000 {
        assert!(seen.insert(ids.next_id()));
    }
}

/// A directory under the system temp dir, removed when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "palisade-flowlog-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lines_of(p: &Path) -> Vec<String> {
    match std::fs::read_to_string(p) {
        Ok(s) => s.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn rotation_keeps_sizes_and_file_count() {
    let d = TempDir::new("rot");
    let path = d.0.join("nested/dir/verdicts.jsonl");
    let mut w = RotatingWriter::open(&path, 100, 3, true).unwrap();
    // 20-byte lines (19 + newline): 5 per file.
    for i in 0..40 {
        w.write_line(&format!("line-{i:04}-xxxxxxxxx")).unwrap();
    }
    w.flush().unwrap();
    for n in 1..=3 {
        let p = w.rotated_path(n);
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(len, 100, "{}", p.display());
    }
    assert!(!w.rotated_path(4).exists(), "only 3 rotated files kept");
    assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    // Newest lines are in the live file, older ones in .1, .2, .3 in order.
    let mut all = Vec::new();
    for n in (1..=3).rev() {
        all.extend(lines_of(&w.rotated_path(n)));
    }
    all.extend(lines_of(&path));
    let expect: Vec<String> = (20..40).map(|i| format!("line-{i:04}-xxxxxxxxx")).collect();
    assert_eq!(all, expect);

    // A line longer than the limit gets a file of its own.
    let long = "y".repeat(150);
    w.write_line(&long).unwrap();
    w.write_line("after").unwrap();
    w.flush().unwrap();
    assert_eq!(lines_of(&w.rotated_path(1)), vec![long]);
    assert_eq!(lines_of(&path), vec!["after"]);
}

#[test]
fn rotation_loses_no_accepted_line() {
    let d = TempDir::new("noloss");
    let path = d.0.join("v.jsonl");
    let mut w = RotatingWriter::open(&path, 4096, 1000, false).unwrap();
    let n = 5000;
    for i in 0..n {
        // Varying lengths so rotation points fall everywhere.
        w.write_line(&format!("{i} {}", "z".repeat(i % 97)))
            .unwrap();
    }
    // No explicit flush of the live file before reopening: the appended size must still be
    // right after reopen, and rotation flushed everything before.
    drop(w);
    let mut w = RotatingWriter::open(&path, 4096, 1000, false).unwrap();
    assert_eq!(w.size(), std::fs::metadata(&path).unwrap().len());
    w.write_line("last").unwrap();
    w.flush().unwrap();
    let mut files = 0;
    let mut all = Vec::new();
    for k in (1..=1000).rev() {
        let p = w.rotated_path(k);
        if p.exists() {
            files += 1;
            assert!(std::fs::metadata(&p).unwrap().len() <= 4096);
            all.extend(lines_of(&p));
        }
    }
    all.extend(lines_of(&path));
    assert!(files > 10, "rotated {files} times");
    assert_eq!(all.len(), n + 1);
    for (i, l) in all.iter().take(n).enumerate() {
        assert_eq!(l, &format!("{i} {}", "z".repeat(i % 97)));
    }
}

#[test]
fn logger_writes_flows_and_accounts_for_losses() {
    let d = TempDir::new("logger");
    let path = d.0.join("v.jsonl");
    let e = engine();
    let w = RotatingWriter::open(&path, 1 << 20, 2, false).unwrap();
    let mut log = FlowLogger::new(
        w,
        "node-a",
        BootClock::with_offset(1_700_000_000_000_000_000),
    )
    .unwrap()
    .with_ids(FlowIds::with_seed(7));
    let r = EngineResolver::new(&e);
    log.log(&event(&e), &r).unwrap();
    assert_eq!(log.observe_ring_lost(0).unwrap(), 0);
    assert_eq!(log.observe_ring_lost(5).unwrap(), 5);
    assert_eq!(log.observe_ring_lost(5).unwrap(), 0);
    assert_eq!(log.observe_ring_lost(7).unwrap(), 2);
    log.flush().unwrap();
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 3);
    let flow: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(flow["time"], "2023-11-14T22:13:25.000000123Z");
    assert_eq!(flow["flow"]["node_name"], "node-a");
    let lost: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        lost["lost_events"],
        json!({"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": "5"})
    );
    assert_eq!(lost["node_name"], "node-a");
    assert!(lost["time"].as_str().unwrap().ends_with('Z'));
    let lost: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(lost["lost_events"]["num_events_lost"], "2");
    // Records the L7 proxy could not queue are written down at once.
    log.note_lost(3).unwrap();
    log.flush().unwrap();
    let lines = lines_of(&path);
    let lost: Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(
        lost["lost_events"],
        json!({"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": "3"})
    );
}

fn render_all(e: &Engine, ev: &VerdictEvent) -> Vec<Value> {
    let r = EngineResolver::new(e);
    let mut n = 0;
    render_lines(
        ev,
        &r,
        "node-a",
        BootClock::with_offset(0).to_wall(ev.time_ns),
        &mut || {
            n += 1;
            format!("u-{n}")
        },
    )
    .iter()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

#[test]
fn a_policy_denial_is_a_policy_verdict_then_a_drop() {
    let e = engine();
    let mut ev = event(&e);
    ev.verdict = abi::EVENT_VERDICT_DROPPED;
    ev.drop_reason = abi::DROP_POLICY_DENIED as u16;
    let lines = render_all(&e, &ev);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (pv, drop) = (&lines[0]["flow"], &lines[1]["flow"]);
    assert_eq!(pv["event_type"], json!({"type": 5}));
    assert_eq!(drop["event_type"], json!({"type": 1, "sub_type": 133}));
    assert_ne!(pv["uuid"], drop["uuid"], "each line has its own flow id");
    for f in [pv, drop] {
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(
            names(&f["ingress_denied_by"]),
            vec!["shop/allow-web", "shop/default-deny"]
        );
        // Default deny matched no rule: policy_match_type none, left out.
        assert!(f.get("policy_match_type").is_none(), "{f}");
    }

    // An explicit deny rule: both lines too; a non-policy drop and an allow: one line.
    ev.drop_reason = abi::DROP_POLICY_DENY as u16;
    ev.rule_id = rule_id(&e, "allow-web", 0);
    let lines = render_all(&e, &ev);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["flow"]["policy_match_type"], MATCH_L3_ONLY);
    ev.drop_reason = abi::DROP_INVALID_IDENTITY as u16;
    assert_eq!(render_all(&e, &ev).len(), 1);
    ev.verdict = abi::EVENT_VERDICT_FORWARDED;
    ev.drop_reason = 0;
    ev.rule_id = rule_id(&e, "allow-web", 2);
    let lines = render_all(&e, &ev);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["flow"]["policy_match_type"], MATCH_L4_ONLY);
    ev.rule_id = abi::RULE_ID_NOT_ISOLATED;
    assert_eq!(
        render_all(&e, &ev)[0]["flow"]["policy_match_type"],
        MATCH_ALL
    );
}

/// The `flow` of the drop line for port 22 that the ingress rule 0 of `policy` (defined in
/// `extra`, added to MANIFESTS) made.
fn ingress_deny_flow(extra: &str, policy: PolicyRef) -> Value {
    let loaded = load_str(
        "test.yaml",
        &format!("{MANIFESTS}{extra}"),
        &LoadOptions::default(),
    )
    .unwrap();
    let e = Engine::compile(&loaded.cluster, EngineConfig::default())
        .unwrap()
        .0;
    let id = e
        .rules()
        .id(&RuleRef {
            policy,
            direction: Direction::Ingress,
            index: 0,
        })
        .unwrap();
    let mut ev = event(&e);
    ev.verdict = abi::EVENT_VERDICT_DROPPED;
    ev.drop_reason = abi::DROP_POLICY_DENY as u16;
    ev.dport_be = 22u16.to_be();
    ev.rule_id = id;
    render_all(&e, &ev).last().unwrap()["flow"].clone()
}

#[test]
fn a_palisade_rule_carries_its_name_kind_and_log_marker_into_the_record() {
    let extra = r#"
---
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: guard, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - name: no-web-ssh
    action: Deny
    log: ssh-attempt
    from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 22}]
"#;
    let flow = &ingress_deny_flow(
        extra,
        PolicyRef {
            kind: policy_compiler::rules::PolicyKind::PalisadeNetworkPolicy,
            namespace: "shop".into(),
            name: "guard".into(),
        },
    );
    let ext = &flow["extensions"]["value"];
    assert_eq!(ext["rule_name"], "no-web-ssh", "{flow}");
    assert_eq!(ext["log"], "ssh-attempt", "{flow}");
    assert_eq!(
        flow["ingress_denied_by"][0]["kind"], "PalisadeNetworkPolicy",
        "{flow}"
    );
    assert_eq!(flow["ingress_denied_by"][0]["name"], "guard", "{flow}");
}

#[test]
fn an_admin_network_policy_deny_names_kind_tier_priority_and_rule() {
    let extra = r#"
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: guardrail}
spec:
  priority: 7
  subject: {namespaces: {}}
  ingress:
  - name: no-ssh-anywhere
    action: Deny
    from: [{namespaces: {}}]
    ports: [{portNumber: {protocol: TCP, port: 22}}]
"#;
    let flow = &ingress_deny_flow(
        extra,
        PolicyRef {
            kind: policy_compiler::rules::PolicyKind::AdminNetworkPolicy,
            namespace: String::new(),
            name: "guardrail".into(),
        },
    );
    let ext = &flow["extensions"]["value"];
    assert_eq!(ext["rule_name"], "no-ssh-anywhere", "{flow}");
    assert_eq!(ext["tier"], "admin", "{flow}");
    assert_eq!(ext["priority"], 7, "{flow}");
    assert_eq!(ext["action"], "Deny", "{flow}");
    assert_eq!(
        flow["ingress_denied_by"][0]["kind"], "AdminNetworkPolicy",
        "{flow}"
    );
    assert_eq!(flow["ingress_denied_by"][0]["name"], "guardrail", "{flow}");
    // Cluster-scoped: no namespace key, as protojson leaves out an empty string.
    assert!(
        flow["ingress_denied_by"][0].get("namespace").is_none(),
        "{flow}"
    );
}

/// An L7 record's line, byte for byte: keys in byte order at every level (as the datapath
/// events' lines), the chain's marker where `FlowLogger` seals it, and what hubble reads.
#[test]
fn an_l7_line_is_written_exactly_so() {
    use crate::events::l7::{L7Event, L7Side, render_l7_line};
    use palisade_l7proxy::proxy::{Outcome, RequestRecord};
    let e = engine();
    let ev = L7Event {
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "10.0.0.2:5432".parse().unwrap(),
        client_identity: ident(&e, "shop/web-1"),
        server_identity: ident(&e, "shop/db-0"),
        sides: vec![L7Side {
            direction: policy_compiler::model::Direction::Ingress,
            origin: Some(policy_compiler::engine::l7::L7Origin {
                rule_id: 16,
                http_index: Some(0),
            }),
            audit: None,
        }],
        revision: 3,
        record: RequestRecord {
            method: "GET".into(),
            target: "/api?x=\"1\"".into(),
            path: Some("/api".into()),
            host: Some("db:5432".into()),
            version: "HTTP/1.1",
            outcome: Outcome::Forwarded {
                rule: 0,
                status: 200,
            },
            latency: std::time::Duration::from_micros(180),
            upstream_error: None,
        },
    };
    let line = render_l7_line(
        &ev,
        &EngineResolver::new(&e),
        "node-a",
        BootClock::with_offset(1_700_000_000_000_000_000).to_wall(0),
        "u-1",
    );
    assert!(
        line.contains(palisade_observe::chain::EXT_VALUE_MARKER),
        "{line}"
    );
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        line,
        "keys in byte order"
    );
    // The strings written through their Display, escaped as strings are.
    let f = &v["flow"];
    assert_eq!(
        f["Summary"],
        "HTTP/1.1 200 0ms (GET http://db:5432/api?x=\"1\")"
    );
    assert_eq!(f["l7"]["http"]["url"], "http://db:5432/api?x=\"1\"");
    assert_eq!(f["l7"]["latency_ns"], "180000");
    assert_eq!(f["IP"]["source"], "10.0.0.2", "a response, from the server");
    assert_eq!(f["IP"]["destination"], "10.0.0.1");
    assert_eq!(f["ingress_allowed_by"][0]["revision"], "3");
    assert!(
        line.contains(r#""url":"http://db:5432/api?x=\"1\"""#),
        "{line}"
    );

    // Denied, no Host: the server's address in the URL.
    let mut denied = ev.clone();
    denied.record.host = None;
    denied.record.latency = std::time::Duration::from_millis(2);
    denied.record.outcome = Outcome::Denied {
        decision: palisade_l7proxy::Decision::NoMatch,
        status: 403,
    };
    let line = render_l7_line(
        &denied,
        &EngineResolver::new(&e),
        "node-a",
        BootClock::with_offset(1_700_000_000_000_000_000).to_wall(0),
        "u-2",
    );
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["flow"]["Summary"],
        "HTTP/1.1 403 denied 2ms (GET http://10.0.0.2/api?x=\"1\")"
    );
    assert_eq!(
        v["flow"]["l7"]["http"]["url"],
        "http://10.0.0.2/api?x=\"1\""
    );
    assert_eq!(v["flow"]["IP"]["source"], "10.0.0.1");
    assert_eq!(v["flow"]["l7"]["latency_ns"], "2000000");

    // A batch rendered with one memo writes what each record rendered alone writes.
    let time = BootClock::with_offset(1_700_000_000_000_000_000).to_wall(0);
    let resolver = EngineResolver::new(&e);
    let mut memo = crate::events::L7Memo::default();
    for record in [&ev, &denied, &ev, &denied] {
        assert_eq!(
            crate::events::l7::render_l7_line_memo(
                record, &resolver, &mut memo, "node-a", time, "u"
            ),
            render_l7_line(record, &resolver, "node-a", time, "u")
        );
    }
}
