#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! The cluster-admin tiers with real traffic: AdminNetworkPolicy, NetworkPolicy and
//! BaselineAdminNetworkPolicy (and ClusterNetworkPolicy, which names its tier) decide in
//! that order, per direction, in the kernel.
//!
//! The policy core resolves the tiers into the policy map values, so the datapath's first
//! hit is final and has no notion of tiers; these tests prove that what it finds is the
//! tier order's answer, through the real `palisade-enforcer run` process, TCP connects
//! between pods in network namespaces and the verdict log:
//!
//! - an admin Deny beats a NetworkPolicy allow (both directions);
//! - an admin Pass skips the rest of the admin tier: the NetworkPolicy decides, its default
//!   deny included;
//! - an admin Allow beats a NetworkPolicy default deny;
//! - the baseline decides only for pods no NetworkPolicy isolates (its Deny closes what no
//!   NetworkPolicy opens, its Allow does not open what a NetworkPolicy isolates);
//! - a ClusterNetworkPolicy decides in the tier it names (`Admin` or `Baseline`);
//! - a priority change and a rule-order swap reach new connections after the reload, and an
//!   open connection ends in the old or the new verdict (kept, or cut like any revoked flow);
//! - the verdict log names the admin or baseline policy, with its kind, that decided.
//!
//! A priority change is tested both ways: by editing only `spec.priority`, and by replacing
//! the policy with one of another name.
//!
//! Privileged tier: needs root, network namespaces and BPF. Under `CI=true` a host that
//! cannot run these fails them (`Node::for_test`); elsewhere they print `skipped: ...`.
//!
//! Conventions (as in `e2e.rs`): every test owns its node and enforcer (removed on drop, also
//! on panic); a denied TCP attempt must end in `TimedOut` (a dropped SYN), never `Refused`;
//! the servers' `served()` counters prove that nothing denied reached a pod. Pods live in
//! `10.246.<test>.0/24` and `fd00:10:246:<test>::/64`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use palisade_testkit::node::{EchoOutcome, Pod, ServerHandle, TcpSession};
use serde_json::Value;

mod common;

use common::traffic::{CHANGE, Cluster, DENY, OK, expect_all, serve_tcp as serve, tcp, tcp6};

/// This file's address block: `10.246.x.x`, `fd00:10:246::/48`.
const BLOCK: u8 = 246;
/// How long the agent may take to write a verdict to its log.
const LOG: Duration = Duration::from_secs(5);

fn start(what: &str, manifests: &[(&str, &str)]) -> Option<Cluster> {
    common::traffic::start("tier", BLOCK, what, manifests)
}

/// A dual-stack pod labelled `app: <name>`, registered with the agent.
fn app_pod(c: &Cluster, ns: &str, name: &str, subnet: u8, host: u8) -> Pod {
    let pod = c.pod(ns, name, subnet, host);
    c.register(&pod, &[("app", name)]);
    pod
}

/// A Namespace with its name label (what `namespaces` selectors of the admin kinds match).
fn namespace(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: \
         {{kubernetes.io/metadata.name: {name}}}}}\n---\n"
    )
}

// ---- the verdict log -----------------------------------------------------------------------

/// One flow decision to find in the verdict log: a TCP flow over IPv4 at one hook, by
/// verdict and `extensions.value.kind` (`new_flow`, `revoked`, ...).
struct Wanted<'a> {
    src: &'a Pod,
    dst: &'a Pod,
    dport: u16,
    dir: &'static str,
    verdict: &'static str,
    kind: &'static str,
}

impl Wanted<'_> {
    fn matches(&self, f: &Value) -> bool {
        f["IP"]["source"] == self.src.ipv4.to_string()
            && f["IP"]["destination"] == self.dst.ipv4.to_string()
            && f["l4"]["TCP"]["destination_port"] == self.dport
            && f["traffic_direction"] == self.dir
            && f["verdict"] == self.verdict
            && f["extensions"]["value"]["kind"] == self.kind
            // A policy denial is two lines; the drop notification is the one to read.
            && (self.verdict != "DROPPED" || f["event_type"]["type"] == 1)
    }
}

fn new_flow<'a>(
    src: &'a Pod,
    dst: &'a Pod,
    dport: u16,
    dir: &'static str,
    verdict: &'static str,
) -> Wanted<'a> {
    Wanted {
        src,
        dst,
        dport,
        dir,
        verdict,
        kind: "new_flow",
    }
}

/// The first `flow` of the log matching each of `wanted`, waiting for the agent to write
/// them; fails naming what is missing, with the log.
fn find_flows(c: &Cluster, wanted: &[Wanted<'_>]) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let flows: Vec<Value> = c
            .enforcer
            .verdicts()
            .into_iter()
            .filter_map(|l| l.get("flow").cloned())
            .collect();
        let found: Vec<Option<&Value>> = wanted
            .iter()
            .map(|w| flows.iter().find(|f| w.matches(f)))
            .collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().cloned().collect();
        }
        if t0.elapsed() > LOG {
            let missing: Vec<String> = wanted
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|(w, _)| {
                    format!(
                        "{} {} {} -> {}:{} {}",
                        w.kind,
                        w.verdict,
                        w.src.identity(),
                        w.dst.identity(),
                        w.dport,
                        w.dir
                    )
                })
                .collect();
            let raw = std::fs::read_to_string(c.enforcer.verdict_log()).unwrap_or_default();
            panic!(
                "no verdict line for: {}\nverdict log:\n{raw}",
                missing.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every policy of a `*_allowed_by` / `*_denied_by` list as `Kind name` (cluster-scoped) or
/// `Kind namespace/name`.
fn policies(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let kind = p["kind"].as_str().unwrap_or("?");
                    let name = p["name"].as_str().unwrap_or("?");
                    match p["namespace"].as_str().unwrap_or("") {
                        "" => format!("{kind} {name}"),
                        ns => format!("{kind} {ns}/{name}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(ToString::to_string).collect()
}

/// A drop by a deny rule (reason 181, `POLICY_DENY`) at `dir`, attributed to `policy` only.
fn assert_denied_by(f: &Value, dir: &str, policy: &str) {
    assert_eq!(f["drop_reason"], 181, "{f}");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENY", "{f}");
    assert_eq!(
        policies(&f[format!("{dir}_denied_by")]),
        set(&[policy]),
        "{f}"
    );
}

/// A default-deny drop (reason 133, rule 0): the NetworkPolicy tier decided.
fn assert_default_deny(f: &Value, dir: &str, isolated_by: &[&str]) {
    assert_eq!(f["drop_reason"], 133, "{f}");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED", "{f}");
    assert_eq!(f["extensions"]["value"]["rule_id"], 0, "{f}");
    assert_eq!(
        policies(&f[format!("{dir}_denied_by")]),
        set(isolated_by),
        "{f}"
    );
}

fn assert_allowed_by(f: &Value, dir: &str, policy: &str) {
    assert_eq!(
        policies(&f[format!("{dir}_allowed_by")]),
        set(&[policy]),
        "{f}"
    );
}

// ---- 1. an admin Deny beats a NetworkPolicy allow ------------------------------------------

fn t1_network_policy() -> String {
    namespace("t1a")
        + &namespace("t1b")
        + "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: t1b}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: t1a}}
      podSelector: {matchLabels: {app: a}}
    ports: [{port: 8080}, {port: 8081}]
"
}

const T1_ADMIN: &str = "\
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: t1a-egress-to-t1b}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t1a}}}
  egress:
  - name: no-t1b
    action: Deny
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t1b}}}]
    ports: [{portNumber: {protocol: TCP, port: 8080}}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: t1b-ingress-from-t1a}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t1b}}}
  ingress:
  - name: no-t1a
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t1a}}}]
    ports: [{portNumber: {protocol: TCP, port: 8081}}]
";

#[test]
fn an_admin_deny_beats_a_network_policy_allow() {
    let Some(c) = start(
        "tiers: admin deny over a NetworkPolicy allow",
        &[("10-np.yaml", &t1_network_policy())],
    ) else {
        return;
    };
    let a = app_pod(&c, "t1a", "a", 1, 10);
    let b = app_pod(&c, "t1b", "b", 1, 20);
    let (s8080, s8081) = (serve(&b, 8080), serve(&b, 8081));

    // The NetworkPolicy alone opens both ports.
    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, true, "the NetworkPolicy allows a"),
            tcp(&a, &b, 8081, true, "the NetworkPolicy allows a"),
        ],
    );

    // Priority 10 denies 8080 at a's egress and 8081 at b's ingress.
    c.write_policy("adding the admin denies", "20-anp.yaml", T1_ADMIN);
    expect_all(
        &c,
        &[
            tcp(
                &a,
                &b,
                8080,
                false,
                "admin egress Deny before the NetworkPolicy",
            ),
            tcp6(&a, &b, 8080, false, "admin egress Deny, IPv6"),
            tcp(
                &a,
                &b,
                8081,
                false,
                "admin ingress Deny before the NetworkPolicy",
            ),
            tcp6(&a, &b, 8081, false, "admin ingress Deny, IPv6"),
        ],
    );
    assert_eq!(s8080.served(), 1, "8080: only the connect before the deny");
    assert_eq!(s8081.served(), 1, "8081: only the connect before the deny");

    let f = find_flows(
        &c,
        &[
            new_flow(&a, &b, 8080, "EGRESS", "DROPPED"),
            new_flow(&a, &b, 8081, "INGRESS", "DROPPED"),
        ],
    );
    assert_denied_by(&f[0], "egress", "AdminNetworkPolicy t1a-egress-to-t1b");
    assert_eq!(
        f[0]["extensions"]["value"]["rule_name"], "no-t1b",
        "{}",
        f[0]
    );
    assert_denied_by(&f[1], "ingress", "AdminNetworkPolicy t1b-ingress-from-t1a");
    assert_eq!(
        f[1]["extensions"]["value"]["rule_name"], "no-t1a",
        "{}",
        f[1]
    );
}

// ---- 2. an admin Pass hands over to the NetworkPolicy --------------------------------------

fn t2_manifests() -> String {
    namespace("t2a")
        + &namespace("t2b")
        + "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-t2a, namespace: t2b}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: t2a}}}]
    ports: [{port: 8080}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: pass-a}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t2b}}}
  ingress:
  - name: let-the-namespace-decide
    action: Pass
    from:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: t2a}}
        podSelector: {matchLabels: {app: a}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: deny-t2a}
spec:
  priority: 50
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t2b}}}
  ingress:
  - name: no-t2a
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t2a}}}]
"
}

/// `pass-a` (priority 5) passes `a` before `deny-t2a` (priority 50) denies all of `t2a`: for
/// `a` the NetworkPolicy decides (8080 allowed, 9090 default deny); for `a2` the deny does.
#[test]
fn an_admin_pass_hands_the_decision_to_the_network_policy() {
    let Some(c) = start("tiers: admin pass", &[("policy.yaml", &t2_manifests())]) else {
        return;
    };
    let a = app_pod(&c, "t2a", "a", 2, 10);
    let a2 = app_pod(&c, "t2a", "a2", 2, 11);
    let b = app_pod(&c, "t2b", "b", 2, 20);
    let (s8080, s9090) = (serve(&b, 8080), serve(&b, 9090));

    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, true, "Pass, then the NetworkPolicy allows"),
            tcp6(
                &a,
                &b,
                8080,
                true,
                "Pass, then the NetworkPolicy allows, IPv6",
            ),
            tcp(&a, &b, 9090, false, "Pass, then NetworkPolicy default deny"),
            tcp(&a2, &b, 8080, false, "no Pass for a2: the priority 50 Deny"),
            tcp(&a2, &b, 9090, false, "no Pass for a2: the priority 50 Deny"),
        ],
    );
    assert_eq!(s8080.served(), 2, "8080: a over IPv4 and IPv6");
    assert_eq!(s9090.served(), 0);

    let f = find_flows(
        &c,
        &[
            new_flow(&a, &b, 8080, "INGRESS", "FORWARDED"),
            new_flow(&a, &b, 9090, "INGRESS", "DROPPED"),
            new_flow(&a2, &b, 8080, "INGRESS", "DROPPED"),
        ],
    );
    assert_allowed_by(&f[0], "ingress", "NetworkPolicy t2b/b-from-t2a");
    assert_default_deny(&f[1], "ingress", &["NetworkPolicy t2b/b-from-t2a"]);
    assert_denied_by(&f[2], "ingress", "AdminNetworkPolicy deny-t2a");
}

// ---- 3. an admin Allow beats a NetworkPolicy default deny ----------------------------------

fn t3_manifests() -> String {
    namespace("t3a")
        + &namespace("t3b")
        + "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: t3a}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: t3b}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: a-to-b}
spec:
  priority: 10
  subject:
    namespaces:
      matchExpressions:
      - {key: kubernetes.io/metadata.name, operator: In, values: [t3a, t3b]}
  egress:
  - name: to-b
    action: Allow
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t3b}}}]
    ports: [{portNumber: {protocol: TCP, port: 8080}}]
  ingress:
  - name: from-a
    action: Allow
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t3a}}}]
    ports: [{portNumber: {protocol: TCP, port: 8080}}]
"
}

#[test]
fn an_admin_allow_beats_a_network_policy_default_deny() {
    let Some(c) = start(
        "tiers: admin allow over default deny",
        &[("policy.yaml", &t3_manifests())],
    ) else {
        return;
    };
    let a = app_pod(&c, "t3a", "a", 3, 10);
    let b = app_pod(&c, "t3b", "b", 3, 20);
    let b2 = app_pod(&c, "t3b", "b2", 3, 21);
    let (s8080, s9090) = (serve(&b, 8080), serve(&b, 9090));
    let b2_8080 = serve(&b2, 8080);

    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, true, "admin Allow at both hooks"),
            tcp6(&a, &b, 8080, true, "admin Allow at both hooks, IPv6"),
            tcp(&a, &b, 9090, false, "no Allow for 9090: default deny"),
            tcp(&b2, &b, 8080, false, "b2 is not in t3a: default deny"),
        ],
    );
    assert_eq!(s8080.served(), 2, "a over IPv4 and IPv6");
    assert_eq!(s9090.served(), 0);
    assert_eq!(b2_8080.served(), 0);

    let f = find_flows(
        &c,
        &[
            new_flow(&a, &b, 8080, "EGRESS", "FORWARDED"),
            new_flow(&a, &b, 8080, "INGRESS", "FORWARDED"),
            new_flow(&a, &b, 9090, "EGRESS", "DROPPED"),
        ],
    );
    assert_allowed_by(&f[0], "egress", "AdminNetworkPolicy a-to-b");
    assert_eq!(f[0]["extensions"]["value"]["rule_name"], "to-b", "{}", f[0]);
    assert_allowed_by(&f[1], "ingress", "AdminNetworkPolicy a-to-b");
    assert_eq!(
        f[1]["extensions"]["value"]["rule_name"], "from-a",
        "{}",
        f[1]
    );
    assert_default_deny(&f[2], "egress", &["NetworkPolicy t3a/default-deny"]);
}

// ---- 4. the baseline decides after the NetworkPolicy tier ----------------------------------

fn t4_manifests() -> String {
    namespace("t4s")
        + &namespace("t4c")
        + "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np-from-client, namespace: t4s}
spec:
  podSelector: {matchLabels: {app: np}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: t4c}}
      podSelector: {matchLabels: {app: client}}
    ports: [{port: 8080}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t4s}}}
  ingress:
  - name: monitoring
    action: Allow
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t4c}}}]
    ports: [{portNumber: {protocol: TCP, port: 7070}}]
  - name: closed-by-default
    action: Deny
    from: [{namespaces: {}}]
"
}

/// `open` is selected by no NetworkPolicy, `np` by one allowing the client on 8080; the
/// baseline allows 7070 from `t4c` and denies everything else into `t4s`.
#[test]
fn the_baseline_decides_only_what_no_network_policy_isolates() {
    let Some(c) = start("tiers: baseline", &[("policy.yaml", &t4_manifests())]) else {
        return;
    };
    let open = app_pod(&c, "t4s", "open", 4, 10);
    let np = app_pod(&c, "t4s", "np", 4, 11);
    let client = app_pod(&c, "t4c", "client", 4, 20);
    let peer = app_pod(&c, "t4c", "peer", 4, 21);
    let servers: Vec<ServerHandle> = [&open, &np, &peer]
        .into_iter()
        .flat_map(|p| [serve(p, 7070), serve(p, 8080)])
        .collect();

    expect_all(
        &c,
        &[
            tcp(
                &client,
                &open,
                8080,
                false,
                "no NetworkPolicy: baseline Deny",
            ),
            tcp6(
                &client,
                &open,
                8080,
                false,
                "no NetworkPolicy: baseline Deny, IPv6",
            ),
            tcp(
                &client,
                &open,
                7070,
                true,
                "no NetworkPolicy: baseline Allow",
            ),
            tcp(&np, &open, 8080, false, "baseline Deny from any namespace"),
            tcp(
                &client,
                &np,
                8080,
                true,
                "the NetworkPolicy allows before the baseline",
            ),
            tcp6(&client, &np, 8080, true, "the NetworkPolicy allows, IPv6"),
            tcp(
                &client,
                &np,
                7070,
                false,
                "isolated: default deny before the baseline Allow",
            ),
            tcp(&peer, &np, 8080, false, "isolated: default deny"),
            tcp(&client, &peer, 8080, true, "t4c is no baseline subject"),
        ],
    );
    let served: Vec<usize> = servers.iter().map(ServerHandle::served).collect();
    assert_eq!(
        served,
        [1, 0, 0, 2, 0, 1],
        "open:7070, open:8080, np:7070, np:8080, peer:7070, peer:8080"
    );

    let f = find_flows(
        &c,
        &[
            new_flow(&client, &open, 8080, "INGRESS", "DROPPED"),
            new_flow(&client, &open, 7070, "INGRESS", "FORWARDED"),
            new_flow(&client, &np, 8080, "INGRESS", "FORWARDED"),
            new_flow(&client, &np, 7070, "INGRESS", "DROPPED"),
        ],
    );
    assert_denied_by(&f[0], "ingress", "BaselineAdminNetworkPolicy default");
    assert_eq!(
        f[0]["extensions"]["value"]["rule_name"], "closed-by-default",
        "{}",
        f[0]
    );
    assert_allowed_by(&f[1], "ingress", "BaselineAdminNetworkPolicy default");
    assert_allowed_by(&f[2], "ingress", "NetworkPolicy t4s/np-from-client");
    assert_default_deny(&f[3], "ingress", &["NetworkPolicy t4s/np-from-client"]);
}

// ---- 5. a priority change with a connection open -------------------------------------------

const T5_ALLOW: &str = "\
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: allow-b}
spec:
  priority: 20
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t5a}}}
  egress:
  - action: Allow
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t5b}}}]
";

fn t5_deny(name: &str, priority: u32) -> String {
    format!(
        "\
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: {name}}}
spec:
  priority: {priority}
  subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: t5a}}}}}}
  egress:
  - action: Deny
    to: [{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: t5b}}}}}}]
"
    )
}

/// How the deny gets ahead of the allow.
#[derive(Debug, Clone, Copy)]
enum Reprioritize {
    /// The same policy, only `spec.priority` rewritten (30 -> 10).
    InPlace,
    /// The policy at 30 replaced, in the same file write, by one of another name at 10.
    Replace,
}

/// What an open connection did across a change to a policy that now denies it.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// It keeps the verdict it was admitted with.
    Kept,
    /// It gets the new verdict: its packets are dropped (or it is reset).
    Cut,
}

/// Classifies the next echoes of a session after its flow was denied: the old verdict (every
/// echo comes back) or the new one (nothing comes back, or a reset), and never a mix or a
/// partial echo.
fn fate(c: &Cluster, session: &mut TcpSession) -> Fate {
    let first = session.echo(b"after the change", DENY).unwrap();
    let cut = |o: &EchoOutcome| match o {
        EchoOutcome::Reset => true,
        EchoOutcome::TimedOut { received } => received.is_empty(),
        _ => false,
    };
    match first {
        EchoOutcome::Echoed => {
            for i in 0..3 {
                let o = session
                    .echo(format!("still open {i}").as_bytes(), OK)
                    .unwrap();
                assert_eq!(
                    o,
                    EchoOutcome::Echoed,
                    "a kept connection stopped echoing\n{}",
                    c.log()
                );
            }
            Fate::Kept
        }
        ref o if cut(o) => {
            let again = session.echo(b"again", DENY).unwrap();
            assert!(
                cut(&again),
                "a cut connection came back: {again:?}\n{}",
                c.log()
            );
            Fate::Cut
        }
        other => panic!(
            "an open connection neither kept nor cut: {other:?}\nagent log:\n{}",
            c.log()
        ),
    }
}

/// `allow-b` (priority 20) and a deny (priority 30) for the same traffic: allowed. The deny
/// moves to priority 10: new connections are denied, the open one ends in the old or the new
/// verdict. Back to 30: allowed again.
fn priority_change(what: &str, how: Reprioritize) {
    let manifests = namespace("t5a") + &namespace("t5b");
    let Some(c) = start(
        what,
        &[
            ("10-ns.yaml", &manifests),
            ("20-allow.yaml", T5_ALLOW),
            ("30-deny.yaml", &t5_deny("deny-b", 30)),
        ],
    ) else {
        return;
    };
    let a = app_pod(&c, "t5a", "a", 5, 10);
    let b = app_pod(&c, "t5b", "b", 5, 20);
    let s8080 = serve(&b, 8080);

    let mut open = a.tcp_session(b.addr_v4(8080), OK).unwrap();
    assert_eq!(open.banner(), b.identity());
    assert_eq!(
        open.echo(b"before", OK).unwrap(),
        EchoOutcome::Echoed,
        "{}",
        c.log()
    );
    expect_all(
        &c,
        &[tcp(&a, &b, 8080, true, "Allow at 20 before Deny at 30")],
    );

    let deny = match how {
        Reprioritize::InPlace => "deny-b",
        Reprioritize::Replace => "deny-b-first",
    };
    c.write_policy(
        "the deny to priority 10",
        "30-deny.yaml",
        &t5_deny(deny, 10),
    );
    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, false, "Deny at 10 before Allow at 20"),
            tcp6(&a, &b, 8080, false, "Deny at 10 before Allow at 20, IPv6"),
        ],
    );
    let deny_ref = format!("AdminNetworkPolicy {deny}");
    let fate = fate(&c, &mut open);
    eprintln!("{what}: the open connection was {fate:?} by the priority change");
    if fate == Fate::Cut {
        // A revoked flow is logged as such, naming the deny that revoked it.
        let f = find_flows(
            &c,
            &[Wanted {
                src: &a,
                dst: &b,
                dport: 8080,
                dir: "EGRESS",
                verdict: "DROPPED",
                kind: "revoked",
            }],
        );
        assert_denied_by(&f[0], "egress", &deny_ref);
    }
    drop(open);
    let f = find_flows(&c, &[new_flow(&a, &b, 8080, "EGRESS", "DROPPED")]);
    assert_denied_by(&f[0], "egress", &deny_ref);

    // And back: the Allow decides again.
    c.write_policy(
        "the deny back to priority 30",
        "30-deny.yaml",
        &t5_deny("deny-b", 30),
    );
    expect_all(
        &c,
        &[tcp(
            &a,
            &b,
            8080,
            true,
            "Allow at 20 before Deny at 30 again",
        )],
    );
    assert_eq!(
        s8080.served(),
        3,
        "the open connection, the connect before the change and the one after"
    );
}

#[test]
fn a_deny_replaced_at_a_lower_priority_reaches_new_and_open_connections() {
    priority_change(
        "tiers: priority change by replacement",
        Reprioritize::Replace,
    );
}

/// The same change made the way an administrator would: only `spec.priority` edited.
#[test]
fn a_priority_edit_reaches_new_and_open_connections() {
    priority_change("tiers: priority edit", Reprioritize::InPlace);
}

// ---- 6. rule order inside one policy -------------------------------------------------------

fn t6_admin(allow_first: bool) -> String {
    // (No `\` line continuations here: they would eat the indentation.)
    let rule = |name: &str, action: &str| {
        format!(
            "  - name: {name}\n    action: {action}\n    to: [{{namespaces: {{matchLabels: \
             {{kubernetes.io/metadata.name: t6b}}}}}}]\n"
        )
    };
    let (allow, deny) = (rule("allow-b", "Allow"), rule("deny-b", "Deny"));
    let (first, second) = if allow_first {
        (allow, deny)
    } else {
        (deny, allow)
    };
    format!(
        "\
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: ordered}}
spec:
  priority: 10
  subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: t6a}}}}}}
  egress:
{first}{second}"
    )
}

#[test]
fn the_first_matching_rule_of_a_policy_decides_after_a_reorder() {
    // t6a isolates its egress, so without the admin tier the flow would be denied too: the
    // Allow must be what opens it.
    let manifests = namespace("t6a")
        + &namespace("t6b")
        + "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: t6a}
spec: {podSelector: {}, policyTypes: [Egress]}
";
    let Some(c) = start(
        "tiers: rule order",
        &[("10-np.yaml", &manifests), ("20-anp.yaml", &t6_admin(true))],
    ) else {
        return;
    };
    let a = app_pod(&c, "t6a", "a", 6, 10);
    let b = app_pod(&c, "t6b", "b", 6, 20);
    let s8080 = serve(&b, 8080);

    expect_all(&c, &[tcp(&a, &b, 8080, true, "Allow is the first rule")]);
    c.write_policy("Deny first", "20-anp.yaml", &t6_admin(false));
    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, false, "Deny is the first rule"),
            tcp6(&a, &b, 8080, false, "Deny is the first rule, IPv6"),
        ],
    );
    let f = find_flows(&c, &[new_flow(&a, &b, 8080, "EGRESS", "DROPPED")]);
    assert_denied_by(&f[0], "egress", "AdminNetworkPolicy ordered");
    assert_eq!(
        f[0]["extensions"]["value"]["rule_name"], "deny-b",
        "{}",
        f[0]
    );
    assert_eq!(f[0]["extensions"]["value"]["rule_index"], 0, "{}", f[0]);

    c.write_policy("Allow first again", "20-anp.yaml", &t6_admin(true));
    expect_all(
        &c,
        &[tcp(&a, &b, 8080, true, "Allow is the first rule again")],
    );
    assert_eq!(s8080.served(), 2, "the two allowed connects");
}

// ---- 7. ClusterNetworkPolicy names its tier ------------------------------------------------

fn t7_manifests() -> String {
    namespace("t7a")
        + &namespace("t7b")
        + "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-t7a, namespace: t7b}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: t7a}}}]
    ports: [{port: 8080}, {port: 9090}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-no-8080}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t7b}}}
  ingress:
  - name: no-8080
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t7a}}}]
    protocols: [{tcp: {destinationPort: {number: 8080}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-closed}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t7b}}}
  ingress:
  - name: monitoring
    action: Accept
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: t7a}}}]
    protocols: [{tcp: {destinationPort: {range: {start: 7000, end: 7999}}}}]
  - name: closed
    action: Deny
    from: [{namespaces: {}}]
"
}

/// `b` is selected by a NetworkPolicy opening 8080 and 9090, `open` by none. The Admin-tier
/// policy denies 8080 into both; the Baseline-tier one accepts 7000-7999 and denies the rest,
/// which only `open` sees.
#[test]
fn cluster_network_policies_decide_in_the_tier_they_name() {
    let Some(c) = start(
        "tiers: ClusterNetworkPolicy",
        &[("policy.yaml", &t7_manifests())],
    ) else {
        return;
    };
    let a = app_pod(&c, "t7a", "a", 7, 10);
    let b = app_pod(&c, "t7b", "b", 7, 20);
    let open = app_pod(&c, "t7b", "open", 7, 21);
    let servers: Vec<ServerHandle> = [&b, &open]
        .into_iter()
        .flat_map(|p| [serve(p, 7070), serve(p, 8080), serve(p, 9090)])
        .collect();

    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, false, "Admin Deny before the NetworkPolicy"),
            tcp6(
                &a,
                &b,
                8080,
                false,
                "Admin Deny before the NetworkPolicy, IPv6",
            ),
            tcp(&a, &b, 9090, true, "the NetworkPolicy allows"),
            tcp(
                &a,
                &b,
                7070,
                false,
                "isolated: default deny before the Baseline",
            ),
            tcp(&a, &open, 8080, false, "Admin Deny"),
            tcp(&a, &open, 7070, true, "not isolated: Baseline Accept"),
            tcp(&a, &open, 9090, false, "not isolated: Baseline Deny"),
        ],
    );
    let served: Vec<usize> = servers.iter().map(ServerHandle::served).collect();
    assert_eq!(
        served,
        [0, 0, 1, 1, 0, 0],
        "b:7070, b:8080, b:9090, open:7070, open:8080, open:9090"
    );

    let f = find_flows(
        &c,
        &[
            new_flow(&a, &b, 8080, "INGRESS", "DROPPED"),
            new_flow(&a, &b, 9090, "INGRESS", "FORWARDED"),
            new_flow(&a, &b, 7070, "INGRESS", "DROPPED"),
            new_flow(&a, &open, 7070, "INGRESS", "FORWARDED"),
            new_flow(&a, &open, 9090, "INGRESS", "DROPPED"),
        ],
    );
    assert_denied_by(&f[0], "ingress", "ClusterNetworkPolicy admin-no-8080");
    assert_allowed_by(&f[1], "ingress", "NetworkPolicy t7b/b-from-t7a");
    assert_default_deny(&f[2], "ingress", &["NetworkPolicy t7b/b-from-t7a"]);
    assert_allowed_by(&f[3], "ingress", "ClusterNetworkPolicy baseline-closed");
    assert_eq!(
        f[3]["extensions"]["value"]["rule_name"], "monitoring",
        "{}",
        f[3]
    );
    assert_denied_by(&f[4], "ingress", "ClusterNetworkPolicy baseline-closed");
    assert_eq!(
        f[4]["extensions"]["value"]["rule_name"], "closed",
        "{}",
        f[4]
    );
}

// ---- fail closed ----------------------------------------------------------------------------

fn status_warnings(c: &Cluster) -> Vec<String> {
    match c.enforcer.request(&palisade_api::Request::Status).unwrap() {
        palisade_api::Response::Status { warnings, .. } => warnings,
        other => panic!("{other:?}"),
    }
}

/// An invalid edit of an enforcing AdminNetworkPolicy (a priority out of range, a Pass in
/// the baseline) is refused with the field named in the agent's status, and the guardrail
/// that was in place keeps denying in the kernel: the agent keeps the last good policy,
/// never drops to the NetworkPolicy's allow.
#[test]
fn an_invalid_admin_policy_edit_keeps_the_guardrail_in_force() {
    let Some(c) = start(
        "tiers: an invalid edit keeps the last good tiers",
        &[
            ("10-np.yaml", &t1_network_policy()),
            ("20-anp.yaml", T1_ADMIN),
        ],
    ) else {
        return;
    };
    let a = app_pod(&c, "t1a", "a", 11, 10);
    let b = app_pod(&c, "t1b", "b", 11, 20);
    let _s = (serve(&b, 8080), serve(&b, 8081));
    expect_all(
        &c,
        &[tcp(&a, &b, 8080, false, "the admin deny is in force")],
    );

    for (what, bad, field) in [
        (
            "priority out of range",
            T1_ADMIN.replace("priority: 10", "priority: 5000"),
            "spec.priority",
        ),
        (
            "an unknown action",
            T1_ADMIN.replace("action: Deny", "action: Drop"),
            "spec.egress[0].action",
        ),
    ] {
        c.enforcer.write_manifest("20-anp.yaml", &bad).unwrap();
        let t0 = Instant::now();
        let w = loop {
            let w = status_warnings(&c);
            if w.iter()
                .any(|w| w.contains("reload failed") && w.contains(field))
            {
                break w;
            }
            assert!(
                t0.elapsed() < CHANGE,
                "{what}: no status warning naming {field} within {CHANGE:?}: {w:?}\nagent log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(w.iter().any(|w| w.contains("20-anp.yaml")), "{what}: {w:?}");
        expect_all(
            &c,
            &[
                tcp(&a, &b, 8080, false, "the last good admin egress Deny"),
                tcp(&a, &b, 8081, false, "the last good admin ingress Deny"),
                tcp6(
                    &a,
                    &b,
                    8081,
                    false,
                    "the last good admin ingress Deny, IPv6",
                ),
            ],
        );
    }

    // A valid file again is applied: removing the guardrail opens what the NetworkPolicy
    // allows.
    c.change_policy("removing the admin policies", |e| {
        e.remove_manifest("20-anp.yaml").unwrap()
    });
    expect_all(&c, &[tcp(&a, &b, 8080, true, "only the NetworkPolicy now")]);
}
