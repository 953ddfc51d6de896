//! Every allowed connection between workloads and external address ranges, in
//! netpol-analyzer's `list` format:
//!
//! ```text
//! 0.0.0.0-255.255.255.255[External] => default/frontend[Deployment] : TCP 8080
//! default/frontend[Deployment] => default/backend[Deployment] : TCP 9090
//! ```
//!
//! One line per ordered pair with something allowed, sorted bytewise; no workload-to-itself
//! lines; no address-to-address lines. External sources are the elementary ranges cut by
//! every ingress ipBlock of every policy (plus 0.0.0.0/0), external destinations likewise
//! from egress ipBlocks. Each answer is egress at the source intersected with ingress at
//! the destination, read off the compiled maps (see [`crate::portset`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use policy_compiler::abi;
use policy_compiler::cidr::{Cidr, ip_to_u128, u128_to_ip};
use policy_compiler::eval::maps;
use policy_compiler::model::{Peer, Peers};
use policy_compiler::{Cluster, Direction, FlowPeer};
use serde::Serialize;

use crate::analysis::Analysis;
use crate::output::Progress;
use crate::par;
use crate::portset::{self, DirectionAnswers, PortSet};

/// One allowed connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub src: String,
    pub dst: String,
    #[serde(rename = "conn", serialize_with = "ser_display")]
    pub ports: PortSet,
    /// TCP ports whose connections go through the L7 proxy, with the HTTP rules applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<(u16, String)>,
}

fn ser_display<S: serde::Serializer>(p: &PortSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(p)
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} => {} : {}", self.src, self.dst, self.ports)?;
        for (port, rules) in &self.http {
            write!(f, " (TCP {port} HTTP: {rules})")?;
        }
        Ok(())
    }
}

/// An external address range `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub v4: bool,
    pub first: u128,
    pub last: u128,
}

impl IpRange {
    pub fn first_ip(&self) -> IpAddr {
        u128_to_ip(self.first, self.v4)
    }

    pub fn last_ip(&self) -> IpAddr {
        u128_to_ip(self.last, self.v4)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.v4 && (self.first..=self.last).contains(&ip_to_u128(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}[External]", self.first_ip(), self.last_ip())
    }
}

/// Boundaries of the elementary external ranges of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cuts {
    v4: BTreeSet<u128>,
    /// Only when some ipBlock of the direction is IPv6.
    v6: Option<BTreeSet<u128>>,
}

const V4_END: u128 = 1 << 32;

impl Cuts {
    /// The cuts made by every ipBlock in the `dir` rules of every policy (ingress rules
    /// give the external sources, egress rules the external destinations).
    pub fn of(cluster: &Cluster, dir: Direction) -> Cuts {
        let mut cuts = Cuts::default();
        for p in cluster.policies.values() {
            for rule in p.rules(dir).unwrap_or(&[]) {
                let Peers::List(list) = &rule.peers else {
                    continue;
                };
                for peer in list {
                    if let Peer::IpBlock { cidr, except } = peer {
                        cuts.add_block(cidr, except);
                    }
                }
            }
        }
        cuts
    }

    fn add_block(&mut self, cidr: &Cidr, except: &[Cidr]) {
        let (s, e) = cidr.range();
        let mut parts = vec![(s, e)];
        for x in except.iter().filter(|x| x.is_ipv4() == cidr.is_ipv4()) {
            let (xs, xe) = x.range();
            let mut next = Vec::new();
            for (a, b) in parts {
                if xe < a || xs > b {
                    next.push((a, b));
                    continue;
                }
                if a < xs {
                    next.push((a, xs - 1));
                }
                if xe < b {
                    next.push((xe + 1, b));
                }
            }
            parts = next;
        }
        let set = if cidr.is_ipv4() {
            &mut self.v4
        } else {
            self.v6.get_or_insert_with(BTreeSet::new)
        };
        for (a, b) in parts {
            set.insert(a);
            if let Some(end) = b.checked_add(1) {
                set.insert(end);
            }
        }
    }

    pub fn merge(&mut self, other: &Cuts) {
        self.v4.extend(other.v4.iter().copied());
        if let Some(o) = &other.v6 {
            self.v6
                .get_or_insert_with(BTreeSet::new)
                .extend(o.iter().copied());
        }
    }

    /// The elementary ranges: IPv4 always (0.0.0.0/0 at least), IPv6 only when cut.
    pub fn ranges(&self) -> Vec<IpRange> {
        let mut out = Vec::new();
        let mut v4: Vec<u128> = self.v4.iter().copied().filter(|c| *c < V4_END).collect();
        v4.push(0);
        v4.push(V4_END);
        v4.sort_unstable();
        v4.dedup();
        for w in v4.windows(2) {
            out.push(IpRange {
                v4: true,
                first: w[0],
                last: w[1] - 1,
            });
        }
        if let Some(v6) = &self.v6 {
            let mut cuts: Vec<u128> = v6.iter().copied().filter(|c| *c > 0).collect();
            cuts.sort_unstable();
            let mut start = 0u128;
            for c in cuts {
                out.push(IpRange {
                    v4: false,
                    first: start,
                    last: c - 1,
                });
                start = c;
            }
            out.push(IpRange {
                v4: false,
                first: start,
                last: u128::MAX,
            });
        }
        out
    }
}

/// External source and destination ranges of a cluster.
pub fn external_ranges(cluster: &Cluster) -> (Vec<IpRange>, Vec<IpRange>) {
    (
        Cuts::of(cluster, Direction::Ingress).ranges(),
        Cuts::of(cluster, Direction::Egress).ranges(),
    )
}

/// A row or column of the computation: a workload or an external range.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    /// Identity whose policy map polices this node (None: an address, or not ready).
    pub subject: Option<u32>,
    pub is_endpoint: bool,
    /// The identity the datapath sees for traffic from/to this node.
    pub peer_id: Option<u32>,
}

/// Per subject identity: ingress and egress answers for every peer.
pub(crate) type AnswerTable<T> = HashMap<u32, [DirectionAnswers<T>; 2]>;

pub(crate) fn workload_nodes(a: &Analysis) -> Vec<Node> {
    let engine = &a.engine;
    a.workloads
        .iter()
        .map(|w| {
            let rep = &w.representative;
            let subject = engine
                .endpoint_identity(rep)
                .filter(|_| engine.endpoint_policy(rep).is_some());
            let peer_id = maps::peer_identity(engine, &FlowPeer::Endpoint(rep.clone()))
                .filter(|id| *id != abi::IDENTITY_UNKNOWN);
            Node {
                name: w.display.clone(),
                subject,
                is_endpoint: true,
                peer_id,
            }
        })
        .collect()
}

/// Nodes for external ranges. A range is evaluated at its first address that belongs to no
/// endpoint (an endpoint's address is that endpoint, not an external peer); the partition
/// makes every such address of the range equivalent.
pub(crate) fn range_nodes(a: &Analysis, ranges: &[IpRange]) -> Vec<Node> {
    let owned: HashSet<IpAddr> = a
        .cluster()
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    ranges
        .iter()
        .map(|r| {
            let mut v = r.first;
            while v < r.last && owned.contains(&u128_to_ip(v, r.v4)) {
                v += 1;
            }
            let ip = u128_to_ip(v, r.v4);
            let peer_id =
                maps::ipcache_lookup(&a.engine, &ip).filter(|id| *id != abi::IDENTITY_UNKNOWN);
            Node {
                name: r.to_string(),
                subject: None,
                is_endpoint: false,
                peer_id,
            }
        })
        .collect()
}

/// Computes the answers of every distinct subject identity among `nodes`, in parallel.
pub(crate) fn answer_table<T: Send>(
    a: &Analysis,
    nodes: &[Node],
    f: impl Fn(&policy_compiler::CompiledPolicy, Direction) -> DirectionAnswers<T> + Sync,
) -> AnswerTable<T> {
    let ids: Vec<u32> = nodes
        .iter()
        .filter_map(|n| n.subject)
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .collect();
    let engine = &a.engine;
    let computed = par::map(&ids, |id| {
        engine
            .policy_for_identity(*id)
            .map(|p| (*id, [f(p, Direction::Ingress), f(p, Direction::Egress)]))
    });
    computed.into_iter().flatten().collect()
}

/// What one direction allows between a subject node and a peer node. An address side is
/// not policed; a subject without a policy map or a peer without identity fails closed.
pub(crate) fn side<'t, T>(
    table: &'t AnswerTable<T>,
    subject: &Node,
    peer: &Node,
    dir: Direction,
) -> Option<Option<&'t T>> {
    if !subject.is_endpoint {
        return None; // not policed here
    }
    let answers = subject.subject.and_then(|s| table.get(&s));
    Some(match (answers, peer.peer_id) {
        (Some(a), Some(p)) => Some(a[dir as usize].for_peer(p)),
        _ => None,
    })
}

/// All allowed connections with the external ranges the cluster's own policies cut.
pub fn compute(a: &Analysis, progress: &Progress) -> Vec<Connection> {
    let (src, dst) = external_ranges(a.cluster());
    let out = compute_with_ranges(a, &src, &dst, progress);
    progress.finish();
    out
}

/// All allowed connections, with given external source and destination ranges. Adds its
/// work to `progress` and leaves finishing it to the caller.
pub fn compute_with_ranges(
    a: &Analysis,
    src_ranges: &[IpRange],
    dst_ranges: &[IpRange],
    progress: &Progress,
) -> Vec<Connection> {
    let workloads = workload_nodes(a);
    let table = answer_table(a, &workloads, portset::direction_port_sets);
    let mut srcs = range_nodes(a, src_ranges);
    srcs.extend(workloads.iter().cloned());
    let mut dsts = range_nodes(a, dst_ranges);
    dsts.extend(workloads.iter().cloned());
    progress.add_length(srcs.len() as u64);
    let all = Arc::new(PortSet::all());
    let none = Arc::new(PortSet::empty());
    let pick = |s: Option<Option<&Arc<PortSet>>>| -> Arc<PortSet> {
        match s {
            None => all.clone(),
            Some(Some(p)) => p.clone(),
            Some(None) => none.clone(),
        }
    };
    let rows = par::map(&srcs, |s| {
        let mut out = Vec::new();
        for d in &dsts {
            if (!s.is_endpoint && !d.is_endpoint) || s.name == d.name {
                continue;
            }
            let eg = pick(side(&table, s, d, Direction::Egress));
            if eg.is_empty() {
                continue;
            }
            let ing = pick(side(&table, d, s, Direction::Ingress));
            let ports = eg.intersect(&ing);
            if !ports.is_empty() {
                let http = http_ports(a, s, d, &ports);
                out.push(Connection {
                    src: s.name.clone(),
                    dst: d.name.clone(),
                    ports,
                    http,
                });
            }
        }
        progress.inc(1);
        out
    });
    let mut lines: Vec<Connection> = rows.into_iter().flatten().collect();
    lines.sort_by(|x, y| {
        (x.src.as_bytes(), x.dst.as_bytes()).cmp(&(y.src.as_bytes(), y.dst.as_bytes()))
    });
    lines
}

/// TCP ports of a connection that a side sends to the L7 proxy, with its HTTP rules (egress
/// rules first, then ingress). Only single ports carry HTTP rules, so the candidates are the
/// ports of the two policy maps' redirect entries.
fn http_ports(a: &Analysis, s: &Node, d: &Node, ports: &PortSet) -> Vec<(u16, String)> {
    let engine = &a.engine;
    let sides = [
        (s.subject, d.peer_id, Direction::Egress),
        (d.subject, s.peer_id, Direction::Ingress),
    ];
    let mut candidates: BTreeSet<u16> = BTreeSet::new();
    for (subject, _, dir) in sides {
        if let Some(p) = subject.and_then(|id| engine.policy_for_identity(id)) {
            candidates.extend(
                p.l7.iter()
                    .filter(|(k, _)| k.direction == dir.abi())
                    .map(|(k, _)| k.port),
            );
        }
    }
    let tcp = ports.ranges(policy_compiler::Protocol::TCP);
    let mut out = Vec::new();
    for port in candidates
        .into_iter()
        .filter(|p| tcp.iter().any(|(lo, hi)| (lo..=hi).contains(&p)))
    {
        let mut texts = Vec::new();
        for (subject, peer, dir) in sides {
            let (Some(policy), Some(peer)) =
                (subject.and_then(|id| engine.policy_for_identity(id)), peer)
            else {
                continue;
            };
            if let Some(set) =
                maps::l7_set_at(policy, peer, dir, policy_compiler::Protocol::TCP, port)
            {
                texts.push(format!("{dir}: {}", engine.l7_summary(&set)));
            }
        }
        if !texts.is_empty() {
            out.push((port, texts.join(" | ")));
        }
    }
    out
}

/// The `list` txt format: one line per connection, each ending in a newline.
pub fn to_text(conns: &[Connection]) -> String {
    let mut s = String::new();
    for c in conns {
        s.push_str(&c.to_string());
        s.push('\n');
    }
    s
}

/// JSON: `[{"src", "dst", "conn", "ports": {"TCP": [[lo, hi], ...]}}]`.
pub fn to_json(conns: &[Connection]) -> serde_json::Value {
    serde_json::Value::Array(
        conns
            .iter()
            .map(|c| {
                serde_json::json!({
                    "src": c.src,
                    "dst": c.dst,
                    "conn": c.ports.to_string(),
                    "ports": c.ports.to_json(),
                    "http": c.http.iter().map(|(port, rules)| serde_json::json!({"port": port, "rules": rules})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// Graphviz DOT: one box per workload, grouped by namespace, one ellipse per external range,
/// one edge per connection labelled with its ports; edges through the L7 proxy are purple and
/// name their HTTP rules.
pub fn to_dot(conns: &[Connection]) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    fn q(s: &str) -> String {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
    fn short(s: &str, max: usize) -> String {
        if s.chars().count() <= max {
            s.to_string()
        } else {
            format!("{}…", s.chars().take(max).collect::<String>())
        }
    }
    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    for c in conns {
        nodes.insert(&c.src);
        nodes.insert(&c.dst);
    }
    let mut by_ns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut external: Vec<&str> = Vec::new();
    for n in &nodes {
        match n.split_once('/') {
            Some((ns, _)) if n.ends_with(']') && !n.ends_with("[External]") => {
                by_ns.entry(ns).or_default().push(n)
            }
            _ => external.push(n),
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "digraph connectivity {{");
    let _ = writeln!(
        s,
        "  rankdir=LR; fontname=\"Helvetica\"; labelloc=t; label=\"Allowed connections (policy-test)\";"
    );
    let _ = writeln!(
        s,
        "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#e8f0fe\", color=\"#4a6fa5\", fontname=\"Helvetica\"];"
    );
    let _ = writeln!(
        s,
        "  edge [fontname=\"Helvetica\", fontsize=10, color=\"#555555\"];"
    );
    for (i, (ns, members)) in by_ns.iter().enumerate() {
        let _ = writeln!(s, "  subgraph cluster_{i} {{");
        let _ = writeln!(
            s,
            "    label={}; style=\"rounded,dashed\"; color=\"#999999\";",
            q(&format!("namespace {ns}"))
        );
        for m in members {
            let name = m.split_once('/').map_or(*m, |(_, rest)| rest);
            let _ = writeln!(s, "    {} [label={}];", q(m), q(name));
        }
        let _ = writeln!(s, "  }}");
    }
    for e in &external {
        let _ = writeln!(
            s,
            "  {} [shape=ellipse, fillcolor=\"#fff4e0\", color=\"#c08a2d\", label={}];",
            q(e),
            q(e.trim_end_matches("[External]"))
        );
    }
    for c in conns {
        let ports = c.ports.to_string();
        if c.http.is_empty() {
            let _ = writeln!(
                s,
                "  {} -> {} [label={}];",
                q(&c.src),
                q(&c.dst),
                q(&short(&ports, 60))
            );
        } else {
            let http: Vec<String> = c
                .http
                .iter()
                .map(|(p, r)| format!("TCP {p} HTTP: {}", short(r, 80)))
                .collect();
            let _ = writeln!(
                s,
                "  {} -> {} [label={}, color=\"#7b3fa0\", fontcolor=\"#7b3fa0\", penwidth=1.6];",
                q(&c.src),
                q(&c.dst),
                q(&format!("{}\n{}", short(&ports, 60), http.join("\n")))
            );
        }
    }
    let _ = writeln!(s, "}}");
    s
}

/// Renders DOT with Graphviz (`dot -T<format>`).
pub fn render_dot(dot: &str, format: &str) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running Graphviz `dot` (Debian package graphviz): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot.as_bytes())
            .map_err(|e| format!("writing to dot: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("dot: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// A self-contained HTML page: the SVG graph and the connection list.
pub fn to_html(conns: &[Connection], svg: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let svg = svg.find("<svg").map_or(svg, |i| &svg[i..]);
    let mut rows = String::new();
    for c in conns {
        rows.push_str(&format!("<li><code>{}</code></li>\n", esc(&c.to_string())));
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Allowed connections</title>\n<style>body{{font-family:Helvetica,Arial,sans-serif;margin:2em}} svg{{max-width:100%;height:auto}}</style></head>\n<body><h1>Allowed connections</h1>\n{svg}\n<h2>List</h2><ul>\n{rows}</ul></body></html>\n"
    )
}
