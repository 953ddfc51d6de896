//! The verdict log's record schema, once: the constants the enforcer's renderer writes and
//! the typed view `palisade observe` reads. A line is a Hubble `GetFlowsResponse` in jsonpb
//! form (docs/verdict-log.md): `{"flow":{…}}`, `{"lost_events":{…}}` or a checkpoint
//! `{"node_status":{…}}`, each with `node_name` and `time`.
//!
//! The enforcer renders with `serde_json::json!` over these names; its tests parse every
//! rendered line with [`Line::parse`], so a renamed field fails there.

use std::borrow::Cow;

use serde::Deserialize;

/// `@type` of `flow.extensions`: a well-known type hubble resolves (a type of our own makes
/// hubble reject the whole line). Palisade's details are the Struct's `value`.
pub const EXTENSIONS_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";

/// Hubble `event_type.type` of a drop notification.
pub const EVENT_TYPE_DROP: u8 = 1;
/// Hubble `event_type.type` of a policy verdict notification.
pub const EVENT_TYPE_POLICY_VERDICT: u8 = 5;
/// `event_type.type` of an L7 record (Cilium's `MessageTypeAccessLog`).
pub const EVENT_TYPE_L7: u8 = 129;

/// Cilium `policy_match_type` values (`pkg/monitor/api`), as hubble prints them after
/// `policy-verdict:`. 0 (`none`) is left out of a line, as protojson does.
pub const MATCH_NONE: u32 = 0;
/// `L3-Only`: the rule names peers and no ports.
pub const MATCH_L3_ONLY: u32 = 1;
/// `L3-L4`: peers and ports.
pub const MATCH_L3_L4: u32 = 2;
/// `L4-Only`: ports from any peer.
pub const MATCH_L4_ONLY: u32 = 3;
/// `all`: any peer, any port (also a direction no policy isolates).
pub const MATCH_ALL: u32 = 4;

/// Hubble's name of a match type.
pub fn match_type_name(m: u32) -> &'static str {
    match m {
        MATCH_L3_ONLY => "L3-Only",
        MATCH_L3_L4 => "L3-L4",
        MATCH_L4_ONLY => "L4-Only",
        MATCH_ALL => "all",
        _ => "none",
    }
}

/// One line of the verdict log, as read.
#[derive(Debug, Clone, Deserialize)]
pub struct Line<'a> {
    #[serde(default, borrow)]
    pub flow: Option<Flow<'a>>,
    #[serde(default, borrow)]
    pub lost_events: Option<LostEvents<'a>>,
    #[serde(default, borrow)]
    pub node_status: Option<NodeStatus<'a>>,
    #[serde(default, borrow)]
    pub node_name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub time: Cow<'a, str>,
}

impl<'a> Line<'a> {
    pub fn parse(s: &'a str) -> Result<Line<'a>, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LostEvents<'a> {
    #[serde(default, borrow)]
    pub source: Cow<'a, str>,
    /// uint64 as protojson writes it: a string.
    #[serde(default, borrow)]
    pub num_events_lost: Cow<'a, str>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus<'a> {
    #[serde(default, borrow)]
    pub message: Cow<'a, str>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Flow<'a> {
    #[serde(default, borrow)]
    pub time: Cow<'a, str>,
    #[serde(default, borrow)]
    pub uuid: Cow<'a, str>,
    #[serde(default, borrow)]
    pub verdict: Cow<'a, str>,
    #[serde(default)]
    pub drop_reason: u32,
    #[serde(default, borrow)]
    pub drop_reason_desc: Cow<'a, str>,
    #[serde(rename = "IP", default, borrow)]
    pub ip: Option<Ip<'a>>,
    #[serde(default)]
    pub l4: Option<L4>,
    #[serde(default, borrow)]
    pub source: Endpoint<'a>,
    #[serde(default, borrow)]
    pub destination: Endpoint<'a>,
    #[serde(rename = "Type", default, borrow)]
    pub r#type: Cow<'a, str>,
    #[serde(default, borrow)]
    pub node_name: Cow<'a, str>,
    #[serde(default)]
    pub event_type: EventType,
    #[serde(default, borrow)]
    pub traffic_direction: Cow<'a, str>,
    #[serde(default)]
    pub is_reply: bool,
    #[serde(default)]
    pub policy_match_type: u32,
    #[serde(default)]
    pub proxy_port: u16,
    #[serde(default, borrow)]
    pub ingress_allowed_by: Vec<PolicyRef<'a>>,
    #[serde(default, borrow)]
    pub egress_allowed_by: Vec<PolicyRef<'a>>,
    #[serde(default, borrow)]
    pub ingress_denied_by: Vec<PolicyRef<'a>>,
    #[serde(default, borrow)]
    pub egress_denied_by: Vec<PolicyRef<'a>>,
    #[serde(rename = "Summary", default, borrow)]
    pub summary: Cow<'a, str>,
    #[serde(default, borrow)]
    pub extensions: Option<Extensions<'a>>,
}

impl<'a> Flow<'a> {
    /// Every policy the flow names, allowed or denied, either direction.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRef<'a>> {
        self.ingress_allowed_by
            .iter()
            .chain(&self.egress_allowed_by)
            .chain(&self.ingress_denied_by)
            .chain(&self.egress_denied_by)
    }

    pub fn denied_by(&self) -> impl Iterator<Item = &PolicyRef<'a>> {
        self.ingress_denied_by.iter().chain(&self.egress_denied_by)
    }

    /// `(protocol name, source port, destination port)`.
    pub fn l4_ports(&self) -> (&'static str, u16, u16) {
        match &self.l4 {
            Some(L4 { tcp: Some(p), .. }) => ("TCP", p.source_port, p.destination_port),
            Some(L4 { udp: Some(p), .. }) => ("UDP", p.source_port, p.destination_port),
            Some(L4 { sctp: Some(p), .. }) => ("SCTP", p.source_port, p.destination_port),
            Some(L4 {
                icmpv4: Some(_), ..
            }) => ("ICMPv4", 0, 0),
            Some(L4 {
                icmpv6: Some(_), ..
            }) => ("ICMPv6", 0, 0),
            _ => ("", 0, 0),
        }
    }

    /// `flow.extensions.value`, when present.
    pub fn details(&self) -> Option<&Details<'a>> {
        self.extensions.as_ref().map(|e| &e.value)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ip<'a> {
    #[serde(default, borrow)]
    pub source: Cow<'a, str>,
    #[serde(default, borrow)]
    pub destination: Cow<'a, str>,
    #[serde(rename = "ipVersion", default, borrow)]
    pub ip_version: Cow<'a, str>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct L4 {
    #[serde(rename = "TCP", default)]
    pub tcp: Option<Ports>,
    #[serde(rename = "UDP", default)]
    pub udp: Option<Ports>,
    #[serde(rename = "SCTP", default)]
    pub sctp: Option<Ports>,
    #[serde(rename = "ICMPv4", default)]
    pub icmpv4: Option<serde_json::Value>,
    #[serde(rename = "ICMPv6", default)]
    pub icmpv6: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ports {
    #[serde(default)]
    pub source_port: u16,
    #[serde(default)]
    pub destination_port: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Endpoint<'a> {
    #[serde(default)]
    pub identity: u32,
    #[serde(default, borrow)]
    pub namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    pub pod_name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub labels: Vec<Cow<'a, str>>,
}

impl Endpoint<'_> {
    /// `ns/pod`, `ns/` without a pod, else the first label (`reserved:world`), else the
    /// identity.
    pub fn display_name(&self) -> String {
        match (self.namespace.is_empty(), self.pod_name.is_empty()) {
            (false, false) => format!("{}/{}", self.namespace, self.pod_name),
            (false, true) => format!("{}/", self.namespace),
            _ => self
                .labels
                .first()
                .map(|l| l.to_string())
                .unwrap_or_else(|| format!("ID:{}", self.identity)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventType {
    #[serde(rename = "type", default)]
    pub r#type: u8,
    #[serde(default)]
    pub sub_type: u32,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyRef<'a> {
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub revision: Cow<'a, str>,
}

impl PolicyRef<'_> {
    /// `ns/name` for a NetworkPolicy, `Kind ns/name` (or `Kind name`) otherwise, as the
    /// policy core prints policies.
    pub fn display(&self) -> String {
        let nn = if self.namespace.is_empty() {
            self.name.to_string()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        if self.kind.is_empty() || self.kind == "NetworkPolicy" {
            nn
        } else {
            format!("{} {nn}", self.kind)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Extensions<'a> {
    #[serde(rename = "@type", default, borrow)]
    pub r#type: Cow<'a, str>,
    #[serde(default, borrow)]
    pub value: Details<'a>,
}

/// `flow.extensions.value`: Palisade's details of one flow.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Details<'a> {
    #[serde(default)]
    pub rule_id: u32,
    #[serde(default, borrow)]
    pub rule: Cow<'a, str>,
    #[serde(default)]
    pub rule_index: Option<u32>,
    /// The rule's name, when its policy kind names rules.
    #[serde(default, borrow)]
    pub rule_name: Cow<'a, str>,
    /// The rule's log marker, when it has one.
    #[serde(default, borrow)]
    pub log: Cow<'a, str>,
    /// The tier that decided: `admin`, `networkpolicy` or `baseline`, when a rule did.
    #[serde(default, borrow)]
    pub tier: Cow<'a, str>,
    /// The deciding policy's priority in the admin or baseline tier.
    #[serde(default)]
    pub priority: Option<u32>,
    /// The deciding rule's action: `Allow`, `Deny` or `Pass`.
    #[serde(default, borrow)]
    pub action: Cow<'a, str>,
    #[serde(default, borrow)]
    pub isolated_by: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub policy_revision: u64,
    #[serde(default)]
    pub packet_len: u32,
    #[serde(default, borrow)]
    pub chain: Option<ChainField<'a>>,
}

/// `flow.extensions.value.chain` ([`crate::chain`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChainField<'a> {
    #[serde(default, borrow)]
    pub hash: Cow<'a, str>,
    #[serde(default)]
    pub seq: u64,
}
