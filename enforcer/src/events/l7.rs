//! L7 records: one verdict log line per HTTP request the proxy judged, as a Hubble flow of
//! `Type: L7` (Cilium's access-log records), so `hubble observe --type l7 --http-status 403`
//! selects them.
//!
//! - A request that was **forwarded** is one `RESPONSE` record: verdict `FORWARDED`, the
//!   upstream's status code and the latency, from the server to the client (`is_reply`), as
//!   Cilium writes responses.
//! - A request that was **denied** by a rule, denied by default, or **refused** (framing,
//!   normalization, unsupported protocol switch, no rules) is one `REQUEST` record: verdict
//!   `DROPPED` with the status the proxy answered, from the client to the server.
//!
//! Both carry the policy of every side that judged the request (`<direction>_allowed_by` /
//! `_denied_by`: the client's egress rules first, then the server's ingress rules, the
//! first refusal decides), and in `extensions` the deciding rule, the HTTP rule's index, the
//! normalized path the rules saw and, for a refusal, the reason. Pure: everything it needs
//! is passed in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use palisade_l7proxy::proxy::{Outcome, RequestRecord};
use policy_compiler::engine::l7::L7Origin;
use policy_compiler::model::Direction;
use policy_compiler::rules::RuleRef;
use serde::Serialize;
use serde_json::Value;

use super::clock::WallTime;
use super::render::{EVENT_TYPE_L7, EXTENSIONS_TYPE, EndpointOut, rule_text};
use super::resolve::{FlowEndpoint, FlowResolver};

/// One HTTP request the proxy judged, with the connection it came on.
#[derive(Debug, Clone)]
pub struct L7Event {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_identity: u32,
    pub server_identity: u32,
    /// Whose rules judged it, in the order they were asked (the client's egress, then the
    /// server's ingress); the last one decided. A request refused before any rule was read
    /// lists the sides that inspect its connection, without a rule. Empty: admitted by the
    /// L3/L4 rules alone (the policy no longer redirects the connection).
    pub sides: Vec<L7Side>,
    /// The policy revision the rules came from.
    pub revision: u64,
    pub record: RequestRecord,
}

/// One side's judgement of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7Side {
    pub direction: Direction,
    /// What this side's audit-mode HTTP rules would have done to a request its enforced rules
    /// let through (reported, not enforced: the record's verdict is `AUDIT`).
    pub audit: Option<L7AuditRefusal>,
    /// The policy rule (and HTTP rule) that decided on this side; `None` for a default deny,
    /// or when the request was refused before any rule was read.
    pub origin: Option<L7Origin>,
}

/// A refusal of audit-mode HTTP rules: the matcher's decision and the rule that made it
/// (none when no allow rule of theirs matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7AuditRefusal {
    pub decision: palisade_l7proxy::Decision,
    pub origin: Option<L7Origin>,
}

impl L7Event {
    /// The side whose answer stands: the last one asked.
    pub fn deciding(&self) -> Option<&L7Side> {
        self.sides.last()
    }
}

// The line as written: typed, so a record is serialized straight to text (no tree of
// `serde_json::Value`s built and dropped per request). Field order is the byte order of the
// keys, as the `Value`-built lines of the datapath's events have them.

#[derive(Serialize)]
struct LineOut<'a> {
    flow: FlowOut<'a>,
    node_name: &'a str,
    time: &'a str,
}

#[derive(Serialize)]
struct FlowOut<'a> {
    #[serde(rename = "IP")]
    ip: IpOut,
    #[serde(rename = "Summary")]
    summary: AsStr<Summary<'a>>,
    #[serde(rename = "Type")]
    ty: &'static str,
    destination: EndpointOut<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    egress_allowed_by: Vec<PolicyOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    egress_denied_by: Vec<PolicyOut<'a>>,
    event_type: EventTypeOut,
    extensions: ExtensionsOut<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ingress_allowed_by: Vec<PolicyOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ingress_denied_by: Vec<PolicyOut<'a>>,
    is_reply: bool,
    l4: L4Out,
    l7: L7Out<'a>,
    node_name: &'a str,
    source: EndpointOut<'a>,
    time: &'a str,
    traffic_direction: &'static str,
    uuid: &'a str,
    verdict: &'static str,
}

/// A value written as a JSON string through its `Display` (escaped as a `String` would be,
/// without building one).
struct AsStr<T>(T);

impl<T: std::fmt::Display> Serialize for AsStr<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `http://<host><target>`: the request's Host, else the server's address.
#[derive(Clone, Copy)]
struct Url<'a> {
    host: Option<&'a str>,
    server: std::net::IpAddr,
    target: &'a str,
}

impl std::fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host {
            Some(h) => write!(f, "http://{h}{}", self.target),
            None => write!(f, "http://{}{}", self.server, self.target),
        }
    }
}

/// `<version> <code><outcome> <ms>ms (<method> <url>)`.
struct Summary<'a> {
    version: &'a str,
    code: u16,
    /// After the code: "", " denied", " refused", " audit: would be denied".
    outcome: &'static str,
    millis: u128,
    method: &'a str,
    url: Url<'a>,
}

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}{} {}ms ({} {})",
            self.version, self.code, self.outcome, self.millis, self.method, self.url
        )
    }
}

#[derive(Serialize)]
struct IpOut {
    destination: AsStr<std::net::IpAddr>,
    #[serde(rename = "ipVersion")]
    ip_version: &'static str,
    source: AsStr<std::net::IpAddr>,
}

#[derive(Serialize)]
struct L4Out {
    #[serde(rename = "TCP")]
    tcp: TcpOut,
}

#[derive(Serialize)]
struct TcpOut {
    destination_port: u16,
    source_port: u16,
}

#[derive(Serialize)]
struct EventTypeOut {
    #[serde(rename = "type")]
    ty: u8,
}

#[derive(Serialize)]
struct L7Out<'a> {
    http: HttpOut<'a>,
    /// uint64 in the proto: protojson writes it as a string.
    latency_ns: AsStr<u128>,
    #[serde(rename = "type")]
    ty: &'static str,
}

#[derive(Serialize)]
struct HttpOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "str::is_empty")]
    method: &'a str,
    protocol: &'a str,
    url: AsStr<Url<'a>>,
}

#[derive(Serialize)]
struct PolicyOut<'a> {
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    revision: AsStr<u64>,
}

#[derive(Serialize)]
struct ExtensionsOut<'a> {
    #[serde(rename = "@type")]
    ty: &'static str,
    value: ExtOut<'a>,
}

#[derive(Serialize)]
struct ExtOut<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audit_would_deny: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_rule_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    l7_decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalized_path: Option<&'a str>,
    policy_revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_error: Option<&'a str>,
}

/// Builds the typed record; `keep` holds what it borrows (the resolved endpoints and rules).
fn l7_flow_out<'a>(
    ev: &'a L7Event,
    keep: &'a Resolved,
    node_name: &'a str,
    time: &'a str,
    uuid: &'a str,
) -> FlowOut<'a> {
    let r = &ev.record;
    let (forwarded, code) = match &r.outcome {
        Outcome::Forwarded { status, .. } => (true, *status),
        Outcome::Denied { status, .. } | Outcome::Refused { status, .. } => (false, *status),
    };
    // Responses travel from the server to the client.
    let (src, dst, sa, da) = if forwarded {
        (&*keep.server, &*keep.client, ev.server, ev.client)
    } else {
        (&*keep.client, &*keep.server, ev.client, ev.server)
    };
    let url = Url {
        host: r.host.as_deref(),
        server: ev.server.ip(),
        target: &r.target,
    };
    // Forwarded, but audit-mode HTTP rules would have refused it: reported as AUDIT, as the
    // datapath reports an audit-mode L3/L4 deny.
    let audit = forwarded && ev.sides.iter().any(|s| s.audit.is_some());
    let policy = |rule: &'a RuleRef| PolicyOut {
        kind: rule.policy.kind.as_str(),
        name: &rule.policy.name,
        namespace: &rule.policy.namespace,
        revision: AsStr(ev.revision),
    };
    let mut by: [Vec<PolicyOut<'a>>; 4] = Default::default(); // egress allowed/denied, ingress allowed/denied
    let slot = |d: Direction, allowed: bool| match (d, allowed) {
        (Direction::Egress, true) => 0,
        (Direction::Egress, false) => 1,
        (Direction::Ingress, true) => 2,
        (Direction::Ingress, false) => 3,
    };
    for (i, side) in ev.sides.iter().enumerate() {
        if let Some(rule) = &keep.side_rules[i] {
            // Every side before the last one allowed; the last one decided.
            let allowed = forwarded || i + 1 < ev.sides.len();
            by[slot(side.direction, allowed)].push(policy(rule));
        }
    }
    let mut would = Vec::new();
    if audit {
        for (i, side) in ev.sides.iter().enumerate() {
            let Some(a) = &side.audit else { continue };
            let rule = keep.audit_rules[i].as_deref();
            if let Some(rule) = rule {
                by[slot(side.direction, false)].push(policy(rule));
            }
            would.push(match (&a.decision, rule) {
                (palisade_l7proxy::Decision::NoMatch, _) => {
                    format!("{}: no audit-mode HTTP rule allows it", side.direction)
                }
                (d, Some(rule)) => format!("{}: {d:?} by {}", side.direction, rule_text(rule)),
                (d, None) => format!("{}: {d:?}", side.direction),
            });
        }
    }
    let [
        egress_allowed_by,
        egress_denied_by,
        ingress_allowed_by,
        ingress_denied_by,
    ] = by;
    let deciding = ev.deciding().copied();
    let summary = Summary {
        version: r.version,
        code,
        outcome: match &r.outcome {
            Outcome::Forwarded { .. } if audit => " audit: would be denied",
            Outcome::Forwarded { .. } => "",
            Outcome::Denied { .. } => " denied",
            Outcome::Refused { .. } => " refused",
        },
        millis: r.latency.as_millis(),
        method: if r.method.is_empty() { "?" } else { &r.method },
        url,
    };
    let origin = deciding.and_then(|s| s.origin);
    let rule = keep.deciding_rule.as_deref();
    FlowOut {
        ip: IpOut {
            destination: AsStr(da.ip()),
            ip_version: if ev.client.is_ipv6() { "IPv6" } else { "IPv4" },
            source: AsStr(sa.ip()),
        },
        summary: AsStr(summary),
        ty: "L7",
        destination: EndpointOut::from(dst),
        egress_allowed_by,
        egress_denied_by,
        event_type: EventTypeOut { ty: EVENT_TYPE_L7 },
        extensions: ExtensionsOut {
            ty: EXTENSIONS_TYPE,
            value: ExtOut {
                audit_would_deny: would,
                http_rule_index: origin.and_then(|o| o.http_index),
                l7_decision: match &r.outcome {
                    Outcome::Denied { decision, .. } => Some(format!("{decision:?}")),
                    _ => None,
                },
                normalized_path: r.path.as_deref(),
                policy_revision: ev.revision,
                refused: match &r.outcome {
                    Outcome::Refused { reason, .. } => Some(reason),
                    _ => None,
                },
                rule: rule.map(rule_text),
                rule_id: origin.map(|o| o.rule_id),
                rule_index: rule.map(|r| r.index),
                upstream_error: r.upstream_error.as_deref(),
            },
        },
        ingress_allowed_by,
        ingress_denied_by,
        is_reply: forwarded,
        l4: L4Out {
            tcp: TcpOut {
                destination_port: da.port(),
                source_port: sa.port(),
            },
        },
        l7: L7Out {
            http: HttpOut {
                code: (code != 0).then_some(code),
                method: &r.method,
                protocol: r.version,
                url: AsStr(url),
            },
            latency_ns: AsStr(r.latency.as_nanos()),
            ty: if forwarded { "RESPONSE" } else { "REQUEST" },
        },
        node_name,
        source: EndpointOut::from(src),
        time,
        traffic_direction: match deciding.map(|s| s.direction) {
            Some(Direction::Ingress) => "INGRESS",
            Some(Direction::Egress) | None => "EGRESS",
        },
        uuid,
        verdict: if audit {
            "AUDIT"
        } else if forwarded {
            "FORWARDED"
        } else {
            "DROPPED"
        },
    }
}

/// What a record borrows from the resolver.
struct Resolved {
    client: Rc<FlowEndpoint>,
    server: Rc<FlowEndpoint>,
    /// Per side: the rule that decided there, and the audit-mode rule that would refuse.
    side_rules: Vec<Option<Rc<RuleRef>>>,
    audit_rules: Vec<Option<Rc<RuleRef>>>,
    deciding_rule: Option<Rc<RuleRef>>,
}

/// Endpoints and rules already resolved for the L7 records of one batch, rendered with one
/// resolver: the requests of a connection name the same endpoints and rules, which are then
/// looked up (and their labels and names copied) once, not per request. Valid only with the
/// resolver it was filled from.
#[derive(Debug, Default)]
pub struct L7Memo {
    endpoints: HashMap<(u32, IpAddr), Rc<FlowEndpoint>>,
    rules: HashMap<u32, Option<Rc<RuleRef>>>,
}

impl L7Memo {
    fn endpoint(&mut self, r: &dyn FlowResolver, identity: u32, ip: IpAddr) -> Rc<FlowEndpoint> {
        self.endpoints
            .entry((identity, ip))
            .or_insert_with(|| Rc::new(r.endpoint(identity, Some(ip))))
            .clone()
    }

    fn rule(&mut self, r: &dyn FlowResolver, origin: Option<L7Origin>) -> Option<Rc<RuleRef>> {
        let id = origin?.rule_id;
        self.rules
            .entry(id)
            .or_insert_with(|| r.rule(id).map(Rc::new))
            .clone()
    }
}

fn resolve(ev: &L7Event, resolver: &dyn FlowResolver, memo: &mut L7Memo) -> Resolved {
    Resolved {
        client: memo.endpoint(resolver, ev.client_identity, ev.client.ip()),
        server: memo.endpoint(resolver, ev.server_identity, ev.server.ip()),
        side_rules: ev
            .sides
            .iter()
            .map(|s| memo.rule(resolver, s.origin))
            .collect(),
        audit_rules: ev
            .sides
            .iter()
            .map(|s| memo.rule(resolver, s.audit.and_then(|a| a.origin)))
            .collect(),
        deciding_rule: memo.rule(resolver, ev.deciding().and_then(|s| s.origin)),
    }
}

/// The Hubble `flow` object of one L7 record.
pub fn render_l7_flow(
    ev: &L7Event,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> Value {
    let keep = resolve(ev, resolver, &mut L7Memo::default());
    let time = time.rfc3339();
    serde_json::to_value(l7_flow_out(ev, &keep, node_name, &time, uuid)).unwrap_or(Value::Null)
}

/// One verdict log line of an L7 record.
pub fn render_l7_line(
    ev: &L7Event,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> String {
    render_l7_line_memo(ev, resolver, &mut L7Memo::default(), node_name, time, uuid)
}

/// [`render_l7_line`] for one of a batch of records rendered with the same resolver.
pub fn render_l7_line_memo(
    ev: &L7Event,
    resolver: &dyn FlowResolver,
    memo: &mut L7Memo,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> String {
    let keep = resolve(ev, resolver, memo);
    let time = time.rfc3339();
    let line = LineOut {
        flow: l7_flow_out(ev, &keep, node_name, &time, uuid),
        node_name,
        time: &time,
    };
    // Serializing plain structs of strings and numbers cannot fail; a record is ~1.2 KB, so
    // one allocation of its size instead of doubling from empty.
    let mut out = Vec::with_capacity(2048);
    match serde_json::to_writer(&mut out, &line) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::new(),
    }
}
