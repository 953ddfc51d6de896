//! Policy sources: where the cluster model comes from.
//!
//! The sync loop sees a source only through [`PolicySource`]: one synchronous snapshot to
//! start from, then a stream of [`SourceEvent`]s, each a batch of [`Change`]s relative to
//! everything delivered before. A Kubernetes watcher can implement the same trait later
//! without touching the loop. [`DirSource`] reads a directory of manifests and watches it.
//!
//! A source never withdraws enforcement on bad input: a reload that fails keeps the previous
//! snapshot and reports the error; the next good reload is diffed against the last good
//! snapshot.
//!
//! Endpoints registered through the local API (this node's pods) are not part of a source;
//! the sync loop merges them. A source can still describe a pod it knows
//! ([`PolicySource::pod_info`]), so a registration that carries no labels gets the labels
//! and named ports the manifests give it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use policy_compiler::engine::Change;
use policy_compiler::k8s::Labels;
use policy_compiler::manifest::LoadError;
use policy_compiler::model::{Cluster, Endpoint, NamedPort, Policy, WorkloadRef};

mod dir;
#[cfg(feature = "kubernetes")]
pub mod kube;

pub use dir::DirSource;

/// Why a registration cannot be served yet or here ([`PolicySource::await_pod`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodWait {
    /// The source does not know the pod yet (the runtime should retry: CNI code 11).
    NotYet(String),
    /// The pod belongs to another node.
    OtherNode(String),
}

/// Events a source delivers after its initial snapshot.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// Changes relative to the initial snapshot plus every earlier batch. Never empty.
    Changes(Vec<Change>),
    /// The source could not read new input; enforcement continues on the last good state.
    /// The message names the file and position when the input had one.
    Error(String),
}

/// What a source knows about a pod, for registrations that carry no labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    pub named_ports: Vec<NamedPort>,
    pub workload: WorkloadRef,
}

impl PodInfo {
    pub(crate) fn of(ep: &Endpoint) -> PodInfo {
        PodInfo {
            labels: ep.labels.clone(),
            named_ports: ep.ports.clone(),
            workload: ep.workload.clone(),
        }
    }
}

/// A provider of the cluster model.
pub trait PolicySource: Send + Sync {
    /// Where the source reads from, for logs.
    fn describe(&self) -> String;

    /// The snapshot the source started with. Events from [`PolicySource::subscribe`] are
    /// diffs against it.
    fn initial(&self) -> Arc<Cluster>;

    /// Starts delivering events. Called once; a second call is an error. Anything that
    /// changed between [`PolicySource::initial`] and the subscription is delivered as the
    /// first batch.
    fn subscribe(&mut self) -> Result<mpsc::Receiver<SourceEvent>, SourceError>;

    /// The latest good snapshot (what the last delivered event brought the model to).
    fn current(&self) -> Arc<Cluster>;

    /// The labels and named ports of pod `namespace/pod` in the current snapshot.
    fn pod_info(&self, namespace: &str, pod: &str) -> Option<PodInfo>;

    /// Called before a registration that carries no labels takes the source's: waits
    /// (bounded) until the source knows pod `namespace/pod`, and refuses a pod that is not
    /// this node's. The directory source answers at once (a pod missing from the
    /// manifests gets no labels).
    fn await_pod(&self, _namespace: &str, _pod: &str) -> Result<(), PodWait> {
        Ok(())
    }

    /// This node's IPv4 pod range as the cluster assigned it (`Node.spec.podCIDRs`), for the
    /// CNI configuration the agent writes; `None` when the source does not know one (the
    /// configured `cni.subnet` is used).
    fn node_pod_cidr(&self) -> Option<String> {
        None
    }

    /// Standing problems an operator should see in `status` (the source holds no policy,
    /// its last reload failed). Empty when all is well.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: cannot load manifests: {source}", dir.display())]
    Load {
        dir: PathBuf,
        #[source]
        source: LoadError,
    },
    #[error("{}: cannot watch for changes: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("{}: not a directory (the manifest source reads a directory)", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("{}: already subscribed", dir.display())]
    AlreadySubscribed { dir: PathBuf },
    #[error("Kubernetes API: {detail}")]
    Kube { detail: String },
    #[error("cannot start the watcher thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// Policy equality for diffs: `origin` (file and document, for messages) is left out, so
/// moving a policy between files or documents does not recompile anything.
///
/// Every other field counts; the destructuring makes a field added to `Policy` a compile
/// error here until it is compared.
fn same_policy(a: &Policy, b: &Policy) -> bool {
    let Policy {
        kind,
        namespace,
        name,
        namespace_selector,
        pod_selector,
        ingress,
        egress,
        isolates,
        audit,
        tier,
        origin: _,
    } = a;
    *kind == b.kind
        && *namespace == b.namespace
        && *name == b.name
        && *namespace_selector == b.namespace_selector
        && *pod_selector == b.pod_selector
        && *ingress == b.ingress
        && *egress == b.egress
        && *isolates == b.isolates
        && *audit == b.audit
        && *tier == b.tier
}

/// The changes that turn `old` into `new`: upserts of new or modified namespaces, policies,
/// endpoints, services and EndpointSlices, then deletes of the ones that are gone; a policy
/// that only moved to another file is unchanged.
pub fn diff_clusters(old: &Cluster, new: &Cluster) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, ns) in &new.namespaces {
        if old.namespaces.get(name) != Some(ns) {
            out.push(Change::UpsertNamespace(ns.clone()));
        }
    }
    for (key, p) in &new.policies {
        if !old.policies.get(key).is_some_and(|o| same_policy(o, p)) {
            out.push(Change::UpsertPolicy(p.clone()));
        }
    }
    for (key, ep) in &new.endpoints {
        if old.endpoints.get(key) != Some(ep) {
            out.push(Change::UpsertEndpoint(ep.clone()));
        }
    }
    for (key, svc) in &new.services {
        if old.services.get(key) != Some(svc) {
            out.push(Change::UpsertService(svc.clone()));
        }
    }
    for (key, es) in &new.endpoint_slices {
        if old.endpoint_slices.get(key) != Some(es) {
            out.push(Change::UpsertEndpointSlice(es.clone()));
        }
    }
    for key in old.endpoints.keys() {
        if !new.endpoints.contains_key(key) {
            out.push(Change::DeleteEndpoint(key.clone()));
        }
    }
    for key in old.services.keys() {
        if !new.services.contains_key(key) {
            out.push(Change::DeleteService(key.clone()));
        }
    }
    for key in old.endpoint_slices.keys() {
        if !new.endpoint_slices.contains_key(key) {
            out.push(Change::DeleteEndpointSlice(key.clone()));
        }
    }
    for r in old.policies.keys() {
        if !new.policies.contains_key(r) {
            out.push(Change::DeletePolicy(r.clone()));
        }
    }
    for name in old.namespaces.keys() {
        if !new.namespaces.contains_key(name) {
            out.push(Change::DeleteNamespace(name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
