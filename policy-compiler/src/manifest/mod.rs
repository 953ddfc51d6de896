//! Loading manifests: files or directories (recursive), multi-document YAML and JSON,
//! `kind: List` wrappers, into a [`Cluster`].
//!
//! Nothing is dropped silently: kinds Palisade does not model are counted in the
//! [`LoadReport`], documents that are not Kubernetes objects produce a warning, and an
//! invalid object is an error naming the file, the object and the field path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::cidr::Cidr;
use crate::k8s::{
    self, IntOrString, Labels, NamespaceObject, NetworkPolicyObject, PodObject, PodSpec,
    ServiceObject, WorkloadObject,
};
use crate::labels::Selector;
use crate::model::{
    Cluster, Endpoint, NamedPort, Namespace, NamespaceScope, Peer, Peers, Policy, PortMatch,
    PortSpec, Protocol, Rule, Service, ServicePortSpec, ServiceTarget, WorkloadRef,
};
use crate::rules::PolicyKind;
use crate::validate::{self, FieldError, ValidationOptions};

mod admin;
mod documents;
mod files;
mod object;
mod palisade;

use documents::*;
use files::*;
use object::*;

pub use object::{DEFAULT_NAMESPACE, convert_policy};
pub use palisade::{api_version_of, policy_kind};

/// Workload kinds whose pod template makes endpoints.
pub const WORKLOAD_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
];

/// Whether the loader models objects of this kind (list wrappers are flattened).
pub fn is_modelled_kind(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "Pod"
            | "Service"
            | "EndpointSlice"
            | "NetworkPolicy"
            | "Node"
            | "AdminNetworkPolicy"
            | "BaselineAdminNetworkPolicy"
            | "ClusterNetworkPolicy"
    ) || WORKLOAD_KINDS.contains(&kind)
        || kind.ends_with("List")
}

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document number inside the file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Document 0: an object that did not come from a file (an API server's object);
        // `file` then names where it came from.
        if self.document == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Only regular files are read: a FIFO would block the reader, a device can be endless.
    #[error("{}: is a {file_type}, not a regular file; only regular files are read", path.display())]
    NotRegular {
        path: PathBuf,
        file_type: &'static str,
    },
    #[error(
        "{}: larger than the {limit}-byte limit on one manifest file (max_file_bytes)",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// A document the loader cannot model, in strict mode.
    #[error("{origin}: {reason}")]
    Unmodelled { origin: Origin, reason: String },
    #[error("{}", render_invalid(.0))]
    Invalid(Vec<InvalidObject>),
}

/// One object that failed decoding or validation, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidObject {
    pub origin: Origin,
    /// `NetworkPolicy default/allow-web`.
    pub object: String,
    pub errors: Vec<FieldError>,
    /// Decoding problems that are not field errors (`strict decoding error: ...`).
    pub messages: Vec<String>,
}

fn render_invalid(objs: &[InvalidObject]) -> String {
    let mut out = Vec::new();
    for o in objs {
        let mut problems: Vec<String> = o.messages.clone();
        problems.extend(o.errors.iter().map(|e| e.to_string()));
        out.push(format!(
            "{}: {} is invalid: {}",
            o.origin,
            o.object,
            problems.join("; ")
        ));
    }
    out.join("\n")
}

/// Default for [`Limits::max_file_bytes`]: 256 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Default for [`Limits::max_documents`].
pub const DEFAULT_MAX_DOCUMENTS: usize = 1_000_000;
/// Default for [`Limits::max_nodes`].
pub const DEFAULT_MAX_NODES: usize = 50_000_000;

/// Limits on what one manifest file may hold. Each is checked per file, before or while
/// parsing, so a hostile or broken file is refused with an error instead of exhausting
/// memory. YAML aliases stay bounded separately (at most 50,000 aliases and 1,000,000
/// replayed events per file), so an alias bomb is refused whatever these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from one file; a larger file is an error (default 256 MiB).
    pub max_file_bytes: u64,
    /// Top-level documents (`---`-separated YAML documents, or concatenated JSON values)
    /// in one file (default 1,000,000). The items of a `List` count as nodes, not documents.
    pub max_documents: usize,
    /// Nodes (mappings, sequences and scalars, aliases expanded) in one file (default
    /// 50,000,000).
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_documents: DEFAULT_MAX_DOCUMENTS,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

/// Options for loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    pub validation: ValidationOptions,
    pub limits: Limits,
    /// A document the loader cannot model (a kind it does not know, a NetworkPolicy of
    /// another apiVersion, a document without `kind`) is an error instead of a warning.
    /// The enforcer loads this way: a misspelt kind must not silently remove a policy.
    pub strict_kinds: bool,
}

/// What was read, besides the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub files: usize,
    pub objects: BTreeMap<String, usize>,
    /// Kinds Palisade does not model, with counts: reported, never silently dropped.
    pub unsupported_kinds: BTreeMap<String, usize>,
    /// Where the first document of each unsupported kind was found (`file (document n)`).
    pub unsupported_at: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

impl LoadReport {
    pub fn unsupported_total(&self) -> usize {
        self.unsupported_kinds.values().sum()
    }
}

/// The result of loading a set of paths.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub cluster: Cluster,
    pub report: LoadReport,
}

/// Loads every manifest under `paths` (files, or directories walked recursively for
/// `.yaml`, `.yml` and `.json`, in sorted order).
///
/// Files are read one at a time and decoded document by document straight into typed
/// objects: a file's text is the largest transient copy, never a tree of every document.
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, true, &mut files)?;
    }
    let mut b = Builder::new(opts);
    for f in &files {
        let text = read_capped(f, opts.limits.max_file_bytes)?;
        parse_documents(f, &text, opts, &mut b)?;
    }
    let mut loaded = b.finish()?;
    loaded.report.files = files.len();
    Ok(loaded)
}

/// Loads objects that are already JSON text, one object each (no `List` wrappers are
/// expected, though they are flattened like in files): what a Kubernetes source holds of
/// every watched object. `origin` names where each came from for messages (document 0:
/// `file` is printed alone). The objects are decoded and validated exactly as the
/// documents of a file are.
pub fn load_objects<'a>(
    objects: impl IntoIterator<Item = (Origin, &'a RawValue)>,
    opts: &LoadOptions,
) -> Result<Loaded, LoadError> {
    let mut b = Builder::new(opts);
    for (origin, raw) in objects {
        b.add(Doc {
            origin,
            body: Body::Raw(raw),
            default_kind: None,
            default_api: None,
        })?;
    }
    b.finish()
}

/// Loads manifests held in memory (embedded examples, tests).
pub fn load_str(name: &str, text: &str, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    if text.len() as u64 > opts.limits.max_file_bytes {
        return Err(LoadError::TooLarge {
            path: PathBuf::from(name),
            limit: opts.limits.max_file_bytes,
        });
    }
    let mut b = Builder::new(opts);
    parse_documents(Path::new(name), text, opts, &mut b)?;
    let mut loaded = b.finish()?;
    loaded.report.files = 1;
    Ok(loaded)
}
