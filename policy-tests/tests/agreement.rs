//! `connections` and `matrix` must say exactly what the map-level evaluator says flow by
//! flow: generated clusters, every ordered pair, probed at every port boundary the
//! policies mention (and around it) plus spread-out ports, for TCP, UDP and SCTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use policy_compiler::eval::maps;
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::{Flow, FlowPeer, Protocol};
use policy_tests::connections::{self, IpRange};
use policy_tests::matrix::{self, Probe};
use policy_tests::output::Progress;
use policy_tests::portset::PROTOCOLS;
use policy_tests::{Analysis, Options};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const APPS: [&str; 4] = ["web", "api", "db", "cache"];
const NAMES: [&str; 3] = ["http", "metrics", "dns"];
const PROTOS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn generate(seed: u64) -> (String, BTreeSet<u16>) {
    let mut r = Rng(seed);
    let mut y = String::new();
    let mut ports: BTreeSet<u16> = [1, 2, 65534, 65535].into_iter().collect();
    for ns in ["a", "b"] {
        y += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {ns}}}}}\n---\n"
        );
    }
    for i in 0..10 {
        let ns = ["a", "b"][i % 2];
        let app = APPS[r.below(4) as usize];
        let mut cports = String::new();
        for (j, n) in NAMES.iter().enumerate() {
            if r.below(2) == 0 {
                let p = 1000 + r.below(50) as u16 * 10 + j as u16;
                ports.insert(p);
                let proto = PROTOS[r.below(3) as usize];
                cports += &format!("    - {{name: {n}, containerPort: {p}, protocol: {proto}}}\n");
            }
        }
        let ports_block = if cports.is_empty() {
            String::new()
        } else {
            format!("    ports:\n{cports}")
        };
        let status = if i % 3 == 0 {
            format!("status: {{podIP: 10.1.0.{}}}\n", i + 1)
        } else {
            String::new()
        };
        y += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{app: {app}}}}}\nspec:\n  containers:\n  - name: c\n{ports_block}{status}---\n"
        );
    }
    for k in 0..7 {
        let ns = ["a", "b"][k % 2];
        let sel = if r.below(3) == 0 {
            "{}".to_string()
        } else {
            format!("{{matchLabels: {{app: {}}}}}", APPS[r.below(4) as usize])
        };
        let mut rules = String::new();
        for _ in 0..(1 + r.below(3)) {
            let peer = match r.below(5) {
                0 => String::new(),
                1 => format!(
                    "    - from: [{{podSelector: {{matchLabels: {{app: {}}}}}}}]\n",
                    APPS[r.below(4) as usize]
                ),
                2 => "    - from: [{namespaceSelector: {matchLabels: {team: b}}}]\n".to_string(),
                3 => {
                    let b = r.below(3);
                    format!(
                        "    - from: [{{ipBlock: {{cidr: 10.{b}.0.0/16, except: [10.{b}.{}.0/24]}}}}]\n",
                        r.below(4)
                    )
                }
                _ => {
                    "    - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n".to_string()
                }
            };
            let head = if peer.is_empty() {
                "    - ".to_string()
            } else {
                peer + "      "
            };
            let mut ps = String::new();
            for _ in 0..r.below(3) {
                let proto = PROTOS[r.below(3) as usize];
                match r.below(4) {
                    0 => ps += &format!("      - {{protocol: {proto}}}\n"),
                    1 => {
                        let p = 1 + r.below(2000) as u16;
                        ports.extend([p.saturating_sub(1).max(1), p, p + 1]);
                        ps += &format!("      - {{protocol: {proto}, port: {p}}}\n");
                    }
                    2 => {
                        let lo = 1 + r.below(60000) as u16;
                        let hi = lo + r.below(5000) as u16;
                        ports.extend([lo.saturating_sub(1).max(1), lo, hi, hi.saturating_add(1)]);
                        ps +=
                            &format!("      - {{protocol: {proto}, port: {lo}, endPort: {hi}}}\n");
                    }
                    _ => {
                        ps += &format!(
                            "      - {{protocol: {proto}, port: {}}}\n",
                            NAMES[r.below(3) as usize]
                        )
                    }
                }
            }
            let ports_part = if ps.is_empty() {
                String::new()
            } else {
                format!("ports:\n{ps}")
            };
            rules += &format!(
                "{head}{}\n",
                if ports_part.is_empty() {
                    "ports: []".into()
                } else {
                    ports_part.trim_end().to_string()
                }
            );
        }
        let egress = if r.below(2) == 0 {
            let p = 1 + r.below(3000) as u16;
            ports.extend([p - 1, p, p + 1]);
            format!(
                "  egress:\n    - to: [{{podSelector: {{matchLabels: {{app: {}}}}}}}, {{ipBlock: {{cidr: 10.{}.0.0/16}}}}]\n      ports: [{{port: {p}}}, {{protocol: UDP, port: {}}}]\n  policyTypes: [Ingress, Egress]\n",
                APPS[r.below(4) as usize],
                r.below(3),
                NAMES[r.below(3) as usize]
            )
        } else {
            String::new()
        };
        y += &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: {ns}}}\nspec:\n  podSelector: {sel}\n  ingress:\n{rules}{egress}---\n"
        );
    }
    for _ in 0..30 {
        ports.insert(1 + r.below(65535) as u16);
    }
    (y, ports)
}

fn range_rep(a: &Analysis, r: &IpRange) -> IpAddr {
    let owned: BTreeSet<IpAddr> = a
        .cluster()
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    let mut v = r.first;
    while v < r.last && owned.contains(&policy_compiler::cidr::u128_to_ip(v, r.v4)) {
        v += 1;
    }
    policy_compiler::cidr::u128_to_ip(v, r.v4)
}

#[test]
fn connections_and_matrix_agree_with_the_map_evaluator() {
    let mut checked = 0usize;
    for seed in 1..=6u64 {
        let (yaml, ports) = generate(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let loaded = match load_str("gen.yaml", &yaml, &LoadOptions::default()) {
            Ok(l) => l,
            Err(e) => panic!("generated manifests invalid: {e}\n{yaml}"),
        };
        for select_pods in [true, false] {
            let a = Analysis::from_cluster(
                &loaded.cluster,
                loaded.report.clone(),
                &Options {
                    ipblocks_select_pods: select_pods,
                    ..Options::default()
                },
            )
            .unwrap();
            let conns = connections::compute(&a, &Progress::hidden());
            let listed: BTreeMap<(String, String), String> = conns
                .iter()
                .map(|c| ((c.src.clone(), c.dst.clone()), c.ports.to_string()))
                .collect();
            let (src_ranges, dst_ranges) = connections::external_ranges(a.cluster());
            let mut srcs: Vec<(String, FlowPeer)> = src_ranges
                .iter()
                .map(|r| (r.to_string(), FlowPeer::Ip(range_rep(&a, r))))
                .collect();
            let mut dsts: Vec<(String, FlowPeer)> = dst_ranges
                .iter()
                .map(|r| (r.to_string(), FlowPeer::Ip(range_rep(&a, r))))
                .collect();
            for w in &a.workloads {
                srcs.push((
                    w.display.clone(),
                    FlowPeer::Endpoint(w.representative.clone()),
                ));
                dsts.push((
                    w.display.clone(),
                    FlowPeer::Endpoint(w.representative.clone()),
                ));
            }
            let probes: Vec<Probe> = ports
                .iter()
                .map(|p| Probe::Port {
                    port: *p,
                    protocol: Protocol::UDP,
                })
                .collect();
            let m = matrix::compute(&a, &probes, &Progress::hidden());
            for (sn, s) in &srcs {
                for (dn, d) in &dsts {
                    if matches!((s, d), (FlowPeer::Ip(_), FlowPeer::Ip(_))) || sn == dn {
                        continue;
                    }
                    let set = listed.get(&(sn.clone(), dn.clone()));
                    for proto in PROTOCOLS {
                        for &port in &ports {
                            let flow = Flow {
                                src: s.clone(),
                                dst: d.clone(),
                                protocol: proto,
                                port,
                            };
                            let want = maps::evaluate(&a.engine, &flow).allowed();
                            let conn_set = conns
                                .iter()
                                .find(|c| c.src == *sn && c.dst == *dn)
                                .map(|c| c.ports.contains(proto, port))
                                .unwrap_or(false);
                            assert_eq!(
                                conn_set, want,
                                "seed {seed} select_pods {select_pods}: {sn} => {dn} {proto}/{port}: listed {set:?}\n{yaml}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
            // Matrix cells (workloads only, UDP probes) agree too.
            for (i, from) in a.workloads.iter().enumerate() {
                for (j, to) in a.workloads.iter().enumerate() {
                    for (t, port) in m.tables.iter().zip(&ports) {
                        let flow = Flow {
                            src: FlowPeer::Endpoint(from.representative.clone()),
                            dst: FlowPeer::Endpoint(to.representative.clone()),
                            protocol: Protocol::UDP,
                            port: *port,
                        };
                        assert_eq!(
                            t.allowed[i][j],
                            maps::evaluate(&a.engine, &flow).allowed(),
                            "matrix {} -> {} UDP/{port}",
                            from.display,
                            to.display
                        );
                    }
                }
            }
        }
    }
    assert!(checked > 100_000, "too few probes: {checked}");
}
