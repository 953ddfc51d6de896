//! Per-path cost of the datapath programs (not a test): each of `from_pod` and `to_pod` run
//! with BPF_PROG_TEST_RUN (`repeat` runs on one packet; the kernel reports the mean run time)
//! on the packet kinds that matter, next to the floor program (`floor_lookup` of
//! `ebpf/tests/test_progs.c`: one hash lookup, then TCX_NEXT) measured the same way in the
//! same run. The maps hold what the datapath benchmark loads: 100,000 ipcache /32s and
//! 10,000 policy entries in the endpoint's slot, so hash and trie depths are realistic.
//!
//! Paths (the endpoint is the pod 10.0.0.1, the peer 10.0.0.2, TCP 80):
//! * `established`  – an ACK of a flow this hook tracks (conntrack hit on the first lookup);
//! * `reply`        – an ACK answering a flow the other hook of the endpoint tracks;
//! * `new, allowed` – a bare RST the policy admits (the whole new-flow decision; a RST
//!   creates no entry, so every run takes the same path);
//! * `new, denied`  – a SYN the policy denies (decision, drop; the event is reported once
//!   per repeat window, so the runs after the first measure the drop path);
//! * `from_pod new, proxy up` – the `new, allowed` path of from_pod while the L7 proxy is
//!   ready and no endpoint of the node has ingress HTTP rules (step 6b skipped);
//! * `from_pod new, ingress L7` – the same while some endpoint of the node has ingress HTTP
//!   rules: step 6b's route lookup for the destination's endpoint is added (what every new
//!   TCP connection from a pod of such a node pays);
//! * `... via ClusterIP` – the same packets sent to a service frontend (10.96.0.1:80, whose
//!   one backend is the peer) instead of the peer: the translation (frontend lookup, the
//!   flow's backend from `pal_lb_flows`, the rewrite with checksums) and, for the reply, the
//!   reverse rewrite. Next to their direct rows they give the price of a service hop. The
//!   service maps also hold filler frontends (1,000; 100 in the quick run).
//!
//! The time includes what BPF_PROG_TEST_RUN adds around a run (the loop, `bpf_ktime`); the
//! floor carries the same. Ratios to the floor and the nanoseconds above it are printed.
//!
//!     cargo bench -p palisade-enforcer --bench paths          # needs root
//!     PALISADE_PATHS_ROUNDS=7 cargo bench -p palisade-enforcer --bench paths

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark: a failed step aborts the run, and RAII guards clean up"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::IpAddr;
use std::time::Duration;

use aya::maps::HashMap as BpfHashMap;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use palisade_enforcer::datapath::{Datapath, Hook};
use palisade_testkit::packet::{self, L4, TCP_ACK, TCP_RST, TCP_SYN};
use policy_compiler::EntryKey;
use policy_compiler::abi::{self, EndpointInfo, PolicyValue};
use policy_compiler::cidr::Cidr;

static TEST_PROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_progs.o"));

/// test_run binds the skb to `lo`: the endpoint under test is ifindex 1.
const IFINDEX: u32 = 1;
const POD: u32 = 300;
const PEER: u32 = 400;
const FILLER_IPS: u32 = 100_000;
const FILLER_IDENTITIES: u32 = 10_000;
const VIP: &str = "10.96.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(identity: u32, dir: u8, port: u16) -> EntryKey {
    EntryKey {
        identity,
        direction: dir,
        protocol: 6,
        port,
        prefixlen: abi::POLICY_PREFIX_FULL as u8,
    }
}

fn allow(rule: u32) -> PolicyValue {
    PolicyValue {
        rule_id: rule,
        verdict: abi::POLICY_VERDICT_ALLOW,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        ..Default::default()
    }
}

fn load(fs: &common::PrivateBpffs) -> Datapath {
    let mut dp = fs.load();
    for i in 0..FILLER_IPS {
        let a = std::net::Ipv4Addr::from(0x0ac8_0000 + i);
        let c: Cidr = format!("{a}/32").parse().unwrap();
        dp.upsert_ipcache(&c, 1000 + i % FILLER_IDENTITIES).unwrap();
    }
    for (c, id) in [("10.0.0.1/32", POD), ("10.0.0.2/32", PEER)] {
        dp.upsert_ipcache(&c.parse::<Cidr>().unwrap(), id).unwrap();
    }
    let (ing, eg) = (abi::DIRECTION_INGRESS, abi::DIRECTION_EGRESS);
    for i in 0..FILLER_IDENTITIES {
        let dir = if i % 2 == 0 { ing } else { eg };
        dp.upsert_policy(POD, &key(1000 + i, dir, 9000 + (i % 10) as u16), &allow(40))
            .unwrap();
    }
    dp.upsert_policy(POD, &key(PEER, ing, 80), &allow(16))
        .unwrap();
    dp.upsert_policy(POD, &key(PEER, eg, 80), &allow(18))
        .unwrap();
    dp.set_endpoint(
        IFINDEX,
        &EndpointInfo {
            identity: POD,
            policy_slot: POD,
            flags: abi::ENDPOINT_F_READY,
            revision: 1,
            ..Default::default()
        }
        .with_addresses(&[ip("10.0.0.1"), ip("fd00::1")]),
    )
    .unwrap();
    dp
}

/// `frontends` service frontends 10.97.x.y:80 with one backend each, and 10.96.0.1:80 whose
/// one backend is the peer (10.0.0.2:80), written as the agent writes them.
fn services(dp: &mut Datapath, frontends: u32) {
    use policy_compiler::plan::lb;
    use policy_compiler::services::maglev::{DEFAULT_TABLE_SIZE, Table};
    let mut t = lb::LbTarget::default();
    let mut add = |vip: IpAddr, backend: IpAddr| {
        let b = policy_compiler::services::backends::Backend {
            addr: backend,
            port: 80,
            endpoint: None,
            node: None,
        };
        let table = Table::build(&[b.maglev_name()], DEFAULT_TABLE_SIZE).unwrap();
        t.frontends.insert(
            abi::LbKey::new(vip, 80, 6),
            lb::LbFrontend {
                service: "bench/svc".into(),
                backends: vec![abi::LbBackend::new(backend, 80)],
                table: std::sync::Arc::new(table),
                flags: 0,
            },
        );
    };
    add(ip(VIP), ip("10.0.0.2"));
    for i in 0..frontends {
        let vip = std::net::Ipv4Addr::from(0x0a61_0000 + i);
        let be = std::net::Ipv4Addr::from(0x0ac8_0000 + i);
        add(vip.into(), be.into());
    }
    let p = lb::plan(&lb::LbState::default(), &t);
    let mut maps = palisade_enforcer::maps::AyaMaps(dp);
    for op in &p.ops {
        palisade_enforcer::maps::Maps::apply(&mut maps, op).unwrap();
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

/// Mean run time of `prog` on `pkt` over `repeat` runs, and its return value.
fn time(prog: &SchedClassifier, pkt: &[u8], repeat: u32) -> (f64, u32) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..Default::default()
        })
        .unwrap();
    (r.duration.as_nanos() as f64, r.return_value)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Path {
    name: &'static str,
    hook: Hook,
    pkt: Vec<u8>,
    expect: u32,
    /// `pal_proxy` flags during the run (with the L7 proxy ready and an endpoint of the node
    /// having ingress HTTP rules, a new TCP flow from_pod takes step 6b's route lookup).
    proxy_flags: u32,
    ns: Vec<f64>,
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("paths bench: needs root (bpffs, CAP_BPF)");
        std::process::exit(2);
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("PALISADE_PATHS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 7 })
        .max(1);
    let repeat: u32 = if quick { 1_000 } else { 500_000 };

    let fs = common::PrivateBpffs::new("paths");
    let mut dp = load(&fs);
    let filler_frontends = if quick { 100 } else { 1_000 };
    services(&mut dp, filler_frontends);
    let (pod, peer) = ("10.0.0.1", "10.0.0.2");
    let pass = abi::tcx::NEXT;
    let drop = abi::tcx::DROP;
    // Flows: the peer opened 40000 -> pod:80 (tracked by to_pod); the pod opened
    // 41000 -> peer:80 (tracked by from_pod).
    let open_in = packet::build(ip(peer), ip(pod), tcp(40000, 80, TCP_SYN));
    let open_out = packet::build(ip(pod), ip(peer), tcp(41000, 80, TCP_SYN));
    assert_eq!(dp.test_run(Hook::ToPod, &open_in).unwrap(), pass);
    assert_eq!(dp.test_run(Hook::FromPod, &open_out).unwrap(), pass);
    // The pod opened 42000 -> VIP:80, translated to peer:80 (tracked by from_pod).
    let open_svc = packet::build(ip(pod), ip(VIP), tcp(42000, 80, TCP_SYN));
    assert_eq!(dp.test_run(Hook::FromPod, &open_svc).unwrap(), pass);
    let mut paths = vec![
        Path {
            name: "to_pod established",
            hook: Hook::ToPod,
            pkt: packet::build(ip(peer), ip(pod), tcp(40000, 80, TCP_ACK)),
            expect: pass,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "from_pod established",
            hook: Hook::FromPod,
            pkt: packet::build(ip(pod), ip(peer), tcp(41000, 80, TCP_ACK)),
            expect: pass,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "from_pod reply",
            hook: Hook::FromPod,
            pkt: packet::build(ip(pod), ip(peer), tcp(80, 40000, TCP_ACK)),
            expect: pass,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "to_pod reply",
            hook: Hook::ToPod,
            pkt: packet::build(ip(peer), ip(pod), tcp(80, 41000, TCP_ACK)),
            expect: pass,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "to_pod new, allowed",
            hook: Hook::ToPod,
            pkt: packet::build(ip(peer), ip(pod), tcp(40001, 80, TCP_RST)),
            expect: pass,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "to_pod new, denied",
            hook: Hook::ToPod,
            pkt: packet::build(ip(peer), ip(pod), tcp(40002, 81, TCP_SYN)),
            expect: drop,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "from_pod new, allowed",
            hook: Hook::FromPod,
            pkt: packet::build(ip(pod), ip(peer), tcp(41001, 80, TCP_RST)),
            expect: pass,
            proxy_flags: 0,
            ns: vec![],
        },
        Path {
            name: "from_pod new, proxy up",
            hook: Hook::FromPod,
            pkt: packet::build(ip(pod), ip(peer), tcp(41001, 80, TCP_RST)),
            expect: pass,
            proxy_flags: abi::PROXY_F_READY,
            ns: vec![],
        },
        Path {
            name: "from_pod new, ingress L7",
            hook: Hook::FromPod,
            pkt: packet::build(ip(pod), ip(peer), tcp(41001, 80, TCP_RST)),
            expect: pass,
            proxy_flags: abi::PROXY_F_READY | abi::PROXY_F_INGRESS_L7,
            ns: vec![],
        },
    ];

    let mut floor_obj = aya::EbpfLoader::new().load(TEST_PROGS).unwrap();
    {
        let mut ifaces: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(floor_obj.map_mut("floor_ifaces").unwrap()).unwrap();
        ifaces.insert(IFINDEX, 1, 0).unwrap();
    }
    let floor: &mut SchedClassifier = floor_obj
        .program_mut("floor_lookup")
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().unwrap();
    let floor_pkt = paths[0].pkt.clone();
    let mut floor_ns = Vec::new();

    println!(
        "paths bench: {rounds} round(s) of {repeat} runs per path (BPF_PROG_TEST_RUN), \
         {FILLER_IPS} ipcache entries, {FILLER_IDENTITIES} policy entries, \
         {filler_frontends} service frontends"
    );
    for _ in 0..rounds {
        let (ns, ret) = time(floor, &floor_pkt, repeat);
        assert_eq!(ret, pass, "floor");
        floor_ns.push(ns);
        for p in &mut paths {
            dp.set_proxy(&abi::ProxyState {
                flags: p.proxy_flags,
                port_be: 15080u16.to_be(),
                pad: 0,
            })
            .unwrap();
            let (ret, d) = dp.test_run_repeat(p.hook, &p.pkt, repeat).unwrap();
            let ns = d.as_nanos() as f64;
            if ret != p.expect {
                let c = dp.counters().unwrap();
                panic!("{}: returned {ret}, counters {c:?}", p.name);
            }
            p.ns.push(ns);
        }
        // Keep the tracked flows alive between rounds whatever the round took.
        std::thread::sleep(Duration::from_millis(10));
    }
    let floor = median(floor_ns);
    println!(
        "{:<30} {:>9} {:>9} {:>12}",
        "path", "ns/run", "x floor", "ns above"
    );
    println!(
        "{:<30} {:>9.1} {:>9} {:>12}",
        "floor (one lookup)", floor, "1.00", "-"
    );
    let mut medians = std::collections::BTreeMap::new();
    for p in paths {
        let ns = median(p.ns);
        medians.insert(p.name, ns);
        println!(
            "{:<30} {:>9.1} {:>9.2} {:>12.1}",
            p.name,
            ns,
            ns / floor,
            ns - floor
        );
    }
    // The service hop. A run that rewrites the packet cannot be repeated by the kernel (the
    // repeats would see the rewritten packet), so each ClusterIP path and its direct twin
    // are timed as single runs, interleaved, and compared by their medians.
    let samples = if quick { 200 } else { 20_000 };
    let twin = |dp: &mut Datapath, hook: Hook, pkt: &[u8], expect: u32| -> f64 {
        let (ret, d) = dp.test_run_repeat(hook, pkt, 1).unwrap();
        assert_eq!(ret, expect);
        d.as_nanos() as f64
    };
    println!(
        "service hop: {samples} single runs per path, interleaved with the direct path (ns/run median)"
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>16}",
        "path", "direct", "ClusterIP", "added", "direct/ClusterIP"
    );
    for (name, hook, direct, via) in [
        (
            "from_pod new (RST)",
            Hook::FromPod,
            packet::build(ip(pod), ip(peer), tcp(41001, 80, TCP_RST)),
            packet::build(ip(pod), ip(VIP), tcp(42001, 80, TCP_RST)),
        ),
        (
            "from_pod established (ACK)",
            Hook::FromPod,
            packet::build(ip(pod), ip(peer), tcp(41000, 80, TCP_ACK)),
            packet::build(ip(pod), ip(VIP), tcp(42000, 80, TCP_ACK)),
        ),
        (
            "to_pod reply (ACK)",
            Hook::ToPod,
            packet::build(ip(peer), ip(pod), tcp(80, 41000, TCP_ACK)),
            packet::build(ip(peer), ip(pod), tcp(80, 42000, TCP_ACK)),
        ),
    ] {
        dp.set_proxy(&abi::ProxyState::default()).unwrap();
        let (mut d, mut v) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            d.push(twin(&mut dp, hook, &direct, pass));
            v.push(twin(&mut dp, hook, &via, pass));
        }
        let (d, v) = (median(d), median(v));
        println!(
            "{name:<30} {d:>10.1} {v:>10.1} {:>10.1} {:>16.2}",
            v - d,
            d / v
        );
    }
}
