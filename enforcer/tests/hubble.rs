#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! Interop: the real `hubble` CLI (v1.19.4, `../shared/realclients/hubble.xz`) reads a verdict
//! log the real datapath produced through the real `palisade-enforcer run` on a local node:
//! allows (by a rule, not isolated), default-deny drops, an explicit deny, an AdminNetworkPolicy
//! deny (cluster-scoped: its attribution has no namespace), an audit, and the
//! two kinds of loss line. Every line must parse without a warning, and each `hubble observe`
//! filter must return exactly the flows (by uuid) that the filter's meaning selects from our
//! own reading of the file.
//!
//! Interop tier: needs root, network namespaces, BPF and the hubble binary. Under `CI=true`
//! a host that cannot run it fails the test; elsewhere it prints `skipped: ...`.
//! `PALISADE_REALCLIENTS` overrides the directory of the `realclient` script.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_enforcer::events::{LostSource, WallTime, render_lost_line};
use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{Node, Pod, TcpOutcome};
use serde_json::Value;

mod common;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

const POLICIES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: hb}
---
apiVersion: v1
kind: Namespace
metadata: {name: free}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: hb}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: hb}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 8080, protocol: TCP}]
  - ports: [{port: 5353, protocol: UDP}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: no-free, namespace: hb}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: free}}}]
    ports: [{port: 5353, protocol: UDP}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: audit, namespace: free}
spec:
  podSelector: {matchLabels: {app: aud}}
  mode: Audit
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: hb}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: guard}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: hb}}}
  ingress:
  - name: no-free-admin
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: free}}}]
    ports: [{portNumber: {protocol: TCP, port: 9191}}]
"#;

fn v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 30, host)
}

fn uuids(flows: &[Value], pred: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    flows
        .iter()
        .filter(|f| pred(f))
        .map(|f| f["uuid"].as_str().unwrap().to_string())
        .collect()
}

fn has_label(ep: &Value, label: &str) -> bool {
    ep["labels"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x == label))
}

fn port_of(f: &Value, which: &str) -> Option<u64> {
    ["TCP", "UDP", "SCTP"]
        .iter()
        .find_map(|p| f["l4"][p][which].as_u64())
}

fn udp(from: &Pod, to: &Pod, port: u16, answered: bool) {
    let got = from
        .udp_roundtrip(
            to.addr_v4(port),
            b"hello",
            Duration::from_millis(if answered { 3000 } else { 400 }),
        )
        .unwrap();
    assert_eq!(
        got.is_some(),
        answered,
        "udp {} -> {}:{port}",
        from.identity(),
        to.identity()
    );
}

fn tcp(from: &Pod, to: &Pod, port: u16, connects: bool) {
    let got = from
        .tcp_connect(
            to.addr_v4(port),
            Duration::from_millis(if connects { 3000 } else { 400 }),
        )
        .unwrap();
    assert_eq!(
        matches!(got, TcpOutcome::Connected { .. }),
        connects,
        "tcp {} -> {}:{port}: {got:?}",
        from.identity(),
        to.identity()
    );
}

#[test]
fn hubble_reads_every_line_and_its_filters_select_what_the_fields_mean() {
    let Some(node) = Node::for_test("hb", "hubble interop") else {
        return;
    };
    let hubble = match common::hubble::binary() {
        Ok(h) => h,
        Err(why) => {
            palisade_testkit::privileged::skip_or_fail("hubble interop", &why);
            return;
        }
    };
    let src = std::env::temp_dir().join(format!("palisade-hubble-manifests-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("policy.yaml"), POLICIES).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true);
    let _ = std::fs::remove_dir_all(&src);
    let mut enforcer = enforcer.unwrap_or_else(|e| panic!("starting the enforcer: {e}"));

    let pod = |ns: &str, name: &str, host: u8, app: &str| {
        let p = node.add_pod(ns, name, v4(host), None).unwrap();
        enforcer.register(&p, &[("app", app)]).unwrap();
        p
    };
    let srv = pod("hb", "srv", 10, "srv");
    let cl = pod("hb", "cl", 20, "cl");
    let x = pod("free", "x", 30, "x");
    let aud = pod("free", "aud", 40, "aud");
    let _t = srv.serve_tcp(8080).unwrap();
    let _t2 = srv.serve_tcp(9090).unwrap();
    let _t3 = srv.serve_tcp(9191).unwrap();
    let _u = srv.serve_udp(5353).unwrap();
    let _a = aud.serve_tcp(7070).unwrap();

    tcp(&cl, &srv, 8080, true); // allowed by hb/web (L3-L4), egress not isolated
    tcp(&cl, &srv, 9090, false); // default deny (hb/default-deny, hb/web)
    tcp(&x, &srv, 8080, false); // default deny from another namespace
    udp(&cl, &srv, 5353, true); // allowed by hb/web rule #1 (L4-only)
    udp(&x, &srv, 5353, false); // explicit deny: PalisadeNetworkPolicy hb/no-free
    tcp(&cl, &aud, 7070, true); // audit: would be denied by free/audit, forwarded
    tcp(&x, &srv, 9191, false); // admin tier: AdminNetworkPolicy guard (cluster-scoped)

    // Wait for the agent to write every decision.
    let wanted = |flows: &[Value]| {
        let has = |pred: &dyn Fn(&Value) -> bool| flows.iter().any(pred);
        has(&|f| f["verdict"] == "AUDIT")
            && has(&|f| f["drop_reason_desc"] == "POLICY_DENY" && f["event_type"]["type"] == 1)
            && has(&|f| port_of(f, "destination_port") == Some(9090) && f["verdict"] == "DROPPED")
            && has(&|f| {
                f["source"]["pod_name"] == "x"
                    && port_of(f, "destination_port") == Some(8080)
                    && f["event_type"]["type"] == 1
            })
            && has(&|f| port_of(f, "destination_port") == Some(5353) && f["verdict"] == "FORWARDED")
            && has(&|f| {
                f["ingress_denied_by"][0]["kind"] == "AdminNetworkPolicy"
                    && f["ingress_denied_by"][0].get("namespace").is_none()
                    && f["extensions"]["value"]["tier"] == "admin"
            })
    };
    let t0 = Instant::now();
    let raw = loop {
        let raw = std::fs::read_to_string(enforcer.verdict_log()).unwrap_or_default();
        let flows: Vec<Value> = raw
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("flow").cloned())
            .collect();
        if wanted(&flows) || t0.elapsed() > Duration::from_secs(10) {
            break raw;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // The two loss lines the enforcer writes (the ring cannot be overrun on demand here).
    let dir = std::env::temp_dir().join(format!("palisade-hubble-{}", node.tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("verdicts.jsonl");
    let mut text = raw.clone();
    for (src, n) in [(LostSource::RingBuffer, 5), (LostSource::Writer, 2)] {
        text.push_str(&render_lost_line(src, n, "local-node", WallTime::now()));
        text.push('\n');
    }
    std::fs::write(&log, &text).unwrap();

    let all: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let flows: Vec<Value> = all.iter().filter_map(|v| v.get("flow").cloned()).collect();
    let lost_lines = all
        .iter()
        .filter(|v| v.get("lost_events").is_some())
        .count();
    assert!(wanted(&flows), "not every decision was logged:\n{raw}");

    // Every line parses, with no warning.
    let (every, lost, stderr) = common::hubble::observe(&hubble, &log, &[]);
    assert_eq!(stderr, "", "hubble warned");
    assert_eq!(every, uuids(&flows, |_| true), "hubble dropped lines");
    assert_eq!(lost, lost_lines);
    assert_eq!(lost, 2);

    let check = |args: &[&str], pred: &dyn Fn(&Value) -> bool| {
        let (got, _, stderr) = common::hubble::observe(&hubble, &log, args);
        let want = uuids(&flows, pred);
        assert!(
            !want.is_empty(),
            "{args:?}: the log has no such flow:\n{raw}"
        );
        assert_eq!(got, want, "hubble observe {args:?}\nlog:\n{raw}");
        assert_eq!(stderr, "", "{args:?}");
        got
    };
    check(&["--verdict", "DROPPED"], &|f| f["verdict"] == "DROPPED");
    check(&["--verdict", "FORWARDED"], &|f| {
        f["verdict"] == "FORWARDED"
    });
    check(&["--verdict", "AUDIT"], &|f| f["verdict"] == "AUDIT");
    check(&["--type", "drop"], &|f| f["event_type"]["type"] == 1);
    let pv = check(&["--type", "policy-verdict"], &|f| {
        f["event_type"]["type"] == 5
    });
    // Denials are policy verdicts too.
    assert!(
        flows
            .iter()
            .any(|f| f["verdict"] == "DROPPED" && pv.contains(f["uuid"].as_str().unwrap())),
        "no denial among the policy verdicts"
    );
    check(&["--from-pod", "hb/cl"], &|f| {
        f["source"]["namespace"] == "hb" && f["source"]["pod_name"] == "cl"
    });
    check(&["--to-namespace", "free"], &|f| {
        f["destination"]["namespace"] == "free"
    });
    check(&["--port", "9090"], &|f| {
        port_of(f, "source_port") == Some(9090) || port_of(f, "destination_port") == Some(9090)
    });
    check(&["--protocol", "udp"], &|f| f["l4"].get("UDP").is_some());
    // A cluster-scoped policy's attribution (no namespace) reads like any other.
    check(&["--port", "9191", "--verdict", "DROPPED"], &|f| {
        port_of(f, "destination_port") == Some(9191) && f["verdict"] == "DROPPED"
    });
    check(&["-l", "app=aud"], &|f| {
        has_label(&f["source"], "k8s:app=aud") || has_label(&f["destination"], "k8s:app=aud")
    });
    check(&["--drop-reason-desc", "POLICY_DENIED"], &|f| {
        f["drop_reason_desc"] == "POLICY_DENIED"
    });
    check(&["--drop-reason-desc", "POLICY_DENY"], &|f| {
        f["drop_reason_desc"] == "POLICY_DENY"
    });

    // Compact output with policy names: allows and denials name their policies, and the
    // match type is spelled as Cilium's.
    let out = Command::new(&hubble)
        .args(["observe", "--input-file"])
        .arg(&log)
        .args(["--all", "--print-policy-names", "--type", "policy-verdict"])
        .output()
        .unwrap();
    let compact = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.stderr.is_empty(), "{out:?}");
    eprintln!("{compact}");
    for want in [
        "policy-verdict:L3-L4 INGRESS ALLOWED",
        "policy-verdict:none INGRESS DENIED",
        "policy-verdict:L4-Only INGRESS ALLOWED",
        "INGRESS AUDITED",
        "DENIED BY default-deny (NetworkPolicy), web (NetworkPolicy), no-free (PalisadeNetworkPolicy)",
        "INGRESS DENIED BY no-free (PalisadeNetworkPolicy)",
        "ALLOWED BY web (NetworkPolicy)",
    ] {
        assert!(compact.contains(want), "no {want:?} in:\n{compact}");
    }

    // The node key, from status.
    let key = match enforcer.request(&palisade_api::Request::Status).unwrap() {
        palisade_api::Response::Status {
            verdict_log: Some(v),
            ..
        } => v.key.expect("status names the verdict log key"),
        other => panic!("status: {other:?}"),
    };
    // Real ring-buffer losses: with the agent stopped (SIGSTOP) nothing drains the 4 MiB
    // ring, so a flood of new tuples (each a decision at both hooks) overruns it; resumed,
    // the agent reports the datapath's lost-events counter as a loss line.
    let pid = nix::unistd::Pid::from_raw(enforcer.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let flood = x.run_in(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0u32;
        for port in 20000u16..62000 {
            if s.send_to(b"x", (v4(10), port)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(flood.unwrap() > 40_000);
    // The agent drains the ~47k-event backlog and then reports the counter; on a loaded
    // machine that takes longer than on an idle one, so wait until it is there (bounded).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let raw = std::fs::read_to_string(enforcer.verdict_log()).unwrap_or_default();
        if raw.contains("\"PERF_EVENT_RING_BUFFER\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopped, the agent has written its last lines and a closing checkpoint.
    enforcer.stop();
    let full = std::fs::read_to_string(enforcer.verdict_log()).unwrap();
    let full_log = dir.join("full.jsonl");
    std::fs::write(&full_log, &full).unwrap();
    let full_flows = full.lines().filter(|l| l.starts_with("{\"flow\"")).count();
    let real_lost = full
        .lines()
        .filter(|l| l.contains("\"PERF_EVENT_RING_BUFFER\""))
        .count();
    assert!(real_lost >= 1, "no loss line after overrunning the ring");
    let (every, lost, stderr) = common::hubble::observe(&hubble, &full_log, &[]);
    assert_eq!(stderr, "", "hubble warned on the flooded log");
    assert_eq!(every.len(), full_flows);
    assert_eq!(lost, real_lost);

    // The whole log is a verifiable chain signed by the key status reported.
    let rep = palisade_observe::verify::verify(
        std::slice::from_ref(&full_log),
        &palisade_observe::verify::Options {
            key: palisade_observe::chain::unhex::<32>(&key),
            anchor: None,
        },
    )
    .unwrap();
    assert!(rep.ok(), "{:?}", rep.problem);
    assert!(
        rep.checkpoints >= 2 && rep.records as usize > full_flows,
        "{rep:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(enforcer);
}
