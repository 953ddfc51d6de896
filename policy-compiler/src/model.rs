//! The cluster as the compiler sees it: namespaces, endpoints (pods or workload
//! representatives), services and validated policies of every kind in their defaulted form.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::cidr::Cidr;
use crate::k8s::Labels;
use crate::labels::Selector;
use crate::rules::{PolicyKind, PolicyRef};

pub use palisade_crds::Entity;
pub use palisade_l7proxy::rules::HttpRule;

/// The label every namespace carries implicitly (Kubernetes >= 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace label putting every policy that selects the namespace's pods in audit mode for
/// them (value [`ENFORCEMENT_AUDIT`]): what policies would deny is logged as AUDIT and
/// forwarded. For rolling out default deny safely.
pub const ENFORCEMENT_LABEL: &str = "policy.palisade.dev/enforcement";
/// The value of [`ENFORCEMENT_LABEL`] that means audit.
pub const ENFORCEMENT_AUDIT: &str = "audit";

/// Whether namespace labels put the namespace in audit mode.
pub fn namespace_audits(labels: &crate::k8s::Labels) -> bool {
    labels
        .get(ENFORCEMENT_LABEL)
        .is_some_and(|v| v == ENFORCEMENT_AUDIT)
}

/// IP protocol number. Policies speak TCP, UDP and SCTP; flows may carry anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
    pub const SCTP: Protocol = Protocol(132);

    /// The three protocols NetworkPolicy ports can name, in the order outputs list them.
    pub const POLICY: [Protocol; 3] = [Protocol::SCTP, Protocol::TCP, Protocol::UDP];

    pub fn from_name(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::TCP),
            "UDP" => Some(Protocol::UDP),
            "SCTP" => Some(Protocol::SCTP),
            "ICMP" => Some(Protocol::ICMP),
            "ICMPV6" => Some(Protocol::ICMPV6),
            _ => None,
        }
    }

    /// Whether the protocol has ports (so port rules can match it).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol::SCTP => f.write_str("SCTP"),
            Protocol::ICMP => f.write_str("ICMP"),
            Protocol::ICMPV6 => f.write_str("ICMPv6"),
            Protocol(n) => write!(f, "proto-{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn abi(self) -> u8 {
        match self {
            Direction::Ingress => crate::abi::DIRECTION_INGRESS,
            Direction::Egress => crate::abi::DIRECTION_EGRESS,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// Labels including the implicit `kubernetes.io/metadata.name`.
    pub labels: Labels,
    /// Whether a Namespace object was given (otherwise it is implied by its members).
    pub declared: bool,
}

impl Namespace {
    pub fn new(name: &str, mut labels: Labels, declared: bool) -> Namespace {
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        Namespace {
            name: name.to_string(),
            labels,
            declared,
        }
    }
}

/// The workload an endpoint belongs to: the top owner the input reveals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadRef {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod, or the one representative endpoint of a workload whose pods are not given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Unique key: `ns/name` for a pod, `ns/Kind/name` for a workload representative.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub workload: WorkloadRef,
    /// Raw labels; identities use them through the label filter.
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
    pub host_network: bool,
}

impl Endpoint {
    pub fn pod_key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    pub fn workload_key(namespace: &str, kind: &str, name: &str) -> String {
        format!("{namespace}/{kind}/{name}")
    }

    /// Resolves a named container port for a protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        resolve_named_port(&self.ports, name, protocol)
    }

    /// `ns/name[Kind]`, as the connections listing prints workloads.
    pub fn workload_display(&self) -> String {
        format!(
            "{}/{}[{}]",
            self.namespace, self.workload.name, self.workload.kind
        )
    }
}

pub fn resolve_named_port(ports: &[NamedPort], name: &str, protocol: Protocol) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.name == name && p.protocol == protocol)
        .map(|p| p.port)
}

/// A policy of any kind after validation and defaulting: the NetworkPolicy tier's kinds
/// (NetworkPolicy, Palisade's, Cilium's) and the cluster-admin kinds (`tier` says which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub kind: PolicyKind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// Cluster-scoped kinds: the namespaces whose pods `pod_selector` chooses from (`None`:
    /// every namespace). Namespaced kinds select in their own namespace and leave this `None`.
    pub namespace_selector: Option<Selector>,
    pub pod_selector: Selector,
    /// `Some` when the policy has ingress rules to apply; the direction is isolated when
    /// `isolates_ingress` also holds.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy has egress rules.
    pub egress: Option<Vec<Rule>>,
    /// Whether the policy isolates each direction it has (NetworkPolicy: always;
    /// `defaultDeny: false` / Cilium's `enableDefaultDeny: false` turn it off).
    pub isolates: [bool; 2],
    /// Audit mode: what this policy would deny is logged as AUDIT and forwarded.
    pub audit: bool,
    /// The tier the policy's rules are evaluated in.
    pub tier: PolicyTier,
    /// Where the policy came from, for messages.
    pub origin: String,
}

/// Where a policy's rules are evaluated, in this order per direction: the admin tier (by
/// ascending priority, then name, then rule order; the first matching rule decides, `Pass`
/// skips the rest of the tier), the NetworkPolicy tier, the baseline tier (same order as the
/// admin tier), then allow. See `engine::tiers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub enum PolicyTier {
    /// AdminNetworkPolicy, ClusterNetworkPolicy `tier: Admin`; the priority (0..=1000).
    Admin(u32),
    /// NetworkPolicy and the kinds that share its semantics.
    #[default]
    NetworkPolicy,
    /// BaselineAdminNetworkPolicy (priority 0), ClusterNetworkPolicy `tier: Baseline`.
    Baseline(u32),
}

impl PolicyTier {
    pub fn name(self) -> &'static str {
        match self {
            PolicyTier::Admin(_) => "admin",
            PolicyTier::NetworkPolicy => "networkpolicy",
            PolicyTier::Baseline(_) => "baseline",
        }
    }

    /// The priority inside the tier (0 for the NetworkPolicy tier).
    pub fn priority(self) -> u32 {
        match self {
            PolicyTier::Admin(p) | PolicyTier::Baseline(p) => p,
            PolicyTier::NetworkPolicy => 0,
        }
    }
}

impl Default for Policy {
    /// A NetworkPolicy with no rules, isolating each direction it gets rules for.
    fn default() -> Self {
        Policy {
            kind: PolicyKind::NetworkPolicy,
            namespace: String::new(),
            name: String::new(),
            namespace_selector: None,
            pod_selector: Selector::default(),
            ingress: None,
            egress: None,
            isolates: [true, true],
            audit: false,
            tier: PolicyTier::NetworkPolicy,
            origin: String::new(),
        }
    }
}

impl Policy {
    /// The namespaces the policy's subjects live in.
    pub fn scope(&self) -> NamespaceScope {
        if self.kind.is_cluster_scoped() {
            NamespaceScope::Selected(self.namespace_selector.clone().unwrap_or_default())
        } else {
            NamespaceScope::Own(self.namespace.clone())
        }
    }

    pub fn pref(&self) -> PolicyRef {
        PolicyRef {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Where the policy stands in the evaluation order (docs/policy-kinds.md): its tier (the
    /// admin and baseline tiers by priority), then its name, then its kind. The one ordering
    /// the compiler, both evaluators and `explain` use; inside the NetworkPolicy tier the
    /// order of policies does not matter (its rules resolve by band).
    pub fn evaluation_order(&self) -> (PolicyTier, &str, PolicyKind) {
        (self.tier, self.name.as_str(), self.kind)
    }

    /// Whether the policy isolates (default-denies) a direction.
    pub fn isolates(&self, dir: Direction) -> bool {
        self.rules(dir).is_some() && self.isolates[dir as usize]
    }

    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    pub fn cidrs(&self) -> impl Iterator<Item = Cidr> + '_ {
        Direction::BOTH
            .into_iter()
            .flat_map(|d| self.rules(d).unwrap_or(&[]))
            .flat_map(|r| match &r.peers {
                Peers::Any => &[][..],
                Peers::List(l) => &l[..],
            })
            .flat_map(|p| match p {
                Peer::IpBlock { cidr, except } => std::iter::once(*cidr)
                    .chain(except.iter().copied())
                    .collect::<Vec<_>>(),
                Peer::Endpoints { .. } | Peer::Entity(_) => Vec::new(),
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Rule {
    pub peers: Peers,
    /// Empty: all ports and all protocols.
    pub ports: Vec<PortSpec>,
    /// Allow (NetworkPolicy's only action) or deny.
    pub action: RuleAction,
    /// The rule's name, when the policy kind has one.
    pub name: Option<String>,
    /// A marker carried into the verdict log.
    pub log: Option<String>,
}

impl Rule {
    /// Whether any port of the rule carries HTTP rules.
    pub fn has_http(&self) -> bool {
        self.ports.iter().any(|p| p.http.is_some())
    }
}

/// What a rule does. `Pass` exists only in the admin and baseline tiers: it skips the rest
/// of the rule's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub enum RuleAction {
    #[default]
    Allow,
    Deny,
    Pass,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Allow => "Allow",
            RuleAction::Deny => "Deny",
            RuleAction::Pass => "Pass",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub enum Peers {
    #[default]
    /// `from`/`to` absent or empty: every source or destination, in or out of the cluster.
    Any,
    List(Vec<Peer>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Peer {
    Endpoints {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
    /// A reserved entity (Palisade and Cilium kinds).
    Entity(Entity),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum NamespaceScope {
    /// Only the policy's own namespace (peer without namespaceSelector).
    Own(String),
    /// Namespaces whose labels match.
    Selected(Selector),
}

impl Default for NamespaceScope {
    fn default() -> Self {
        NamespaceScope::Own(String::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
    /// HTTP rules (TCP, one port): the connection goes through the L7 proxy, which decides
    /// each request with them.
    pub http: Option<Vec<HttpRule>>,
}

impl PortSpec {
    pub fn new(protocol: Protocol, port: PortMatch) -> PortSpec {
        PortSpec {
            protocol,
            port,
            http: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PortMatch {
    /// Only a protocol was given.
    All,
    /// Inclusive range; a single port has `lo == hi`.
    Range(u16, u16),
    /// Resolved against the destination pod's container ports.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target: ServiceTarget,
    /// `NodePort` and `LoadBalancer` services: the port on every node's addresses.
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ServiceTarget {
    Number(u16),
    Named(String),
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// A DNS alias: nothing to translate.
    ExternalName,
}

/// A Service, for service translation (`services/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub selector: Option<Labels>,
    /// Empty for a headless service (`clusterIP: None`) and an ExternalName.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortSpec>,
    pub service_type: ServiceType,
    /// `spec.externalIPs`: addresses this node treats as the service's.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds.
    pub session_affinity_s: Option<u32>,
    /// `internalTrafficPolicy: Local`: cluster-internal clients reach only this node's
    /// backends.
    pub internal_traffic_local: bool,
    /// `externalTrafficPolicy: Local`: clients from outside reach only this node's backends.
    pub external_traffic_local: bool,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent reads as ready, as the API says).
    pub ready: bool,
    /// `conditions.serving` (absent: as `ready`).
    pub serving: bool,
    pub terminating: bool,
    /// The pod it is (`ns/name`), from `targetRef`.
    pub pod: Option<String>,
    pub node_name: Option<String>,
}

/// A `discovery.k8s.io/v1` EndpointSlice of an IP family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    /// `(name, port, protocol)`.
    pub ports: Vec<(Option<String>, u16, Protocol)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// Everything the compiler needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub endpoints: BTreeMap<String, Endpoint>,
    pub policies: BTreeMap<PolicyRef, Arc<Policy>>,
    pub services: BTreeMap<(String, String), Service>,
    /// EndpointSlices by (namespace, name).
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
}

impl Cluster {
    /// Namespace labels, implying an undeclared namespace.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        match self.namespaces.get(ns) {
            Some(n) => n.labels.clone(),
            None => Namespace::new(ns, Labels::new(), false).labels,
        }
    }

    /// Adds namespaces that endpoints or policies refer to but no object declares.
    pub fn imply_namespaces(&mut self) {
        let mut missing: Vec<String> = Vec::new();
        for e in self.endpoints.values() {
            if !self.namespaces.contains_key(&e.namespace) {
                missing.push(e.namespace.clone());
            }
        }
        for r in self.policies.keys() {
            if !r.kind.is_cluster_scoped() && !self.namespaces.contains_key(&r.namespace) {
                missing.push(r.namespace.clone());
            }
        }
        for ns in missing {
            self.namespaces
                .entry(ns.clone())
                .or_insert_with(|| Namespace::new(&ns, Labels::new(), false));
        }
    }

    /// The endpoint an address belongs to. Host-network pods share their node's address
    /// and own none.
    pub fn endpoint_by_ip(&self, ip: &IpAddr) -> Option<&Endpoint> {
        self.endpoints
            .values()
            .find(|e| !e.host_network && e.ips.contains(ip))
    }
}
