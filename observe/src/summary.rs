//! `--summary`: who talked to whom, what was denied, which policies decided, over the
//! selected flows; as text, JSON, or a Graphviz flow graph (`-o dot`, `-o svg`).
//!
//! Decisions are flow lines of kind `new_flow`, once each (the policy-verdict line that
//! precedes a policy drop is not counted again; `ct_close` and `revoked` lines are not
//! decisions); a connection is decided at the source's egress and the destination's
//! ingress, so it is up to two decisions. Talkers, denied pairs and the graph count
//! connections (one 5-tuple) by their outcome: denied if a hook denied it, else audit if a
//! hook audited it, else allowed. Policy hits count decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::json;

use crate::schema::{EVENT_TYPE_POLICY_VERDICT, Flow};

/// What a decision was, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Allowed,
    Audit,
    Denied,
}

impl Outcome {
    fn of(f: &Flow) -> Outcome {
        match f.verdict.as_ref() {
            "DROPPED" => Outcome::Denied,
            "AUDIT" => Outcome::Audit,
            _ => Outcome::Allowed,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub allowed: u64,
    pub denied: u64,
    pub audit: u64,
}

impl Counts {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Allowed => self.allowed += 1,
            Outcome::Denied => self.denied += 1,
            Outcome::Audit => self.audit += 1,
        }
    }
    pub fn total(&self) -> u64 {
        self.allowed + self.denied + self.audit
    }
}

/// (source, destination, port/proto).
type DeniedKey = (String, String, String);
/// Denials and the policies that denied.
type DeniedBy = (u64, BTreeSet<String>);
/// (source, destination, port/proto, source address:port): one connection.
type ConnKey = (String, String, String, String);

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub decisions: u64,
    pub by_verdict: BTreeMap<String, u64>,
    pub lost: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    /// (source, destination) -> counts.
    pub pairs: BTreeMap<(String, String), Counts>,
    /// Denied (source, destination, port/proto) -> (count, policies).
    pub denied: BTreeMap<DeniedKey, DeniedBy>,
    /// Policy -> counts of decisions naming it.
    pub policies: BTreeMap<String, Counts>,
    /// (source, destination, outcome) -> ports, for the graph.
    pub edges: BTreeMap<(String, String, Outcome), (u64, BTreeSet<String>)>,
    /// Node -> namespace, for the graph.
    pub nodes: BTreeMap<String, String>,
    /// (source, destination, port/proto, source address and port) -> worst outcome and
    /// the policies that denied it.
    conns: BTreeMap<ConnKey, (Outcome, BTreeSet<String>)>,
}

fn name(ep: &crate::schema::Endpoint, ip: &str) -> String {
    if !ep.pod_name.is_empty() {
        format!("{}/{}", ep.namespace, ep.pod_name)
    } else if let Some(l) = ep.labels.first() {
        if l.starts_with("cidr:") || l.starts_with("reserved:world") {
            format!("{ip} ({l})")
        } else {
            l.to_string()
        }
    } else {
        ip.to_string()
    }
}

impl Summary {
    pub fn lost(&mut self, n: u64) {
        self.lost += n;
    }

    pub fn add(&mut self, f: &Flow) {
        let kind = f.details().map_or("", |d| d.kind.as_ref());
        let twin = f.event_type.r#type == EVENT_TYPE_POLICY_VERDICT && f.verdict == "DROPPED";
        if twin || !(kind.is_empty() || kind == "new_flow") {
            return;
        }
        self.decisions += 1;
        *self.by_verdict.entry(f.verdict.to_string()).or_default() += 1;
        if self.first.as_ref().is_none_or(|t| *f.time < **t) {
            self.first = Some(f.time.to_string());
        }
        if self.last.as_ref().is_none_or(|t| *f.time > **t) {
            self.last = Some(f.time.to_string());
        }
        let (sip, dip) =
            f.ip.as_ref()
                .map_or(("", ""), |i| (i.source.as_ref(), i.destination.as_ref()));
        let (src, dst) = (name(&f.source, sip), name(&f.destination, dip));
        self.nodes
            .entry(src.clone())
            .or_insert_with(|| f.source.namespace.to_string());
        self.nodes
            .entry(dst.clone())
            .or_insert_with(|| f.destination.namespace.to_string());
        let o = Outcome::of(f);
        let (proto, sport, dport) = f.l4_ports();
        let port = if dport != 0 {
            format!("{dport}/{proto}")
        } else if proto.is_empty() {
            "other".to_string()
        } else {
            proto.to_string()
        };
        let c = self
            .conns
            .entry((src, dst, port, format!("{sip}:{sport}")))
            .or_insert((o, BTreeSet::new()));
        c.0 = c.0.max(o);
        if o == Outcome::Denied {
            c.1.extend(f.denied_by().map(|p| p.display()));
        }
        for p in f.policies().map(|p| p.display()).collect::<BTreeSet<_>>() {
            self.policies.entry(p).or_default().add(o);
        }
    }

    /// Adds another summary's counts (of other lines) to this one, before
    /// [`Summary::finish`].
    pub fn merge(&mut self, o: Summary) {
        self.decisions += o.decisions;
        for (v, n) in o.by_verdict {
            *self.by_verdict.entry(v).or_default() += n;
        }
        self.lost += o.lost;
        if let Some(t) = o.first
            && self.first.as_ref().is_none_or(|f| t < *f)
        {
            self.first = Some(t);
        }
        if let Some(t) = o.last
            && self.last.as_ref().is_none_or(|l| t > *l)
        {
            self.last = Some(t);
        }
        for (p, c) in o.policies {
            let e = self.policies.entry(p).or_default();
            e.allowed += c.allowed;
            e.denied += c.denied;
            e.audit += c.audit;
        }
        for (n, ns) in o.nodes {
            self.nodes.entry(n).or_insert(ns);
        }
        for (k, (out, by)) in o.conns {
            let e = self.conns.entry(k).or_insert((out, BTreeSet::new()));
            e.0 = e.0.max(out);
            e.1.extend(by);
        }
    }

    /// Folds connections into talkers, denied pairs and edges; call once after the last
    /// [`Summary::add`].
    pub fn finish(&mut self) {
        for ((src, dst, port, _), (o, by)) in std::mem::take(&mut self.conns) {
            self.pairs
                .entry((src.clone(), dst.clone()))
                .or_default()
                .add(o);
            if o == Outcome::Denied {
                let e = self
                    .denied
                    .entry((src.clone(), dst.clone(), port.clone()))
                    .or_default();
                e.0 += 1;
                e.1.extend(by);
            }
            let e = self.edges.entry((src, dst, o)).or_default();
            e.0 += 1;
            e.1.insert(port);
        }
    }

    fn top_pairs(&self, n: usize) -> Vec<(&(String, String), &Counts)> {
        let mut v: Vec<_> = self.pairs.iter().collect();
        v.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    fn top_denied(&self, n: usize) -> Vec<(&DeniedKey, &DeniedBy)> {
        let mut v: Vec<_> = self.denied.iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    pub fn text(&self, top: usize) -> String {
        let mut s = String::new();
        let verdicts: Vec<String> = self
            .by_verdict
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "decisions: {} ({}); events lost: {}",
            self.decisions,
            if verdicts.is_empty() {
                "none".to_string()
            } else {
                verdicts.join(", ")
            },
            self.lost
        );
        if let (Some(a), Some(b)) = (&self.first, &self.last) {
            let _ = writeln!(s, "from {a} to {b}");
        }
        let _ = writeln!(
            s,
            "\ntop talkers (source -> destination: connections; allowed/denied/audit)"
        );
        for ((a, b), c) in self.top_pairs(top) {
            let _ = writeln!(
                s,
                "  {a} -> {b}: {}; {}/{}/{}",
                c.total(),
                c.allowed,
                c.denied,
                c.audit
            );
        }
        let _ = writeln!(
            s,
            "\ntop denied (source -> destination port: connections; denied by)"
        );
        if self.denied.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for ((a, b, port), (n, by)) in self.top_denied(top) {
            let by: Vec<&str> = by.iter().map(String::as_str).collect();
            let _ = writeln!(s, "  {a} -> {b} {port}: {n}; {}", by.join(", "));
        }
        let _ = writeln!(s, "\npolicy hits (policy: decisions allowed/denied/audit)");
        if self.policies.is_empty() {
            let _ = writeln!(s, "  none");
        }
        let mut pols: Vec<_> = self.policies.iter().collect();
        pols.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
        for (p, c) in pols {
            let _ = writeln!(s, "  {p}: {}/{}/{}", c.allowed, c.denied, c.audit);
        }
        s
    }

    pub fn json(&self, top: usize) -> serde_json::Value {
        json!({
            "decisions": self.decisions,
            "by_verdict": self.by_verdict,
            "events_lost": self.lost,
            "first": self.first,
            "last": self.last,
            "top_talkers": self.top_pairs(top).iter().map(|((a, b), c)| json!({
                "source": a, "destination": b, "connections": c.total(),
                "allowed": c.allowed, "denied": c.denied, "audit": c.audit,
            })).collect::<Vec<_>>(),
            "top_denied": self.top_denied(top).iter().map(|((a, b, p), (n, by))| json!({
                "source": a, "destination": b, "port": p, "denials": n, "by": by,
            })).collect::<Vec<_>>(),
            "policies": self.policies.iter().map(|(p, c)| (p.clone(), json!({
                "allowed": c.allowed, "denied": c.denied, "audit": c.audit,
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// A Graphviz flow graph: a box per endpoint (grouped by namespace), an edge per
    /// (source, destination, outcome) labelled with its ports and count; green allowed,
    /// red denied, orange audit.
    pub fn dot(&self) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let mut s = String::from(
            "digraph flows {\n  rankdir=LR;\n  nodesep=0.5;\n  ranksep=2.2;\n  graph [fontname=\"Helvetica\", label=\"palisade observe --summary: connections (green allowed, red denied, orange audit)\", labelloc=t];\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f5f5f5\", fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
        );
        let mut by_ns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (n, ns) in &self.nodes {
            by_ns.entry(ns.as_str()).or_default().push(n.as_str());
        }
        for (i, (ns, nodes)) in by_ns.iter().enumerate() {
            if ns.is_empty() {
                for n in nodes {
                    let _ = writeln!(s, "  {} [fillcolor=\"#e8eef7\"];", q(n));
                }
                continue;
            }
            let _ = writeln!(
                s,
                "  subgraph cluster_{i} {{\n    label={};\n    style=dashed;",
                q(&format!("namespace {ns}"))
            );
            for n in nodes {
                let _ = writeln!(s, "    {};", q(n));
            }
            s.push_str("  }\n");
        }
        for ((a, b, o), (n, ports)) in &self.edges {
            let (color, word) = match o {
                Outcome::Allowed => ("#2e7d32", "allowed"),
                Outcome::Denied => ("#c62828", "denied"),
                Outcome::Audit => ("#ef6c00", "audit"),
            };
            let mut ports: Vec<&str> = ports.iter().map(String::as_str).collect();
            if ports.len() > 3 {
                ports.truncate(3);
                ports.push("…");
            }
            let _ = writeln!(
                s,
                "  {} -> {} [color=\"{color}\", fontcolor=\"{color}\", penwidth={:.1}, label={}{}];",
                q(a),
                q(b),
                1.0 + (*n as f64).log10().max(0.0),
                q(&format!("{} {word} ×{n}", ports.join(", "))),
                if *o == Outcome::Denied {
                    ", style=dashed"
                } else {
                    ""
                }
            );
        }
        s.push_str("}\n");
        s
    }
}
