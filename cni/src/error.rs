//! Plugin errors and their CNI error codes.
//!
//! Every failure leaves the plugin as CNI error JSON on stdout (`{cniVersion, code, msg,
//! details}`) with a non-zero exit status. Codes below 100 are the spec's; 100 and up are
//! Palisade's own (listed in docs/cni.md).

use std::io;
use std::path::PathBuf;

use serde::Serialize;

/// CNI error codes (spec 1.1 "Error codes", plus Palisade's plugin-specific range).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_EXISTING_AFFECTED: u32 = 51;
    /// No free address in the configured range.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// ADD for a (container, interface) that already has an attachment, or the interface
    /// already exists in the container.
    pub const ALREADY_ATTACHED: u32 = 101;
    /// Creating or configuring interfaces, addresses, routes or sysctls failed.
    pub const DATAPATH: u32 = 102;
    /// The enforcer answered the registration with an error.
    pub const ENFORCER_REFUSED: u32 = 103;
    /// CHECK found a missing or changed resource.
    pub const CHECK_FAILED: u32 = 104;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("required env variables [{names}] missing")]
    MissingEnv { names: String },
    #[error("missing containerID")]
    MissingContainerId,
    #[error("invalid characters in containerID {id:?}")]
    InvalidContainerId { id: String },
    #[error("invalid CNI_IFNAME {name:?}: {reason}")]
    InvalidIfname { name: String, reason: &'static str },
    #[error("unknown CNI_COMMAND {command:?}")]
    UnknownCommand { command: String },
    #[error("invalid {name}: {reason}")]
    InvalidEnv { name: &'static str, reason: String },
    #[error("reading network configuration from stdin")]
    Stdin {
        #[source]
        source: io::Error,
    },
    #[error("decoding network configuration: {source}")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("incompatible CNI version {version:?}: {reason}")]
    IncompatibleVersion { version: String, reason: String },
    #[error("ipam state {path}")]
    IpamIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ipam state {path} is not valid: {source}")]
    IpamCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free address in {range}")]
    PoolExhausted { range: String },
    #[error("container {container_id} already has an address on {ifname}: {ip}")]
    DuplicateAttachment {
        container_id: String,
        ifname: String,
        ip: String,
    },
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists { ifname: String, netns: PathBuf },
    #[error("network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ip {args}: {stderr}")]
    IpCommand { args: String, stderr: String },
    #[error("running ip")]
    IpSpawn {
        #[source]
        source: io::Error,
    },
    #[error("sysctl {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("enforcer at {socket} unreachable")]
    EnforcerUnreachable {
        socket: PathBuf,
        #[source]
        source: palisade_api::ClientError,
    },
    #[error("enforcer at {socket} sent an invalid answer: {reason}")]
    EnforcerProtocol { socket: PathBuf, reason: String },
    #[error("enforcer at {socket} is not ready: {reason}")]
    EnforcerNotReady { socket: PathBuf, reason: String },
    #[error("enforcer refused: {code}: {message}")]
    EnforcerRefused {
        code: palisade_api::ErrorCode,
        message: String,
    },
    #[error("check failed: {what}")]
    CheckFailed { what: String },
    #[error("gc left {count} stale resources: {first}")]
    GcIncomplete { count: usize, first: String },
    #[error("plugin not available")]
    NotAvailable {
        #[source]
        source: Box<Error>,
    },
    #[error("writing the result")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            Error::MissingContainerId => UNKNOWN_CONTAINER,
            Error::MissingEnv { .. }
            | Error::InvalidContainerId { .. }
            | Error::InvalidIfname { .. }
            | Error::UnknownCommand { .. }
            | Error::InvalidEnv { .. } => INVALID_ENV,
            Error::Stdin { .. }
            | Error::IpamIo { .. }
            | Error::Output { .. }
            | Error::GcIncomplete { .. } => IO_FAILURE,
            Error::Decode { .. } => DECODE_FAILURE,
            Error::InvalidConfig { .. } | Error::IpamCorrupt { .. } => INVALID_CONFIG,
            Error::IncompatibleVersion { .. } => INCOMPATIBLE_VERSION,
            Error::PoolExhausted { .. } => POOL_EXHAUSTED,
            Error::DuplicateAttachment { .. } | Error::InterfaceExists { .. } => ALREADY_ATTACHED,
            Error::Netns { .. }
            | Error::IpCommand { .. }
            | Error::IpSpawn { .. }
            | Error::Sysctl { .. } => DATAPATH,
            Error::EnforcerUnreachable { .. }
            | Error::EnforcerProtocol { .. }
            | Error::EnforcerNotReady { .. } => TRY_AGAIN_LATER,
            Error::EnforcerRefused { .. } => ENFORCER_REFUSED,
            Error::CheckFailed { .. } => CHECK_FAILED,
            Error::NotAvailable { .. } => NOT_AVAILABLE,
        }
    }

    /// The error as CNI error JSON. `msg` is this error's message; `details` the chain of
    /// causes.
    pub fn to_cni(&self, cni_version: &str) -> CniError {
        let mut details = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            details.push(s.to_string());
            source = s.source();
        }
        CniError {
            cni_version: cni_version.to_owned(),
            code: self.code(),
            msg: self.to_string(),
            details: details.join(": "),
        }
    }
}

/// The spec's error result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}
