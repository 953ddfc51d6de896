//! Compile benchmark (not a test): a synthetic cluster of 150,000 pods in 5,000 namespaces
//! with 20,000 policies. Measures the full compile, one-pod updates, one-policy changes and
//! peak memory, and prints each against its target and against the full recompile measured
//! in the same run (what an engine without incremental updates would pay per change).
//!
//! Then the same cluster with the cluster-admin tiers on top: 400 AdminNetworkPolicies and
//! 100 baseline-tier policies (the BaselineAdminNetworkPolicy and ClusterNetworkPolicies of
//! tier Baseline; both counts scale with PALISADE_BENCH_SCALE, at least 40 and 10). Measures
//! their full compile and one-ANP changes (a priority, a rule's action), each against its
//! target and against the NetworkPolicy-only compile and policy change of the same run.
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
    Endpoint, NAMESPACE_NAME_LABEL, NamedPort, Namespace, NamespaceScope, Peer, Peers, Policy,
    PolicyTier, PortMatch, PortSpec, Rule, RuleAction, WorkloadRef,
};
use policy_compiler::rules::PolicyKind;
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

/// `key In [values]` (values sorted, as the loader keeps them).
fn sel_in(key: &str, values: &[String]) -> Selector {
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    Selector {
        requirements: vec![Requirement {
            key: key.into(),
            op: Operator::In,
            values,
        }],
    }
}

fn teams_sel(teams: &[usize]) -> Selector {
    let v: Vec<String> = teams.iter().map(|t| format!("team-{t}")).collect();
    sel_in("team", &v)
}

fn ns_name_sel(i: usize) -> Selector {
    sel_in(NAMESPACE_NAME_LABEL, &[format!("ns-{i:05}")])
}

fn cidr(s: &str) -> Cidr {
    s.parse::<Cidr>().unwrap_or_else(|_| unreachable!())
}

fn tcp(lo: u16, hi: u16) -> PortSpec {
    PortSpec::new(Protocol::TCP, PortMatch::Range(lo, hi))
}

/// A peer as the loader builds `namespaces` (every pod of the selected namespaces) and `pods`.
fn ns_peer(namespaces: Selector, pods: Selector) -> Peer {
    Peer::Endpoints {
        namespaces: NamespaceScope::Selected(namespaces),
        pods,
    }
}

fn net_peer(c: &str) -> Peer {
    Peer::IpBlock {
        cidr: cidr(c),
        except: Vec::new(),
    }
}

const ACTIONS: [RuleAction; 3] = [RuleAction::Allow, RuleAction::Deny, RuleAction::Pass];

/// A cluster-scoped policy as the cluster-admin loader builds it (manifest/admin.rs).
fn tiered_policy(
    kind: PolicyKind,
    name: String,
    tier: PolicyTier,
    subject: (Selector, Selector),
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
) -> Policy {
    Policy {
        kind,
        namespace: String::new(),
        name,
        namespace_selector: Some(subject.0),
        pod_selector: subject.1,
        ingress: Some(ingress).filter(|r| !r.is_empty()),
        egress: Some(egress).filter(|r| !r.is_empty()),
        isolates: [false, false],
        audit: false,
        tier,
        origin: "bench".into(),
    }
}

/// The ports of an admin-tier rule: numbers, ranges, two protocols, or every port.
fn admin_ports(k: usize) -> Vec<PortSpec> {
    match k % 5 {
        0 => vec![tcp(8080, 8080)],
        1 => vec![tcp(9000, 9099)],
        2 => vec![
            tcp(5432, 5432),
            PortSpec::new(Protocol::UDP, PortMatch::Range(53, 53)),
        ],
        3 => vec![],
        _ => vec![tcp(30000, 32767)],
    }
}

/// Whether AdminNetworkPolicy `i` selects across every namespace (the others select one
/// team, three teams or one namespace).
fn anp_cluster_wide(i: usize) -> bool {
    i % 40 == 4
}

/// AdminNetworkPolicy `i` of `n` over `namespaces` namespaces (teams of 10 namespaces).
///
/// Priorities spread over 0..1000 (every tenth shares its predecessor's); subjects by
/// namespace selector (a team), by pod selector (a workload in one or three teams), one
/// namespace, or one workload in every namespace (one policy in 40); ingress rules from a
/// team's namespaces, from a workload of the own team, from a "monitoring" namespace
/// (`ns-00000`), actions Allow, Deny and Pass in turn; egress rules to networks outside the
/// pod range and to a team's database; ports as numbers, ranges, two protocols or none.
fn anp(i: usize, n: usize, namespaces: usize) -> Policy {
    let teams = namespaces.div_ceil(10);
    let prio = |i: usize| (i * 1000 / n) as u32;
    let priority = if i % 10 == 9 { prio(i - 1) } else { prio(i) };
    let t = (i * 37) % teams;
    let u = (t + 1) % teams;
    let w = (t + teams / 2) % teams;
    let everything = Selector::everything;
    let subject = match i % 5 {
        0 => (teams_sel(&[t]), everything()),
        1 => (teams_sel(&[t]), sel(&[("app", "backend")])),
        2 => (
            teams_sel(&[t, (t + 1) % teams, (t + 2) % teams]),
            sel(&[("app", "frontend")]),
        ),
        3 => (ns_name_sel((i * 101) % namespaces), everything()),
        _ if anp_cluster_wide(i) => (everything(), sel(&[("app", "db")])),
        _ => (teams_sel(&[t]), sel(&[("app", "db")])),
    };
    let monitoring = || ns_peer(ns_name_sel(0), everything());
    let ingress = (0..1 + i % 3)
        .map(|r| {
            let k = i + r;
            let peers = if anp_cluster_wide(i) {
                vec![monitoring()]
            } else {
                match k % 4 {
                    0 => vec![ns_peer(teams_sel(&[u]), everything())],
                    1 => vec![ns_peer(teams_sel(&[t]), sel(&[("app", "frontend")]))],
                    2 => vec![monitoring()],
                    _ => vec![
                        ns_peer(teams_sel(&[w]), everything()),
                        ns_peer(teams_sel(&[u]), sel(&[("app", "backend")])),
                    ],
                }
            };
            Rule {
                peers: Peers::List(peers),
                ports: admin_ports(k),
                action: ACTIONS[k % 3],
                name: Some(format!("in-{r}")),
                log: None,
            }
        })
        .collect();
    let mut egress = Vec::new();
    if i.is_multiple_of(2) {
        let net = match i % 6 {
            0 => "169.254.169.254/32".to_string(),
            2 => "172.16.0.0/12".to_string(),
            _ => format!("192.168.{}.0/24", i % 256),
        };
        egress.push(Rule {
            peers: Peers::List(vec![net_peer(&net)]),
            ports: if i.is_multiple_of(4) {
                vec![]
            } else {
                vec![tcp(443, 443)]
            },
            action: ACTIONS[(i / 2) % 3],
            name: Some("out-net".into()),
            log: None,
        });
    }
    if i % 4 == 2 && !anp_cluster_wide(i) {
        egress.push(Rule {
            peers: Peers::List(vec![ns_peer(teams_sel(&[u]), sel(&[("app", "db")]))]),
            ports: vec![tcp(5432, 5432)],
            action: ACTIONS[(i / 4) % 3],
            name: Some("out-db".into()),
            log: None,
        });
    }
    tiered_policy(
        PolicyKind::AdminNetworkPolicy,
        format!("anp-{i:04}"),
        PolicyTier::Admin(priority),
        subject,
        ingress,
        egress,
    )
}

/// Baseline-tier policy `j`: `j == 0` is the one BaselineAdminNetworkPolicy (`default`, every
/// pod: monitoring may scrape, the metadata service is denied); the others are
/// ClusterNetworkPolicies of tier Baseline selecting one team: its own namespaces allowed,
/// another team denied or passed, egress to private networks denied on low ports.
fn baseline(j: usize, namespaces: usize) -> Policy {
    let teams = namespaces.div_ceil(10);
    let everything = Selector::everything;
    if j == 0 {
        return tiered_policy(
            PolicyKind::BaselineAdminNetworkPolicy,
            "default".into(),
            PolicyTier::Baseline(0),
            (everything(), everything()),
            vec![Rule {
                peers: Peers::List(vec![ns_peer(ns_name_sel(0), everything())]),
                ports: vec![tcp(9090, 9090)],
                action: RuleAction::Allow,
                name: Some("monitoring".into()),
                log: None,
            }],
            vec![Rule {
                peers: Peers::List(vec![net_peer("169.254.169.254/32")]),
                ports: vec![],
                action: RuleAction::Deny,
                name: Some("metadata".into()),
                log: None,
            }],
        );
    }
    let prio = |j: usize| ((j * 10) % 1000) as u32;
    let priority = if j.is_multiple_of(7) {
        prio(j - 1)
    } else {
        prio(j)
    };
    let t = (j * 53) % teams;
    let u = (t + 3) % teams;
    let ingress = vec![
        Rule {
            peers: Peers::List(vec![ns_peer(teams_sel(&[t]), everything())]),
            ports: vec![],
            action: RuleAction::Allow,
            name: Some("same-team".into()),
            log: None,
        },
        Rule {
            peers: Peers::List(vec![ns_peer(teams_sel(&[u]), everything())]),
            ports: admin_ports(j),
            action: if j.is_multiple_of(3) {
                RuleAction::Pass
            } else {
                RuleAction::Deny
            },
            name: Some("other-team".into()),
            log: None,
        },
    ];
    let egress = vec![Rule {
        peers: Peers::List(vec![net_peer("172.16.0.0/12"), net_peer("192.168.0.0/16")]),
        ports: vec![tcp(1, 1023)],
        action: RuleAction::Deny,
        name: Some("private".into()),
        log: None,
    }];
    tiered_policy(
        PolicyKind::ClusterNetworkPolicy,
        format!("baseline-{j:03}"),
        PolicyTier::Baseline(priority),
        (teams_sel(&[t]), everything()),
        ingress,
        egress,
    )
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

fn met(value: Duration, target: Duration) -> &'static str {
    if value <= target { "met" } else { "NOT met" }
}

fn report(name: &str, value: Duration, target: Duration, baseline: Duration) {
    println!(
        "{name:<34} {:>10.3} ms   target {:>8.3} ms {:<7} ({:>5.2}x of target)   {:>9.0}x faster than a full recompile",
        value.as_secs_f64() * 1e3,
        target.as_secs_f64() * 1e3,
        met(value, target),
        value.as_secs_f64() / target.as_secs_f64(),
        baseline.as_secs_f64() / value.as_secs_f64().max(1e-9),
    );
}

/// [`report`] for a change with the tiers, also against the NetworkPolicy-only policy change
/// of the same run.
fn report_tiered(
    name: &str,
    value: Duration,
    target: Duration,
    full: Duration,
    np_change: Duration,
) {
    println!(
        "{name:<34} {:>10.3} ms   target {:>8.3} ms {:<7} ({:>5.2}x of target)   {:>9.0}x faster than a full recompile   {:>6.2}x the NetworkPolicy-only policy change",
        value.as_secs_f64() * 1e3,
        target.as_secs_f64() * 1e3,
        met(value, target),
        value.as_secs_f64() / target.as_secs_f64(),
        full.as_secs_f64() / value.as_secs_f64().max(1e-9),
        value.as_secs_f64() / np_change.as_secs_f64().max(1e-9),
    );
}

/// Applies each changed policy as its own batch; returns the median time to the diff and
/// the mean number of map operations per diff.
fn time_changes(engine: &mut Engine, changes: Vec<Policy>) -> (Duration, f64) {
    let n = changes.len();
    let mut samples = Vec::with_capacity(n);
    let mut ops = 0usize;
    for p in changes {
        let t = Instant::now();
        let d = engine.apply(vec![Change::UpsertPolicy(Arc::new(p))]);
        samples.push(t.elapsed());
        ops += d.expect("apply").op_count();
    }
    (median(samples), ops as f64 / n.max(1) as f64)
}

/// The cluster of [`synthetic`] with the cluster-admin tiers on top: full compile and one-ANP
/// changes, against the NetworkPolicy-only full compile (`np_full`) and policy change
/// (`np_change`) of the same run.
fn tiered_run(namespaces: usize, scale: f64, np_full: Duration, np_change: Duration) {
    let n_admin = ((400.0 * scale) as usize).max(40);
    let n_baseline = ((100.0 * scale) as usize).max(10);
    let build = Instant::now();
    let mut cluster = synthetic(namespaces, 10);
    let mut anps: Vec<Policy> = (0..n_admin).map(|i| anp(i, n_admin, namespaces)).collect();
    for p in anps
        .iter()
        .cloned()
        .chain((0..n_baseline).map(|j| baseline(j, namespaces)))
    {
        cluster.policies.insert(p.pref(), Arc::new(p));
    }
    println!(
        "\n== With the cluster-admin tiers: {n_admin} AdminNetworkPolicies ({} selecting in every namespace), {} BaselineAdminNetworkPolicy, {} ClusterNetworkPolicies of tier Baseline (cluster built in {:.2} s)",
        (0..n_admin).filter(|i| anp_cluster_wide(*i)).count(),
        1,
        n_baseline - 1,
        build.elapsed().as_secs_f64()
    );
    let (n_eps, n_pol) = (cluster.endpoints.len(), cluster.policies.len());

    let t = Instant::now();
    let (mut engine, diff) = match Engine::compile_owned(cluster, EngineConfig::default()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("compile failed: {e}");
            std::process::exit(1);
        }
    };
    let full = t.elapsed();
    let target = Duration::from_secs(2);
    let entries: usize = engine.compiled().values().map(|p| p.entries.len()).sum();
    println!("{n_eps} pods, {n_pol} policies");
    println!(
        "full compile with tiers: {:.3} s (target 2 s {}, {:.2}x of target); {:.2}x the NetworkPolicy-only full compile of this run ({:.3} s); {} identities, {} policy maps, {} entries, {} ipcache entries, {} map ops",
        full.as_secs_f64(),
        met(full, target),
        full.as_secs_f64() / target.as_secs_f64(),
        full.as_secs_f64() / np_full.as_secs_f64(),
        np_full.as_secs_f64(),
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
    println!("largest policy: {largest} entries");

    // Changes go to AdminNetworkPolicies selecting one team, three teams or one namespace
    // (the common case); each is applied to the current version of its policy.
    let scoped: Vec<usize> = (0..n_admin).filter(|i| !anp_cluster_wide(*i)).collect();
    fn next(anps: &mut [Policy], i: usize, f: &dyn Fn(&mut Policy)) -> Policy {
        f(&mut anps[i]);
        anps[i].clone()
    }
    let move_priority = |p: &mut Policy| {
        if let PolicyTier::Admin(prio) = p.tier {
            p.tier = PolicyTier::Admin((prio + 500) % 1001);
        }
    };

    // One ANP's priority.
    let changes: Vec<Policy> = (0..50)
        .map(|k| next(&mut anps, scoped[(k * 7) % scoped.len()], &move_priority))
        .collect();
    let (priority_change, priority_ops) = time_changes(&mut engine, changes);

    // One rule's action (Allow -> Deny -> Pass -> Allow).
    let flip_action = |p: &mut Policy| {
        if let Some(rule) = p.ingress.as_mut().and_then(|r| r.first_mut()) {
            let k = ACTIONS.iter().position(|a| *a == rule.action).unwrap_or(0);
            rule.action = ACTIONS[(k + 1) % 3];
        }
    };
    let changes: Vec<Policy> = (0..50)
        .map(|k| next(&mut anps, scoped[(k * 11 + 3) % scoped.len()], &flip_action))
        .collect();
    let (action_change, action_ops) = time_changes(&mut engine, changes);

    // For comparison: the priority of an ANP selecting one workload in every namespace.
    let wide: Vec<usize> = (0..n_admin).filter(|i| anp_cluster_wide(*i)).collect();
    let changes: Vec<Policy> = (0..5)
        .map(|k| next(&mut anps, wide[k % wide.len()], &move_priority))
        .collect();
    let (wide_change, wide_ops) = time_changes(&mut engine, changes);

    println!();
    let ms1 = Duration::from_millis(1);
    report_tiered(
        "one ANP priority (median of 50)",
        priority_change,
        ms1,
        full,
        np_change,
    );
    report_tiered(
        "one ANP rule action (median of 50)",
        action_change,
        ms1,
        full,
        np_change,
    );
    println!(
        "{:<34} {:>10.3} ms   no target (every namespace's db workload is recompiled)   {:>6.2}x the NetworkPolicy-only policy change",
        "one cluster-wide ANP priority (5)",
        wide_change.as_secs_f64() * 1e3,
        wide_change.as_secs_f64() / np_change.as_secs_f64().max(1e-9),
    );
    println!(
        "map operations per diff (mean): priority {priority_ops:.0}, rule action {action_ops:.0}, cluster-wide priority {wide_ops:.0}"
    );
    assert!(priority_ops > 0.0 && action_ops > 0.0 && wide_ops > 0.0);
    println!(
        "\npeak memory (VmHWM) after the tiered run: {:.0} MiB",
        peak_rss_mib()
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

    drop(engine);
    tiered_run(namespaces, scale, full, policy_change);
}
