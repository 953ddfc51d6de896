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
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
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

/// Options for loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    pub validation: ValidationOptions,
}

/// What was read, besides the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub files: usize,
    pub objects: BTreeMap<String, usize>,
    /// Kinds Palisade does not model, with counts: reported, never silently dropped.
    pub unsupported_kinds: BTreeMap<String, usize>,
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
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, true, &mut files)?;
    }
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| LoadError::Io {
            path: f.clone(),
            source,
        })?;
        docs.extend(parse_documents(f, &text)?);
    }
    let mut loaded = build_cluster(docs, opts)?;
    loaded.report.files = files.len();
    Ok(loaded)
}

/// Loads manifests held in memory (embedded examples, tests).
pub fn load_str(name: &str, text: &str, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let docs = parse_documents(Path::new(name), text)?;
    let mut loaded = build_cluster(docs, opts)?;
    loaded.report.files = 1;
    Ok(loaded)
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

struct Doc {
    origin: Origin,
    value: Value,
}

fn parse_documents(path: &Path, text: &str) -> Result<Vec<Doc>, LoadError> {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json")
        || text.trim_start().starts_with(['{', '[']);
    let values: Vec<Value> = if is_json {
        let mut out = Vec::new();
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for v in stream {
            match v {
                Ok(v) => out.push(v),
                Err(e) => {
                    return Err(LoadError::Syntax {
                        path: path.to_path_buf(),
                        line: e.line() as u64,
                        column: e.column() as u64,
                        message: strip_position(&e.to_string()),
                    });
                }
            }
        }
        out
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| {
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
        })?
    };
    Ok(values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, value)| Doc {
            origin: Origin {
                file: path.to_path_buf(),
                document: i + 1,
            },
            value,
        })
        .collect())
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

/// Flattens `List` wrappers into their items.
fn flatten(doc: Doc, out: &mut Vec<Doc>, report: &mut LoadReport) {
    let kind = doc
        .value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.ends_with("List")
        && let Some(Value::Array(items)) = doc.value.get("items")
    {
        let item_kind = kind.trim_end_matches("List").to_string();
        for item in items {
            let mut value = item.clone();
            if let Value::Object(m) = &mut value {
                if !m.contains_key("kind") && !item_kind.is_empty() {
                    m.insert("kind".into(), Value::String(item_kind.clone()));
                }
                if !m.contains_key("apiVersion")
                    && let Some(v) = doc.value.get("apiVersion")
                {
                    let api = if item_kind == "NetworkPolicy" {
                        Value::String("networking.k8s.io/v1".into())
                    } else {
                        v.clone()
                    };
                    m.insert("apiVersion".into(), api);
                }
            }
            out.push(Doc {
                origin: doc.origin.clone(),
                value,
            });
        }
        return;
    }
    if !doc.value.is_object() || doc.value.get("kind").is_none() {
        report.warnings.push(format!(
            "{}: not a Kubernetes object (no `kind`); skipped",
            doc.origin
        ));
        return;
    }
    out.push(doc);
}

fn decode<T: DeserializeOwned>(
    doc: &Doc,
    object: &str,
    invalid: &mut Vec<InvalidObject>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(&doc.value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            invalid.push(InvalidObject {
                origin: doc.origin.clone(),
                object: object.to_string(),
                errors: Vec::new(),
                messages: vec![format!("strict decoding error: {path}: {msg}")],
            });
            None
        }
    }
}

fn object_label(doc: &Doc, kind: &str) -> String {
    let meta = doc.value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
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

fn build_cluster(docs: Vec<Doc>, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let mut report = LoadReport::default();
    let mut flat = Vec::new();
    for d in docs {
        flatten(d, &mut flat, &mut report);
    }
    let mut cluster = Cluster::default();
    let mut invalid: Vec<InvalidObject> = Vec::new();
    let mut workloads: Vec<WorkloadDef> = Vec::new();
    let mut pods: Vec<(Origin, PodObject)> = Vec::new();
    let mut seen: BTreeMap<String, Origin> = BTreeMap::new();

    for doc in &flat {
        let kind = doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let api = doc
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let label = object_label(doc, &kind);
        let supported =
            is_modelled_kind(&kind) && (kind != "NetworkPolicy" || api == "networking.k8s.io/v1");
        if !supported {
            let key = if kind == "NetworkPolicy" {
                format!("{kind} ({api})")
            } else {
                kind
            };
            *report.unsupported_kinds.entry(key).or_default() += 1;
            continue;
        }
        *report.objects.entry(kind.clone()).or_default() += 1;
        let full_key = {
            let meta = doc.value.get("metadata");
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str);
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let ns = if kind == "Namespace" {
                ""
            } else {
                ns.unwrap_or(DEFAULT_NAMESPACE)
            };
            format!("{kind} {ns}/{name}")
        };
        if let Some(prev) = seen.get(&full_key) {
            invalid.push(InvalidObject {
                origin: doc.origin.clone(),
                object: label.clone(),
                errors: Vec::new(),
                messages: vec![format!("duplicate object: already defined in {prev}")],
            });
            continue;
        }
        seen.insert(full_key, doc.origin.clone());
        match kind.as_str() {
            "NetworkPolicy" => {
                let Some(np) = decode::<NetworkPolicyObject>(doc, &label, &mut invalid) else {
                    continue;
                };
                let v = validate::validate_network_policy(&np, &opts.validation);
                for w in v.warnings {
                    report
                        .warnings
                        .push(format!("{}: {label}: {w}", doc.origin));
                }
                if !v.errors.is_empty() {
                    invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors: v.errors,
                        messages: Vec::new(),
                    });
                    continue;
                }
                match convert_policy(&np, &doc.origin) {
                    Ok(p) => {
                        cluster
                            .policies
                            .insert((p.namespace.clone(), p.name.clone()), Arc::new(p));
                    }
                    Err(errors) => invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            "Namespace" => {
                let Some(ns) = decode::<NamespaceObject>(doc, &label, &mut invalid) else {
                    continue;
                };
                let mut errors = Vec::new();
                let name = required_name(&ns.metadata, &mut errors);
                validate::validate_labels(
                    ns.metadata.labels.as_ref().unwrap_or(&Labels::new()),
                    "metadata.labels",
                    &mut errors,
                );
                if !errors.is_empty() {
                    invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    });
                    continue;
                }
                let n = Namespace::new(&name, ns.metadata.labels.unwrap_or_default(), true);
                cluster.namespaces.insert(name, n);
            }
            "Pod" => {
                if let Some(p) = decode::<PodObject>(doc, &label, &mut invalid) {
                    pods.push((doc.origin.clone(), p));
                }
            }
            "Service" => {
                let Some(s) = decode::<ServiceObject>(doc, &label, &mut invalid) else {
                    continue;
                };
                match convert_service(&s) {
                    Ok(svc) => {
                        cluster
                            .services
                            .insert((svc.namespace.clone(), svc.name.clone()), svc);
                    }
                    Err(errors) => invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            _ => {
                let Some(w) = decode::<WorkloadObject>(doc, &label, &mut invalid) else {
                    continue;
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
                    invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    });
                    continue;
                }
                workloads.push(WorkloadDef {
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
