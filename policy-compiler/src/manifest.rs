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
use crate::validate::{self, FieldError, ValidationOptions};

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
    matches!(kind, "Namespace" | "Pod" | "Service" | "NetworkPolicy")
        || WORKLOAD_KINDS.contains(&kind)
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

fn file_type_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Reads a regular file (symlinks followed) through a size cap. The file is opened
/// non-blocking, so a FIFO swapped in after the type check cannot block the open, and its
/// type is checked again on the open descriptor.
fn read_capped(path: &Path, max: u64) -> Result<String, LoadError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegular {
            path: path.to_path_buf(),
            file_type: file_type_name(&meta.file_type()),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegular {
            path: path.to_path_buf(),
            file_type: file_type_name(&meta.file_type()),
        });
    }
    if meta.len() > max {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            limit: max,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > max {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            limit: max,
        });
    }
    String::from_utf8(buf).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

fn collect_files(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            LoadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| LoadError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, false, out)?;
        }
    } else if explicit || is_manifest_name(path) {
        // A manifest-named FIFO, device or socket is an error (read_capped names it), not
        // a silent skip: the operator meant it to be read.
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn is_manifest_name(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml") | Some("json")
    )
}

/// One document's content: a slice of a JSON file's text (decoded only into the typed
/// object it describes) or a YAML document's tree.
enum Body<'a> {
    Raw(&'a RawValue),
    Tree(Value),
}

struct Doc<'a> {
    origin: Origin,
    body: Body<'a>,
    /// `kind` and `apiVersion` an item of a `List` takes when it has none.
    default_kind: Option<String>,
    default_api: Option<String>,
}

/// What the loader needs to know of a document before decoding it.
#[derive(Default)]
struct Head {
    is_object: bool,
    kind: Option<String>,
    api: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawHead {
    #[serde(default)]
    kind: Option<Value>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<Value>,
    #[serde(default)]
    metadata: Option<RawMeta>,
}

#[derive(serde::Deserialize)]
struct RawMeta {
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    namespace: Option<Value>,
}

#[derive(serde::Deserialize)]
struct RawItems<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

fn str_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

impl Doc<'_> {
    fn head(&self) -> Head {
        let mut h = match &self.body {
            Body::Raw(r) => {
                if !r.get().trim_start().starts_with('{') {
                    Head::default()
                } else {
                    match serde_json::from_str::<RawHead>(r.get()) {
                        Ok(rh) => {
                            let meta = rh.metadata.as_ref();
                            Head {
                                is_object: true,
                                kind: str_of(rh.kind.as_ref()),
                                api: str_of(rh.api_version.as_ref()),
                                name: str_of(meta.and_then(|m| m.name.as_ref())),
                                namespace: str_of(meta.and_then(|m| m.namespace.as_ref())),
                            }
                        }
                        // Not decodable even leniently: decoding reports the real problem.
                        Err(_) => Head {
                            is_object: true,
                            ..Head::default()
                        },
                    }
                }
            }
            Body::Tree(v) => {
                let meta = v.get("metadata");
                Head {
                    is_object: v.is_object(),
                    kind: str_of(v.get("kind")),
                    api: str_of(v.get("apiVersion")),
                    name: str_of(meta.and_then(|m| m.get("name"))),
                    namespace: str_of(meta.and_then(|m| m.get("namespace"))),
                }
            }
        };
        if h.kind.is_none() {
            h.kind = self.default_kind.clone();
        }
        if h.api.is_none() {
            h.api = self.default_api.clone();
        }
        h
    }

    fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        let (path, msg) = match &self.body {
            Body::Raw(r) => {
                let mut de = serde_json::Deserializer::from_str(r.get());
                match serde_path_to_error::deserialize::<_, T>(&mut de) {
                    Ok(v) => return Ok(v),
                    Err(e) => (
                        e.path().to_string(),
                        strip_position(&e.into_inner().to_string()),
                    ),
                }
            }
            Body::Tree(v) => match serde_path_to_error::deserialize::<_, T>(v) {
                Ok(v) => return Ok(v),
                Err(e) => (e.path().to_string(), e.into_inner().to_string()),
            },
        };
        Err(format!("strict decoding error: {path}: {msg}"))
    }
}

/// Parses one file's documents into `b`. JSON (a `.json` file, or text starting with `{`
/// or `[`) is checked for syntax, duplicate keys and the limits in one pass, then each
/// document is decoded from its own slice of the text. Text that starts like JSON but is
/// not (a multi-document YAML file whose first document is flow-style `{...}`) is YAML.
fn parse_documents(
    path: &Path,
    text: &str,
    opts: &LoadOptions,
    b: &mut Builder,
) -> Result<(), LoadError> {
    let ext = path.extension().and_then(|e| e.to_str());
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if ext == Some("json") || looks_json {
        match check_json(text, &opts.limits) {
            Ok(()) => return parse_json(path, text, b),
            Err(e) => {
                let syntax = matches!(
                    e.classify(),
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof
                );
                if ext == Some("json") || !syntax || !matches!(ext, Some("yaml" | "yml")) {
                    return Err(LoadError::Syntax {
                        path: path.to_path_buf(),
                        line: e.line() as u64,
                        column: e.column() as u64,
                        message: strip_position(&e.to_string()),
                    });
                }
            }
        }
    }
    parse_yaml(path, text, &opts.limits, b)
}

fn parse_json(path: &Path, text: &str, b: &mut Builder) -> Result<(), LoadError> {
    let stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
    for (i, v) in stream.enumerate() {
        let raw = v.map_err(|e| LoadError::Syntax {
            path: path.to_path_buf(),
            line: e.line() as u64,
            column: e.column() as u64,
            message: strip_position(&e.to_string()),
        })?;
        if raw.get() == "null" {
            continue;
        }
        b.add(Doc {
            origin: Origin {
                file: path.to_path_buf(),
                document: i + 1,
            },
            body: Body::Raw(raw),
            default_kind: None,
            default_api: None,
        })?;
    }
    Ok(())
}

fn parse_yaml(path: &Path, text: &str, limits: &Limits, b: &mut Builder) -> Result<(), LoadError> {
    let mut options = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    let file_bytes = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    budget.max_reader_input_bytes = Some(file_bytes);
    budget.max_documents = limits.max_documents;
    budget.max_nodes = limits.max_nodes;
    // Every node is at most a start and an end event, every document two more.
    budget.max_events = limits
        .max_nodes
        .saturating_mul(2)
        .saturating_add(limits.max_documents.saturating_mul(2))
        .saturating_add(16);
    budget.max_total_scalar_bytes = file_bytes;
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    let syntax = |e: serde_saphyr::Error| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        LoadError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: first_line(&e.to_string()),
        }
    };
    let mut reader = text.as_bytes();
    // One document at a time: each is decoded into typed objects and dropped before the
    // next is parsed.
    // The streaming reader budgets each document on its own; the per-file counts are kept
    // here.
    let mut nodes = 0usize;
    for (i, v) in serde_saphyr::read_with_options::<_, Value>(&mut reader, options).enumerate() {
        let value = v.map_err(syntax)?;
        if i >= limits.max_documents {
            return Err(LoadError::Syntax {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!(
                    "more than {} documents in one file (max_documents)",
                    limits.max_documents
                ),
            });
        }
        nodes = nodes.saturating_add(count_nodes(&value));
        if nodes > limits.max_nodes {
            return Err(LoadError::Syntax {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!(
                    "more than {} nodes in one file (max_nodes), in document {}",
                    limits.max_nodes,
                    i + 1
                ),
            });
        }
        if value.is_null() {
            continue;
        }
        b.add(Doc {
            origin: Origin {
                file: path.to_path_buf(),
                document: i + 1,
            },
            body: Body::Tree(value),
            default_kind: None,
            default_api: None,
        })?;
    }
    Ok(())
}

/// Nodes of a decoded YAML document, counted as [`JsonCheck`] counts JSON (keys count).
fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(|v| 1 + count_nodes(v)).sum::<usize>(),
        _ => 1,
    }
}

/// One pass over JSON text: syntax, duplicate keys (an error, as the API server's strict
/// decoding makes them) and the document and node limits.
fn check_json(text: &str, limits: &Limits) -> Result<(), serde_json::Error> {
    use serde::de::{DeserializeSeed as _, Error as _};
    let mut de = serde_json::Deserializer::from_str(text);
    let mut nodes = 0usize;
    let mut docs = 0usize;
    loop {
        // Whitespace only left: done.
        if de.end().is_ok() {
            return Ok(());
        }
        docs += 1;
        if docs > limits.max_documents {
            return Err(serde_json::Error::custom(format!(
                "more than {} documents in one file (max_documents)",
                limits.max_documents
            )));
        }
        JsonCheck {
            nodes: &mut nodes,
            max_nodes: limits.max_nodes,
        }
        .deserialize(&mut de)?;
    }
}

struct JsonCheck<'c> {
    nodes: &'c mut usize,
    max_nodes: usize,
}

impl JsonCheck<'_> {
    fn count<E: serde::de::Error>(&mut self) -> Result<(), E> {
        *self.nodes += 1;
        if *self.nodes > self.max_nodes {
            return Err(E::custom(format!(
                "more than {} nodes in one file (max_nodes)",
                self.max_nodes
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonCheck<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: serde::de::Error>(mut self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.count()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        while seq
            .next_element_seed(JsonCheck {
                nodes: &mut *self.nodes,
                max_nodes: self.max_nodes,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        self.count()?;
        let mut keys: Vec<String> = Vec::new();
        let mut set: std::collections::HashSet<String> = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            self.count()?;
            // Kubernetes objects have small maps: a linear scan until they are not.
            let dup = if set.is_empty() && keys.len() < 32 {
                let d = keys.contains(&k);
                keys.push(k.clone());
                d
            } else {
                if set.is_empty() {
                    set.extend(keys.drain(..));
                }
                !set.insert(k.clone())
            };
            if dup {
                return Err(A::Error::custom(format!(
                    "duplicate key {k:?} (duplicate fields are an error, as in the API server's strict decoding)"
                )));
            }
            map.next_value_seed(JsonCheck {
                nodes: &mut *self.nodes,
                max_nodes: self.max_nodes,
            })?;
        }
        Ok(())
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The first line of a YAML error, without the position prefix the caller prints itself
/// (`error: line 4 column 9: ...`).
fn first_line(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or(msg).trim();
    let rest = line
        .strip_prefix("error:")
        .map(str::trim_start)
        .unwrap_or(line);
    match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, tail)) if pos.contains("column") => tail.to_string(),
        _ => rest.to_string(),
    }
}

fn object_label(head: &Head, kind: &str) -> String {
    let name = head.name.as_deref().unwrap_or("<unnamed>");
    match head.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// A workload object before its endpoints are decided.
struct WorkloadDef {
    origin: Origin,
    kind: String,
    namespace: String,
    name: String,
    labels: Labels,
    spec: Option<PodSpec>,
}

struct Builder<'o> {
    opts: &'o LoadOptions,
    report: LoadReport,
    cluster: Cluster,
    invalid: Vec<InvalidObject>,
    workloads: Vec<WorkloadDef>,
    pods: Vec<(Origin, PodObject)>,
    seen: BTreeMap<String, Origin>,
}

/// The kinds the loader models, for "did you mean" hints.
const KNOWN_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "NetworkPolicy",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "List",
];

impl<'o> Builder<'o> {
    fn new(opts: &'o LoadOptions) -> Self {
        Builder {
            opts,
            report: LoadReport::default(),
            cluster: Cluster::default(),
            invalid: Vec::new(),
            workloads: Vec::new(),
            pods: Vec::new(),
            seen: BTreeMap::new(),
        }
    }

    fn decode<T: DeserializeOwned>(&mut self, doc: &Doc<'_>, object: &str) -> Option<T> {
        match doc.decode::<T>() {
            Ok(v) => Some(v),
            Err(msg) => {
                self.invalid.push(InvalidObject {
                    origin: doc.origin.clone(),
                    object: object.to_string(),
                    errors: Vec::new(),
                    messages: vec![msg],
                });
                None
            }
        }
    }

    /// A document the loader does not model: counted (and warned about by the caller), or
    /// an error in strict mode.
    fn unmodelled(
        &mut self,
        origin: &Origin,
        key: String,
        reason: String,
    ) -> Result<(), LoadError> {
        if self.opts.strict_kinds {
            return Err(LoadError::Unmodelled {
                origin: origin.clone(),
                reason,
            });
        }
        self.report
            .unsupported_at
            .entry(key.clone())
            .or_insert_with(|| origin.to_string());
        *self.report.unsupported_kinds.entry(key).or_default() += 1;
        Ok(())
    }

    /// Takes one document: a `List` is flattened into its items, anything else is decoded
    /// into its typed object at once (the document's text or tree is dropped after).
    fn add(&mut self, doc: Doc<'_>) -> Result<(), LoadError> {
        let head = doc.head();
        let kind = head.kind.clone().unwrap_or_default();
        let doc = if kind.ends_with("List") {
            let item_kind = kind.trim_end_matches("List").to_string();
            let default_kind = (!item_kind.is_empty()).then(|| item_kind.clone());
            let default_api = head.api.as_ref().map(|v| {
                if item_kind == "NetworkPolicy" {
                    "networking.k8s.io/v1".to_string()
                } else {
                    v.clone()
                }
            });
            let Doc { origin, body, .. } = doc;
            match body {
                Body::Raw(r) => match serde_json::from_str::<RawItems<'_>>(r.get()) {
                    Ok(items) => {
                        for item in items.items {
                            self.add(Doc {
                                origin: origin.clone(),
                                body: Body::Raw(item),
                                default_kind: default_kind.clone(),
                                default_api: default_api.clone(),
                            })?;
                        }
                        return Ok(());
                    }
                    Err(_) => Doc {
                        origin,
                        body: Body::Raw(r),
                        default_kind: None,
                        default_api: None,
                    },
                },
                Body::Tree(mut v) => {
                    let items = v.as_object_mut().and_then(|m| match m.remove("items") {
                        Some(Value::Array(items)) => Some(items),
                        Some(other) => {
                            m.insert("items".into(), other);
                            None
                        }
                        None => None,
                    });
                    match items {
                        Some(items) => {
                            for item in items {
                                self.add(Doc {
                                    origin: origin.clone(),
                                    body: Body::Tree(item),
                                    default_kind: default_kind.clone(),
                                    default_api: default_api.clone(),
                                })?;
                            }
                            return Ok(());
                        }
                        None => Doc {
                            origin,
                            body: Body::Tree(v),
                            default_kind: None,
                            default_api: None,
                        },
                    }
                }
            }
        } else {
            doc
        };
        if !head.is_object || head.kind.is_none() {
            if self.opts.strict_kinds {
                return Err(LoadError::Unmodelled {
                    origin: doc.origin.clone(),
                    reason: "not a Kubernetes object (no `kind`)".into(),
                });
            }
            self.report.warnings.push(format!(
                "{}: not a Kubernetes object (no `kind`); skipped",
                doc.origin
            ));
            return Ok(());
        }
        let api = head.api.clone().unwrap_or_default();
        let label = object_label(&head, &kind);
        let supported =
            is_modelled_kind(&kind) && (kind != "NetworkPolicy" || api == "networking.k8s.io/v1");
        if !supported {
            if kind == "NetworkPolicy" {
                return self.unmodelled(
                    &doc.origin,
                    format!("{kind} ({api})"),
                    format!(
                        "{label}: apiVersion {api:?} is not modelled (NetworkPolicy is read as networking.k8s.io/v1 only)"
                    ),
                );
            }
            let hint = KNOWN_KINDS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&kind))
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default();
            return self.unmodelled(
                &doc.origin,
                kind.clone(),
                format!(
                    "{label}: kind {kind:?} is not modelled (Namespace, Pod, Service, NetworkPolicy, workloads and Lists are){hint}"
                ),
            );
        }
        self.add_object(&doc, &head, &kind, label);
        Ok(())
    }

    fn add_object(&mut self, doc: &Doc<'_>, head: &Head, kind: &str, label: String) {
        let opts = self.opts;
        let kind = kind.to_string();
        *self.report.objects.entry(kind.clone()).or_default() += 1;
        let full_key = {
            let name = head.name.as_deref().unwrap_or("");
            let ns = if kind == "Namespace" {
                ""
            } else {
                head.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
            };
            format!("{kind} {ns}/{name}")
        };
        if let Some(prev) = self.seen.get(&full_key) {
            self.invalid.push(InvalidObject {
                origin: doc.origin.clone(),
                object: label.clone(),
                errors: Vec::new(),
                messages: vec![format!("duplicate object: already defined in {prev}")],
            });
            return;
        }
        self.seen.insert(full_key, doc.origin.clone());
        match kind.as_str() {
            "NetworkPolicy" => {
                let Some(np) = self.decode::<NetworkPolicyObject>(doc, &label) else {
                    return;
                };
                let v = validate::validate_network_policy(&np, &opts.validation);
                for w in v.warnings {
                    self.report
                        .warnings
                        .push(format!("{}: {label}: {w}", doc.origin));
                }
                if !v.errors.is_empty() {
                    self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors: v.errors,
                        messages: Vec::new(),
                    });
                    return;
                }
                match convert_policy(&np, &doc.origin) {
                    Ok(p) => {
                        self.cluster
                            .policies
                            .insert((p.namespace.clone(), p.name.clone()), Arc::new(p));
                    }
                    Err(errors) => self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            "Namespace" => {
                let Some(ns) = self.decode::<NamespaceObject>(doc, &label) else {
                    return;
                };
                let mut errors = Vec::new();
                let name = required_name(&ns.metadata, &mut errors);
                validate::validate_labels(
                    ns.metadata.labels.as_ref().unwrap_or(&Labels::new()),
                    "metadata.labels",
                    &mut errors,
                );
                if !errors.is_empty() {
                    self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    });
                    return;
                }
                let n = Namespace::new(&name, ns.metadata.labels.unwrap_or_default(), true);
                self.cluster.namespaces.insert(name, n);
            }
            "Pod" => {
                if let Some(p) = self.decode::<PodObject>(doc, &label) {
                    self.pods.push((doc.origin.clone(), p));
                }
            }
            "Service" => {
                let Some(s) = self.decode::<ServiceObject>(doc, &label) else {
                    return;
                };
                match convert_service(&s) {
                    Ok(svc) => {
                        self.cluster
                            .services
                            .insert((svc.namespace.clone(), svc.name.clone()), svc);
                    }
                    Err(errors) => self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            _ => {
                let Some(w) = self.decode::<WorkloadObject>(doc, &label) else {
                    return;
                };
                let mut errors = Vec::new();
                let name = required_name(&w.metadata, &mut errors);
                let template = w.spec.as_ref().and_then(|s| {
                    if kind == "CronJob" {
                        s.job_template
                            .as_ref()
                            .and_then(|j| j.spec.as_ref())
                            .and_then(|s| s.template.clone())
                    } else {
                        s.template.clone()
                    }
                });
                let labels = template
                    .as_ref()
                    .and_then(|t| t.metadata.labels.clone())
                    .unwrap_or_default();
                let tpath = if kind == "CronJob" {
                    "spec.jobTemplate.spec.template.metadata.labels"
                } else {
                    "spec.template.metadata.labels"
                };
                validate::validate_labels(&labels, tpath, &mut errors);
                if !errors.is_empty() {
                    self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    });
                    return;
                }
                self.workloads.push(WorkloadDef {
                    origin: doc.origin.clone(),
                    kind: kind.clone(),
                    namespace: namespace_of(&w.metadata),
                    name,
                    labels,
                    spec: template.and_then(|t| t.spec),
                });
            }
        }
    }

    fn finish(self) -> Result<Loaded, LoadError> {
        let Builder {
            report,
            mut cluster,
            mut invalid,
            workloads,
            pods,
            ..
        } = self;

        // Workload ownership: a pod belongs to its controller owner (the direct one, as
        // `kubectl get pods -o wide` shows it: a Deployment's pods belong to their ReplicaSet).
        let mut covered: BTreeSet<(String, String, String)> = BTreeSet::new();
        for (origin, pod) in pods {
            let label = format!(
                "Pod {}/{}",
                namespace_of(&pod.metadata),
                pod.metadata.name.as_deref().unwrap_or("<unnamed>")
            );
            let mut errors = Vec::new();
            let name = required_name(&pod.metadata, &mut errors);
            let ns = namespace_of(&pod.metadata);
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            validate::validate_labels(&labels, "metadata.labels", &mut errors);
            let ips = pod_ips(&pod, &mut errors);
            let ports = named_ports(pod.spec.as_ref(), "spec", &mut errors);
            if !errors.is_empty() {
                invalid.push(InvalidObject {
                    origin,
                    object: label,
                    errors,
                    messages: Vec::new(),
                });
                continue;
            }
            let workload = match controller_owner(&pod.metadata) {
                Some((kind, owner)) => {
                    covered.insert((ns.clone(), kind.clone(), owner.clone()));
                    WorkloadRef { kind, name: owner }
                }
                None => WorkloadRef {
                    kind: "Pod".into(),
                    name: name.clone(),
                },
            };
            let key = Endpoint::pod_key(&ns, &name);
            cluster.endpoints.insert(
                key.clone(),
                Endpoint {
                    key,
                    namespace: ns,
                    name,
                    workload,
                    labels,
                    ips,
                    ports,
                    host_network: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.host_network)
                        .unwrap_or(false),
                },
            );
        }
        // Workloads without pods in the input: one representative endpoint each.
        for w in &workloads {
            if covered.contains(&(w.namespace.clone(), w.kind.clone(), w.name.clone())) {
                continue;
            }
            let mut errors = Vec::new();
            let ports = named_ports(w.spec.as_ref(), "spec.template.spec", &mut errors);
            if !errors.is_empty() {
                invalid.push(InvalidObject {
                    origin: w.origin.clone(),
                    object: format!("{} {}/{}", w.kind, w.namespace, w.name),
                    errors,
                    messages: Vec::new(),
                });
                continue;
            }
            let (kind, name) = (w.kind.clone(), w.name.clone());
            let key = Endpoint::workload_key(&w.namespace, &kind, &name);
            cluster.endpoints.entry(key.clone()).or_insert(Endpoint {
                key,
                namespace: w.namespace.clone(),
                name: name.clone(),
                workload: WorkloadRef { kind, name },
                labels: w.labels.clone(),
                ips: Vec::new(),
                ports,
                host_network: w
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false),
            });
        }

        if !invalid.is_empty() {
            return Err(LoadError::Invalid(invalid));
        }
        cluster.imply_namespaces();
        Ok(Loaded { cluster, report })
    }
}

pub const DEFAULT_NAMESPACE: &str = "default";

fn namespace_of(meta: &k8s::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
}

fn required_name(meta: &k8s::ObjectMeta, errors: &mut Vec<FieldError>) -> String {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => {
            for d in validate::is_dns1123_subdomain(n) {
                errors.push(field_invalid("metadata.name", format!("{n:?}"), d));
            }
            n.to_string()
        }
        _ => {
            errors.push(field_required(
                "metadata.name",
                "name or generateName is required",
            ));
            String::new()
        }
    }
}

/// The controller owner of an object. Nodes own static pods without managing them, so a
/// Node owner is no workload; an owner without a kind is taken as a bare pod group.
fn controller_owner(meta: &k8s::ObjectMeta) -> Option<(String, String)> {
    let refs = meta.owner_references.as_ref()?;
    let r = refs.iter().find(|r| r.controller == Some(true))?;
    match r.kind.as_str() {
        "Node" => None,
        "" => Some(("Pod".into(), r.name.clone())),
        k => Some((k.to_string(), r.name.clone())),
    }
}

fn pod_ips(pod: &PodObject, errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let Some(st) = &pod.status else { return out };
    let mut push = |s: &str, path: String| match s.parse::<IpAddr>() {
        Ok(ip) => {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Err(_) => errors.push(field_invalid(
            &path,
            format!("{s:?}"),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
        )),
    };
    if let Some(ips) = &st.pod_ips {
        for (i, p) in ips.iter().enumerate() {
            if let Some(ip) = p.ip.as_deref().filter(|s| !s.is_empty()) {
                push(ip, format!("status.podIPs[{i}].ip"));
            }
        }
    }
    if let Some(ip) = st.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        push(ip, "status.podIP".into());
    }
    out
}

fn named_ports(spec: Option<&PodSpec>, base: &str, errors: &mut Vec<FieldError>) -> Vec<NamedPort> {
    let mut out = Vec::new();
    let Some(spec) = spec else { return out };
    let groups = [
        ("containers", &spec.containers),
        ("initContainers", &spec.init_containers),
    ];
    for (field, containers) in groups {
        for (ci, c) in containers.iter().flatten().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let path = format!("{base}.{field}[{ci}].ports[{pi}]");
                let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let Some(protocol) = port_protocol(p.protocol.as_deref(), &path, errors) else {
                    continue;
                };
                match p.container_port {
                    Some(n) if (1..=65535).contains(&n) => out.push(NamedPort {
                        name: name.to_string(),
                        port: n as u16,
                        protocol,
                    }),
                    Some(n) => errors.push(field_invalid(
                        &format!("{path}.containerPort"),
                        n.to_string(),
                        "must be between 1 and 65535, inclusive".into(),
                    )),
                    None => errors.push(field_required(&format!("{path}.containerPort"), "")),
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn convert_service(s: &ServiceObject) -> Result<Service, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = required_name(&s.metadata, &mut errors);
    let spec = s.spec.clone().unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let ips = spec.cluster_ips.clone().unwrap_or_default();
    for ip in spec.cluster_ip.iter().chain(ips.iter()) {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(a) if !cluster_ips.contains(&a) => cluster_ips.push(a),
            Ok(_) => {}
            Err(_) => errors.push(field_invalid(
                "spec.clusterIP",
                format!("{ip:?}"),
                "must be a valid IP address".into(),
            )),
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(protocol) = port_protocol(p.protocol.as_deref(), &path, &mut errors) else {
            continue;
        };
        let Some(port) = p.port.filter(|n| (1..=65535).contains(n)) else {
            errors.push(field_invalid(
                &format!("{path}.port"),
                format!("{:?}", p.port),
                "must be between 1 and 65535, inclusive".into(),
            ));
            continue;
        };
        let target = match &p.target_port {
            None => ServiceTarget::Number(port as u16),
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => {
                ServiceTarget::Number(*n as u16)
            }
            Some(IntOrString::Int(n)) => {
                errors.push(field_invalid(
                    &format!("{path}.targetPort"),
                    n.to_string(),
                    "must be between 1 and 65535, inclusive".into(),
                ));
                continue;
            }
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => ServiceTarget::Number(n),
                _ => ServiceTarget::Named(s.clone()),
            },
        };
        ports.push(ServicePortSpec {
            name: p.name.clone(),
            port: port as u16,
            protocol,
            target,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Service {
        namespace: namespace_of(&s.metadata),
        name,
        selector: spec.selector.clone(),
        cluster_ips,
        ports,
    })
}

/// Converts a validated NetworkPolicy into its defaulted internal form.
pub fn convert_policy(
    np: &NetworkPolicyObject,
    origin: &Origin,
) -> Result<Policy, Vec<FieldError>> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = &np.spec;
    // Defaulting as the API server does: no policyTypes -> Ingress, plus Egress when
    // egress rules are present.
    let (isolate_ingress, isolate_egress) = match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let mut errors = Vec::new();
    let ingress = isolate_ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                convert_rule(
                    &namespace,
                    &r.from,
                    &r.ports,
                    &format!("spec.ingress[{i}]"),
                    "from",
                    &mut errors,
                )
            })
            .collect()
    });
    let egress = isolate_egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                convert_rule(
                    &namespace,
                    &r.to,
                    &r.ports,
                    &format!("spec.egress[{i}]"),
                    "to",
                    &mut errors,
                )
            })
            .collect()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy {
        pod_selector: Selector::from_api(&spec.pod_selector),
        namespace,
        name,
        ingress,
        egress,
        origin: origin.to_string(),
    })
}

fn convert_rule(
    namespace: &str,
    peers: &Option<Vec<k8s::NetworkPolicyPeer>>,
    ports: &Option<Vec<k8s::NetworkPolicyPort>>,
    path: &str,
    peer_field: &str,
    errors: &mut Vec<FieldError>,
) -> Rule {
    let peers = match peers {
        None => Peers::Any,
        Some(l) if l.is_empty() => Peers::Any,
        Some(l) => Peers::List(
            l.iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    convert_peer(namespace, p, &format!("{path}.{peer_field}[{i}]"), errors)
                })
                .collect(),
        ),
    };
    let ports = ports
        .iter()
        .flatten()
        .map(|p| {
            let protocol = p
                .protocol
                .as_deref()
                .and_then(Protocol::from_name)
                .unwrap_or(Protocol::TCP);
            let port = match &p.port {
                None => PortMatch::All,
                Some(IntOrString::Int(n)) => {
                    let lo = *n as u16;
                    let hi = p.end_port.map(|e| e as u16).unwrap_or(lo);
                    PortMatch::Range(lo, hi)
                }
                Some(IntOrString::String(s)) => PortMatch::Named(s.clone()),
            };
            PortSpec { protocol, port }
        })
        .collect();
    Rule { peers, ports }
}

fn convert_peer(
    namespace: &str,
    p: &k8s::NetworkPolicyPeer,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Peer> {
    if let Some(b) = &p.ip_block {
        let parse = |s: &str, field: String, errors: &mut Vec<FieldError>| match s.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(field_invalid(&field, format!("{s:?}"), e.to_string()));
                None
            }
        };
        let cidr = parse(&b.cidr, format!("{path}.ipBlock.cidr"), errors)?;
        let except = b
            .except
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, e)| parse(e, format!("{path}.ipBlock.except[{i}]"), errors))
            .collect();
        return Some(Peer::IpBlock { cidr, except });
    }
    let pods = p
        .pod_selector
        .as_ref()
        .map(Selector::from_api)
        .unwrap_or_default();
    let namespaces = match &p.namespace_selector {
        Some(ns) => NamespaceScope::Selected(Selector::from_api(ns)),
        None => NamespaceScope::Own(namespace.to_string()),
    };
    Some(Peer::Endpoints { namespaces, pods })
}

/// A port's protocol (default TCP, case-sensitive as in the API), or an error at `path`.
fn port_protocol(
    proto: Option<&str>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Protocol> {
    match proto.unwrap_or("TCP") {
        "TCP" => Some(Protocol::TCP),
        "UDP" => Some(Protocol::UDP),
        "SCTP" => Some(Protocol::SCTP),
        other => {
            errors.push(field_unsupported(
                &format!("{path}.protocol"),
                format!("{other:?}"),
                &["TCP", "UDP", "SCTP"],
            ));
            None
        }
    }
}

fn field_invalid(field: &str, bad_value: String, detail: String) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Invalid,
        bad_value: Some(bad_value),
        detail,
    }
}

fn field_required(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Required,
        bad_value: None,
        detail: detail.to_string(),
    }
}

fn field_unsupported(field: &str, bad_value: String, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Unsupported,
        bad_value: Some(bad_value),
        detail: format!("supported values: {}", list.join(", ")),
    }
}
