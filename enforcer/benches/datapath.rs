//! Datapath benchmark (not a test): pod → node → pod over the local node topology, four
//! configurations measured side by side in the same run, interleaved in rounds:
//!
//! * `base`     – no program attached, no iptables rules: the path itself;
//! * `palisade` – the tc datapath on both pods' host veths, maps filled through [`Datapath`]
//!   from a compiled synthetic cluster: 100,000 ipcache /32s (the two pods plus 99,998 other
//!   pods in 10,000 identities), 10,003 policy entries in the server's slot (ingress) and
//!   10,003 in the client's slot (egress), both endpoints READY;
//! * `iptables` – the same policy the way an iptables CNI writes it, in the node namespace's
//!   FORWARD chain: conntrack ESTABLISHED,RELATED accept first, one `hash:ip` ipset per peer
//!   selector (100,000 addresses in all), per-pod chains ending in DROP ([`iptables_rules`]);
//! * `floor`    – the floor of any eBPF datapath: `floor_lookup` of `ebpf/tests/test_progs.c`
//!   attached like `palisade` (TCX, first, both hooks of both host veths), one hash lookup
//!   keyed by the interface and TCX_NEXT ([`attach_floor`]). `palisade / floor` is what
//!   Palisade costs above a program that does next to nothing;
//! * `kube-proxy` – no policy; kube-proxy's iptables-mode `nat` rules for the cluster's
//!   10,001 ClusterIP services (`common::kube_proxy`, 320,000 rules), the way a kube-proxy
//!   node holds them.
//!
//! The cluster also has 10,000 ClusterIP services of 10 filler pods each and the server's
//! service (SERVICE_VIP, the three benchmark ports): Palisade's service maps hold all of
//! them. Two more columns send the same traffic to the server's ClusterIP instead of its pod
//! address: `palisade → ClusterIP` (translated by the tc datapath, on the palisade node) and
//! `kube-proxy → ClusterIP` (translated by the rules). `palisade → ClusterIP / palisade` is the
//! price of a service hop in Palisade (target ≥ 0.95).
//!
//! Metrics: iperf3 single-stream throughput, 1-byte TCP request/response latency over one
//! connection (mean and p99), and new connections per second (connect, 1-byte request and
//! response, server closes). Each configuration has its own node namespace for the whole run
//! (so nothing of one, e.g. netfilter hooks or conntrack, touches another); every metric is
//! taken for the four back to back, in an order rotated each round. Client, server and
//! iperf3 are pinned to CPU 0, as in /work/shared/reference/baselines.md. Ratios are to
//! `base` of the same round, median over rounds, higher is better (latency: base / config).
//!
//! Then, outside the comparison, what the programs cost per invocation: BPF run-time stats
//! (BPF_ENABLE_STATS, off again when its fd closes) around more request/response runs
//! (established flows) and connect-rate runs (new flows) of `palisade` and `floor`.
//!
//! Then the policy-change cost: 1,000 one-rule changes of the server's policy through the
//! policy core (`Engine::apply`) and into the loaded maps (`sync::Synced::apply`, a slot flip).
//!
//!     cargo bench -p palisade-enforcer --bench datapath            # needs root
//!     PALISADE_DP_BENCH_ROUNDS=5 cargo bench -p palisade-enforcer --bench datapath

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark: a failed step aborts the run, and RAII guards clean up"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::HashMap as BpfHashMap;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use common::PrivateBpffs;
use common::kube_proxy;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use palisade_enforcer::datapath::Datapath;
use palisade_enforcer::maps::AyaMaps;
use palisade_enforcer::sync::{self, LocalEndpoints, Synced};
use palisade_testkit::node::{self, Node, Pod};
use policy_compiler::k8s::Labels;
use policy_compiler::labels::{Operator, Requirement, Selector};
use policy_compiler::model::{
    Endpoint, Namespace, NamespaceScope, Peer, Peers, Policy, PortMatch, PortSpec, Rule,
    WorkloadRef,
};
use policy_compiler::model::{Service, ServicePortSpec, ServiceTarget, ServiceType};
use policy_compiler::plan::Target;
use policy_compiler::plan::lb::LbTarget;
use policy_compiler::{Change, Cluster, Engine, EngineConfig, Protocol};

/// Test and bench-only programs (enforcer/build.rs): `floor_lookup` and its map.
static TEST_PROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_progs.o"));

const NS: &str = "bench";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
/// Other pods: 10.200.0.0 upwards (10.200.0.0–10.201.134.157).
const FILLER_BASE: u32 = 0x0ac8_0000;
const FILLER_PODS: u32 = 99_998;
const IDENTITIES: u32 = 10_000;
/// Peer selectors: `group=gK`, K < GROUPS; group K is allowed on TCP `GROUP_PORT_BASE + K`.
const GROUPS: u32 = 10;
const GROUP_PORT_BASE: u16 = 9000;

const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 7000;
const CRR_PORT: u16 = 7001;
/// The server port behind the ClusterIP's CRR_PORT. The connection-rate columns reuse client
/// ports quickly; through the ClusterIP they must not land on tuples the direct column left
/// in the server's TIME_WAIT (the client's TCP timestamps are offset per destination
/// address, so the server's PAWS check would refuse some of them, as it would behind any
/// DNAT without SNAT).
const CRR_VIP_PORT: u16 = 7011;
/// Not allowed by either policy: the sanity probe that enforcement is on.
const DENIED_PORT: u16 = 7999;
/// Added to and removed from the client rule in the policy-change measurement.
const TOGGLE_PORT: u16 = 7100;
/// The server's ClusterIP; filler services take 10.96.0.2 upwards.
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const FILLER_SERVICES: u32 = 10_000;

const IPERF_SECS_FULL: u32 = 5;
const RR_N_FULL: usize = 20_000;
const RR_WARMUP: usize = 2_000;
const CRR_SECS_FULL: u64 = 3;
const CHANGES_FULL: usize = 1_000;
/// Runs of each flow kind with BPF stats on, per program configuration.
const COST_REPS_FULL: usize = 3;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
/// Then it is a smoke run (one round, short phases) that checks the benchmark still works
/// end to end; its numbers are not results.
static QUICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quick() -> bool {
    QUICK.load(std::sync::atomic::Ordering::Relaxed)
}
#[allow(non_snake_case)]
fn IPERF_SECS() -> u32 {
    if quick() { 1 } else { IPERF_SECS_FULL }
}
#[allow(non_snake_case)]
fn RR_N() -> usize {
    if quick() { 2_000 } else { RR_N_FULL }
}
#[allow(non_snake_case)]
fn CRR_SECS() -> u64 {
    if quick() { 1 } else { CRR_SECS_FULL }
}
#[allow(non_snake_case)]
fn CHANGES() -> usize {
    if quick() { 50 } else { CHANGES_FULL }
}
#[allow(non_snake_case)]
fn COST_REPS() -> usize {
    if quick() { 1 } else { COST_REPS_FULL }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Base,
    Palisade,
    Iptables,
    Floor,
    KubeProxy,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Base,
        Config::Palisade,
        Config::Iptables,
        Config::Floor,
        Config::KubeProxy,
    ];
    fn name(self) -> &'static str {
        match self {
            Config::Base => "base",
            Config::Palisade => "palisade",
            Config::Iptables => "iptables",
            Config::Floor => "floor",
            Config::KubeProxy => "kube-proxy",
        }
    }

    /// Whether the configuration enforces the policy (the denied port is dropped).
    fn enforces(self) -> bool {
        matches!(self, Config::Palisade | Config::Iptables)
    }

    /// Whether the configuration translates the server's ClusterIP.
    fn translates(self) -> bool {
        matches!(self, Config::Palisade | Config::KubeProxy)
    }

    /// Whether the configuration has TCX programs on the host veths.
    fn has_programs(self) -> bool {
        matches!(self, Config::Palisade | Config::Floor)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    gbps: f64,
    rr_mean_us: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
    crr_per_s: f64,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(key: &str, value: &str) -> Selector {
    Selector {
        requirements: vec![Requirement {
            key: key.into(),
            op: Operator::In,
            values: vec![value.to_string()],
        }],
    }
}

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::TCP,
        port: PortMatch::Range(port, port),
        http: None,
    }
}

fn own(selector: Selector) -> Peers {
    Peers::List(vec![Peer::Endpoints {
        namespaces: NamespaceScope::Own(NS.into()),
        pods: selector,
    }])
}

fn endpoint(name: &str, lbl: Labels, ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        key: Endpoint::pod_key(NS, name),
        namespace: NS.into(),
        name: name.into(),
        workload: WorkloadRef {
            kind: "ReplicaSet".into(),
            name: name.into(),
        },
        labels: lbl,
        ips: vec![IpAddr::V4(ip)],
        ports: Vec::new(),
        host_network: false,
    }
}

fn filler_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(FILLER_BASE + i)
}

/// Identity (0..IDENTITIES) and group of filler pod `i`.
fn filler_identity(i: u32) -> (u32, u32) {
    let id = i % IDENTITIES;
    (id, id % GROUPS)
}

/// The benchmark ports of the client rule.
fn bench_ports(extra: bool) -> Vec<PortSpec> {
    let mut v = vec![
        tcp(IPERF_PORT),
        tcp(RR_PORT),
        tcp(CRR_PORT),
        tcp(CRR_VIP_PORT),
    ];
    if extra {
        v.push(tcp(TOGGLE_PORT));
    }
    v
}

/// Server ingress: each group on its port (10,000 identities), then the client on the
/// benchmark ports. `extra` adds TOGGLE_PORT to the client rule.
fn server_policy(extra: bool) -> Policy {
    let mut rules: Vec<Rule> = (0..GROUPS)
        .map(|g| Rule {
            peers: own(sel("group", &format!("g{g}"))),
            ports: vec![tcp(GROUP_PORT_BASE + g as u16)],
            ..Rule::default()
        })
        .collect();
    rules.push(Rule {
        peers: own(sel("app", "client")),
        ports: bench_ports(extra),
        ..Rule::default()
    });
    Policy {
        namespace: NS.into(),
        name: "server-ingress".into(),
        pod_selector: sel("app", "server"),
        ingress: Some(rules),
        egress: None,
        origin: "bench".into(),
        ..Policy::default()
    }
}

/// Client egress: each group on its port, then the server on the benchmark ports.
fn client_policy() -> Policy {
    let mut rules: Vec<Rule> = (0..GROUPS)
        .map(|g| Rule {
            peers: own(sel("group", &format!("g{g}"))),
            ports: vec![tcp(GROUP_PORT_BASE + g as u16)],
            ..Rule::default()
        })
        .collect();
    rules.push(Rule {
        peers: own(sel("app", "server")),
        ports: bench_ports(false),
        ..Rule::default()
    });
    Policy {
        namespace: NS.into(),
        name: "client-egress".into(),
        pod_selector: sel("app", "client"),
        ingress: None,
        egress: Some(rules),
        origin: "bench".into(),
        ..Policy::default()
    }
}

fn cluster() -> Cluster {
    let mut c = Cluster::default();
    c.namespaces
        .insert(NS.into(), Namespace::new(NS, Labels::new(), true));
    for (name, ip) in [("client", CLIENT_IP), ("server", SERVER_IP)] {
        let e = endpoint(name, labels(&[("app", name)]), ip);
        c.endpoints.insert(e.key.clone(), e);
    }
    for i in 0..FILLER_PODS {
        let (id, g) = filler_identity(i);
        let e = endpoint(
            &format!("fill-{i}"),
            labels(&[("app", &format!("fill-{id}")), ("group", &format!("g{g}"))]),
            filler_ip(i),
        );
        c.endpoints.insert(e.key.clone(), e);
    }
    for p in [server_policy(false), client_policy()] {
        c.policies.insert(p.pref(), Arc::new(p));
    }
    for svc in services() {
        c.services
            .insert((svc.namespace.clone(), svc.name.clone()), svc);
    }
    c
}

/// The server's service (SERVICE_VIP, the benchmark ports) and FILLER_SERVICES services of
/// one filler identity's pods each (about 10 backends, port 80 → 8080).
fn services() -> Vec<Service> {
    let svc = |name: String, app: String, vip: Ipv4Addr, ports: &[(u16, u16)]| Service {
        namespace: NS.into(),
        name,
        selector: Some(labels(&[("app", &app)])),
        cluster_ips: vec![IpAddr::V4(vip)],
        ports: ports
            .iter()
            .map(|(port, target)| ServicePortSpec {
                name: Some(format!("p{port}")),
                port: *port,
                protocol: Protocol::TCP,
                target: ServiceTarget::Number(*target),
                node_port: None,
            })
            .collect(),
        service_type: ServiceType::ClusterIP,
        external_ips: vec![],
        load_balancer_ips: vec![],
        session_affinity_s: None,
        internal_traffic_local: false,
        external_traffic_local: false,
    };
    let mut out = vec![svc(
        "server".into(),
        "server".into(),
        SERVICE_VIP,
        &[
            (IPERF_PORT, IPERF_PORT),
            (RR_PORT, RR_PORT),
            (CRR_PORT, CRR_VIP_PORT),
        ],
    )];
    for i in 0..FILLER_SERVICES {
        out.push(svc(
            format!("fill-{i}"),
            format!("fill-{i}"),
            Ipv4Addr::from(u32::from(SERVICE_VIP) + 1 + i),
            &[(80, 8080)],
        ));
    }
    out
}

/// The same services as kube-proxy's rules: backends from the filler pods of each.
fn kube_proxy_svcs() -> Vec<kube_proxy::Svc> {
    let mut backends: Vec<Vec<(IpAddr, u16)>> = vec![Vec::new(); FILLER_SERVICES as usize];
    for i in 0..FILLER_PODS {
        let (id, _) = filler_identity(i);
        backends[id as usize].push((IpAddr::V4(filler_ip(i)), 8080));
    }
    let mut out: Vec<kube_proxy::Svc> = [
        (IPERF_PORT, IPERF_PORT),
        (RR_PORT, RR_PORT),
        (CRR_PORT, CRR_VIP_PORT),
    ]
    .iter()
    .map(|(p, target)| kube_proxy::Svc {
        name: format!("{NS}/server"),
        vip: IpAddr::V4(SERVICE_VIP),
        port: *p,
        endpoints: vec![(IpAddr::V4(SERVER_IP), *target)],
    })
    .collect();
    for (i, b) in backends.into_iter().enumerate() {
        out.push(kube_proxy::Svc {
            name: format!("{NS}/fill-{i}"),
            vip: IpAddr::V4(Ipv4Addr::from(u32::from(SERVICE_VIP) + 1 + i as u32)),
            port: 80,
            endpoints: b,
        });
    }
    out
}

fn install_kube_proxy(node: &Node) {
    let path = std::env::temp_dir().join(format!("palisade-dpbench-{}.nat", std::process::id()));
    std::fs::write(&path, kube_proxy::iptables_full(&kube_proxy_svcs())).unwrap();
    run_ok(
        node.netns_name(),
        &["iptables-restore", path.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&path);
}

// ---- configurations -------------------------------------------------------------------

/// The iptables configuration: (ipset restore file, iptables-restore file).
fn iptables_rules(client: &Pod, server: &Pod) -> (String, String) {
    let mut sets = String::new();
    for g in 0..GROUPS {
        writeln!(
            sets,
            "create pal-g{g} hash:ip family inet hashsize 16384 maxelem 65536"
        )
        .unwrap();
    }
    for i in 0..FILLER_PODS {
        let (_, g) = filler_identity(i);
        writeln!(sets, "add pal-g{g} {}", filler_ip(i)).unwrap();
    }
    for (name, ip) in [("client", CLIENT_IP), ("server", SERVER_IP)] {
        writeln!(sets, "create pal-{name} hash:ip family inet").unwrap();
        writeln!(sets, "add pal-{name} {ip}").unwrap();
    }

    let ports = format!("{IPERF_PORT},{RR_PORT},{CRR_PORT},{CRR_VIP_PORT}");
    let mut r = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :PAL-CLIENT-EGRESS - [0:0]\n:PAL-SERVER-INGRESS - [0:0]\n",
    );
    writeln!(
        r,
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    .unwrap();
    writeln!(
        r,
        "-A FORWARD -i {} -j PAL-CLIENT-EGRESS",
        client.host_ifname
    )
    .unwrap();
    writeln!(
        r,
        "-A FORWARD -o {} -j PAL-SERVER-INGRESS",
        server.host_ifname
    )
    .unwrap();
    // Directions no policy isolates (client ingress, server egress) stay open.
    writeln!(r, "-A FORWARD -j ACCEPT").unwrap();
    for g in 0..GROUPS {
        let port = GROUP_PORT_BASE + g as u16;
        writeln!(
            r,
            "-A PAL-CLIENT-EGRESS -p tcp -m set --match-set pal-g{g} dst -m tcp --dport {port} -j RETURN"
        )
        .unwrap();
    }
    writeln!(
        r,
        "-A PAL-CLIENT-EGRESS -p tcp -m set --match-set pal-server dst -m multiport --dports {ports} -j RETURN"
    )
    .unwrap();
    writeln!(r, "-A PAL-CLIENT-EGRESS -j DROP").unwrap();
    for g in 0..GROUPS {
        let port = GROUP_PORT_BASE + g as u16;
        writeln!(
            r,
            "-A PAL-SERVER-INGRESS -p tcp -m set --match-set pal-g{g} src -m tcp --dport {port} -j ACCEPT"
        )
        .unwrap();
    }
    writeln!(
        r,
        "-A PAL-SERVER-INGRESS -p tcp -m set --match-set pal-client src -m multiport --dports {ports} -j ACCEPT"
    )
    .unwrap();
    writeln!(r, "-A PAL-SERVER-INGRESS -j DROP").unwrap();
    r.push_str("COMMIT\n");
    (sets, r)
}

fn run_ok(netns: &str, argv: &[&str]) {
    let out = node::run_command_in_netns(netns, argv, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in {netns}: {} {}",
        out.stdout,
        out.stderr
    );
}

fn install_iptables(node: &Node, client: &Pod, server: &Pod) {
    let (sets, rules) = iptables_rules(client, server);
    let dir = std::env::temp_dir();
    let sets_path = dir.join(format!("palisade-dpbench-{}.ipset", std::process::id()));
    let rules_path = dir.join(format!("palisade-dpbench-{}.rules", std::process::id()));
    std::fs::write(&sets_path, sets).unwrap();
    std::fs::write(&rules_path, rules).unwrap();
    let ns = node.netns_name();
    run_ok(
        ns,
        &["ipset", "restore", "-file", sets_path.to_str().unwrap()],
    );
    run_ok(ns, &["iptables-restore", rules_path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&sets_path);
    let _ = std::fs::remove_file(&rules_path);
}

/// Shared state of the Palisade configuration.
struct Palisade {
    dp: Datapath,
    engine: Engine,
    synced: Synced,
    server_id: u32,
    /// The service frontends (built once: services do not change during the run); lent to
    /// each target and taken back after its plan.
    lb: LbTarget,
}

impl Palisade {
    /// Every identity gets a slot (the maps hold the whole cluster's policy); `local`
    /// endpoints are written by the plan.
    fn target(&mut self, local: Option<&LocalEndpoints>, revision: u32) -> Target {
        let mut t = Target::all_identities(&self.engine, revision);
        if let Some(l) = local {
            t.endpoints = Target::from_engine_with(
                &self.engine,
                l.iter().map(|(k, i)| (k.as_str(), *i)),
                revision,
                LbTarget::default(),
            )
            .endpoints;
        }
        t.lb = std::mem::take(&mut self.lb);
        // The services do not change during the run: once written, no frontend needs a
        // look (as the agent plans a policy change).
        if !self.synced.state().lb.services.is_empty() {
            t.lb_changed = Some(Default::default());
        }
        t
    }

    /// Plans and writes `t`, then takes its service frontends back.
    fn apply(&mut self, mut t: Target) -> sync::ApplyStats {
        let stats = self.synced.apply(&mut AyaMaps(&mut self.dp), &t).unwrap();
        self.lb = std::mem::take(&mut t.lb);
        stats
    }

    /// Endpoints READY, then both programs on both host veths (attach runs in the node
    /// namespace: it resolves the interface in the calling thread's namespace).
    fn enable(&mut self, node: &Node, client: &Pod, server: &Pod) {
        self.dp.ct_flush().unwrap();
        let rev = u32::try_from(self.engine.revision()).unwrap_or(u32::MAX);
        let t = self.target(Some(&Self::local(client, server)), rev);
        self.apply(t);
        let dp = &mut self.dp;
        node.run_in(|| {
            for pod in [client, server] {
                let ifindex = dp.attach(&pod.host_ifname).unwrap();
                assert_eq!(ifindex, pod.host_ifindex);
            }
        })
        .unwrap();
    }

    fn disable(&mut self, client: &Pod, server: &Pod) {
        for pod in [client, server] {
            self.dp.detach(pod.host_ifindex);
        }
        let rev = u32::try_from(self.engine.revision()).unwrap_or(u32::MAX);
        let t = self.target(None, rev);
        self.apply(t);
    }

    fn local(client: &Pod, server: &Pod) -> LocalEndpoints {
        let mut local = LocalEndpoints::default();
        local.insert(Endpoint::pod_key(NS, "client"), client.host_ifindex);
        local.insert(Endpoint::pod_key(NS, "server"), server.host_ifindex);
        local
    }
}

/// The floor configuration: `floor_lookup` loaded from test_progs.o, `floor_ifaces` filled
/// with both host veths, the program attached with TCX (first) to both hooks of both, in
/// the node namespace. The links belong to the returned object: dropping it detaches.
fn attach_floor(node: &Node, client: &Pod, server: &Pod) -> aya::Ebpf {
    let mut bpf = aya::EbpfLoader::new().load(TEST_PROGS).unwrap();
    {
        let mut ifaces: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(bpf.map_mut("floor_ifaces").unwrap()).unwrap();
        for pod in [client, server] {
            ifaces.insert(pod.host_ifindex, 1, 0).unwrap();
        }
    }
    let prog: &mut SchedClassifier = bpf.program_mut("floor_lookup").unwrap().try_into().unwrap();
    prog.load().unwrap();
    node.run_in(|| {
        for pod in [client, server] {
            for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                prog.attach_with_options(
                    &pod.host_ifname,
                    hook,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .unwrap();
            }
        }
    })
    .unwrap();
    bpf
}

// ---- traffic --------------------------------------------------------------------------

fn pin_cpu0() {
    let mut set = CpuSet::new();
    if set.set(0).is_ok() {
        // Best effort: an unpinned run is still a valid (noisier) run.
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

/// A 1-byte echo server in a pod, on its own thread pinned to CPU 0: for each connection,
/// answers every byte with one byte; in `close_after_one` mode it closes after the first
/// answer (the server side of a connect/request/response/close transaction).
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pod: Pod,
    port: u16,
}

impl EchoServer {
    fn start(pod: &Pod, port: u16, close_after_one: bool) -> EchoServer {
        let listener = pod
            .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            pin_cpu0();
            let mut b = [0u8; 1];
            while let Ok((mut s, _)) = listener.accept() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let _ = s.set_nodelay(true);
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() || close_after_one {
                        break;
                    }
                }
            }
        });
        EchoServer {
            stop,
            thread: Some(thread),
            pod: pod.clone(),
            port,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept() from inside the pod (loopback: never crosses the node).
        let port = self.port;
        let _ = self.pod.run_in(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_secs(1),
            )
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One configuration's node, kept for the whole run: its pods and their servers (iperf3,
/// the request/response echo server, the connect-rate server). Fields drop in order:
/// servers before the node.
struct Setup {
    config: Config,
    _iperf: node::ProcessGuard,
    _rr: EchoServer,
    _crr: EchoServer,
    _crr_vip: EchoServer,
    /// The floor program and its links (floor only).
    _floor: Option<aya::Ebpf>,
    client: Pod,
    server: Pod,
    /// Owns the namespaces; dropped last.
    node: Node,
}

impl Setup {
    fn new(config: Config, pal: &mut Palisade) -> Setup {
        let node = Node::create(&node::unique_tag("pdbench")).unwrap();
        let client = node.add_pod(NS, "client", CLIENT_IP, None).unwrap();
        let server = node.add_pod(NS, "server", SERVER_IP, None).unwrap();
        let mut floor = None;
        match config {
            Config::Base => {}
            Config::Palisade => pal.enable(&node, &client, &server),
            Config::Iptables => install_iptables(&node, &client, &server),
            Config::Floor => floor = Some(attach_floor(&node, &client, &server)),
            Config::KubeProxy => install_kube_proxy(&node),
        }
        let port = IPERF_PORT.to_string();
        let iperf = server
            .spawn(&["iperf3", "-s", "-p", &port, "-A", "0"])
            .unwrap();
        let rr = EchoServer::start(&server, RR_PORT, false);
        let crr = EchoServer::start(&server, CRR_PORT, true);
        let crr_vip = EchoServer::start(&server, CRR_VIP_PORT, true);
        let setup = Setup {
            config,
            _iperf: iperf,
            _rr: rr,
            _crr: crr,
            _crr_vip: crr_vip,
            _floor: floor,
            client,
            server,
            node,
        };
        setup.sanity();
        setup
    }

    /// The benchmark ports connect, a port no policy allows connects only without
    /// enforcement, and the configurations with programs have them on both hooks of both
    /// host veths.
    fn sanity(&self) {
        assert_eq!(
            self.program_ids().len(),
            if self.config.has_programs() { 4 } else { 0 },
            "{}: TCX programs on the host veths",
            self.config.name()
        );
        let _probe = self.server.serve_tcp(DENIED_PORT).unwrap();
        let t = Duration::from_millis(500);
        let allowed = self
            .client
            .tcp_connect(self.server.addr_v4(RR_PORT), t)
            .unwrap();
        assert!(
            allowed.is_connected(),
            "{}: {allowed:?}",
            self.config.name()
        );
        let denied = self
            .client
            .tcp_connect(self.server.addr_v4(DENIED_PORT), t)
            .unwrap();
        assert_eq!(
            denied.is_connected(),
            !self.config.enforces(),
            "{}: port {DENIED_PORT}: {denied:?}",
            self.config.name()
        );
        if self.config.translates() {
            let via = self
                .client
                .tcp_connect(self.addr(RR_PORT, true), t)
                .unwrap();
            assert!(
                via.is_connected(),
                "{} via the ClusterIP: {via:?}",
                self.config.name()
            );
        }
    }

    /// Where the client sends: the server's pod address or its ClusterIP.
    fn addr(&self, port: u16, vip: bool) -> SocketAddr {
        if vip {
            SocketAddr::new(IpAddr::V4(SERVICE_VIP), port)
        } else {
            self.server.addr_v4(port)
        }
    }

    /// Ids of the TCX programs on both host veths (one per hook and veth: a program
    /// attached to several shows its id each time).
    fn program_ids(&self) -> Vec<u32> {
        self.node
            .run_in(|| {
                let mut ids: Vec<u32> = Vec::new();
                for pod in [&self.client, &self.server] {
                    for (_, progs) in Datapath::query(&pod.host_ifname).unwrap() {
                        // "name (id N)"
                        ids.extend(progs.iter().filter_map(|p| {
                            p.rsplit_once("(id ")
                                .and_then(|(_, id)| id.trim_end_matches(')').parse::<u32>().ok())
                        }));
                    }
                }
                ids
            })
            .unwrap()
    }

    fn iperf(&self, vip: bool) -> f64 {
        let port = IPERF_PORT.to_string();
        let secs = IPERF_SECS().to_string();
        let ip = self.addr(IPERF_PORT, vip).ip().to_string();
        let argv = [
            "iperf3", "-c", &ip, "-p", &port, "-t", &secs, "-A", "0", "-J",
        ];
        let mut last = String::new();
        for _ in 0..50 {
            let out = self
                .client
                .run(&argv, Duration::from_secs(u64::from(IPERF_SECS()) + 30))
                .unwrap();
            let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            if let Some(bps) = json
                .pointer("/end/sum_received/bits_per_second")
                .and_then(serde_json::Value::as_f64)
            {
                return bps / 1e9;
            }
            // The server may not listen yet.
            last = format!("{} {}", out.stdout, out.stderr);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("iperf3 never succeeded: {last}");
    }

    /// One connection, RR_N 1-byte round trips (after RR_WARMUP): latencies in µs.
    fn request_response(&self, vip: bool) -> Vec<f64> {
        let addr = self.addr(RR_PORT, vip);
        self.client
            .run_in(|| {
                pin_cpu0();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut b = [1u8; 1];
                let mut lat = Vec::with_capacity(RR_N());
                for i in 0..RR_WARMUP + RR_N() {
                    let t = Instant::now();
                    s.write_all(&b).unwrap();
                    s.read_exact(&mut b).unwrap();
                    if i >= RR_WARMUP {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                let _ = s.shutdown(Shutdown::Both);
                lat
            })
            .unwrap()
    }

    /// New connections per second for CRR_SECS: connect, 1-byte request, 1-byte response,
    /// the server closes first (so TIME_WAIT sits on the server, not on the client's ports).
    /// Returns (connections per second, connections).
    fn connect_rate(&self, vip: bool) -> (f64, u64) {
        let addr = self.addr(CRR_PORT, vip);
        self.client
            .run_in(|| {
                pin_cpu0();
                let mut b = [1u8; 1];
                let mut n = 0u64;
                let mut errors = 0u32;
                let t0 = Instant::now();
                let end = t0 + Duration::from_secs(CRR_SECS());
                while Instant::now() < end {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.write_all(&b)?;
                        s.read_exact(&mut b)?;
                        // Wait for the server's FIN.
                        let _ = s.read(&mut b)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => n += 1,
                        Err(e) => {
                            errors += 1;
                            if errors <= 3 || std::env::var_os("PALISADE_DP_DEBUG").is_some() {
                                eprintln!("CRR error {errors} to {addr}: {e}");
                            }
                            assert!(errors < 100, "connect/request/response failing: {e}");
                        }
                    }
                }
                (n as f64 / t0.elapsed().as_secs_f64(), n)
            })
            .unwrap()
    }
}

// ---- policy change -----------------------------------------------------------------------

struct ChangeResult {
    engine_us: Vec<f64>,
    write_us: Vec<f64>,
    total_us: Vec<f64>,
    ops: String,
}

/// CHANGES one-rule changes (TOGGLE_PORT added to / removed from the client rule of the
/// server's 10,004-entry policy), with programs attached and the maps full.
fn policy_changes(pal: &mut Palisade, setup: &Setup) -> ChangeResult {
    let local = Palisade::local(&setup.client, &setup.server);
    let mut res = ChangeResult {
        engine_us: Vec::with_capacity(CHANGES()),
        write_us: Vec::with_capacity(CHANGES()),
        total_us: Vec::with_capacity(CHANGES()),
        ops: String::new(),
    };
    let policies = [
        Arc::new(server_policy(true)),
        Arc::new(server_policy(false)),
    ];
    for i in 0..CHANGES() {
        let change = Change::UpsertPolicy(policies[i % 2].clone());
        let t0 = Instant::now();
        pal.engine.apply(vec![change]).unwrap();
        let t1 = Instant::now();
        let rev = u32::try_from(pal.engine.revision()).unwrap_or(u32::MAX);
        let target = pal.target(Some(&local), rev);
        let stats = pal.apply(target);
        let t2 = Instant::now();
        res.engine_us.push((t1 - t0).as_secs_f64() * 1e6);
        res.write_us.push((t2 - t1).as_secs_f64() * 1e6);
        res.total_us.push((t2 - t0).as_secs_f64() * 1e6);
        if i < 2 {
            write!(
                res.ops,
                "{}change {}: {} policy write(s), {} policy delete(s), {} endpoint write(s)",
                if i == 0 { "" } else { "; " },
                i + 1,
                stats.policy_writes,
                stats.policy_deletes,
                stats.endpoints_written
            )
            .unwrap();
        }
    }
    // An even number of toggles: the starting policy again, without the toggled entry.
    let entries = pal.dp.policy_entries().unwrap();
    assert!(
        !entries
            .iter()
            .any(|(slot, k, _)| *slot == pal.server_id && k.port == TOGGLE_PORT),
        "toggle port still in the server's slot"
    );
    res
}

// ---- program cost ------------------------------------------------------------------------

/// One program's (or one configuration's) cost over the BPF-stats runs of one flow kind.
struct Cost {
    flows: &'static str,
    /// `palisade from_pod`, `palisade to_pod`, `palisade (all programs)`, `floor floor_lookup`.
    program: String,
    ns: Vec<f64>,
    per_tx: Vec<f64>,
    us_per_tx: Vec<f64>,
}

/// (name, run time, run count) of each of `ids` (BPF stats must be on to move).
fn prog_stats(ids: &[u32]) -> Vec<(String, Duration, u64)> {
    let mut out: Vec<(String, Duration, u64)> = Vec::new();
    let mut seen: Vec<u32> = Vec::new();
    for p in aya::programs::loaded_programs().flatten() {
        if ids.contains(&p.id()) && !seen.contains(&p.id()) {
            seen.push(p.id());
            let name = p.name_as_str().unwrap_or("?").to_string();
            out.push((name, p.run_time(), p.run_count()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Per-invocation cost of palisade's programs and of the floor program, with BPF run-time
/// stats on (BPF_ENABLE_STATS; the kernel turns them off again when the fd closes, also if
/// this panics): COST_REPS request/response runs (established flows) and connect-rate runs
/// (new flows) of each, alternating. None if the stats cannot be enabled.
fn program_costs(pal: &Setup, floor: &Setup) -> Option<Vec<Cost>> {
    let stats_fd = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("datapath bench: BPF_ENABLE_STATS: {e}");
            return None;
        }
    };
    let mut costs: Vec<Cost> = Vec::new();
    let mut record = |flows: &'static str, program: String, ns: f64, per_tx: f64| {
        let i = match costs
            .iter()
            .position(|c| c.flows == flows && c.program == program)
        {
            Some(i) => i,
            None => {
                costs.push(Cost {
                    flows,
                    program,
                    ns: Vec::new(),
                    per_tx: Vec::new(),
                    us_per_tx: Vec::new(),
                });
                costs.len() - 1
            }
        };
        let c = &mut costs[i];
        c.ns.push(ns);
        c.per_tx.push(per_tx);
        c.us_per_tx.push(ns * per_tx / 1000.0);
    };
    for _ in 0..COST_REPS() {
        for flows in ["established", "new"] {
            for setup in [pal, floor] {
                let ids = setup.program_ids();
                let before = prog_stats(&ids);
                let transactions = if flows == "established" {
                    (RR_WARMUP + setup.request_response(false).len()) as f64
                } else {
                    setup.connect_rate(false).1 as f64
                };
                let after = prog_stats(&ids);
                assert_eq!(before.len(), after.len(), "programs changed during the run");
                let (mut all_t, mut all_n) = (0.0, 0u64);
                for ((name, t0, n0), (_, t1, n1)) in before.iter().zip(&after) {
                    let (dt, dn) = ((*t1 - *t0).as_nanos() as f64, n1 - n0);
                    all_t += dt;
                    all_n += dn;
                    let label = format!("{} {name}", setup.config.name());
                    record(
                        flows,
                        label,
                        dt / dn.max(1) as f64,
                        dn as f64 / transactions,
                    );
                }
                if after.len() > 1 {
                    let label = format!("{} (all programs)", setup.config.name());
                    record(
                        flows,
                        label,
                        all_t / all_n.max(1) as f64,
                        all_n as f64 / transactions,
                    );
                }
            }
        }
    }
    drop(stats_fd);
    Some(costs)
}

// ---- main --------------------------------------------------------------------------------

type Field = fn(&Metrics) -> f64;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "datapath bench: needs root (network namespaces, bpffs, CAP_BPF, iptables); \
             run `sudo -E cargo bench -p palisade-enforcer --bench datapath`"
        );
        std::process::exit(2);
    }
    for tool in ["iperf3", "ipset", "iptables-restore", "ip"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            eprintln!("datapath bench: `{tool}` not found (./palisade installs the prerequisites)");
            std::process::exit(2);
        }
    }
    QUICK.store(
        !std::env::args().any(|a| a == "--bench"),
        std::sync::atomic::Ordering::Relaxed,
    );
    if quick() {
        println!("datapath bench: smoke run (cargo bench passes --bench for the real one)");
    }
    let rounds: usize = std::env::var("PALISADE_DP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick() { 1 } else { 5 })
        .max(1);
    if let Err(e) = node::sweep_stale("pdbench") {
        eprintln!("datapath bench: sweep: {e}");
    }

    // Policy core: the synthetic cluster.
    let t = Instant::now();
    let (engine, _) = Engine::compile_owned(cluster(), EngineConfig::default()).unwrap();
    let compile_s = t.elapsed().as_secs_f64();
    let client_id = engine
        .endpoint_identity(&Endpoint::pod_key(NS, "client"))
        .unwrap();
    let server_id = engine
        .endpoint_identity(&Endpoint::pod_key(NS, "server"))
        .unwrap();
    let entries = |id: u32| {
        engine
            .policy_for_identity(id)
            .map_or(0, |p| p.entries.len())
    };
    let (server_entries, client_entries) = (entries(server_id), entries(client_id));
    let identities = engine.identities().cluster_count();

    // Datapath in a private bpffs; maps filled by the enforcer's update plan (sync).
    let bpffs = PrivateBpffs::new("dpbench");
    let mut pal = Palisade {
        dp: bpffs.load(),
        engine,
        synced: Synced::default(),
        server_id,
        lb: LbTarget::default(),
    };
    let t = Instant::now();
    pal.lb = LbTarget::from_cluster(pal.engine.cluster(), None);
    let lb_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let target = pal.target(None, 1);
    let stats = pal.apply(target);
    let fill_s = t.elapsed().as_secs_f64();
    let loaded_policy = pal.dp.policy_entries().unwrap().len();
    let loaded_ipcache = pal.dp.ipcache_entries().unwrap().len();
    println!(
        "cluster: {} pods, {identities} identities; compile {compile_s:.2} s",
        FILLER_PODS + 2
    );
    println!(
        "maps: ipcache {loaded_ipcache} entries, policy {loaded_policy} entries \
         (server slot {server_entries}, client slot {client_entries}); \
         initial plan {fill_s:.2} s ({} policy + {} ipcache + {} service writes; \
         service frontends built in {lb_s:.2} s)",
        stats.policy_writes, stats.ipcache_writes, stats.lb_writes
    );

    // One node per configuration, alive for the whole run; every metric is taken for the
    // three configurations back to back, order rotated each round.
    let setups: Vec<Setup> = Config::ALL
        .iter()
        .map(|c| Setup::new(*c, &mut pal))
        .collect();
    println!(
        "sanity: port {DENIED_PORT} open on base and floor, dropped by palisade and iptables; \
         palisade and floor programs on both hooks of both host veths"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before rounds: {}", load.trim());
    std::thread::sleep(Duration::from_secs(1));

    // Columns: (setup, to the ClusterIP), the first four in Config order.
    let columns: [(usize, bool, &str); 6] = [
        (0, false, "base"),
        (1, false, "palisade"),
        (2, false, "iptables"),
        (3, false, "floor"),
        (1, true, "palisade → ClusterIP"),
        (4, true, "kube-proxy → ClusterIP"),
    ];
    let n = columns.len();
    let mut results: Vec<[Metrics; 6]> = Vec::new();
    for r in 0..rounds {
        let mut m = [Metrics::default(); 6];
        let order: Vec<usize> = (0..n).map(|k| (k + r) % n).collect();
        for &i in &order {
            let (c, vip, _) = columns[i];
            m[i].gbps = setups[c].iperf(vip);
        }
        for &i in &order {
            let (c, vip, _) = columns[i];
            let mut lat = setups[c].request_response(vip);
            m[i].rr_mean_us = lat.iter().sum::<f64>() / lat.len() as f64;
            lat.sort_by(f64::total_cmp);
            m[i].rr_p50_us = percentile(&lat, 0.50);
            m[i].rr_p99_us = percentile(&lat, 0.99);
        }
        for &i in &order {
            let (c, vip, _) = columns[i];
            m[i].crr_per_s = setups[c].connect_rate(vip).0;
        }
        for (i, (_, _, name)) in columns.iter().enumerate() {
            println!(
                "round {} {:<22} {:>6.2} Gbit/s  RR mean {:>6.1} µs p50 {:>6.1} p99 {:>6.1}  CRR {:>7.0} conn/s",
                r + 1,
                name,
                m[i].gbps,
                m[i].rr_mean_us,
                m[i].rr_p50_us,
                m[i].rr_p99_us,
                m[i].crr_per_s
            );
        }
        results.push(m);
    }

    let fields: [(&str, Field, bool); 5] = [
        ("throughput Gbit/s", |m| m.gbps, true),
        ("RR latency mean µs", |m| m.rr_mean_us, false),
        ("RR latency p50 µs", |m| m.rr_p50_us, false),
        ("RR latency p99 µs", |m| m.rr_p99_us, false),
        ("new connections/s", |m| m.crr_per_s, true),
    ];
    let (base, palisade, iptables, floor, pal_vip, kube_vip) = (0, 1, 2, 3, 4, 5);
    let mut service_rows = Vec::new();
    println!();
    println!(
        "Medians over {rounds} rounds [min–max]; ratio = config / base of the same round \
         (latency: base / config), so higher is better and 1.00 = no cost. Target ≥ 0.97. \
         palisade / floor: palisade / floor of the same round, the same way."
    );
    println!(
        "| metric | base | palisade | iptables | floor | palisade / base | iptables / base \
         | floor / base | palisade / floor |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut verdicts = Vec::new();
    for (name, f, higher_better) in fields {
        let abs = |c: usize| -> Vec<f64> { results.iter().map(|m| f(&m[c])).collect() };
        // c relative to `to` in each round, higher is better.
        let ratio_to = |c: usize, to: usize| -> Vec<f64> {
            results
                .iter()
                .map(|m| {
                    let (b, x) = (f(&m[to]), f(&m[c]));
                    if higher_better { x / b } else { b / x }
                })
                .collect()
        };
        let fmt = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let prec = if median(v) >= 100.0 { 0 } else { 2 };
            format!("{:.prec$} [{lo:.prec$}–{hi:.prec$}]", median(v))
        };
        let (rp, ri, rf, pf) = (
            ratio_to(palisade, base),
            ratio_to(iptables, base),
            ratio_to(floor, base),
            ratio_to(palisade, floor),
        );
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(&abs(base)),
            fmt(&abs(palisade)),
            fmt(&abs(iptables)),
            fmt(&abs(floor)),
            fmt(&rp),
            fmt(&ri),
            fmt(&rf),
            fmt(&pf)
        );
        verdicts.push((name, median(&rp), fmt(&pf)));
        let (sp, sb, kb) = (
            ratio_to(pal_vip, palisade),
            ratio_to(pal_vip, base),
            ratio_to(kube_vip, base),
        );
        service_rows.push(format!(
            "| {name} | {} | {} | {} | {} | {} |",
            fmt(&abs(pal_vip)),
            fmt(&abs(kube_vip)),
            fmt(&sp),
            fmt(&sb),
            fmt(&kb)
        ));
    }
    println!();
    println!(
        "Services ({} ClusterIP services loaded in both): the same traffic to the server's \
         ClusterIP. Ratios as above; palisade → ClusterIP / palisade is the price of the \
         service hop (target ≥ 0.95).",
        FILLER_SERVICES + 1
    );
    println!(
        "| metric | palisade → ClusterIP | kube-proxy → ClusterIP | \
         palisade → ClusterIP / palisade | palisade → ClusterIP / base | \
         kube-proxy → ClusterIP / base |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &service_rows {
        println!("{r}");
    }

    // Diagnostic, outside the comparison: what the programs cost per invocation, with BPF
    // run-time stats on (two clock reads per run) around more runs of palisade and floor.
    let costs = program_costs(&setups[palisade], &setups[floor]);
    if let Some(costs) = &costs {
        println!();
        println!(
            "Program cost with BPF stats (run_time_ns / run_cnt), {} run(s) of each flow kind \
             per configuration after the rounds; median [min–max] over the runs. \
             A transaction is one 1-byte round trip (established) or one connect, request, \
             response and close (new).",
            COST_REPS()
        );
        println!(
            "| flows | program | ns / invocation | invocations / transaction | \
             µs / transaction |"
        );
        println!("| --- | --- | --- | --- | --- |");
        for c in costs {
            let f = |v: &[f64], prec: usize| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{:.prec$} [{lo:.prec$}–{hi:.prec$}]", median(v))
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                c.flows,
                c.program,
                f(&c.ns, 0),
                f(&c.per_tx, 2),
                f(&c.us_per_tx, 2)
            );
        }
    }

    // Policy change cost, on the palisade node (programs attached, maps full).
    let mut ch = policy_changes(&mut pal, &setups[palisade]);
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(v, 0.50), percentile(v, 0.99), v[v.len() - 1])
    };
    let (e50, e99, emax) = stat(&mut ch.engine_us);
    let (w50, w99, wmax) = stat(&mut ch.write_us);
    let (t50, t99, tmax) = stat(&mut ch.total_us);
    println!();
    println!(
        "Policy change: {} one-rule changes of the server's {server_entries}-entry policy, \
         maps full, programs attached ({})",
        CHANGES(),
        ch.ops
    );
    println!("| step | p50 µs | p99 µs | max µs |");
    println!("| --- | --- | --- | --- |");
    println!("| Engine::apply (policy core) | {e50:.1} | {e99:.1} | {emax:.1} |");
    println!("| sync::Synced::apply (plan → maps written) | {w50:.1} | {w99:.1} | {wmax:.1} |");
    println!("| change → maps written (both) | {t50:.1} | {t99:.1} | {tmax:.1} |");

    println!();
    for (name, r, _) in &verdicts {
        println!(
            "target palisade / base ≥ 0.97, {name}: {r:.2} {}",
            if *r >= 0.97 { "met" } else { "NOT met" }
        );
    }
    for (name, _, pf) in &verdicts {
        println!("palisade / floor, {name}: {pf}");
    }
    if let Some(costs) = &costs {
        for c in costs {
            println!(
                "ns per invocation, {} flows, {}: {:.0}",
                c.flows,
                c.program,
                median(&c.ns)
            );
        }
        for flows in ["established", "new"] {
            let ns = |program: &str| {
                costs
                    .iter()
                    .find(|c| c.flows == flows && c.program == program)
                    .map(|c| median(&c.ns))
            };
            if let (Some(p), Some(f)) = (ns("palisade (all programs)"), ns("floor floor_lookup")) {
                println!(
                    "ns per invocation, {flows} flows, palisade (all programs) / floor: {:.1}×",
                    p / f
                );
            }
        }
    }
    for (what, p50, p99) in [
        ("diff → maps written", w50, w99),
        ("change → maps written", t50, t99),
    ] {
        println!(
            "target policy change ≤ 1 ms, {what}: p50 {p50:.0} µs {}, p99 {p99:.0} µs {}",
            if p50 <= 1000.0 { "met" } else { "NOT met" },
            if p99 <= 1000.0 { "met" } else { "NOT met" }
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());

    for s in &setups {
        if s.config == Config::Palisade {
            pal.disable(&s.client, &s.server);
        }
    }
    drop(setups);
    drop(pal);
    drop(bpffs);
}
