//! Connections added, removed and changed between two policy sets (and topologies).
//!
//! Both sides are listed with [`crate::connections`] over one common partition of the
//! external address space (the cuts of both sides' ipBlocks), so an external range means
//! the same addresses on both sides, then compared pair by pair. The text format follows
//! netpol-analyzer's `diff`:
//!
//! ```text
//! Connectivity diff:
//! diff-type: changed, source: a/x[Deployment], destination: a/y[Deployment], ref1: TCP 80, ref2: All Connections
//! diff-type: added, source: ..., ref1: No Connections, ref2: UDP 53, workloads-diff-info: workload a/z[Pod] added
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use policy_compiler::Direction;
use serde::Serialize;

use crate::analysis::Analysis;
use crate::connections::{self, Cuts};
use crate::output::Progress;
use crate::portset::PortSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffType {
    Changed,
    Added,
    Removed,
}

impl fmt::Display for DiffType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiffType::Changed => "changed",
            DiffType::Added => "added",
            DiffType::Removed => "removed",
        })
    }
}

/// One pair whose connectivity differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnDiff {
    pub diff_type: DiffType,
    pub src: String,
    pub dst: String,
    /// Allowed before (`--file`) and after (`--against`).
    pub old: PortSet,
    pub new: PortSet,
    /// HTTP rules per L7-filtered TCP port, before and after (see [`connections::Connection`]).
    pub old_http: Vec<(u16, String)>,
    pub new_http: Vec<(u16, String)>,
    /// `workload X added` / `workload X removed` when an end exists on one side only.
    pub workloads_info: Option<String>,
}

impl fmt::Display for ConnDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "diff-type: {}, source: {}, destination: {}, ref1: {}, ref2: {}",
            self.diff_type, self.src, self.dst, self.old, self.new
        )?;
        if self.old_http != self.new_http {
            let http = |h: &[(u16, String)]| {
                if h.is_empty() {
                    "none".to_string()
                } else {
                    h.iter()
                        .map(|(p, r)| format!("TCP {p} {r}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            write!(
                f,
                ", http1: {}, http2: {}",
                http(&self.old_http),
                http(&self.new_http)
            )?;
        }
        if let Some(i) = &self.workloads_info {
            write!(f, ", workloads-diff-info: {i}")?;
        }
        Ok(())
    }
}

/// Compares the connections of `old` and `new`.
pub fn compute(old: &Analysis, new: &Analysis, progress: &Progress) -> Vec<ConnDiff> {
    let ranges = |dir: Direction| {
        let mut c = Cuts::of(old.cluster(), dir);
        c.merge(&Cuts::of(new.cluster(), dir));
        c.ranges()
    };
    let (src, dst) = (ranges(Direction::Ingress), ranges(Direction::Egress));
    let before = connections::compute_with_ranges(old, &src, &dst, progress);
    let after = connections::compute_with_ranges(new, &src, &dst, progress);
    progress.finish();
    let old_w: BTreeSet<&str> = old.workloads.iter().map(|w| w.display.as_str()).collect();
    let new_w: BTreeSet<&str> = new.workloads.iter().map(|w| w.display.as_str()).collect();
    type Side = (PortSet, Vec<(u16, String)>);
    let mut pairs: BTreeMap<(String, String), (Side, Side)> = BTreeMap::new();
    let empty = || {
        (
            (PortSet::empty(), Vec::new()),
            (PortSet::empty(), Vec::new()),
        )
    };
    for c in before {
        pairs.entry((c.src, c.dst)).or_insert_with(empty).0 = (c.ports, c.http);
    }
    for c in after {
        pairs.entry((c.src, c.dst)).or_insert_with(empty).1 = (c.ports, c.http);
    }
    let info = |src: &str, dst: &str| -> Option<String> {
        let only = |set_a: &BTreeSet<&str>, set_b: &BTreeSet<&str>| -> Vec<String> {
            [src, dst]
                .iter()
                .filter(|n| set_a.contains(**n) && !set_b.contains(**n))
                .map(|n| n.to_string())
                .collect()
        };
        let added = only(&new_w, &old_w);
        let removed = only(&old_w, &new_w);
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("workload {} added", added.join(" and ")));
        }
        if !removed.is_empty() {
            parts.push(format!("workload {} removed", removed.join(" and ")));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    let mut out: Vec<ConnDiff> = pairs
        .into_iter()
        .filter(|(_, (o, n))| o != n)
        .map(|((src, dst), ((o, old_http), (n, new_http)))| {
            let diff_type = if o.is_empty() {
                DiffType::Added
            } else if n.is_empty() {
                DiffType::Removed
            } else {
                DiffType::Changed
            };
            let workloads_info = info(&src, &dst);
            ConnDiff {
                diff_type,
                src,
                dst,
                old: o,
                new: n,
                old_http,
                new_http,
                workloads_info,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.diff_type, a.src.as_bytes(), a.dst.as_bytes()).cmp(&(
            b.diff_type,
            b.src.as_bytes(),
            b.dst.as_bytes(),
        ))
    });
    out
}

/// `Connectivity diff:` and one line per difference; `No connections diff` when equal.
pub fn to_text(d: &[ConnDiff]) -> String {
    if d.is_empty() {
        return "No connections diff\n".to_string();
    }
    let mut s = String::from("Connectivity diff:\n");
    for c in d {
        s.push_str(&c.to_string());
        s.push('\n');
    }
    s
}

/// `[{"diff_type", "src", "dst", "ref1", "ref2", "ref1_ports", "ref2_ports", "workloads_diff_info"}]`.
pub fn to_json(d: &[ConnDiff]) -> serde_json::Value {
    serde_json::Value::Array(
        d.iter()
            .map(|c| {
                serde_json::json!({
                    "diff_type": c.diff_type,
                    "src": c.src,
                    "dst": c.dst,
                    "ref1": c.old.to_string(),
                    "ref2": c.new.to_string(),
                    "ref1_ports": c.old.to_json(),
                    "ref2_ports": c.new.to_json(),
                    "workloads_diff_info": c.workloads_info,
                })
            })
            .collect(),
    )
}
