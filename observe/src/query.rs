//! Flow filters with hubble's meaning: values of one flag are alternatives (OR), different
//! flags must all hold (AND). Each filter also names byte strings one of which a matching
//! line must contain, so most lines are rejected without being parsed.

use memchr::memmem;

use crate::schema::{EVENT_TYPE_DROP, EVENT_TYPE_L7, EVENT_TYPE_POLICY_VERDICT, Flow};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("--{flag} {value:?}: {why}")]
    Value {
        flag: &'static str,
        value: String,
        why: String,
    },
}

fn bad(flag: &'static str, value: &str, why: impl Into<String>) -> QueryError {
    QueryError::Value {
        flag,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Which side of a flow a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    From,
    To,
    Either,
}

/// A pod as `--pod ns/name` or `--pod name` (any namespace), a name prefix as hubble takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: Option<String>,
    pub name: String,
}

/// A policy as `--policy`: `ns/name` (any kind), `Kind ns/name`, `Kind name` (cluster
/// scope) or `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicySpec {
    pub fn parse(s: &str) -> Result<PolicySpec, QueryError> {
        let s = s.trim();
        let (kind, rest) = match s.split_once(' ') {
            Some((k, r)) => (Some(k.to_string()), r.trim()),
            None => (None, s),
        };
        let (namespace, name) = match rest.split_once('/') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, rest.to_string()),
        };
        if name.is_empty() || name.contains('/') || name.contains(' ') {
            return Err(bad(
                "policy",
                s,
                "expected ns/name, Kind ns/name or Kind name",
            ));
        }
        Ok(PolicySpec {
            kind,
            namespace,
            name,
        })
    }

    fn matches(&self, p: &crate::schema::PolicyRef) -> bool {
        p.name == self.name
            && self.namespace.as_ref().is_none_or(|ns| *ns == p.namespace)
            && self
                .kind
                .as_ref()
                .is_none_or(|k| k.eq_ignore_ascii_case(&p.kind))
    }
}

/// One filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Verdict(Vec<String>),
    /// Hubble event types: `drop` (1), `policy-verdict` (5).
    Type(Vec<u8>),
    Pod(Side, Vec<PodSpec>),
    Namespace(Side, Vec<String>),
    Ip(Side, Vec<String>),
    Port(Side, Vec<u16>),
    Protocol(Vec<String>),
    Label(Side, Vec<String>),
    DropReason(Vec<String>),
    Direction(Vec<String>),
    Node(Vec<String>),
    Uuid(Vec<String>),
    Policy(Vec<PolicySpec>),
    Rule(Vec<String>),
    /// The tier whose rule decided: `admin`, `networkpolicy`, `baseline` (lower case).
    Tier(Vec<String>),
    /// `--since`/`--until` as RFC 3339 strings in UTC with nanoseconds, compared as
    /// text (every time in the log has that one form).
    Since(String),
    Until(String),
}

/// All the filters of one query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub filters: Vec<Filter>,
}

fn side_ep<'f, 'a>(f: &'f Flow<'a>, side: Side) -> Vec<&'f crate::schema::Endpoint<'a>> {
    match side {
        Side::From => vec![&f.source],
        Side::To => vec![&f.destination],
        Side::Either => vec![&f.source, &f.destination],
    }
}

fn label_matches(labels: &[std::borrow::Cow<'_, str>], want: &str) -> bool {
    // hubble: `app=web` matches `k8s:app=web` (any source); `k8s:app=web` only that; a
    // key alone matches any value.
    labels.iter().any(|l| {
        let l: &str = l;
        let bare = l.split_once(':').map_or(l, |(_, rest)| rest);
        let cand = if want.contains(':') { l } else { bare };
        cand == want || cand.split_once('=').is_some_and(|(k, _)| k == want)
    })
}

impl Filter {
    pub fn matches(&self, f: &Flow) -> bool {
        match self {
            Filter::Verdict(v) => v.iter().any(|x| x.eq_ignore_ascii_case(&f.verdict)),
            Filter::Type(t) => t.contains(&f.event_type.r#type),
            Filter::Pod(side, pods) => side_ep(f, *side).iter().any(|ep| {
                pods.iter().any(|p| {
                    p.namespace.as_ref().is_none_or(|ns| *ns == ep.namespace)
                        && !ep.pod_name.is_empty()
                        && ep.pod_name.starts_with(&p.name)
                })
            }),
            Filter::Namespace(side, nss) => side_ep(f, *side)
                .iter()
                .any(|ep| nss.iter().any(|n| *n == *ep.namespace)),
            Filter::Ip(side, ips) => {
                let (s, d) =
                    f.ip.as_ref()
                        .map_or(("", ""), |ip| (ip.source.as_ref(), ip.destination.as_ref()));
                ips.iter().any(|ip| match side {
                    Side::From => ip == s,
                    Side::To => ip == d,
                    Side::Either => ip == s || ip == d,
                })
            }
            Filter::Port(side, ports) => {
                let (proto, sp, dp) = f.l4_ports();
                !proto.is_empty()
                    && ports.iter().any(|p| match side {
                        Side::From => *p == sp,
                        Side::To => *p == dp,
                        Side::Either => *p == sp || *p == dp,
                    })
            }
            Filter::Protocol(ps) => {
                let (proto, _, _) = f.l4_ports();
                ps.iter().any(|p| {
                    p.eq_ignore_ascii_case(proto)
                        || (p.eq_ignore_ascii_case("icmp") && proto.starts_with("ICMP"))
                })
            }
            Filter::Label(side, ls) => side_ep(f, *side)
                .iter()
                .any(|ep| ls.iter().any(|l| label_matches(&ep.labels, l))),
            Filter::DropReason(rs) => rs
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&f.drop_reason_desc)),
            Filter::Direction(ds) => ds
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&f.traffic_direction)),
            Filter::Node(ns) => ns.iter().any(|n| *n == *f.node_name),
            Filter::Uuid(us) => us.iter().any(|u| *u == *f.uuid),
            Filter::Policy(ps) => f.policies().any(|p| ps.iter().any(|s| s.matches(p))),
            Filter::Rule(rs) => f
                .details()
                .is_some_and(|d| rs.iter().any(|r| *r == *d.rule)),
            Filter::Tier(ts) => f
                .details()
                .is_some_and(|d| ts.iter().any(|t| *t == *d.tier)),
            Filter::Since(t) => f.time.as_ref() >= t.as_str(),
            Filter::Until(t) => f.time.as_ref() <= t.as_str(),
        }
    }

    /// Byte strings one of which a line this filter accepts must contain (`None`: no such
    /// shortcut). Necessary, not sufficient: the parsed flow is checked after.
    fn needles(&self) -> Option<Vec<Vec<u8>>> {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let v = |xs: Vec<String>| Some(xs.into_iter().map(String::into_bytes).collect());
        match self {
            Filter::Verdict(vs) => v(vs
                .iter()
                .map(|x| format!("\"verdict\":{}", q(&x.to_ascii_uppercase())))
                .collect()),
            Filter::DropReason(rs) => v(rs
                .iter()
                .map(|x| format!("\"drop_reason_desc\":{}", q(&x.to_ascii_uppercase())))
                .collect()),
            Filter::Pod(_, ps) => v(ps
                .iter()
                .map(|p| format!("\"pod_name\":\"{}", p.name))
                .collect()),
            Filter::Namespace(_, ns) => v(ns
                .iter()
                .map(|n| format!("\"namespace\":{}", q(n)))
                .collect()),
            Filter::Ip(_, ips) => v(ips.iter().map(|i| q(i)).collect()),
            Filter::Policy(ps) => v(ps
                .iter()
                .map(|p| format!("\"name\":{}", q(&p.name)))
                .collect()),
            Filter::Rule(rs) => v(rs.iter().map(|r| format!("\"rule\":{}", q(r))).collect()),
            Filter::Tier(ts) => v(ts.iter().map(|t| format!("\"tier\":{}", q(t))).collect()),
            Filter::Uuid(us) => v(us.iter().map(|u| format!("\"uuid\":{}", q(u))).collect()),
            Filter::Port(_, ps) => v(ps.iter().map(|p| format!("_port\":{p}")).collect()),
            _ => None,
        }
    }
}

impl Filter {
    /// Whether the needles decide this filter for a flow line on their own: the key is
    /// unique in a flow line (`verdict`, `drop_reason_desc`, `extensions.value.rule`,
    /// `extensions.value.tier`, `uuid`) and a value is written one way (the renderer's serde_json: a string with a
    /// quote is escaped, so `"key":"value"` cannot occur inside another string).
    fn needles_exact(&self) -> bool {
        match self {
            Filter::Verdict(vs) | Filter::DropReason(vs) => {
                vs.iter().all(|v| *v == v.to_ascii_uppercase())
            }
            Filter::Rule(_) | Filter::Uuid(_) | Filter::Tier(_) => true,
            _ => false,
        }
    }
}

impl Query {
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether [`Prefilter::may_match`] alone decides a flow line (no parse needed when the
    /// line is printed as logged).
    pub fn prefilter_exact(&self) -> bool {
        !self.filters.is_empty() && self.filters.iter().all(Filter::needles_exact)
    }

    pub fn matches(&self, f: &Flow) -> bool {
        self.filters.iter().all(|x| x.matches(f))
    }

    /// A prefilter over raw lines.
    pub fn prefilter(&self) -> Prefilter {
        Prefilter {
            groups: self
                .filters
                .iter()
                .filter_map(Filter::needles)
                .map(|ns| {
                    ns.iter()
                        .map(|n| memmem::Finder::new(n).into_owned())
                        .collect()
                })
                .collect(),
        }
    }
}

/// Every group must have one needle in the line.
#[derive(Debug)]
pub struct Prefilter {
    groups: Vec<Vec<memmem::Finder<'static>>>,
}

impl Prefilter {
    pub fn may_match(&self, line: &[u8]) -> bool {
        self.groups
            .iter()
            .all(|g| g.iter().any(|f| f.find(line).is_some()))
    }
}

/// `--type` values, as hubble names them.
pub fn event_type(s: &str) -> Result<u8, QueryError> {
    match s.to_ascii_lowercase().as_str() {
        "drop" => Ok(EVENT_TYPE_DROP),
        "policy-verdict" => Ok(EVENT_TYPE_POLICY_VERDICT),
        // The L7 records of the proxy (`enforcer/src/events/l7.rs`).
        "l7" => Ok(EVENT_TYPE_L7),
        _ => Err(bad("type", s, "drop, policy-verdict or l7")),
    }
}

pub fn pod_spec(flag: &'static str, s: &str) -> Result<PodSpec, QueryError> {
    match s.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok(PodSpec {
            namespace: Some(ns.to_string()),
            name: n.to_string(),
        }),
        None if !s.is_empty() => Ok(PodSpec {
            namespace: None,
            name: s.to_string(),
        }),
        _ => Err(bad(flag, s, "expected [namespace/]pod")),
    }
}

pub fn verdict(s: &str) -> Result<String, QueryError> {
    let up = s.to_ascii_uppercase();
    match up.as_str() {
        "FORWARDED" | "DROPPED" | "AUDIT" | "REDIRECTED" | "ERROR" | "TRACED" | "TRANSLATED" => {
            Ok(up)
        }
        _ => Err(bad(
            "verdict",
            s,
            "one of FORWARDED, DROPPED, AUDIT, REDIRECTED",
        )),
    }
}

pub fn protocol(s: &str) -> Result<String, QueryError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" | "udp" | "sctp" | "icmp" | "icmpv4" | "icmpv6" => Ok(s.to_string()),
        _ => Err(bad(
            "protocol",
            s,
            "one of tcp, udp, sctp, icmp, icmpv4, icmpv6",
        )),
    }
}

pub fn direction(s: &str) -> Result<String, QueryError> {
    match s.to_ascii_lowercase().as_str() {
        "ingress" | "egress" => Ok(s.to_ascii_uppercase()),
        _ => Err(bad("traffic-direction", s, "ingress or egress")),
    }
}

/// `--rule`: the rule text as the log writes it (`ns/policy ingress rule #0`), or
/// `ns/policy:ingress:0`.
pub fn rule(s: &str) -> Result<String, QueryError> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [policy, dir, idx]
            if matches!(*dir, "ingress" | "egress") && idx.parse::<u32>().is_ok() =>
        {
            Ok(format!("{policy} {dir} rule #{idx}"))
        }
        _ if s.contains(" rule #") || s == "not isolated" || s == "from the node" => {
            Ok(s.to_string())
        }
        _ => Err(bad(
            "rule",
            s,
            "expected `ns/policy:ingress:0` or `ns/policy ingress rule #0`",
        )),
    }
}
