//! Bad input: everything that makes `policy-test` exit with status 2.
//!
//! Every variant renders as one self-contained message (the binary prefixes `error: `).
//! Positions are `file:line:column`, field paths are the API server's.

use std::path::PathBuf;

use policy_compiler::engine::EngineError;
use policy_compiler::manifest::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Manifests could not be read or are invalid (the policy core renders the details).
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("compiling policies: {0}")]
    Compile(#[from] EngineError),
    #[error("{}: no such file", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A syntax or schema error in a scenario file.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// A problem with one scenario (unknown endpoint, unresolvable port, L7 fields).
    #[error("{location}: scenario {scenario:?}: {message}")]
    Scenario {
        location: String,
        scenario: String,
        message: String,
    },
    /// An endpoint named on the command line does not exist.
    #[error("{0}")]
    Endpoint(#[from] EndpointError),
    #[error("{0}")]
    Usage(String),
    /// The compiled policy set does not fit the datapath's maps.
    #[error("{0}")]
    Capacity(String),
}

/// A peer reference that does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("unknown endpoint {name:?}{}", did_you_mean(.suggestions))]
    Unknown {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("invalid endpoint {name:?}: {reason}")]
    Malformed { name: String, reason: String },
    #[error(
        "port {port:?} is a container-port name, but the destination {destination} is an IP address; give a number"
    )]
    NamedPortToIp { port: String, destination: String },
    #[error("unknown service {name:?}: expected ns/name of a Service in the manifests{}", did_you_mean_service(.known))]
    UnknownService { name: String, known: Vec<String> },
    #[error("service {service} has no {protocol} port {port}{}", known_ports(.known))]
    UnknownServicePort {
        service: String,
        port: String,
        protocol: String,
        known: Vec<String>,
    },
    #[error(
        "service {service} has no cluster IP (a headless service is reached at its pods' addresses; name a pod instead)"
    )]
    Headless { service: String },
    #[error("service {service} port {port} has no backends (no pod matches its selector with that target port; the datapath rejects such connections){}", skipped_pods(.skipped))]
    NoBackends {
        service: String,
        port: String,
        skipped: Vec<String>,
    },
    #[error("service {service}: {reason}")]
    ServiceTable { service: String, reason: String },
    #[error("destination {destination} has no {protocol} container port named {port:?}{}", known_ports(.known))]
    UnknownPortName {
        port: String,
        protocol: String,
        destination: String,
        known: Vec<String>,
    },
}

fn did_you_mean(s: &[String]) -> String {
    if s.is_empty() {
        " (the manifests define no endpoints)".to_string()
    } else {
        format!("; closest existing: {}", s.join(", "))
    }
}

fn did_you_mean_service(s: &[String]) -> String {
    if s.is_empty() {
        " (the manifests define no services)".to_string()
    } else {
        format!("; services: {}", s.join(", "))
    }
}

fn skipped_pods(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; selected but not serving: {}", s.join("; "))
    }
}

fn known_ports(k: &[String]) -> String {
    if k.is_empty() {
        " (it has no named ports)".to_string()
    } else {
        format!(" (its named ports: {})", k.join(", "))
    }
}
