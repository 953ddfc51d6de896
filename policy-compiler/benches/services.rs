//! Service maps benchmark (not a test): the control-plane cost of a service change, pure (the
//! policy core's part: the service-map target and its plan; the kernel writes of the plan
//! are counted, not timed). A synthetic cluster of 10,000 ClusterIP services in 1,000
//! namespaces, 10 backends each (100,000 pods). Measured: the first build of the target
//! (every Maglev table) and its plan from empty maps; then one backend added to one service
//! and one service created, each as the agent does it (target with the previous target's
//! tables, plan from the maps' state), p50 and p99 over the changes, and each against the
//! full rebuild measured in the same run.
//!
//!     cargo bench -p policy-compiler --bench services
//!     PALISADE_BENCH_SCALE=0.1 cargo bench -p policy-compiler --bench services   # smaller
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark: a failed step aborts the run"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use policy_compiler::model::{
    Endpoint, NamedPort, Service, ServicePortSpec, ServiceTarget, ServiceType, WorkloadRef,
};
use policy_compiler::plan::lb::{self, LbState, LbTarget};
use policy_compiler::{Cluster, Protocol};

const BACKENDS: usize = 10;

fn pod(ns: &str, svc: usize, i: usize, n: u32) -> Endpoint {
    let name = format!("web{svc}-{i}");
    Endpoint {
        key: Endpoint::pod_key(ns, &name),
        namespace: ns.into(),
        name,
        workload: WorkloadRef {
            kind: "ReplicaSet".into(),
            name: format!("web{svc}-5d8f9"),
        },
        labels: [("app".to_string(), format!("web{svc}"))].into(),
        ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))],
        ports: vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::TCP,
        }],
        host_network: false,
    }
}

fn service(ns: &str, svc: usize, vip: u32) -> Service {
    Service {
        namespace: ns.into(),
        name: format!("web{svc}"),
        selector: Some([("app".to_string(), format!("web{svc}"))].into()),
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + vip))],
        ports: vec![ServicePortSpec {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::TCP,
            target: ServiceTarget::Named("http".into()),
            node_port: None,
        }],
        service_type: ServiceType::ClusterIP,
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity_s: None,
        internal_traffic_local: false,
        external_traffic_local: false,
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale: f64 = std::env::var("PALISADE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.01 } else { 1.0 });
    let services = ((10_000.0 * scale) as usize).max(20);
    let namespaces = (services / 10).max(2);
    let changes = if quick { 5 } else { 100 };

    let mut cluster = Cluster::default();
    let mut n = 0u32;
    for s in 0..services {
        let ns = format!("ns{}", s % namespaces);
        for i in 0..BACKENDS {
            n += 1;
            let p = pod(&ns, s, i, n);
            cluster.endpoints.insert(p.key.clone(), p);
        }
        let svc = service(&ns, s, s as u32 + 1);
        cluster
            .services
            .insert((svc.namespace.clone(), svc.name.clone()), svc);
    }
    println!(
        "{services} services, {} backends, {namespaces} namespaces",
        cluster.endpoints.len()
    );

    // Full: every table built, planned from empty maps.
    let t = Instant::now();
    let target = LbTarget::from_cluster(&cluster, None);
    let p = lb::plan(&LbState::default(), &target);
    let full = t.elapsed();
    let mut state = LbState::default();
    for op in &p.ops {
        state.apply(op);
    }
    println!(
        "full build + plan: {:.1} ms ({} map writes)",
        ms(full),
        p.writes
    );

    // One backend added to one service, as the agent does it.
    let mut prev = target;
    let mut backend_change = Vec::new();
    let mut writes = 0;
    for c in 0..changes {
        let s = (c * 7919) % services;
        let ns = format!("ns{}", s % namespaces);
        n += 1;
        let p = pod(&ns, s, BACKENDS + c, n);
        cluster.endpoints.insert(p.key.clone(), p);
        let t = Instant::now();
        let target = LbTarget::from_cluster(&cluster, Some(&prev));
        let plan = lb::plan(&state, &target);
        backend_change.push(t.elapsed());
        writes = plan.writes + plan.deletes;
        for op in &plan.ops {
            state.apply(op);
        }
        prev = target;
    }
    // One service created.
    let mut service_change = Vec::new();
    for c in 0..changes {
        let s = services + c;
        let ns = format!("ns{}", s % namespaces);
        let svc = service(&ns, (c * 7919) % services, (services + c) as u32 + 1);
        let svc = Service {
            name: format!("extra{c}"),
            ..svc
        };
        cluster
            .services
            .insert((svc.namespace.clone(), svc.name.clone()), svc);
        let t = Instant::now();
        let target = LbTarget::from_cluster(&cluster, Some(&prev));
        let plan = lb::plan(&state, &target);
        service_change.push(t.elapsed());
        for op in &plan.ops {
            state.apply(op);
        }
        prev = target;
    }
    for (what, mut v) in [
        ("one backend added", backend_change),
        ("one service created", service_change),
    ] {
        let (p50, p99) = (percentile(&mut v, 0.5), percentile(&mut v, 0.99));
        println!(
            "{what:<22} p50 {:>8.2} ms  p99 {:>8.2} ms  (full / p50 = {:.0}x)",
            ms(p50),
            ms(p99),
            full.as_secs_f64() / p50.as_secs_f64()
        );
    }
    println!("map writes of the last backend change: {writes}");
}
