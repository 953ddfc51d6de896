//! Audit mode per namespace with real traffic: a namespace labelled
//! `policy.palisade.dev/enforcement: audit` keeps the policies that select its pods, but what
//! they would deny (default deny included) is forwarded and logged as AUDIT; another namespace
//! with the same policy is enforced.
//!
//! Privileged tier (network namespaces, BPF); under `CI=true` it cannot be skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{Node, Pod, TcpOutcome};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: trial, labels: {policy.palisade.dev/enforcement: audit}}
---
apiVersion: v1
kind: Namespace
metadata: {name: live}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: trial}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: live}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

fn connects(from: &Pod, to: &Pod, port: u16, wait_ms: u64) -> bool {
    matches!(
        from.tcp_connect(to.addr_v4(port), Duration::from_millis(wait_ms))
            .unwrap(),
        TcpOutcome::Connected { .. }
    )
}

#[test]
fn an_audit_namespace_forwards_what_its_policies_would_deny_and_logs_it_as_audit() {
    let Some(node) = Node::for_test("au", "audit namespaces") else {
        return;
    };
    let src = std::env::temp_dir().join(format!("palisade-audit-manifests-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ns.yaml"), MANIFESTS).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true);
    let _ = std::fs::remove_dir_all(&src);
    let enforcer = enforcer.unwrap_or_else(|e| panic!("starting the enforcer: {e}"));
    let pod = |ns: &str, name: &str, host: u8| {
        let p = node
            .add_pod(ns, name, Ipv4Addr::new(10, 247, 0, host), None)
            .unwrap();
        enforcer.register(&p, &[("app", name)]).unwrap();
        p
    };
    let client = pod("live", "client", 10);
    let trial = pod("trial", "server", 20);
    let live = pod("live", "server", 30);
    let _a = trial.serve_tcp(8080).unwrap();
    let _b = live.serve_tcp(8080).unwrap();
    assert!(
        connects(&client, &trial, 8080, 3000),
        "the audit namespace forwards"
    );
    assert!(
        !connects(&client, &live, 8080, 400),
        "the other namespace enforces"
    );

    let t0 = Instant::now();
    let (audit, dropped) = loop {
        let flows: Vec<Value> = std::fs::read_to_string(enforcer.verdict_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("flow").cloned())
            .collect();
        let audit = flows
            .iter()
            .find(|f| f["verdict"] == "AUDIT" && f["destination"]["namespace"] == "trial")
            .cloned();
        let dropped = flows
            .iter()
            .find(|f| f["verdict"] == "DROPPED" && f["destination"]["namespace"] == "live")
            .cloned();
        if (audit.is_some() && dropped.is_some()) || t0.elapsed() > Duration::from_secs(10) {
            break (audit, dropped);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let audit = audit.expect("an AUDIT record for the connection into the audit namespace");
    assert_eq!(audit["traffic_direction"], "INGRESS", "{audit}");
    assert_eq!(
        audit["extensions"]["value"]["rule_id"], 0,
        "default deny would have dropped it: {audit}"
    );
    let dropped = dropped.expect("a DROPPED record for the connection into the enforced namespace");
    assert_eq!(dropped["drop_reason_desc"], "POLICY_DENIED", "{dropped}");
    drop(enforcer);
}
