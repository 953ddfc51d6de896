//! Compile benchmark (not a test): a synthetic cluster of 150,000 pods in 5,000 namespaces
//! with 20,000 policies. Measures the full compile, one-pod updates, one-policy changes and
//! peak memory, and prints each against its target and against the full recompile measured
//! in the same run (what an engine without incremental updates would pay per change).
//!
//!     cargo bench -p policy-compiler --bench compile
//!     PALISADE_BENCH_SCALE=0.1 cargo bench -p policy-compiler --bench compile   # smaller
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_compiler::cidr::Cidr;
use policy_compiler::k8s::Labels;
use policy_compiler::labels::{Operator, Requirement, Selector};
use policy_compiler::model::{
    Endpoint, NamedPort, Namespace, NamespaceScope, Peer, Peers, Policy, PortMatch, PortSpec, Rule,
    WorkloadRef,
};
use policy_compiler::{Change, Cluster, Engine, EngineConfig, Protocol};

const APPS: [&str; 3] = ["frontend", "backend", "db"];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector {
        requirements: pairs
            .iter()
            .map(|(k, v)| Requirement {
                key: k.to_string(),
                op: Operator::In,
                values: vec![v.to_string()],
            })
            .collect(),
    }
}

fn pod(ns: &str, app: &str, i: usize, n: u32) -> Endpoint {
    let name = format!("{app}-{i}");
    let ports = match app {
        "db" => vec![NamedPort {
            name: "postgres".into(),
            port: 5432,
            protocol: Protocol::TCP,
        }],
        _ => vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::TCP,
        }],
    };
    Endpoint {
        key: Endpoint::pod_key(ns, &name),
        namespace: ns.into(),
        name,
        workload: WorkloadRef {
            kind: "ReplicaSet".into(),
            name: format!("{app}-5d8f9"),
        },
        labels: labels(&[("app", app), ("pod-template-hash", "5d8f9")]),
        ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))],
        ports,
        host_network: false,
    }
}

fn policies(ns: &str, team: &str) -> Vec<Policy> {
    let p = |name: &str,
             pod_selector: Selector,
             ingress: Option<Vec<Rule>>,
             egress: Option<Vec<Rule>>| Policy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector,
        ingress,
        egress,
        origin: "bench".into(),
        ..Policy::default()
    };
    let team_peer = Peer::Endpoints {
        namespaces: NamespaceScope::Selected(sel(&[("team", team)])),
        pods: Selector::default(),
    };
    let own = |app: &str| Peer::Endpoints {
        namespaces: NamespaceScope::Own(ns.into()),
        pods: sel(&[("app", app)]),
    };
    let tcp = |lo: u16, hi: u16| PortSpec {
        protocol: Protocol::TCP,
        port: PortMatch::Range(lo, hi),
        http: None,
    };
    vec![
        p(
            "default-deny",
            Selector::default(),
            Some(vec![]),
            Some(vec![]),
        ),
        p(
            "frontend-ingress",
            sel(&[("app", "frontend")]),
            Some(vec![Rule {
                peers: Peers::List(vec![
                    team_peer.clone(),
                    Peer::IpBlock {
                        cidr: "0.0.0.0/0"
                            .parse::<Cidr>()
                            .unwrap_or_else(|_| unreachable!()),
                        except: vec![
                            "10.0.0.0/8"
                                .parse::<Cidr>()
                                .unwrap_or_else(|_| unreachable!()),
                        ],
                    },
                ]),
                ports: vec![PortSpec {
                    protocol: Protocol::TCP,
                    port: PortMatch::Named("http".into()),
                    http: None,
                }],
                ..Rule::default()
            }]),
            None,
        ),
        p(
            "backend",
            sel(&[("app", "backend")]),
            Some(vec![Rule {
                peers: Peers::List(vec![own("frontend")]),
                ports: vec![tcp(8080, 8080)],
                ..Rule::default()
            }]),
            Some(vec![Rule {
                peers: Peers::List(vec![own("db")]),
                ports: vec![tcp(5432, 5432)],
                ..Rule::default()
            }]),
        ),
        p(
            "team-egress",
            Selector::default(),
            None,
            Some(vec![
                Rule {
                    peers: Peers::List(vec![team_peer]),
                    ports: vec![tcp(8080, 8080)],
                    ..Rule::default()
                },
                Rule {
                    peers: Peers::Any,
                    ports: vec![
                        PortSpec {
                            protocol: Protocol::UDP,
                            port: PortMatch::Range(53, 53),
                            http: None,
                        },
                        tcp(53, 53),
                    ],
                    ..Rule::default()
                },
            ]),
        ),
    ]
}

fn synthetic(namespaces: usize, pods_per_app: usize) -> Cluster {
    let mut c = Cluster::default();
    let mut n: u32 = 1;
    for i in 0..namespaces {
        let ns = format!("ns-{i:05}");
        let team = format!("team-{}", i / 10);
        c.namespaces.insert(
            ns.clone(),
            Namespace::new(&ns, labels(&[("team", &team)]), true),
        );
        for app in APPS {
            for r in 0..pods_per_app {
                let e = pod(&ns, app, r, n);
                n += 1;
                c.endpoints.insert(e.key.clone(), e);
            }
        }
        for p in policies(&ns, &team) {
            c.policies.insert(p.pref(), Arc::new(p));
        }
    }
    c
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(name: &str, value: Duration, target: Duration, baseline: Duration) {
    println!(
        "{name:<34} {:>10.3} ms   target {:>8.3} ms ({:>5.2}x of target)   {:>9.0}x faster than a full recompile",
        value.as_secs_f64() * 1e3,
        target.as_secs_f64() * 1e3,
        value.as_secs_f64() / target.as_secs_f64(),
        baseline.as_secs_f64() / value.as_secs_f64().max(1e-9),
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: keep that fast.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale: f64 = std::env::var("PALISADE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.01 } else { 1.0 });
    let namespaces = ((5000.0 * scale) as usize).max(10);
    let build = Instant::now();
    let cluster = synthetic(namespaces, 10);
    println!(
        "synthetic cluster built in {:.2} s",
        build.elapsed().as_secs_f64()
    );
    let rss_before = peak_rss_mib();
    let (n_ns, n_eps, n_pol) = (
        cluster.namespaces.len(),
        cluster.endpoints.len(),
        cluster.policies.len(),
    );

    let t = Instant::now();
    let (mut engine, diff) = match Engine::compile_owned(cluster, EngineConfig::default()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("compile failed: {e}");
            std::process::exit(1);
        }
    };
    let full = t.elapsed();
    println!("{n_ns} namespaces, {n_eps} pods, {n_pol} policies");
    let entries: usize = engine.compiled().values().map(|p| p.entries.len()).sum();
    println!(
        "full compile: {:.3} s (target 2 s, {:.2}x of target); {} identities, {} policy maps, {} entries, {} ipcache entries, {} map ops",
        full.as_secs_f64(),
        full.as_secs_f64() / 2.0,
        engine.identities().cluster_count(),
        engine.compiled().len(),
        entries,
        engine.ipcache().len(),
        diff.op_count()
    );
    drop(diff);
    let largest = engine
        .compiled()
        .values()
        .map(|p| p.entries.len())
        .max()
        .unwrap_or(0);
    println!(
        "largest policy: {largest} entries (a fresh slot holds one such policy next to the old one until the old one is deleted)"
    );

    // One pod joining an existing workload (same identity): the common case.
    let mut samples = Vec::new();
    for i in 0..200u32 {
        let mut p = pod(
            &format!("ns-{:05}", i as usize % namespaces),
            "backend",
            1000 + i as usize,
            0x00f0_0000 + i,
        );
        p.labels.insert("pod-template-hash".into(), "77aa1".into());
        let t = Instant::now();
        let d = engine.apply(vec![Change::UpsertEndpoint(p)]);
        samples.push(t.elapsed());
        assert!(d.is_ok_and(|d| d.policy_upserts.is_empty()));
    }
    let pod_add = median(samples);

    // One pod with a label set nobody has yet: a new identity, selectors re-evaluated.
    let mut samples = Vec::new();
    for i in 0..50u32 {
        let mut p = pod(
            &format!("ns-{:05}", i as usize % namespaces),
            "frontend",
            2000 + i as usize,
            0x00f1_0000 + i,
        );
        p.labels.insert("version".into(), format!("canary-{i}"));
        let t = Instant::now();
        let d = engine.apply(vec![Change::UpsertEndpoint(p)]);
        samples.push(t.elapsed());
        assert!(d.is_ok());
    }
    let pod_new_identity = median(samples);

    // One pod removed.
    let mut samples = Vec::new();
    for i in 0..200u32 {
        let key = Endpoint::pod_key(
            &format!("ns-{:05}", i as usize % namespaces),
            &format!("backend-{}", 1000 + i),
        );
        let t = Instant::now();
        let d = engine.apply(vec![Change::DeleteEndpoint(key)]);
        samples.push(t.elapsed());
        assert!(d.is_ok());
    }
    let pod_del = median(samples);

    // One policy changed: the backend policy of one namespace opens another port.
    let mut samples = Vec::new();
    for i in 0..50usize {
        let ns = format!("ns-{:05}", (i * 7) % namespaces);
        let team = format!("team-{}", ((i * 7) % namespaces) / 10);
        let mut p = policies(&ns, &team).remove(2);
        if let Some(rules) = p.ingress.as_mut() {
            rules[0].ports.push(PortSpec {
                protocol: Protocol::TCP,
                port: PortMatch::Range(9000, 9100),
                http: None,
            });
        }
        let t = Instant::now();
        let d = engine.apply(vec![Change::UpsertPolicy(Arc::new(p))]);
        samples.push(t.elapsed());
        assert!(d.is_ok_and(|d| !d.policy_upserts.is_empty()));
    }
    let policy_change = median(samples);

    // A cross-namespace policy changed: its team selector reaches 10 namespaces of peers.
    let mut samples = Vec::new();
    for i in 0..20usize {
        let ns = format!("ns-{:05}", (i * 13) % namespaces);
        let team = format!("team-{}", ((i * 13) % namespaces) / 10);
        let mut p = policies(&ns, &team).remove(1);
        if let Some(rules) = p.ingress.as_mut() {
            rules[0].ports.push(PortSpec {
                protocol: Protocol::TCP,
                port: PortMatch::Range(443, 443),
                http: None,
            });
        }
        let t = Instant::now();
        let d = engine.apply(vec![Change::UpsertPolicy(Arc::new(p))]);
        samples.push(t.elapsed());
        assert!(d.is_ok());
    }
    let policy_change_cross = median(samples);

    println!();
    report(
        "one pod add (existing identity)",
        pod_add,
        Duration::from_millis(1),
        full,
    );
    report(
        "one pod add (new identity)",
        pod_new_identity,
        Duration::from_millis(1),
        full,
    );
    report("one pod delete", pod_del, Duration::from_millis(1), full);
    report(
        "one policy change (namespace)",
        policy_change,
        Duration::from_millis(1),
        full,
    );
    report(
        "one policy change (cross-namespace)",
        policy_change_cross,
        Duration::from_millis(1),
        full,
    );
    let peak = peak_rss_mib();
    println!(
        "\npeak memory (VmHWM): {peak:.0} MiB (target 1024 MiB, {:.2}x of target); model alone {rss_before:.0} MiB",
        peak / 1024.0
    );
}
