//! The enforcer's local endpoint API: newline-delimited JSON over a unix stream socket
//! (default `/run/palisade/enforcer.sock`). One request per line, one response per line;
//! a client may send several requests on one connection.
//!
//! These types are the single definition of the protocol: the CNI plugin (client) and the
//! enforcer (server) both use them. Fields are append-only; unknown fields are rejected so
//! a version skew is a clear error, not a silent drop.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Default socket path; both sides take it from configuration.
pub const DEFAULT_SOCKET: &str = "/run/palisade/enforcer.sock";

/// Protocol version spoken by this build. The server answers `Status` with its own.
pub const API_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Put a pod interface under enforcement. The server answers only after the pod's
    /// policy is in the maps and the tc programs are attached to `host_ifname`: from then
    /// on every packet of the pod is policed. Registering the same `container_id` again
    /// replaces the earlier registration (idempotent for retries).
    Register(Registration),
    /// Remove enforcement state for a container. Succeeds when nothing is registered.
    Deregister { container_id: String },
    /// Liveness and counts; used by CNI STATUS.
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The runtime's container (sandbox) id: the key of the registration.
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Pod addresses (no prefix length).
    pub ips: Vec<IpAddr>,
    /// Pod labels, when the caller knows them. When absent, the enforcer takes them from
    /// its policy source (a Pod object of that namespace/name), else the pod has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Named container ports (`name` -> port/protocol), for policies that use port names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Registered {
        /// `namespace/pod`.
        endpoint: String,
        identity: u32,
        ifindex: u32,
    },
    Deregistered {
        /// Whether a registration existed.
        existed: bool,
    },
    Status {
        api_version: u32,
        endpoints: u32,
        /// True once the datapath is loaded and policy has been read.
        ready: bool,
    },
    Error {
        /// Stable machine-readable code (e.g. `bad_request`, `no_such_interface`,
        /// `not_ready`, `datapath`).
        code: String,
        message: String,
    },
}
