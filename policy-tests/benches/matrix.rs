//! Benchmark (not a test): `matrix` on a synthetic 1,000-workload cluster with 500
//! policies, and `connections` over the whole netpol-analyzer conformance corpus.
//!
//! Targets: matrix 1,000 x 1,000 workloads <= 1 s; the corpus <= 10 s.
//! Run: `cargo bench -p policy-tests --bench matrix`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_compiler::cidr::Cidr;
use policy_compiler::k8s::LabelSelector;
use policy_compiler::labels::Selector;
use policy_compiler::manifest::LoadReport;
use policy_compiler::model::{
    Endpoint, NamedPort, Namespace, NamespaceScope, Peer, Peers, Policy, PortMatch, PortSpec, Rule,
    WorkloadRef,
};
use policy_compiler::{Cluster, Protocol};
use policy_tests::corpus::{self, Selection};
use policy_tests::matrix::{self, Probe};
use policy_tests::output::Progress;
use policy_tests::{Analysis, Options, connections};

const WORKLOADS: usize = 1000;
const POLICIES: usize = 500;
const NAMESPACES: usize = 20;
const TIERS: [&str; 4] = ["web", "api", "db", "cache"];

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn sel(pairs: &[(&str, String)]) -> Selector {
    Selector::from_api(&LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    })
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn tcp(lo: u16, hi: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::TCP,
        port: PortMatch::Range(lo, hi),
        http: None,
    }
}

/// 20 namespaces; 1,000 workloads (half Deployments without pods, half ReplicaSet pods with
/// addresses); 500 policies mixing pod, namespace and ipBlock peers, numbered, ranged and
/// named ports, ingress and egress.
fn synthetic() -> Cluster {
    let mut c = Cluster::default();
    for n in 0..NAMESPACES {
        let name = format!("ns-{n:02}");
        let l = labels(&[
            ("team", format!("team-{}", n % 5)),
            ("env", if n % 2 == 0 { "prod" } else { "dev" }.into()),
        ]);
        c.namespaces
            .insert(name.clone(), Namespace::new(&name, l, true));
    }
    for i in 0..WORKLOADS {
        let ns = format!("ns-{:02}", i % NAMESPACES);
        let app = format!("svc-{i}");
        let l = labels(&[
            ("app", app.clone()),
            ("tier", TIERS[(i / NAMESPACES) % 4].to_string()),
            ("group", format!("g{}", i % 25)),
        ]);
        let mut ports = vec![
            NamedPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::TCP,
            },
            NamedPort {
                name: "metrics".into(),
                port: 9090 + (i % 3) as u16,
                protocol: Protocol::TCP,
            },
        ];
        if i % 7 == 0 {
            ports.push(NamedPort {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::UDP,
            });
        }
        let ep = if i % 2 == 0 {
            Endpoint {
                key: Endpoint::workload_key(&ns, "Deployment", &app),
                namespace: ns.clone(),
                name: app.clone(),
                workload: WorkloadRef {
                    kind: "Deployment".into(),
                    name: app.clone(),
                },
                labels: l,
                ips: Vec::new(),
                ports,
                host_network: false,
            }
        } else {
            let pod = format!("{app}-7d4b9c-x{i}");
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1));
            Endpoint {
                key: Endpoint::pod_key(&ns, &pod),
                namespace: ns.clone(),
                name: pod,
                workload: WorkloadRef {
                    kind: "ReplicaSet".into(),
                    name: format!("{app}-7d4b9c"),
                },
                labels: l,
                ips: vec![ip],
                ports,
                host_network: false,
            }
        };
        c.endpoints.insert(ep.key.clone(), ep);
    }
    for p in 0..POLICIES {
        let ns = format!("ns-{:02}", p % NAMESPACES);
        let pod_selector = match p % 3 {
            0 => sel(&[("tier", TIERS[(p / 3) % 4].to_string())]),
            1 => sel(&[("group", format!("g{}", p % 25))]),
            _ => sel(&[("app", format!("svc-{}", (p * 7) % WORKLOADS))]),
        };
        let mut ingress = vec![
            Rule {
                peers: Peers::List(vec![Peer::Endpoints {
                    namespaces: NamespaceScope::Own(ns.clone()),
                    pods: sel(&[("tier", "web".into())]),
                }]),
                ports: vec![tcp(8080, 8080)],
                ..Rule::default()
            },
            Rule {
                peers: Peers::List(vec![Peer::Endpoints {
                    namespaces: NamespaceScope::Selected(sel(&[(
                        "team",
                        format!("team-{}", p % 5),
                    )])),
                    pods: sel(&[("group", format!("g{}", (p * 3) % 25))]),
                }]),
                ports: vec![
                    PortSpec {
                        protocol: Protocol::TCP,
                        port: PortMatch::Named("metrics".into()),
                        http: None,
                    },
                    tcp(9000, 9100),
                ],
                ..Rule::default()
            },
        ];
        if p % 4 == 0 {
            ingress.push(Rule {
                peers: Peers::List(vec![Peer::IpBlock {
                    cidr: cidr(&format!("172.{}.0.0/16", 16 + p % 16)),
                    except: vec![cidr(&format!("172.{}.{}.0/24", 16 + p % 16, p % 200))],
                }]),
                ports: vec![tcp(443, 443)],
                ..Rule::default()
            });
        }
        let egress = (p % 5 == 0).then(|| {
            vec![
                Rule {
                    peers: Peers::List(vec![Peer::Endpoints {
                        namespaces: NamespaceScope::Selected(Selector::everything()),
                        pods: sel(&[("tier", "db".into())]),
                    }]),
                    ports: vec![
                        tcp(5432, 5432),
                        PortSpec {
                            protocol: Protocol::TCP,
                            port: PortMatch::Named("http".into()),
                            http: None,
                        },
                    ],
                    ..Rule::default()
                },
                Rule {
                    peers: Peers::List(vec![Peer::IpBlock {
                        cidr: cidr("0.0.0.0/0"),
                        except: vec![cidr("10.0.0.0/8")],
                    }]),
                    ports: vec![tcp(443, 443)],
                    ..Rule::default()
                },
                Rule {
                    peers: Peers::Any,
                    ports: vec![PortSpec {
                        protocol: Protocol::UDP,
                        port: PortMatch::Range(53, 53),
                        http: None,
                    }],
                    ..Rule::default()
                },
            ]
        });
        let name = format!("policy-{p}");
        c.policies.insert(
            policy_compiler::rules::PolicyRef::network_policy(&ns, &name),
            Arc::new(Policy {
                namespace: ns,
                name,
                pod_selector,
                ingress: Some(ingress),
                egress,
                origin: "bench".into(),
                ..Policy::default()
            }),
        );
    }
    c
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        last = Some(r);
    }
    (best, last.unwrap())
}

fn report(what: &str, d: Duration, target: Option<Duration>) {
    match target {
        Some(t) => println!(
            "{what:<44} {:>9.3} s   target {:>6.1} s   ratio {:.3}{}",
            d.as_secs_f64(),
            t.as_secs_f64(),
            d.as_secs_f64() / t.as_secs_f64(),
            if d <= t { "" } else { "   OVER TARGET" }
        ),
        None => println!("{what:<44} {:>9.3} s", d.as_secs_f64()),
    }
}

fn main() {
    println!(
        "policy-test benchmark ({} threads available)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let cluster = synthetic();
    let opts = Options::default();
    let (compile, a) = best_of(3, || {
        Analysis::from_cluster(&cluster, LoadReport::default(), &opts).unwrap()
    });
    println!(
        "synthetic cluster: {} workloads, {} policies, {} identities",
        a.workloads.len(),
        cluster.policies.len(),
        a.engine.identities().cluster_count()
    );
    report("compile (policy core)", compile, None);
    let probe = Probe::Port {
        port: 8080,
        protocol: Protocol::TCP,
    };
    let (m1, m) = best_of(5, || matrix::compute(&a, &[probe], &Progress::hidden()));
    let allowed: usize = m.tables[0].allowed.iter().flatten().filter(|x| **x).count();
    report(
        &format!("matrix {0}x{0}, one port (8080/TCP)", m.workloads.len()),
        m1,
        Some(Duration::from_secs(1)),
    );
    println!(
        "  allowed cells: {allowed} of {}",
        m.workloads.len() * m.workloads.len()
    );
    let (render, text) = best_of(3, || matrix::to_text(&m));
    report(
        &format!("  rendered as text ({} MB)", text.len() / 1_000_000),
        render,
        None,
    );
    let (many, _) = best_of(3, || {
        let probes: Vec<Probe> = [80, 443, 5432, 8080, 9090]
            .iter()
            .map(|p| Probe::Port {
                port: *p,
                protocol: Protocol::TCP,
            })
            .collect();
        matrix::compute(&a, &probes, &Progress::hidden())
    });
    report("matrix, five ports", many, None);
    let (any, _) = best_of(3, || {
        matrix::compute(&a, &[Probe::Any], &Progress::hidden())
    });
    report(
        "matrix, any port (full port sets)",
        any,
        Some(Duration::from_secs(1)),
    );
    let (total, _) = best_of(3, || {
        let a = Analysis::from_cluster(&cluster, LoadReport::default(), &opts).unwrap();
        matrix::compute(&a, &[probe], &Progress::hidden())
    });
    report("compile + matrix one port", total, None);
    let (conns, c) = best_of(3, || connections::compute(&a, &Progress::hidden()));
    report(&format!("connections ({} lines)", c.len()), conns, None);

    let base = corpus::default_location();
    match corpus::select(&base) {
        Err(e) => println!("conformance corpus not available ({e}): skipped"),
        Ok(sel) => {
            let cases: Vec<corpus::Case> = sel
                .into_iter()
                .filter_map(|s| match s {
                    Selection::Run(c) => Some(c),
                    Selection::Skip { .. } => None,
                })
                .collect();
            let opts = Options {
                ipblocks_select_pods: false,
                ..Options::default()
            };
            let (d, (ok, lines)) = best_of(3, || {
                let mut ok = 0;
                let mut lines = 0;
                for c in &cases {
                    if let Ok(out) = corpus::run_case(c, &opts) {
                        ok += 1;
                        lines += out.lines().count();
                    }
                }
                (ok, lines)
            });
            report(
                &format!(
                    "conformance corpus ({} cases, {ok} loaded, {lines} lines)",
                    cases.len()
                ),
                d,
                Some(Duration::from_secs(10)),
            );
        }
    }
}
