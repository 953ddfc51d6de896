//! Interop: the verdict log's L7 records read by the real `hubble` CLI (v1.19.4,
//! `../shared/realclients/hubble.xz`). Requests are judged exactly as the proxy judges them —
//! the engine's L7 set for the flow, compiled, deciding normalized requests — and each outcome
//! (forwarded, denied by a rule, denied by default, refused) becomes a record. Every line must
//! parse without a warning, and hubble's L7 filters (`--type l7`, `--http-status`,
//! `--http-method`, `--http-path`, `--verdict`, `--from-pod`) must select exactly the records
//! whose fields mean that. Needs the hubble binary only (no root); under `CI=true` its absence
//! fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use palisade_enforcer::events::{
    EngineResolver, L7AuditRefusal, L7Event, L7Side, WallTime, render_l7_line,
};
use palisade_l7proxy::proxy::{Outcome, RequestRecord};
use palisade_l7proxy::{NormalizeOptions, RequestHead, normalize};
use policy_compiler::eval::{Flow, FlowPeer, maps};
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::model::Direction;
use policy_compiler::{Engine, EngineConfig, Protocol};
use serde_json::Value;

mod common;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: production}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: production, labels: {app: frontend}}
spec: {containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: production, labels: {app: backend}}
spec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-frontend-policy, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /api/v1/data}
"#;

#[test]
fn hubble_reads_l7_records_and_its_l7_filters_select_them() {
    let hubble = match common::hubble::binary() {
        Ok(h) => h,
        Err(why) => {
            palisade_testkit::privileged::skip_or_fail("hubble L7 interop", &why);
            return;
        }
    };
    let loaded = load_str("l7.yaml", MANIFESTS, &LoadOptions::default()).unwrap();
    let (engine, _) = Engine::compile(&loaded.cluster, EngineConfig::default()).unwrap();
    let flow = Flow {
        src: FlowPeer::Endpoint("production/frontend".into()),
        dst: FlowPeer::Endpoint("production/backend".into()),
        protocol: Protocol::TCP,
        port: 8080,
    };
    let (_, ingress) = maps::l7_sets(&engine, &flow);
    let compiled = engine.compile_l7(&ingress.expect("the backend's ingress redirects port 8080"));
    let client: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let server: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    let event = |method: &str, target: &str, code: u16| {
        let head = RequestHead {
            method,
            target: target.as_bytes(),
            headers: &[("Host", b"backend:8080")],
        };
        let (outcome, origin, path) = match normalize(&head, NormalizeOptions::default()) {
            Ok(req) => {
                let (d, origin) = compiled.decide(&req);
                let outcome = if d.allowed() {
                    let palisade_l7proxy::Decision::Allow { rule } = d else {
                        unreachable!()
                    };
                    Outcome::Forwarded { rule, status: code }
                } else {
                    Outcome::Denied {
                        decision: d,
                        status: d.status().unwrap(),
                    }
                };
                (outcome, origin, Some(req.target.path))
            }
            Err(e) => (
                Outcome::Refused {
                    status: e.status(),
                    reason: e.to_string(),
                },
                None,
                None,
            ),
        };
        L7Event {
            client,
            server,
            client_identity: engine.endpoint_identity("production/frontend").unwrap(),
            server_identity: engine.endpoint_identity("production/backend").unwrap(),
            sides: vec![L7Side {
                direction: Direction::Ingress,
                origin,
                audit: None,
            }],
            revision: 3,
            record: RequestRecord {
                method: method.into(),
                target: target.into(),
                path,
                host: Some("backend:8080".into()),
                version: "HTTP/1.1",
                outcome,
                latency: Duration::from_micros(180),
                upstream_error: None,
            },
        }
    };
    // A forwarded request an audit-mode policy's HTTP rules would have refused: AUDIT.
    let mut audited = event("GET", "/api/v1/data", 200);
    audited.sides[0].audit = Some(L7AuditRefusal {
        decision: palisade_l7proxy::Decision::NoMatch,
        origin: audited.sides[0].origin,
    });
    let events = [
        ("get-data", event("GET", "/api/v1/data", 200)),
        ("post-data", event("POST", "/api/v1/data", 0)),
        ("get-admin", event("GET", "/admin", 0)),
        ("encoded-slash", event("GET", "/api%2Fv1/data", 0)),
        ("audited", audited),
    ];
    let resolver = EngineResolver::new(&engine);
    let dir = std::env::temp_dir().join(format!("palisade-hubble-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("verdicts.log");
    let lines: Vec<String> = events
        .iter()
        .map(|(uuid, ev)| {
            render_l7_line(
                ev,
                &resolver,
                "node-a",
                WallTime(1_700_000_000_000_000_000),
                uuid,
            )
        })
        .collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let flows: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["flow"].clone())
        .collect();

    // The allowed request is forwarded and attributed to the policy; the others are dropped.
    assert_eq!(flows[0]["verdict"], "FORWARDED");
    assert_eq!(flows[0]["l7"]["type"], "RESPONSE");
    assert_eq!(flows[0]["l7"]["http"]["code"], 200);
    assert_eq!(
        flows[0]["ingress_allowed_by"][0]["name"], "l7-frontend-policy",
        "{}",
        lines[0]
    );
    assert_eq!(flows[1]["verdict"], "DROPPED");
    assert_eq!(flows[1]["l7"]["http"]["code"], 403);
    assert_eq!(flows[3]["l7"]["http"]["code"], 400);
    assert!(
        flows[3]["extensions"]["value"]["refused"].is_string(),
        "{}",
        lines[3]
    );
    assert_eq!(flows[4]["verdict"], "AUDIT", "{}", lines[4]);
    assert_eq!(
        flows[4]["ingress_denied_by"][0]["name"],
        "l7-frontend-policy"
    );

    let all: BTreeSet<String> = events.iter().map(|(u, _)| u.to_string()).collect();
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let (every, lost, stderr) = common::hubble::observe(&hubble, &log, &[]);
    assert_eq!(lost, 0);
    assert_eq!(stderr, "", "hubble warned");
    assert_eq!(every, all, "hubble dropped lines");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--type", "l7"],
            &[
                "get-data",
                "post-data",
                "get-admin",
                "encoded-slash",
                "audited",
            ],
        ),
        (&["--http-status", "403"], &["post-data", "get-admin"]),
        (&["--http-status", "200"], &["get-data", "audited"]),
        (&["--verdict", "AUDIT"], &["audited"]),
        (&["--http-method", "POST"], &["post-data"]),
        (&["--http-path", "/admin"], &["get-admin"]),
        (
            &["--verdict", "DROPPED"],
            &["post-data", "get-admin", "encoded-slash"],
        ),
        (&["--verdict", "FORWARDED"], &["get-data"]),
        // Requests go from the frontend; the forwarded request's record is its response.
        (
            &["--from-pod", "production/frontend"],
            &["post-data", "get-admin", "encoded-slash"],
        ),
        (
            &["--to-pod", "production/frontend"],
            &["get-data", "audited"],
        ),
        (
            &["--traffic-direction", "ingress"],
            &[
                "get-data",
                "post-data",
                "get-admin",
                "encoded-slash",
                "audited",
            ],
        ),
    ];
    for (args, want) in cases {
        let (got, _, stderr) = common::hubble::observe(&hubble, &log, args);
        assert_eq!(stderr, "", "hubble {args:?} warned");
        assert_eq!(
            got,
            set(want),
            "hubble observe {args:?}\n{}",
            lines.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
