//! The enforcer's local endpoint protocol: newline-delimited JSON over a unix stream socket
//! (default `/run/palisade/enforcer.sock`). One request per line, one response per line;
//! a client may send several requests on one connection.
//!
//! This crate is the single definition of the protocol: the CNI plugin and the enforcer's
//! client commands use [`Client`], the enforcer's server decodes lines with
//! [`decode_request`]. The server itself (socket, limits, dispatch) lives in the enforcer.
//!
//! # Compatibility
//!
//! Fields are append-only and unknown fields are ignored on both sides, so an older enforcer
//! serves a newer plugin (and an older plugin reads a newer enforcer's answers) as long as
//! the new fields may be ignored. When ignoring a field would be wrong, the client says so
//! with `min_version` on the request line: a server older than that refuses the request
//! with [`ErrorCode::UnsupportedVersion`] instead of serving it half-understood. See
//! docs/cni.md, "Endpoint protocol versions".

mod client;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError, DEFAULT_CLIENT_TIMEOUT};

/// Default socket path; both sides take it from configuration.
pub const DEFAULT_SOCKET: &str = "/run/palisade/enforcer.sock";

/// Protocol version spoken by this build. Version 1 rejected unknown fields; version 2
/// ignores them and adds `version`/`min_version` to the request line.
pub const PROTOCOL_VERSION: u32 = 2;

/// The verdict log's chain as `status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictLogStatus {
    /// The public key (Ed25519, hex) the checkpoints are signed with (`palisade observe
    /// --verify --key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The last checkpoint, `seq:hash` (`palisade observe --verify --anchor`: a log cut
    /// back before it fails). Absent before the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// A request as it travels: the operation plus the client's version information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// The protocol version the client speaks (absent from version-1 clients: 1).
    #[serde(default = "version_one")]
    pub version: u32,
    /// The oldest server version that can serve this request correctly (absent: any).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_version: u32,
    #[serde(flatten)]
    pub request: Request,
}

fn version_one() -> u32 {
    1
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
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
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
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
        /// The server's [`PROTOCOL_VERSION`].
        api_version: u32,
        endpoints: u32,
        /// True once the datapath is loaded, policy has been read and the maps hold what
        /// the agent last compiled.
        ready: bool,
        /// Why the agent is not ready (absent when ready).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Standing problems that do not make the agent unready but that an operator must
        /// see: `no policies: ...` (every pod unisolated), `manifest reload failed, still
        /// enforcing the previous policy: ...`. Absent when there are none; an older
        /// server never sends it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
        /// Map pressure from the agent's mirror of the maps (no map walk): one line per map,
        /// `pal_policy 1234/1048576 (0.1%)`. Absent from an older server.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        maps: Vec<String>,
        /// The verdict log's signing key and last checkpoint. Absent from an older server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict_log: Option<Box<VerdictLogStatus>>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    /// An error answer.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Stable machine-readable error codes (snake_case on the wire). Append-only; a code this
/// build does not know reads as [`ErrorCode::Unknown`] (the message still says what).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a valid request (JSON, fields, length).
    BadRequest,
    /// Too many connections; retry.
    Busy,
    /// The agent cannot serve registrations yet (datapath or policy not loaded).
    NotReady,
    /// The named host interface does not exist.
    NoSuchInterface,
    /// The pod is registered by another container.
    Conflict,
    /// A datapath operation (map write, attach) failed.
    Datapath,
    /// The agent's registration state could not be saved.
    State,
    /// The request needs a newer protocol version than the server speaks.
    UnsupportedVersion,
    /// A code newer than this build.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Busy => "busy",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::NoSuchInterface => "no_such_interface",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Datapath => "datapath",
            ErrorCode::State => "state",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes one request line on the server side: the JSON, then the version check. The
/// `Err` is the answer to send back (`bad_request` or `unsupported_version`).
pub fn decode_request(line: &[u8]) -> Result<Request, Response> {
    let line: RequestLine = serde_json::from_slice(line)
        .map_err(|e| Response::error(ErrorCode::BadRequest, format!("invalid request: {e}")))?;
    if line.min_version > PROTOCOL_VERSION {
        return Err(Response::error(
            ErrorCode::UnsupportedVersion,
            format!(
                "the request needs protocol version {} or newer; this enforcer speaks version \
                 {PROTOCOL_VERSION}: upgrade the enforcer or use a plugin of its release",
                line.min_version
            ),
        ));
    }
    Ok(line.request)
}

/// Encodes one request line (with its trailing newline) from this build: it speaks
/// [`PROTOCOL_VERSION`] and needs nothing a version-1 server does not understand.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct Line<'a> {
        version: u32,
        #[serde(flatten)]
        request: &'a Request,
    }
    encode_line(&Line {
        version: PROTOCOL_VERSION,
        request,
    })
}

/// Encodes any protocol value as one line with its trailing newline.
pub fn encode_line<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests;
