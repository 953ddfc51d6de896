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

use std::net::SocketAddr;

use palisade_l7proxy::proxy::{Outcome, RequestRecord};
use policy_compiler::engine::l7::L7Origin;
use policy_compiler::model::Direction;
use serde_json::{Map, Value, json};

use super::clock::WallTime;
use super::render::{EVENT_TYPE_L7, EXTENSIONS_TYPE, flow_line, render_endpoint, rule_text};
use super::resolve::FlowResolver;

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

/// The Hubble `flow` object of one L7 record.
pub fn render_l7_flow(
    ev: &L7Event,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> Value {
    let r = &ev.record;
    let (forwarded, code) = match &r.outcome {
        Outcome::Forwarded { status, .. } => (true, *status),
        Outcome::Denied { status, .. } | Outcome::Refused { status, .. } => (false, *status),
    };
    let client = resolver.endpoint(ev.client_identity, Some(ev.client.ip()));
    let server = resolver.endpoint(ev.server_identity, Some(ev.server.ip()));
    // Responses travel from the server to the client.
    let (src, dst, sa, da) = if forwarded {
        (&server, &client, ev.server, ev.client)
    } else {
        (&client, &server, ev.client, ev.server)
    };
    let host = r.host.clone().unwrap_or_else(|| ev.server.ip().to_string());
    let url = format!("http://{host}{}", r.target);

    let mut flow = Map::new();
    flow.insert("time".into(), json!(time.rfc3339()));
    flow.insert("uuid".into(), json!(uuid));
    // Forwarded, but audit-mode HTTP rules would have refused it: reported as AUDIT, as the
    // datapath reports an audit-mode L3/L4 deny.
    let audited: Vec<(Direction, L7AuditRefusal)> = ev
        .sides
        .iter()
        .filter_map(|s| s.audit.map(|a| (s.direction, a)))
        .collect();
    let audit = forwarded && !audited.is_empty();
    flow.insert(
        "verdict".into(),
        json!(if audit {
            "AUDIT"
        } else if forwarded {
            "FORWARDED"
        } else {
            "DROPPED"
        }),
    );
    flow.insert(
        "IP".into(),
        json!({
            "source": sa.ip().to_string(),
            "destination": da.ip().to_string(),
            "ipVersion": if ev.client.is_ipv6() { "IPv6" } else { "IPv4" },
        }),
    );
    flow.insert(
        "l4".into(),
        json!({"TCP": {"source_port": sa.port(), "destination_port": da.port()}}),
    );
    flow.insert("source".into(), render_endpoint(src));
    flow.insert("destination".into(), render_endpoint(dst));
    flow.insert("Type".into(), json!("L7"));
    flow.insert("node_name".into(), json!(node_name));
    let mut http = Map::new();
    if code != 0 {
        http.insert("code".into(), json!(code));
    }
    if !r.method.is_empty() {
        http.insert("method".into(), json!(r.method));
    }
    http.insert("url".into(), json!(url));
    http.insert("protocol".into(), json!(r.version));
    flow.insert(
        "l7".into(),
        json!({
            "type": if forwarded { "RESPONSE" } else { "REQUEST" },
            // uint64 in the proto: protojson writes it as a string.
            "latency_ns": r.latency.as_nanos().to_string(),
            "http": Value::Object(http),
        }),
    );
    flow.insert("event_type".into(), json!({"type": EVENT_TYPE_L7}));
    let deciding = ev.deciding().copied();
    flow.insert(
        "traffic_direction".into(),
        json!(match deciding.map(|s| s.direction) {
            Some(Direction::Ingress) => "INGRESS",
            Some(Direction::Egress) | None => "EGRESS",
        }),
    );
    flow.insert("is_reply".into(), json!(forwarded));

    for (i, side) in ev.sides.iter().enumerate() {
        let Some(rule) = side.origin.and_then(|o| resolver.rule(o.rule_id)) else {
            continue;
        };
        let mut p = json!({
            "name": rule.policy.name,
            "namespace": rule.policy.namespace,
            "kind": rule.policy.kind.as_str(),
            "revision": ev.revision.to_string(),
        });
        if rule.policy.namespace.is_empty()
            && let Some(o) = p.as_object_mut()
        {
            o.remove("namespace");
        }
        // Every side before the last one allowed; the last one decided.
        let allowed = forwarded || i + 1 < ev.sides.len();
        let key = if allowed { "allowed_by" } else { "denied_by" };
        flow.insert(format!("{}_{key}", side.direction), json!([p]));
    }
    let mut would = Vec::new();
    if audit {
        for (direction, a) in &audited {
            let rule = a.origin.and_then(|o| resolver.rule(o.rule_id));
            if let Some(rule) = &rule {
                let key = format!("{direction}_denied_by");
                let p = json!({
                    "name": rule.policy.name,
                    "namespace": rule.policy.namespace,
                    "kind": rule.policy.kind.as_str(),
                    "revision": ev.revision.to_string(),
                });
                match flow.get_mut(&key).and_then(Value::as_array_mut) {
                    Some(list) => list.push(p),
                    None => {
                        flow.insert(key, json!([p]));
                    }
                }
            }
            would.push(match (&a.decision, rule) {
                (palisade_l7proxy::Decision::NoMatch, _) => {
                    format!("{direction}: no audit-mode HTTP rule allows it")
                }
                (d, Some(rule)) => format!("{direction}: {d:?} by {}", rule_text(&rule)),
                (d, None) => format!("{direction}: {d:?}"),
            });
        }
    }
    let rule = deciding
        .and_then(|s| s.origin)
        .and_then(|o| resolver.rule(o.rule_id));
    let decision = match &r.outcome {
        Outcome::Forwarded { .. } if audit => format!("{code} audit: would be denied"),
        Outcome::Forwarded { .. } => format!("{code}"),
        Outcome::Denied { .. } => format!("{code} denied"),
        Outcome::Refused { .. } => format!("{code} refused"),
    };
    flow.insert(
        "Summary".into(),
        json!(format!(
            "{} {decision} {}ms ({} {url})",
            r.version,
            r.latency.as_millis(),
            if r.method.is_empty() { "?" } else { &r.method }
        )),
    );

    let mut ext = Map::new();
    if let Some(o) = deciding.and_then(|s| s.origin) {
        ext.insert("rule_id".into(), json!(o.rule_id));
        if let Some(i) = o.http_index {
            ext.insert("http_rule_index".into(), json!(i));
        }
    }
    if let Some(rule) = &rule {
        ext.insert("rule".into(), json!(rule_text(rule)));
        ext.insert("rule_index".into(), json!(rule.index));
    }
    match &r.outcome {
        Outcome::Denied { decision, .. } => {
            ext.insert("l7_decision".into(), json!(format!("{decision:?}")));
        }
        Outcome::Refused { reason, .. } => {
            ext.insert("refused".into(), json!(reason));
        }
        Outcome::Forwarded { .. } => {}
    }
    if let Some(path) = &r.path {
        ext.insert("normalized_path".into(), json!(path));
    }
    if !would.is_empty() {
        ext.insert("audit_would_deny".into(), json!(would));
    }
    if let Some(e) = &r.upstream_error {
        ext.insert("upstream_error".into(), json!(e));
    }
    ext.insert("policy_revision".into(), json!(ev.revision));
    flow.insert(
        "extensions".into(),
        json!({"@type": EXTENSIONS_TYPE, "value": Value::Object(ext)}),
    );
    Value::Object(flow)
}

/// One verdict log line of an L7 record.
pub fn render_l7_line(
    ev: &L7Event,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> String {
    flow_line(
        render_l7_flow(ev, resolver, node_name, time, uuid),
        node_name,
        time,
    )
}
