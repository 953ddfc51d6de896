//! Service update benchmark (not a test): what one Service or EndpointSlice change costs
//! from the change to the kernel maps, at 10,000 ClusterIP services with 100,000 backends,
//! next to kube-proxy-shaped rule sets of the same services loaded the way kube-proxy
//! loads them, in the same run.
//!
//! The cluster: 10,000 services in 1,000 namespaces, each with an EndpointSlice of 10 ready
//! endpoints (100,000 pods, all in the model, so the ipcache holds them too).
//!
//! Palisade (real maps in a private bpffs, written by the agent's code):
//! * `full`: the whole target (every Maglev table) planned from empty maps and written —
//!   what a first start does, and the reference for the rows below;
//! * `one backend added`: an EndpointSlice gains an endpoint. Timed as the agent runs it:
//!   the undo kept for a refused change, `Engine::apply`, `LbTarget::update` (the touched
//!   namespace only), `Synced::apply_services` (plan of the changed frontend, capacity
//!   check, map writes), the verdict log's frontend names;
//! * `one service created`: a Service and its EndpointSlice in one batch, timed the same way;
//! * `full sync`: the path every other change takes (the whole target rebuilt with the
//!   previous tables reused, planned against the maps and written), and the copy of the
//!   engine kept for a refused policy change: what a service change cost before it had its
//!   own path.
//!
//! kube-proxy-shaped rule sets (in a fresh network namespace each; the process start is
//! included, as kube-proxy pays it):
//! * iptables (legacy and nft backends), kube-proxy's iptables mode: per service a
//!   KUBE-SERVICES match, a KUBE-SVC chain (masquerade mark + one `statistic` jump per
//!   endpoint), and a KUBE-SEP chain per endpoint (masquerade mark + DNAT). `full restore`:
//!   the whole table into an empty one; `partial`: one backend added, as kube-proxy ≥ 1.26
//!   writes it (`--noflush`: KUBE-SERVICES rewritten whole, the service's chain and the new
//!   endpoint's chain);
//! * nftables, kube-proxy's nftables mode: a verdict map from address . protocol . port to
//!   the service chain, `numgen random` over endpoint chains; `full`: `nft -f` of the table;
//!   `partial`: one transaction adding the endpoint chain and rewriting the service chain.
//!
//! ```sh
//! cargo bench -p palisade-enforcer --bench service_updates          # needs root
//! PALISADE_BENCH_SCALE=0.1 cargo bench -p palisade-enforcer --bench service_updates
//! PALISADE_BENCH_RULES=0 cargo bench ...   # Palisade's rows only
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark: a failed step aborts the run, and RAII guards clean up"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kube_proxy::{self, Svc};
use palisade_enforcer::maps::AyaMaps;
use palisade_enforcer::sync::{self, Synced};
use policy_compiler::model::{
    Endpoint, EndpointSlice, NamedPort, Service, ServicePortSpec, ServiceTarget, ServiceType,
    SliceEndpoint, WorkloadRef,
};
use policy_compiler::plan::Target;
use policy_compiler::plan::lb::LbTarget;
use policy_compiler::{Change, Engine, EngineConfig, Protocol};

const BACKENDS: usize = 10;

fn pod_ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn vip(s: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + s as u32 + 1))
}

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
        ips: vec![pod_ip(n)],
        ports: vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::TCP,
        }],
        host_network: false,
    }
}

fn service(ns: &str, name: &str, svc: usize, vip: IpAddr) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        selector: Some([("app".to_string(), format!("web{svc}"))].into()),
        cluster_ips: vec![vip],
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

fn slice(ns: &str, service: &str, addrs: &[IpAddr]) -> EndpointSlice {
    EndpointSlice {
        namespace: ns.into(),
        name: format!("{service}-abcde"),
        service: service.into(),
        ports: vec![(Some("http".into()), 8080, Protocol::TCP)],
        endpoints: addrs
            .iter()
            .map(|a| SliceEndpoint {
                addresses: vec![*a],
                ready: true,
                serving: true,
                terminating: false,
                pod: None,
                node_name: None,
            })
            .collect(),
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One printed row: p50 and p99 (or the single run) and the ratio to the reference.
fn row(what: &str, v: &[Duration], reference: Duration) {
    let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
    println!(
        "{what:<44} p50 {:>10.3} ms  p99 {:>10.3} ms  ({:>3} runs)  reference/p50 = {:.0}x",
        ms(p50),
        ms(p99),
        v.len(),
        reference.as_secs_f64() / p50.as_secs_f64()
    );
}

/// The synthetic cluster, as the sources would deliver it.
struct Synthetic {
    services: usize,
    namespaces: usize,
    /// Each service's backend addresses.
    addrs: Vec<Vec<IpAddr>>,
    next_ip: u32,
}

impl Synthetic {
    fn ns(&self, s: usize) -> String {
        format!("ns{}", s % self.namespaces)
    }

    fn changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for s in 0..self.services {
            let ns = self.ns(s);
            let mut addrs = Vec::new();
            for i in 0..BACKENDS {
                self.next_ip += 1;
                let p = pod(&ns, s, i, self.next_ip);
                addrs.push(p.ips[0]);
                out.push(Change::UpsertEndpoint(p));
            }
            let name = format!("web{s}");
            out.push(Change::UpsertService(service(&ns, &name, s, vip(s))));
            out.push(Change::UpsertEndpointSlice(slice(&ns, &name, &addrs)));
            self.addrs.push(addrs);
        }
        out
    }
}

/// The agent's service path, on its own state.
struct Agent {
    engine: Engine,
    lb: LbTarget,
    synced: Synced,
    names: sync::ServiceNames,
}

impl Agent {
    /// One batch of Service / EndpointSlice changes, as `Daemon::apply_source` runs it.
    /// Returns the map operations and the time of each step: the model (undo and
    /// `Engine::apply`), the service target, the plan with its writes, the log's names.
    fn service_change(
        &mut self,
        maps: &mut AyaMaps<'_>,
        changes: Vec<Change>,
    ) -> (usize, [Duration; 4]) {
        let t = Instant::now();
        let undo = self.engine.undo_for(&changes);
        assert!(undo.is_some(), "a service-only batch");
        let diff = self.engine.apply(changes).unwrap();
        let model = t.elapsed();
        let t = Instant::now();
        let keys = self
            .lb
            .update(self.engine.cluster(), &diff.services_touched);
        let target = t.elapsed();
        let t = Instant::now();
        let old_ids = sync::frontend_ids(&self.synced.state().lb, &keys);
        let stats = self.synced.apply_services(maps, &self.lb, &keys).unwrap();
        let write = t.elapsed();
        let t = Instant::now();
        sync::update_service_frontends(
            &mut self.names,
            &self.lb,
            &self.synced.state().lb,
            &old_ids,
            &keys,
        );
        (stats.ops, [model, target, write, t.elapsed()])
    }
}

fn main() {
    if !common::privileged("service update benchmark") {
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale: f64 = std::env::var("PALISADE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.01 } else { 1.0 });
    let rules = std::env::var("PALISADE_BENCH_RULES").map_or(true, |v| v != "0");
    let services = ((10_000.0 * scale) as usize).max(20);
    let changes = if quick { 5 } else { 100 };
    let mut syn = Synthetic {
        services,
        namespaces: (services / 10).max(2),
        addrs: Vec::new(),
        next_ip: 0,
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{services} services, {} backends, {} namespaces; load {}",
        services * BACKENDS,
        syn.namespaces,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut engine = Engine::new(EngineConfig::default());
    let t = Instant::now();
    engine.apply(syn.changes()).unwrap();
    println!("model of the cluster: {:.0} ms", ms(t.elapsed()));

    let fs = common::PrivateBpffs::new("svcupd");
    let mut dp = fs.load();
    let mut maps = AyaMaps(&mut dp);
    // Full: the first start's sync (ipcache and every service), from empty maps.
    let t = Instant::now();
    let target = Target::from_engine(&engine, std::iter::empty(), 1);
    let mut synced = Synced::default();
    let stats = synced.apply(&mut maps, &target).unwrap();
    let full = t.elapsed();
    println!(
        "full sync from empty maps: {:.0} ms ({} service writes, {} ipcache writes)",
        ms(full),
        stats.lb_writes,
        stats.ipcache_writes
    );
    let names = sync::service_frontends(&target.lb, &synced.state().lb);
    let mut agent = Agent {
        engine,
        lb: target.lb,
        synced,
        names,
    };

    // One backend added to one service: its EndpointSlice gains an endpoint.
    let mut backend = Vec::new();
    let mut steps: [Vec<Duration>; 4] = Default::default();
    let mut ops = 0;
    for c in 0..changes {
        let s = (c * 7919) % services;
        let ns = syn.ns(s);
        syn.next_ip += 1;
        syn.addrs[s].push(pod_ip(syn.next_ip));
        let batch = vec![Change::UpsertEndpointSlice(slice(
            &ns,
            &format!("web{s}"),
            &syn.addrs[s],
        ))];
        let t = Instant::now();
        let (n, parts) = agent.service_change(&mut maps, batch);
        backend.push(t.elapsed());
        ops = n;
        for (i, d) in parts.into_iter().enumerate() {
            steps[i].push(d);
        }
    }
    // One service created: the Service and its EndpointSlice in one batch.
    let mut created = Vec::new();
    let mut created_steps: [Vec<Duration>; 4] = Default::default();
    for c in 0..changes {
        let s = (c * 7919) % services;
        let ns = syn.ns(s);
        let name = format!("extra{c}");
        let batch = vec![
            Change::UpsertService(service(&ns, &name, s, vip(services + c))),
            Change::UpsertEndpointSlice(slice(&ns, &name, &syn.addrs[s])),
        ];
        let t = Instant::now();
        let (_, parts) = agent.service_change(&mut maps, batch);
        created.push(t.elapsed());
        for (i, d) in parts.into_iter().enumerate() {
            created_steps[i].push(d);
        }
    }
    // The full path, for the same kind of change.
    let mut full_sync = Vec::new();
    let mut copies = Vec::new();
    for c in 0..changes.min(5) {
        let s = (c * 104_729) % services;
        let ns = syn.ns(s);
        syn.next_ip += 1;
        syn.addrs[s].push(pod_ip(syn.next_ip));
        let t = Instant::now();
        let copy = agent.engine.clone();
        copies.push(t.elapsed());
        drop(copy);
        agent
            .engine
            .apply(vec![Change::UpsertEndpointSlice(slice(
                &ns,
                &format!("web{s}"),
                &syn.addrs[s],
            ))])
            .unwrap();
        let t = Instant::now();
        let target =
            Target::from_engine_after(&agent.engine, std::iter::empty(), 2, Some(&agent.lb));
        agent.synced.apply(&mut maps, &target).unwrap();
        full_sync.push(t.elapsed());
        agent.lb = target.lb;
    }
    println!();
    println!("Palisade (real maps; reference: the full sync from empty maps)");
    row("one backend added (EndpointSlice)", &backend, full);
    let breakdown = |steps: &[Vec<Duration>; 4]| {
        for (what, v) in [
            "model: undo + Engine::apply",
            "service target: LbTarget::update",
            "plan + capacity + map writes",
            "verdict log's frontend names",
        ]
        .iter()
        .zip(steps)
        {
            row(&format!("  {what}"), v, full);
        }
    };
    breakdown(&steps);
    row("one service created (Service + slice)", &created, full);
    breakdown(&created_steps);
    row("  before: full sync of the same change", &full_sync, full);
    row("  before: + engine copy for a refusal", &copies, full);
    println!("map operations of the last backend change: {ops}");

    if rules {
        println!();
        println!("kube-proxy-shaped rule sets (reference: each one's full load)");
        for (what, kind) in [
            ("iptables-legacy", Rules::Legacy),
            ("iptables-nft", Rules::IptablesNft),
            ("nftables (kube-proxy nftables mode)", Rules::Nft),
        ] {
            kube_proxy_rows(what, kind, &syn, changes.min(5));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rules {
    Legacy,
    IptablesNft,
    Nft,
}

impl Synthetic {
    /// The services as kube-proxy would program them.
    fn svcs(&self) -> Vec<Svc> {
        (0..self.services)
            .map(|s| Svc {
                name: format!("{}/web{s}", self.ns(s)),
                vip: vip(s),
                port: 80,
                endpoints: self.addrs[s].iter().map(|a| (*a, 8080)).collect(),
            })
            .collect()
    }
}

/// Runs `argv` in network namespace `ns`: its wall time (process start included).
fn timed(ns: &str, argv: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn kube_proxy_rows(what: &str, kind: Rules, syn: &Synthetic, partials: usize) {
    let dir = std::env::temp_dir().join(format!("palisade-svc-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let node =
        palisade_testkit::node::Node::create(&palisade_testkit::node::unique_tag("svcrules"))
            .expect("a network namespace for the rules");
    let ns = node.netns_name().to_string();
    let mut svcs = syn.svcs();
    let (restore, full_text) = match kind {
        Rules::Legacy => ("iptables-legacy-restore", kube_proxy::iptables_full(&svcs)),
        Rules::IptablesNft => ("iptables-nft-restore", kube_proxy::iptables_full(&svcs)),
        Rules::Nft => ("nft", kube_proxy::nft_full(&svcs)),
    };
    let full_file = file("full", &full_text);
    let full = match kind {
        Rules::Nft => timed(&ns, &["nft", "-f", &full_file]),
        _ => timed(&ns, &[restore, &full_file]),
    };
    let mut partial = Vec::new();
    let mut next_ip = syn.next_ip + 1_000;
    for c in 0..partials {
        let s = (c * 7919) % syn.services;
        next_ip += 1;
        svcs[s].endpoints.push((pod_ip(next_ip), 8080));
        let d = match kind {
            Rules::Nft => {
                let mut text = String::new();
                kube_proxy::nft_service(s, &svcs[s], &mut text);
                let f = file("partial", &text);
                timed(&ns, &["nft", "-f", &f])
            }
            _ => {
                let f = file("partial", &kube_proxy::iptables_partial(&svcs, s));
                timed(&ns, &[restore, "--noflush", &f])
            }
        };
        partial.push(d);
    }
    let rule_count = full_text
        .lines()
        .filter(|l| l.contains("-A ") || l.contains("add rule"))
        .count();
    println!("{what}: {rule_count} rules");
    row("  full load", &[full], full);
    row("  one backend added (partial)", &partial, full);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
