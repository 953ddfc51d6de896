//! Rendering a verdict event as a Hubble `GetFlowsResponse` line. Pure: everything it
//! needs is passed in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value, json};

use policy_compiler::abi::{self, VerdictEvent};
use policy_compiler::model::{Direction, PolicyTier, Protocol};
use policy_compiler::rules::{PolicyRef, RuleRef};

use super::clock::WallTime;
use super::resolve::{FlowEndpoint, FlowResolver};

// The record schema's constants live once, in `palisade_observe::schema`.
pub use palisade_observe::schema::{
    EVENT_TYPE_DROP, EVENT_TYPE_L7, EVENT_TYPE_POLICY_VERDICT, EXTENSIONS_TYPE, MATCH_ALL,
    MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_NONE,
};

/// The policy kind of a Kubernetes NetworkPolicy (`*_by[].kind`; other kinds name their own).
pub const POLICY_KIND: &str = "NetworkPolicy";

/// Whether a drop is a policy decision (Hubble reports those twice: a policy-verdict event
/// and a drop event).
pub fn is_policy_denial(ev: &VerdictEvent) -> bool {
    ev.verdict == abi::EVENT_VERDICT_DROPPED
        && matches!(
            ev.drop_reason as u32,
            abi::DROP_POLICY_DENIED | abi::DROP_POLICY_DENY
        )
}

fn addr(family: u8, a: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
        _ => None,
    }
}

fn direction(d: u8) -> Option<Direction> {
    match d {
        abi::DIRECTION_INGRESS => Some(Direction::Ingress),
        abi::DIRECTION_EGRESS => Some(Direction::Egress),
        _ => None,
    }
}

/// Hubble `Verdict` enum name of an `EVENT_VERDICT_*` code (same numbering).
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        abi::EVENT_VERDICT_FORWARDED => "FORWARDED",
        abi::EVENT_VERDICT_DROPPED => "DROPPED",
        3 => "ERROR",
        abi::EVENT_VERDICT_AUDIT => "AUDIT",
        abi::EVENT_VERDICT_REDIRECTED => "REDIRECTED",
        6 => "TRACED",
        7 => "TRANSLATED",
        _ => "VERDICT_UNKNOWN",
    }
}

/// `flow.extensions.kind` of an `EVENT_KIND_*` code.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        abi::EVENT_KIND_NEW_FLOW => "new_flow",
        abi::EVENT_KIND_CT_CLOSE => "ct_close",
        abi::EVENT_KIND_REVOKED => "revoked",
        _ => "unknown",
    }
}

/// `ns/policy ingress rule #N`, N being the index in `spec.ingress` (0-based, as
/// `policy-test explain` prints `ingress[N]`).
pub fn rule_text(r: &RuleRef) -> String {
    format!("{} {} rule #{}", r.policy, r.direction, r.index)
}

const TCP_FLAGS: [(u8, &str); 8] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

// ---- rendering -----------------------------------------------------------------------------

/// The `flow` object of one event: for a policy denial the drop notification (see
/// [`render_flows`] for both). Pure: everything it needs is passed in.
pub fn render_flow(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> Value {
    render_flow_as(ev, resolver, node_name, time, uuid, false)
}

/// The `flow` objects of one event, in the order Cilium emits them: a policy denial is a
/// policy-verdict notification (`event_type.type` 5, so `--type policy-verdict` and
/// `--print-policy-names` see denials) followed by a drop notification (type 1); every
/// other event is one object. `next_uuid` is called once per object.
pub fn render_flows(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    next_uuid: &mut dyn FnMut() -> String,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(2);
    if is_policy_denial(ev) {
        out.push(render_flow_as(
            ev,
            resolver,
            node_name,
            time,
            &next_uuid(),
            true,
        ));
    }
    out.push(render_flow_as(
        ev,
        resolver,
        node_name,
        time,
        &next_uuid(),
        false,
    ));
    out
}

fn render_flow_as(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
    verdict_event: bool,
) -> Value {
    let src_ip = addr(ev.family, &ev.saddr);
    let dst_ip = addr(ev.family, &ev.daddr);
    let sport = u16::from_be(ev.sport_be);
    let dport = u16::from_be(ev.dport_be);
    let proxy_port = u16::from_be(ev.proxy_port_be);
    let dir = direction(ev.direction);
    let proto = Protocol(ev.protocol);

    let mut flow = Map::new();
    flow.insert("time".into(), json!(time.rfc3339()));
    flow.insert("uuid".into(), json!(uuid));
    flow.insert("verdict".into(), json!(verdict_name(ev.verdict)));
    let dropped = ev.verdict == abi::EVENT_VERDICT_DROPPED;
    if ev.drop_reason != 0 {
        flow.insert("drop_reason".into(), json!(ev.drop_reason));
        flow.insert(
            "drop_reason_desc".into(),
            json!(abi::drop_reason_name(ev.drop_reason as u32)),
        );
    }
    if let (Some(s), Some(d)) = (src_ip, dst_ip) {
        flow.insert(
            "IP".into(),
            json!({
                "source": s.to_string(),
                "destination": d.to_string(),
                "ipVersion": if ev.family == 6 { "IPv6" } else { "IPv4" },
            }),
        );
    }
    if let Some(l4) = render_l4(ev, sport, dport) {
        flow.insert("l4".into(), l4);
    }
    let src = resolver.endpoint(ev.src_identity, src_ip);
    let dst = resolver.endpoint(ev.dst_identity, dst_ip);
    flow.insert("source".into(), render_endpoint(&src));
    flow.insert("destination".into(), render_endpoint(&dst));
    flow.insert("Type".into(), json!("L3_L4"));
    flow.insert("node_name".into(), json!(node_name));
    let drop_event = dropped && !verdict_event;
    flow.insert(
        "event_type".into(),
        if drop_event {
            json!({"type": EVENT_TYPE_DROP, "sub_type": ev.drop_reason})
        } else {
            json!({"type": EVENT_TYPE_POLICY_VERDICT})
        },
    );
    flow.insert(
        "traffic_direction".into(),
        json!(match dir {
            Some(Direction::Ingress) => "INGRESS",
            Some(Direction::Egress) => "EGRESS",
            None => "TRAFFIC_DIRECTION_UNKNOWN",
        }),
    );
    flow.insert("is_reply".into(), json!(false));
    let mut iface = Map::new();
    iface.insert("index".into(), json!(ev.ifindex));
    if let Some(name) = resolver.interface_name(ev.ifindex) {
        iface.insert("name".into(), json!(name));
    }
    flow.insert("interface".into(), Value::Object(iface));
    if ev.verdict == abi::EVENT_VERDICT_REDIRECTED && proxy_port != 0 {
        flow.insert("proxy_port".into(), json!(proxy_port));
    }
    // A translated flow: the addresses above are the backend's; the service and the
    // frontend the client connected to are named here.
    let service = (ev.service != 0)
        .then(|| resolver.service(ev.service))
        .flatten();
    if let Some(s) = &service {
        flow.insert(
            "destination_service".into(),
            json!({"name": s.name, "namespace": s.namespace}),
        );
    }

    // Attribution.
    let rule = if ev.rule_id >= abi::RULE_ID_FIRST_POLICY {
        resolver.rule(ev.rule_id)
    } else {
        None
    };
    let default_deny = dropped
        && ev.drop_reason as u32 == abi::DROP_POLICY_DENIED
        && ev.rule_id == abi::RULE_ID_NONE;
    let isolated: Vec<PolicyRef> = match dir {
        Some(d) if default_deny => {
            let subject = match d {
                Direction::Ingress => ev.dst_identity,
                Direction::Egress => ev.src_identity,
            };
            resolver.isolated_by(subject, d)
        }
        _ => Vec::new(),
    };
    let policy = |p: &PolicyRef| {
        let mut v = json!({
            "name": p.name,
            "namespace": p.namespace,
            "kind": p.kind.as_str(),
            // uint64 in the proto: protojson (and so hubble) writes it as a string.
            "revision": ev.revision.to_string(),
        });
        // protojson leaves out an empty string: a cluster-scoped policy has no namespace.
        if p.namespace.is_empty()
            && let Some(o) = v.as_object_mut()
        {
            o.remove("namespace");
        }
        v
    };
    let (allowed, denied): (Vec<Value>, Vec<Value>) = match ev.verdict {
        abi::EVENT_VERDICT_FORWARDED | abi::EVENT_VERDICT_REDIRECTED => {
            (rule.iter().map(|r| policy(&r.policy)).collect(), Vec::new())
        }
        abi::EVENT_VERDICT_AUDIT => (Vec::new(), rule.iter().map(|r| policy(&r.policy)).collect()),
        abi::EVENT_VERDICT_DROPPED if default_deny => {
            (Vec::new(), isolated.iter().map(policy).collect())
        }
        abi::EVENT_VERDICT_DROPPED => {
            (Vec::new(), rule.iter().map(|r| policy(&r.policy)).collect())
        }
        _ => (Vec::new(), Vec::new()),
    };
    if let Some(d) = dir {
        if !allowed.is_empty() {
            flow.insert(format!("{d}_allowed_by"), Value::Array(allowed));
        }
        if !denied.is_empty() {
            flow.insert(format!("{d}_denied_by"), Value::Array(denied));
        }
    }

    if !drop_event {
        let match_type = match ev.rule_id {
            _ if default_deny => MATCH_NONE,
            abi::RULE_ID_NOT_ISOLATED => MATCH_ALL,
            abi::RULE_ID_HOST => MATCH_L3_ONLY,
            _ => rule.as_ref().map_or(MATCH_NONE, |r| resolver.match_type(r)),
        };
        if match_type != MATCH_NONE {
            flow.insert("policy_match_type".into(), json!(match_type));
        }
    }

    flow.insert(
        "Summary".into(),
        json!(summary(
            ev,
            proto,
            src_ip,
            dst_ip,
            sport,
            dport,
            rule.as_ref(),
            &isolated,
            dir
        )),
    );

    let mut ext = Map::new();
    ext.insert("rule_id".into(), json!(ev.rule_id));
    if let Some(r) = &rule {
        ext.insert("rule".into(), json!(rule_text(r)));
        ext.insert("rule_index".into(), json!(r.index));
        let (name, marker) = resolver.rule_labels(r);
        if let Some(n) = name {
            ext.insert("rule_name".into(), json!(n));
        }
        if let Some(m) = marker {
            ext.insert("log".into(), json!(m));
        }
        if let Some((tier, action)) = resolver.rule_tier(r) {
            ext.insert("tier".into(), json!(tier.name()));
            if tier != PolicyTier::NetworkPolicy {
                ext.insert("priority".into(), json!(tier.priority()));
            }
            ext.insert("action".into(), json!(action.as_str()));
        }
    } else if ev.rule_id == abi::RULE_ID_NOT_ISOLATED {
        ext.insert("rule".into(), json!("not isolated"));
    } else if ev.rule_id == abi::RULE_ID_HOST {
        ext.insert("rule".into(), json!("from the node"));
    }
    if default_deny {
        ext.insert(
            "isolated_by".into(),
            json!(isolated.iter().map(ToString::to_string).collect::<Vec<_>>()),
        );
    }
    ext.insert("kind".into(), json!(kind_name(ev.kind)));
    ext.insert("policy_revision".into(), json!(ev.revision));
    if ev.service != 0 {
        ext.insert("service_id".into(), json!(ev.service));
        if let Some(s) = &service {
            let fe = match s.address {
                IpAddr::V4(a) => format!("{a}:{}", s.port),
                IpAddr::V6(a) => format!("[{a}]:{}", s.port),
            };
            ext.insert("service_frontend".into(), json!(fe));
        }
    }
    if ev.packet_len != 0 {
        ext.insert("packet_len".into(), json!(ev.packet_len));
    }
    flow.insert(
        "extensions".into(),
        json!({"@type": EXTENSIONS_TYPE, "value": Value::Object(ext)}),
    );
    Value::Object(flow)
}

fn render_l4(ev: &VerdictEvent, sport: u16, dport: u16) -> Option<Value> {
    let ports = || json!({"source_port": sport, "destination_port": dport});
    Some(match Protocol(ev.protocol) {
        Protocol::TCP => {
            let mut tcp = Map::new();
            tcp.insert("source_port".into(), json!(sport));
            tcp.insert("destination_port".into(), json!(dport));
            let flags: Map<String, Value> = TCP_FLAGS
                .iter()
                .filter(|(bit, _)| ev.tcp_flags & bit != 0)
                .map(|(_, name)| ((*name).to_string(), json!(true)))
                .collect();
            if !flags.is_empty() {
                tcp.insert("flags".into(), Value::Object(flags));
            }
            json!({ "TCP": tcp })
        }
        Protocol::UDP => json!({ "UDP": ports() }),
        Protocol::SCTP => json!({ "SCTP": ports() }),
        Protocol::ICMP => json!({ "ICMPv4": {"type": ev.tcp_flags} }),
        Protocol::ICMPV6 => json!({ "ICMPv6": {"type": ev.tcp_flags} }),
        _ => return None,
    })
}

pub(super) fn render_endpoint(e: &FlowEndpoint) -> Value {
    serde_json::to_value(EndpointOut::from(e)).unwrap_or(Value::Null)
}

/// Hubble's `Endpoint` as the log writes it (keys in byte order, empty parts left out).
#[derive(serde::Serialize)]
pub(super) struct EndpointOut<'a> {
    identity: u32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    labels: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod_name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    workloads: Vec<WorkloadOut<'a>>,
}

#[derive(serde::Serialize)]
struct WorkloadOut<'a> {
    kind: &'a str,
    name: &'a str,
}

impl<'a> From<&'a FlowEndpoint> for EndpointOut<'a> {
    fn from(e: &'a FlowEndpoint) -> Self {
        EndpointOut {
            identity: e.identity,
            labels: &e.labels,
            namespace: &e.namespace,
            pod_name: &e.pod_name,
            workloads: e
                .workloads
                .iter()
                .map(|(kind, name)| WorkloadOut { kind, name })
                .collect(),
        }
    }
}

fn hostport(ip: Option<IpAddr>, port: u16, with_port: bool) -> String {
    match (ip, with_port) {
        (Some(IpAddr::V6(a)), true) => format!("[{a}]:{port}"),
        (Some(a), true) => format!("{a}:{port}"),
        (Some(a), false) => a.to_string(),
        (None, _) => "?".to_string(),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the parts of one event"
)]
fn summary(
    ev: &VerdictEvent,
    proto: Protocol,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: u16,
    dport: u16,
    rule: Option<&RuleRef>,
    isolated: &[PolicyRef],
    dir: Option<Direction>,
) -> String {
    let ports = proto.has_ports();
    let proto_name = match (proto, ev.family) {
        (Protocol::ICMP, _) => "ICMPv4".to_string(),
        (p, _) => p.to_string(),
    };
    let flow = format!(
        "{proto_name} {} -> {}",
        hostport(src, sport, ports),
        hostport(dst, dport, ports)
    );
    let by_rule = |verb: &str| match rule {
        Some(r) => format!("{verb} by {}", rule_text(r)),
        None => format!("{verb} by rule {}", ev.rule_id),
    };
    let decision = match ev.verdict {
        abi::EVENT_VERDICT_FORWARDED if ev.rule_id == abi::RULE_ID_NOT_ISOLATED => match dir {
            Some(d) => format!("allowed, {d} not isolated"),
            None => "allowed, not isolated".to_string(),
        },
        abi::EVENT_VERDICT_FORWARDED if ev.rule_id == abi::RULE_ID_HOST => {
            "allowed, traffic from the node".to_string()
        }
        abi::EVENT_VERDICT_FORWARDED if ev.rule_id >= abi::RULE_ID_FIRST_POLICY => {
            by_rule("allowed")
        }
        abi::EVENT_VERDICT_FORWARDED => "allowed".to_string(),
        abi::EVENT_VERDICT_REDIRECTED => format!(
            "redirected to proxy port {}, {}",
            u16::from_be(ev.proxy_port_be),
            by_rule("allowed")
        ),
        abi::EVENT_VERDICT_AUDIT => format!("audit: {}", by_rule("would be denied")),
        abi::EVENT_VERDICT_DROPPED => match ev.drop_reason as u32 {
            abi::DROP_POLICY_DENIED if ev.rule_id == abi::RULE_ID_NONE => {
                if isolated.is_empty() {
                    "default deny".to_string()
                } else {
                    format!(
                        "default deny, isolated by {}",
                        isolated
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            }
            abi::DROP_POLICY_DENY => by_rule("denied"),
            r => format!("dropped: {}", abi::drop_reason_name(r)),
        },
        v => format!("verdict {}", verdict_name(v)),
    };
    let suffix = match ev.kind {
        abi::EVENT_KIND_CT_CLOSE => " (connection closed)",
        abi::EVENT_KIND_REVOKED => " (tracked flow revoked after a policy change)",
        _ => "",
    };
    format!("{flow} {decision}{suffix}")
}

/// One verdict log line, `{"flow":…,"node_name":…,"time":…}`, of [`render_flow`]'s object.
pub fn render_line(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> String {
    flow_line(
        render_flow(ev, resolver, node_name, time, uuid),
        node_name,
        time,
    )
}

/// The verdict log lines of one event ([`render_flows`]).
pub fn render_lines(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    next_uuid: &mut dyn FnMut() -> String,
) -> Vec<String> {
    render_flows(ev, resolver, node_name, time, next_uuid)
        .into_iter()
        .map(|f| flow_line(f, node_name, time))
        .collect()
}

pub(super) fn flow_line(flow: Value, node_name: &str, time: WallTime) -> String {
    json!({
        "flow": flow,
        "node_name": node_name,
        "time": time.rfc3339(),
    })
    .to_string()
}

/// Where lost events were lost (Hubble `LostEventSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostSource {
    /// The datapath could not reserve ring buffer space (`COUNTER_EVENTS_LOST`).
    RingBuffer,
    /// User space could not write events it had read.
    Writer,
}

impl LostSource {
    pub fn hubble_name(self) -> &'static str {
        match self {
            LostSource::RingBuffer => "PERF_EVENT_RING_BUFFER",
            LostSource::Writer => "OBSERVER_EVENTS_QUEUE",
        }
    }
}

/// A Hubble `lost_events` line.
pub fn render_lost_line(source: LostSource, lost: u64, node_name: &str, time: WallTime) -> String {
    json!({
        "lost_events": {
            "source": source.hubble_name(),
            // uint64: a string, as hubble writes it; `cpu` (a wrapper) is left out.
            "num_events_lost": lost.to_string(),
        },
        "node_name": node_name,
        "time": time.rfc3339(),
    })
    .to_string()
}
