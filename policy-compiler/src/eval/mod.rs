//! One question, two evaluators: "is this flow allowed, and by which rule?"
//!
//! [`spec`] interprets the policies directly, the way the Kubernetes documentation (and, for
//! the cluster-admin kinds, the network-policy-api documentation) reads. [`maps`] performs exactly the datapath's lookups (ipcache LPM, the exact-peer policy LPM
//! lookup and, on a miss only, the any-peer one) on the compiled maps. A property test requires them to agree
//! on verdict and on attribution; `policy-test` answers with [`maps`].
//!
//! Attribution follows the tier order (`engine::tiers`): in the admin and baseline tiers the
//! first matching rule decides and is named; in the NetworkPolicy tier, when several rules of
//! the deciding band match, the one named is the rule with the lowest rule id (the datapath's
//! tie-break).

pub mod maps;
pub mod spec;

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::model::{Cluster, Direction, Protocol};
use crate::rules::PolicyRef;

/// A flow endpoint: a managed endpoint (by key) or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum FlowPeer {
    Endpoint(String),
    Ip(IpAddr),
}

impl fmt::Display for FlowPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowPeer::Endpoint(k) => f.write_str(k),
            FlowPeer::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Flow {
    pub src: FlowPeer,
    pub dst: FlowPeer,
    pub protocol: Protocol,
    /// Destination port; 0 for protocols without ports.
    pub port: u16,
}

impl Flow {
    /// An address that belongs to a managed endpoint is that endpoint: its traffic leaves
    /// through the endpoint's interface and is policed there.
    pub fn normalized(&self, cluster: &Cluster) -> Flow {
        let norm = |p: &FlowPeer| match p {
            FlowPeer::Ip(ip) => match cluster.endpoint_by_ip(ip) {
                Some(e) => FlowPeer::Endpoint(e.key.clone()),
                None => p.clone(),
            },
            other => other.clone(),
        };
        Flow {
            src: norm(&self.src),
            dst: norm(&self.dst),
            protocol: self.protocol,
            port: self.port,
        }
    }
}

/// The decision of one direction at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No policy isolates the endpoint in this direction.
    NotIsolated,
    /// Allowed by this rule id.
    Allowed { rule: u32 },
    /// Allowed by this rule id through the L7 proxy listening on `proxy_port`, which
    /// decides per request.
    /// `audit`: only audit-mode HTTP rules send it to the proxy (they enforce nothing; with
    /// no proxy ready the datapath forwards it).
    Redirected {
        rule: u32,
        proxy_port: u16,
        audit: bool,
    },
    /// Denied by an explicit deny rule (AdminNetworkPolicy and Palisade policies; plain
    /// NetworkPolicy has none). `audit` rules are logged and forwarded.
    Denied { rule: u32, audit: bool },
    /// Isolated by these policies and no rule allows the flow.
    DefaultDeny { isolated_by: Vec<PolicyRef> },
    /// The endpoint has no policy written yet (fail closed).
    NotReady,
    /// The peer address resolves to no identity (fail closed).
    InvalidIdentity,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(
            self,
            Decision::NotIsolated
                | Decision::Allowed { .. }
                | Decision::Redirected { .. }
                | Decision::Denied { audit: true, .. }
        )
    }

    /// The rule that decided, if a rule did.
    pub fn rule(&self) -> Option<u32> {
        match self {
            Decision::Allowed { rule }
            | Decision::Redirected { rule, .. }
            | Decision::Denied { rule, .. } => Some(*rule),
            _ => None,
        }
    }
}

/// Both checks of a flow: egress at the source endpoint, ingress at the destination
/// endpoint. `None` where that side is not a managed endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Verdict {
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.as_ref().is_none_or(Decision::allowed)
            && self.ingress.as_ref().is_none_or(Decision::allowed)
    }

    pub fn decision(&self, dir: Direction) -> Option<&Decision> {
        match dir {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}
