//! Reachability truth tables between all workloads, Kubernetes e2e style: rows are
//! sources, columns destinations, `.` allowed and `X` denied, one table per probe
//! (a port/protocol, or "any": some port of some protocol is allowed).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use policy_compiler::eval::maps;
use policy_compiler::{Direction, Protocol};
use serde::Serialize;

use crate::analysis::Analysis;
use crate::connections::{AnswerTable, Node, answer_table, workload_nodes};
use crate::output::Progress;
use crate::par;
use crate::portset::{self, DirectionAnswers, PortSet};

/// What one table asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Probe {
    /// One destination port of one protocol.
    Port { port: u16, protocol: Protocol },
    /// Any port of any protocol.
    Any,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Port { port, protocol } => write!(f, "{port}/{protocol}"),
            Probe::Any => f.write_str("any port"),
        }
    }
}

impl FromStr for Probe {
    type Err = String;

    /// `80`, `80/TCP`, `53/udp`, or `any`.
    fn from_str(s: &str) -> Result<Probe, String> {
        if s.eq_ignore_ascii_case("any") {
            return Ok(Probe::Any);
        }
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto),
            None => (s, "TCP"),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {port:?} in {s:?}: expected 1-65535"))?;
        let protocol = Protocol::from_name(proto)
            .filter(|p| p.has_ports())
            .ok_or_else(|| {
                format!("invalid protocol {proto:?} in {s:?}: expected TCP, UDP or SCTP")
            })?;
        Ok(Probe::Port { port, protocol })
    }
}

/// One truth table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    pub probe: Probe,
    /// `allowed[from][to]`, indices into [`Matrix::workloads`].
    pub allowed: Vec<Vec<bool>>,
    /// `http[from][to]`: allowed through the L7 proxy (its HTTP rules decide each request).
    pub http: Vec<Vec<bool>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Workload names (`ns/name[Kind]`), the order of rows and columns.
    pub workloads: Vec<String>,
    pub tables: Vec<TruthTable>,
}

/// Computes one table per probe (all workloads, including each workload to itself).
///
/// The allowed port sets of every (subject, peer) are computed once from the compiled maps
/// (see [`crate::portset`]); each probe is then a membership test per cell.
pub fn compute(a: &Analysis, probes: &[Probe], progress: &Progress) -> Matrix {
    let nodes = workload_nodes(a);
    progress.add_length((nodes.len() * probes.len()) as u64);
    let t = answer_table(a, &nodes, portset::direction_port_sets);
    let tables = probes
        .iter()
        .map(|probe| {
            let allowed = match *probe {
                Probe::Port { port, protocol } => {
                    fill(&nodes, &t, progress, |e: &Arc<PortSet>, i| {
                        e.contains(protocol, port) && i.contains(protocol, port)
                    })
                }
                Probe::Any => fill(&nodes, &t, progress, |e: &Arc<PortSet>, i| e.intersects(i)),
            };
            let http = http_cells(a, &nodes, probe, &allowed);
            TruthTable {
                probe: *probe,
                allowed,
                http,
            }
        })
        .collect();
    progress.finish();
    Matrix {
        workloads: nodes.into_iter().map(|n| n.name).collect(),
        tables,
    }
}

/// Which allowed cells of a TCP port probe a side sends to the L7 proxy.
fn http_cells(
    a: &Analysis,
    nodes: &[Node],
    probe: &Probe,
    allowed: &[Vec<bool>],
) -> Vec<Vec<bool>> {
    let Probe::Port {
        port,
        protocol: Protocol::TCP,
    } = *probe
    else {
        return allowed.iter().map(|r| vec![false; r.len()]).collect();
    };
    let engine = &a.engine;
    let redirects = |subject: Option<u32>, peer: Option<u32>, dir: Direction| match (
        subject.and_then(|s| engine.policy_for_identity(s)),
        peer,
    ) {
        (Some(p), Some(peer)) => {
            !p.l7.is_empty() && maps::l7_set_at(p, peer, dir, Protocol::TCP, port).is_some()
        }
        _ => false,
    };
    allowed
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(|(j, ok)| {
                    *ok && (redirects(nodes[i].subject, nodes[j].peer_id, Direction::Egress)
                        || redirects(nodes[j].subject, nodes[i].peer_id, Direction::Ingress))
                })
                .collect()
        })
        .collect()
}

fn fill<T: Sync>(
    nodes: &[Node],
    table: &AnswerTable<T>,
    progress: &Progress,
    both: impl Fn(&T, &T) -> bool + Sync,
) -> Vec<Vec<bool>> {
    let answers = |n: &Node, dir: Direction| -> Option<&DirectionAnswers<T>> {
        n.subject
            .and_then(|s| table.get(&s))
            .map(|a| &a[dir as usize])
    };
    let ingress: Vec<Option<&DirectionAnswers<T>>> = nodes
        .iter()
        .map(|n| answers(n, Direction::Ingress))
        .collect();
    let both = &both;
    par::map(nodes, |src| {
        let row = match (answers(src, Direction::Egress), src.peer_id) {
            (Some(eg), Some(src_id)) => nodes
                .iter()
                .zip(&ingress)
                .map(|(dst, ing)| match (ing, dst.peer_id) {
                    (Some(ing), Some(dst_id)) => both(eg.for_peer(dst_id), ing.for_peer(src_id)),
                    _ => false,
                })
                .collect(),
            _ => vec![false; nodes.len()],
        };
        progress.inc(1);
        row
    })
}

/// Tab-separated tables: a `-` corner, destinations across, one row per source.
pub fn to_text(m: &Matrix) -> String {
    let mut s = String::new();
    for (i, t) in m.tables.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&format!(
            "Reachability on {} (rows: from, columns: to; . allowed, X denied{}):\n",
            t.probe,
            if t.http.iter().flatten().any(|h| *h) {
                ", H allowed through the L7 proxy: HTTP rules decide each request"
            } else {
                ""
            }
        ));
        s.push('-');
        for w in &m.workloads {
            s.push('\t');
            s.push_str(w);
        }
        s.push('\n');
        for ((from, row), http) in m.workloads.iter().zip(&t.allowed).zip(&t.http) {
            s.push_str(from);
            for (ok, h) in row.iter().zip(http) {
                s.push_str(match (ok, h) {
                    (true, true) => "\tH",
                    (true, false) => "\t.",
                    _ => "\tX",
                });
            }
            s.push('\n');
        }
    }
    s
}

/// `{"workloads": [...], "tables": [{"port", "protocol", "allowed": [[bool]]}]}`; rows are
/// sources, columns destinations, in `workloads` order.
pub fn to_json(m: &Matrix) -> serde_json::Value {
    let tables: Vec<serde_json::Value> = m
        .tables
        .iter()
        .map(|t| {
            let (port, protocol) = match t.probe {
                Probe::Port { port, protocol } => (
                    serde_json::json!(port),
                    serde_json::json!(protocol.to_string()),
                ),
                Probe::Any => (serde_json::json!("any"), serde_json::json!("any")),
            };
            serde_json::json!({
                "port": port,
                "protocol": protocol,
                "allowed": t.allowed,
                "http": t.http,
            })
        })
        .collect();
    serde_json::json!({ "workloads": m.workloads, "tables": tables })
}
