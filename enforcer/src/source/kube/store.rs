//! What the Kubernetes source holds of the API server's objects, and the cluster model made
//! from it. Pure: the watchers feed it events, tests feed it JSON.
//!
//! Every object is pruned to what the loader reads (no managed fields, no last-applied
//! annotation, a pod's spec and status reduced to ports, node, addresses and phase), kept
//! as compact JSON text, and checked alone with the policy core's loader when it arrives:
//!
//! - valid: it replaces the previous version;
//! - invalid: the previous valid version stays in the model (enforcement in place is never
//!   dropped because of a bad edit) and the problem is reported (log, `status`);
//! - a relist (`Init` .. `InitDone`, after `410 Gone` or a reconnect) is buffered and then
//!   replaces the kind's objects at once, so the model is diffed, never emptied and refilled.
//!
//! The model is rebuilt from every valid object with the same loader a manifest directory
//! goes through, so both sources give one answer for the same objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use policy_compiler::Cluster;
use policy_compiler::manifest::{self, LoadError, LoadOptions, Origin};

use super::kinds::{Feedback, KINDS, NAMESPACE, NODE, POD};
use crate::source::diff_clusters;
use policy_compiler::engine::Change;
use policy_compiler::rules::PolicyRef;

/// `namespace/name`, or `name` for cluster-scoped objects.
pub type ObjKey = String;

/// One object as the source keeps it.
#[derive(Debug, Clone)]
struct Entry {
    /// The last version the loader accepted; what the model is built from.
    good: Option<Box<RawValue>>,
    /// Why the API server's current version is not used (it stays reported until a valid
    /// version replaces it or the object is deleted).
    invalid: Option<String>,
    /// `spec.nodeName` of a pod.
    node: Option<String>,
    /// The model keys of what the loader made of `good` alone (kinds that are
    /// [`Kind::independent`]; implied namespaces left out): where the object's whole
    /// contribution to the model sits. The values are made again from `good` when needed,
    /// so the source holds no second copy of the model.
    keys: Option<Arc<PartKeys>>,
    /// Identity and version of the API server's current object, for feedback.
    meta: ObjMeta,
}

/// What feedback needs of an object besides its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjMeta {
    pub uid: String,
    /// `metadata.generation` (0 where the API server keeps none).
    pub generation: i64,
    /// The `Accepted` condition the object carries now (kinds whose status Palisade owns).
    pub accepted: Option<Box<Condition>>,
}

/// A status condition as Palisade writes it (`status.conditions[]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One object the agent reports on: what it made of the current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub meta: ObjMeta,
    /// Why the current version is refused; `None`: accepted.
    pub problem: Option<String>,
    /// Whether an earlier valid version stays enforced in its place.
    pub previous_enforced: bool,
}

#[derive(Debug, Default)]
struct KindStore {
    objects: BTreeMap<ObjKey, Entry>,
    /// Objects of a relist in progress.
    relist: Option<BTreeMap<ObjKey, Entry>>,
    /// Whether a complete list has been seen since the kind became active.
    synced: bool,
    /// Watched now (an optional kind whose CRD exists, or a built-in kind).
    active: bool,
}

/// Every watched kind's objects.
#[derive(Debug)]
pub struct Store {
    kinds: Vec<KindStore>,
    opts: LoadOptions,
    /// Whether the CRD list has been seen (optional kinds are known to be absent or present).
    crds_synced: bool,
    /// Objects changed since the last model, and whether the next model must be built
    /// from every object (a change an in-place update cannot carry).
    dirty: BTreeSet<(usize, ObjKey)>,
    full: bool,
    /// The parts the last model was made of (objects of independent kinds).
    in_model: HashMap<(usize, ObjKey), Arc<PartKeys>>,
}

/// What one event did to the store, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing the model reads changed (a status update, the same object again).
    Unchanged,
    Changed,
    /// The object is invalid; the previous valid version (if any) stays.
    Invalid(String),
}

impl Store {
    pub fn new(opts: LoadOptions) -> Store {
        Store {
            kinds: KINDS
                .iter()
                .map(|k| KindStore {
                    active: !k.optional,
                    ..KindStore::default()
                })
                .collect(),
            opts,
            crds_synced: false,
            dirty: BTreeSet::new(),
            full: true,
            in_model: HashMap::new(),
        }
    }

    /// The CRD list was read: optional kinds not activated by now are absent.
    pub fn crds_listed(&mut self) {
        self.crds_synced = true;
    }

    /// An optional kind's CRD appeared (`true`) or went away (`false`). A kind that goes
    /// away loses its objects: the API server deletes them with their definition.
    pub fn set_active(&mut self, kind: usize, active: bool) -> bool {
        let k = &mut self.kinds[kind];
        if k.active == active {
            return false;
        }
        self.full = true;
        k.active = active;
        k.synced = false;
        k.relist = None;
        let had = !k.objects.is_empty();
        if !active {
            k.objects.clear();
        }
        had
    }

    pub fn is_active(&self, kind: usize) -> bool {
        self.kinds[kind].active
    }

    /// Whether every active kind (and the CRD list) has been listed once: the first model
    /// is built only then (a partial model would enforce a partial policy).
    pub fn synced(&self) -> bool {
        self.crds_synced && self.kinds.iter().all(|k| !k.active || k.synced)
    }

    /// Kinds still waiting for their first list, for progress messages.
    pub fn unsynced(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = KINDS
            .iter()
            .zip(&self.kinds)
            .filter(|(_, s)| s.active && !s.synced)
            .map(|(k, _)| k.kind)
            .collect();
        if !self.crds_synced {
            out.push("CustomResourceDefinition");
        }
        out
    }

    /// Whether `kind` has been listed completely since it became active.
    pub fn listed(&self, kind: usize) -> bool {
        self.kinds[kind].synced
    }

    /// A relist of `kind` starts.
    pub fn init(&mut self, kind: usize) {
        self.kinds[kind].relist = Some(BTreeMap::new());
    }

    /// An object of the relist in progress (outside one: an ordinary apply).
    pub fn init_apply(&mut self, kind: usize, obj: Value) {
        let (key, entry) = self.entry_of(kind, obj);
        let k = &mut self.kinds[kind];
        let Some(entry) = entry else {
            if k.relist.is_none() {
                k.objects.remove(&key);
                self.dirty.insert((kind, key));
            }
            return;
        };
        let entry = keep_good(k.objects.get(&key), entry);
        match k.relist.as_mut() {
            Some(r) => {
                r.insert(key, entry);
            }
            None => {
                k.objects.insert(key.clone(), entry);
                self.dirty.insert((kind, key));
            }
        }
    }

    /// The relist is complete: it replaces the kind's objects. Returns whether anything
    /// the model reads changed.
    pub fn init_done(&mut self, kind: usize) -> bool {
        let k = &mut self.kinds[kind];
        k.synced = true;
        let Some(new) = k.relist.take() else {
            return false;
        };
        let changed = new.len() != k.objects.len()
            || new.iter().any(|(key, e)| {
                k.objects.get(key).is_none_or(|o| {
                    o.good.as_ref().map(|g| g.get()) != e.good.as_ref().map(|g| g.get())
                })
            });
        k.objects = new;
        if changed {
            self.full = true;
        }
        changed
    }

    /// An object was added or modified.
    pub fn apply(&mut self, kind: usize, obj: Value) -> Outcome {
        let (key, entry) = self.entry_of(kind, obj);
        let k = &mut self.kinds[kind];
        let Some(entry) = entry else {
            return match k.objects.remove(&key) {
                Some(e) if e.good.is_some() => {
                    self.dirty.insert((kind, key));
                    Outcome::Changed
                }
                _ => Outcome::Unchanged,
            };
        };
        let old = k.objects.get(&key);
        let entry = keep_good(old, entry);
        let outcome = match &entry.invalid {
            Some(why) if old.and_then(|o| o.invalid.as_ref()) != Some(why) => {
                Outcome::Invalid(why.clone())
            }
            _ if old.and_then(|o| o.good.as_ref()).map(|g| g.get())
                == entry.good.as_ref().map(|g| g.get()) =>
            {
                Outcome::Unchanged
            }
            _ => Outcome::Changed,
        };
        k.objects.insert(key.clone(), entry);
        if outcome == Outcome::Changed {
            self.dirty.insert((kind, key));
        }
        outcome
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: usize, obj: &Value) -> Outcome {
        let key = key_of(obj);
        match self.kinds[kind].objects.remove(&key) {
            Some(e) if e.good.is_some() => {
                self.dirty.insert((kind, key));
                Outcome::Changed
            }
            _ => Outcome::Unchanged,
        }
    }

    /// The cluster model of every valid object.
    pub fn build(&mut self) -> Result<Cluster, LoadError> {
        let c = self.build_all()?;
        self.dirty.clear();
        self.full = false;
        self.in_model = KINDS
            .iter()
            .zip(&self.kinds)
            .enumerate()
            .filter(|(_, (k, s))| s.active && k.independent())
            .flat_map(|(i, (_, s))| {
                s.objects
                    .iter()
                    .filter_map(move |(key, e)| e.keys.clone().map(|p| ((i, key.clone()), p)))
            })
            .collect();
        Ok(c)
    }

    fn build_all(&self) -> Result<Cluster, LoadError> {
        let objects = KINDS.iter().zip(&self.kinds).flat_map(|(kind, s)| {
            s.objects.iter().filter_map(move |(key, e)| {
                e.good
                    .as_deref()
                    .map(|raw| (origin_of(kind.kind, key), raw))
            })
        });
        manifest::load_objects(objects, &self.opts).map(|l| l.cluster)
    }

    /// The objects whose current version is not used, with why.
    pub fn invalid(&self) -> Vec<String> {
        KINDS
            .iter()
            .zip(&self.kinds)
            .flat_map(|(_, s)| s.objects.values().filter_map(|e| e.invalid.clone()))
            .collect()
    }

    /// The node a pod is scheduled on, as the API says.
    pub fn pod_node(&self, key: &str) -> Option<Option<String>> {
        self.kinds[POD].objects.get(key).map(|e| e.node.clone())
    }

    /// The next model from `current` (the model of the last [`Store::build`] or
    /// [`Store::update`]) and the changes between them: in place, touching only the
    /// objects changed since (and the namespaces the loader implies), when every one of
    /// them is [`Kind::independent`]; otherwise built from every object and diffed. Both give the same model (a property test holds them to it).
    pub fn update(&mut self, current: &Cluster) -> Result<(Cluster, Vec<Change>), LoadError> {
        if let Some((next, changes, parts)) = self.update_in_place(current) {
            for (k, p) in parts {
                match p {
                    Some(p) => self.in_model.insert(k, p),
                    None => self.in_model.remove(&k),
                };
            }
            self.dirty.clear();
            return Ok((next, changes));
        }
        let next = self.build()?;
        let changes = diff_clusters(current, &next);
        Ok((next, changes))
    }

    #[allow(clippy::type_complexity, reason = "private, one caller")]
    fn update_in_place(
        &self,
        current: &Cluster,
    ) -> Option<(
        Cluster,
        Vec<Change>,
        Vec<((usize, ObjKey), Option<Arc<PartKeys>>)>,
    )> {
        if self.full {
            return None;
        }
        let mut next = current.clone();
        let mut touched = Touched::default();
        let mut parts = Vec::with_capacity(self.dirty.len());
        // Every removal before any insertion: two changed objects may trade a key.
        for (kind, key) in &self.dirty {
            if !KINDS[*kind].independent() {
                return None;
            }
            if let Some(old) = self.in_model.get(&(*kind, key.clone())) {
                remove_part(&mut next, old, &mut touched);
            }
        }
        for (kind, key) in &self.dirty {
            let entry = self.kinds[*kind].objects.get(key);
            let keys = entry.and_then(|e| e.keys.clone());
            if let Some(raw) = entry.and_then(|e| e.good.as_deref()) {
                let alone =
                    manifest::load_objects([(origin_of(KINDS[*kind].kind, key), raw)], &self.opts)
                        .ok()?;
                insert_part(&mut next, part_of(alone.cluster, *kind), &mut touched);
            }
            parts.push(((*kind, key.clone()), keys));
        }
        // The loader implies a namespace for anything in one no Namespace object declares:
        // imply them afresh, and diff those that were or are implied.
        next.namespaces.retain(|_, n| n.declared);
        next.imply_namespaces();
        for (name, n) in current.namespaces.iter().chain(&next.namespaces) {
            if !n.declared {
                touched.namespaces.insert(name.clone());
            }
        }
        let changes = touched.diff(current, &next);
        Some((next, changes, parts))
    }

    /// What to tell authors: every object of a kind whose status Palisade owns, and every
    /// refused object of the others (they get an Event).
    pub fn reports(&self) -> Vec<Report> {
        let mut out = Vec::new();
        for (i, (kind, s)) in KINDS.iter().zip(&self.kinds).enumerate() {
            if !s.active {
                continue;
            }
            for (key, e) in &s.objects {
                if kind.feedback == Feedback::Events && e.invalid.is_none() {
                    continue;
                }
                let (namespace, name) = match key.split_once('/') {
                    Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
                    None => (None, key.clone()),
                };
                out.push(Report {
                    kind: i,
                    namespace,
                    name,
                    meta: e.meta.clone(),
                    problem: e.invalid.clone(),
                    previous_enforced: e.invalid.is_some() && e.good.is_some(),
                });
            }
        }
        out
    }

    /// The first IPv4 range of Node `name`'s `spec.podCIDRs` (or `spec.podCIDR`).
    pub fn node_pod_cidr(&self, name: &str) -> Option<String> {
        let raw = self.kinds[NODE].objects.get(name)?.good.as_deref()?;
        let v: Value = serde_json::from_str(raw.get()).ok()?;
        let spec = v.get("spec")?;
        let list: Vec<&str> = match spec.get("podCIDRs").and_then(Value::as_array) {
            Some(l) => l.iter().filter_map(Value::as_str).collect(),
            None => spec
                .get("podCIDR")
                .and_then(Value::as_str)
                .into_iter()
                .collect(),
        };
        list.into_iter()
            .find(|c| {
                c.split_once('/')
                    .and_then(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok())
                    .is_some()
            })
            .map(str::to_string)
    }

    /// Objects held, for the log.
    pub fn object_count(&self) -> usize {
        self.kinds.iter().map(|k| k.objects.len()).sum()
    }

    /// Prunes and checks one object. No entry for an object the model leaves out (a pod
    /// that has finished: its address may already be someone else's).
    fn entry_of(&self, kind: usize, mut obj: Value) -> (ObjKey, Option<Entry>) {
        let k = &KINDS[kind];
        // Watch events carry no apiVersion/kind for typed lists on some servers; the
        // watcher knows what it watches.
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(k.api_version()));
            m.insert("kind".into(), Value::String(k.kind.into()));
        }
        let meta = meta_of(kind, &obj);
        prune(kind, &mut obj);
        let key = key_of(&obj);
        if kind == POD {
            let phase = obj.pointer("/status/phase").and_then(Value::as_str);
            if matches!(phase, Some("Succeeded" | "Failed")) {
                return (key, None);
            }
        }
        let node = (kind == POD)
            .then(|| {
                obj.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .flatten();
        let raw = match serde_json::value::to_raw_value(&obj) {
            Ok(r) => r,
            Err(e) => {
                let invalid = Some(format!("{} {key}: cannot encode: {e}", k.kind));
                let entry = Entry {
                    good: None,
                    invalid,
                    node,
                    keys: None,
                    meta,
                };
                return (key, Some(entry));
            }
        };
        let alone = manifest::load_objects([(origin_of(k.kind, &key), &*raw)], &self.opts);
        let entry = match alone {
            Ok(loaded) => Entry {
                good: Some(raw),
                invalid: None,
                node,
                keys: k
                    .independent()
                    .then(|| Arc::new(PartKeys::of(&part_of(loaded.cluster, kind)))),
                meta,
            },
            Err(e) => Entry {
                good: None,
                invalid: Some(e.to_string()),
                node,
                keys: None,
                meta,
            },
        };
        (key, Some(entry))
    }
}

/// The model keys an in-place update touched, to diff only those.
#[derive(Debug, Default)]
struct Touched {
    namespaces: BTreeSet<String>,
    endpoints: BTreeSet<String>,
    policies: BTreeSet<PolicyRef>,
    services: BTreeSet<(String, String)>,
    endpoint_slices: BTreeSet<(String, String)>,
}

impl Touched {
    /// The changes from `old` to `new` at the touched keys: what [`diff_clusters`] would
    /// find, since nothing else differs.
    fn diff(&self, old: &Cluster, new: &Cluster) -> Vec<Change> {
        let mut a = Cluster::default();
        let mut b = Cluster::default();
        for k in &self.namespaces {
            copy(&old.namespaces, &mut a.namespaces, k);
            copy(&new.namespaces, &mut b.namespaces, k);
        }
        for k in &self.endpoints {
            copy(&old.endpoints, &mut a.endpoints, k);
            copy(&new.endpoints, &mut b.endpoints, k);
        }
        for k in &self.policies {
            copy(&old.policies, &mut a.policies, k);
            copy(&new.policies, &mut b.policies, k);
        }
        for k in &self.services {
            copy(&old.services, &mut a.services, k);
            copy(&new.services, &mut b.services, k);
        }
        for k in &self.endpoint_slices {
            copy(&old.endpoint_slices, &mut a.endpoint_slices, k);
            copy(&new.endpoint_slices, &mut b.endpoint_slices, k);
        }
        diff_clusters(&a, &b)
    }
}

fn copy<K: Ord + Clone, V: Clone>(from: &BTreeMap<K, V>, to: &mut BTreeMap<K, V>, k: &K) {
    if let Some(v) = from.get(k) {
        to.insert(k.clone(), v.clone());
    }
}

/// What one object adds to the model: what the loader made of it alone, without the
/// namespaces the loader implied for it (they are not the object's), unless the object is a
/// Namespace.
fn part_of(mut alone: Cluster, kind: usize) -> Cluster {
    if kind != NAMESPACE {
        alone.namespaces.clear();
    }
    alone
}

/// Where one object's contribution sits in the model (exact-size: the source holds one
/// per object).
#[derive(Debug, Default)]
struct PartKeys {
    namespaces: Box<[String]>,
    endpoints: Box<[String]>,
    policies: Box<[PolicyRef]>,
    services: Box<[(String, String)]>,
    endpoint_slices: Box<[(String, String)]>,
}

impl PartKeys {
    fn of(part: &Cluster) -> PartKeys {
        fn keys<K: Clone, V>(m: &BTreeMap<K, V>) -> Box<[K]> {
            m.keys().cloned().collect()
        }
        PartKeys {
            namespaces: keys(&part.namespaces),
            endpoints: keys(&part.endpoints),
            policies: keys(&part.policies),
            services: keys(&part.services),
            endpoint_slices: keys(&part.endpoint_slices),
        }
    }
}

/// Removes from `model` what an object put in it.
fn remove_part(model: &mut Cluster, part: &PartKeys, t: &mut Touched) {
    for k in &part.namespaces {
        model.namespaces.remove(k);
        t.namespaces.insert(k.clone());
    }
    for k in &part.endpoints {
        model.endpoints.remove(k);
        t.endpoints.insert(k.clone());
    }
    for k in &part.policies {
        model.policies.remove(k);
        t.policies.insert(k.clone());
    }
    for k in &part.services {
        model.services.remove(k);
        t.services.insert(k.clone());
    }
    for k in &part.endpoint_slices {
        model.endpoint_slices.remove(k);
        t.endpoint_slices.insert(k.clone());
    }
}

fn insert_part(model: &mut Cluster, part: Cluster, t: &mut Touched) {
    for (k, v) in part.namespaces {
        t.namespaces.insert(k.clone());
        model.namespaces.insert(k, v);
    }
    for (k, v) in part.endpoints {
        t.endpoints.insert(k.clone());
        model.endpoints.insert(k, v);
    }
    for (k, v) in part.policies {
        t.policies.insert(k.clone());
        model.policies.insert(k, v);
    }
    for (k, v) in part.services {
        t.services.insert(k.clone());
        model.services.insert(k, v);
    }
    for (k, v) in part.endpoint_slices {
        t.endpoint_slices.insert(k.clone());
        model.endpoint_slices.insert(k, v);
    }
}

/// A new entry, keeping the old one's valid version when the new one has none.
fn keep_good(old: Option<&Entry>, mut new: Entry) -> Entry {
    if new.good.is_none()
        && let Some(o) = old
    {
        new.good = o.good.clone();
        new.keys = o.keys.clone();
    }
    new
}

fn key_of(obj: &Value) -> ObjKey {
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Where an object came from, for the loader's messages: `api-server` (the loader's own
/// message names the kind and object).
fn origin_of(_kind: &str, _key: &str) -> Origin {
    Origin {
        file: PathBuf::from("api-server"),
        document: 0,
    }
}

/// Identity, generation and (for kinds Palisade reports on in `status`) the current
/// `Accepted` condition.
fn meta_of(kind: usize, obj: &Value) -> ObjMeta {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    ObjMeta {
        uid: s("/metadata/uid").to_string(),
        generation: obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        accepted: (KINDS[kind].feedback == Feedback::Status)
            .then(|| {
                obj.pointer("/status/conditions")
                    .and_then(Value::as_array)?
                    .iter()
                    .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
                    .find(|c| c.type_ == ACCEPTED)
                    .map(Box::new)
            })
            .flatten(),
    }
}

/// The condition type Palisade writes.
pub const ACCEPTED: &str = "Accepted";

/// Drops what the loader never reads, so the source's memory is proportional to what the
/// model needs (managed fields, the last-applied annotation, most of a pod) and an update
/// of only that (a status write, a new resourceVersion) is no change.
fn prune(kind: usize, obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if KINDS[kind].feedback == Feedback::Status
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    if kind != POD {
        return;
    }
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    if let Some(spec) = m.get_mut("spec").and_then(Value::as_object_mut) {
        spec.retain(|k, _| {
            matches!(
                k.as_str(),
                "containers" | "initContainers" | "hostNetwork" | "nodeName"
            )
        });
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.retain(|k, _| matches!(k.as_str(), "name" | "ports" | "restartPolicy"));
                    }
                }
            }
        }
    }
    if let Some(status) = m.get_mut("status").and_then(Value::as_object_mut) {
        status.retain(|k, _| matches!(k.as_str(), "podIP" | "podIPs" | "phase" | "hostIP"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index(kind: &str) -> usize {
        KINDS
            .iter()
            .position(|k| k.kind == kind)
            .unwrap_or(usize::MAX)
    }

    fn pod(name: &str, app: &str, ip: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app},
                          "managedFields": [{"manager": "kubectl"}], "uid": "u1"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "nginx",
                     "ports": [{"name": "http", "containerPort": 80}]}], "volumes": []},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}], "conditions": []}
        })
    }

    fn policy(name: &str, port: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "shop", "generation": 1},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}
        })
    }

    fn synced_store() -> Store {
        let mut s = Store::new(LoadOptions::default());
        s.crds_listed();
        for (i, k) in KINDS.iter().enumerate() {
            if !k.optional {
                s.init(i);
                s.init_done(i);
            }
        }
        s
    }

    #[test]
    fn the_model_waits_for_every_active_kind_and_the_crd_list() -> Result<(), LoadError> {
        let mut s = Store::new(LoadOptions::default());
        assert!(!s.synced());
        assert!(s.unsynced().contains(&"Pod"));
        s.crds_listed();
        for (i, k) in KINDS.iter().enumerate() {
            if !k.optional && k.kind != "NetworkPolicy" {
                s.init(i);
                s.init_done(i);
            }
        }
        assert_eq!(s.unsynced(), vec!["NetworkPolicy"]);
        assert!(!s.synced());
        let np = index("NetworkPolicy");
        s.init(np);
        s.init_apply(np, policy("p", json!(80)));
        s.init_done(np);
        assert!(s.synced());
        // A CRD that appears makes its kind wait for its list.
        let anp = index("AdminNetworkPolicy");
        s.set_active(anp, true);
        assert!(!s.synced());
        s.init(anp);
        s.init_done(anp);
        assert!(s.synced());
        assert_eq!(s.build()?.policies.len(), 1);
        Ok(())
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version_and_says_why() -> Result<(), LoadError> {
        let mut s = synced_store();
        let np = index("NetworkPolicy");
        assert_eq!(s.apply(np, policy("p", json!(80))), Outcome::Changed);
        let before = s.build()?;
        let out = s.apply(np, policy("p", json!(70000)));
        assert!(matches!(out, Outcome::Invalid(_)), "{out:?}");
        let Outcome::Invalid(why) = out else {
            return Ok(());
        };
        assert!(
            why.contains("api-server: NetworkPolicy shop/p is invalid"),
            "{why}"
        );
        assert!(why.contains("spec.ingress[0].ports[0].port"), "{why}");
        assert_eq!(s.build()?.policies, before.policies);
        assert_eq!(s.invalid(), vec![why]);
        // The same invalid version again is not news.
        assert_eq!(s.apply(np, policy("p", json!(70000))), Outcome::Unchanged);
        // A valid edit replaces it and clears the report.
        assert_eq!(s.apply(np, policy("p", json!(81))), Outcome::Changed);
        assert!(s.invalid().is_empty());
        assert_ne!(s.build()?.policies, before.policies);
        // A new object that was never valid is not in the model.
        assert!(matches!(
            s.apply(np, policy("q", json!("not a port name!"))),
            Outcome::Invalid(_)
        ));
        assert_eq!(s.build()?.policies.len(), 1);
        Ok(())
    }

    #[test]
    fn a_relist_replaces_a_kind_at_once_and_reports_only_real_changes() -> Result<(), LoadError> {
        let mut s = synced_store();
        let p = POD;
        s.apply(p, pod("a", "web", "10.0.0.1"));
        s.apply(p, pod("b", "db", "10.0.0.2"));
        // The same objects listed again: nothing changed, nothing was ever absent.
        s.init(p);
        s.init_apply(p, pod("a", "web", "10.0.0.1"));
        assert_eq!(
            s.build()?.endpoints.len(),
            2,
            "a relist in progress changes nothing"
        );
        s.init_apply(p, pod("b", "db", "10.0.0.2"));
        assert!(!s.init_done(p));
        // A relist missing `b` deletes it (it was deleted while the watch was down).
        s.init(p);
        s.init_apply(p, pod("a", "web", "10.0.0.1"));
        assert!(s.init_done(p));
        let c = s.build()?;
        assert_eq!(c.endpoints.keys().collect::<Vec<_>>(), vec!["shop/a"]);
        Ok(())
    }

    #[test]
    fn pods_are_pruned_to_what_the_model_reads_and_finished_pods_are_left_out()
    -> Result<(), LoadError> {
        let mut s = synced_store();
        s.apply(POD, pod("a", "web", "10.0.0.1"));
        let raw = s.kinds[POD].objects["shop/a"]
            .good
            .as_ref()
            .map(|r| r.get().to_string())
            .unwrap_or_default();
        assert!(
            !raw.contains("managedFields") && !raw.contains("image") && !raw.contains("volumes"),
            "{raw}"
        );
        assert!(
            raw.contains("\"http\"") && raw.contains("10.0.0.1"),
            "{raw}"
        );
        assert_eq!(s.pod_node("shop/a"), Some(Some("node-a".into())));
        let c = s.build()?;
        assert_eq!(c.endpoints["shop/a"].ports.len(), 1);
        let mut done = pod("a", "web", "10.0.0.1");
        done["status"]["phase"] = json!("Succeeded");
        // A finished pod leaves the model at once: its address can be given to a new pod.
        assert_eq!(s.apply(POD, done), Outcome::Changed);
        assert!(s.build()?.endpoints.is_empty());
        assert_eq!(
            s.delete(POD, &pod("a", "web", "10.0.0.1")),
            Outcome::Unchanged
        );
        Ok(())
    }

    #[test]
    fn a_crd_that_goes_away_takes_its_objects() -> Result<(), LoadError> {
        let mut s = synced_store();
        let anp = index("AdminNetworkPolicy");
        s.set_active(anp, true);
        s.init(anp);
        s.init_apply(
            anp,
            json!({"metadata": {"name": "a"}, "spec": {"priority": 10, "subject": {"namespaces": {}},
                   "ingress": [{"name": "r", "action": "Deny", "from": [{"namespaces": {}}]}]}}),
        );
        s.init_done(anp);
        assert_eq!(s.build()?.policies.len(), 1);
        assert!(s.set_active(anp, false));
        assert!(s.build()?.policies.is_empty());
        Ok(())
    }
}
#[cfg(test)]
mod incremental {
    //! The in-place update against a build from every object, over random event sequences.
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[derive(Debug, Clone)]
    enum Op {
        Namespace {
            n: u8,
            team: u8,
            delete: bool,
        },
        Pod {
            ns: u8,
            name: u8,
            app: u8,
            ip: u8,
            delete: bool,
        },
        Policy {
            ns: u8,
            name: u8,
            app: u8,
            port: u16,
            delete: bool,
        },
        /// A pod the loader refuses (a label value it rejects): the last valid one stays.
        BadPod {
            ns: u8,
            name: u8,
        },
        Service {
            ns: u8,
            name: u8,
            port: u16,
            delete: bool,
        },
        Node {
            n: u8,
            delete: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, 0..3u8, any::<bool>()).prop_map(|(n, team, delete)| Op::Namespace {
                n,
                team,
                delete
            }),
            (0..5u8, 0..6u8, 0..3u8, 0..8u8, prop::bool::weighted(0.2)).prop_map(
                |(ns, name, app, ip, delete)| Op::Pod {
                    ns,
                    name,
                    app,
                    ip,
                    delete
                }
            ),
            (0..5u8, 0..3u8, 0..3u8, 1..4u16, prop::bool::weighted(0.2)).prop_map(
                |(ns, name, app, port, delete)| Op::Policy {
                    ns,
                    name,
                    app,
                    port,
                    delete
                }
            ),
            (0..5u8, 0..6u8).prop_map(|(ns, name)| Op::BadPod { ns, name }),
            (0..5u8, 0..2u8, 1..4u16, any::<bool>()).prop_map(|(ns, name, port, delete)| {
                Op::Service {
                    ns,
                    name,
                    port,
                    delete,
                }
            }),
            (0..2u8, any::<bool>()).prop_map(|(n, delete)| Op::Node { n, delete }),
        ]
    }

    fn kind(k: &str) -> usize {
        KINDS.iter().position(|x| x.kind == k).unwrap_or(usize::MAX)
    }

    fn run(s: &mut Store, op: &Op) {
        let (k, obj, delete) = match op {
            Op::Namespace { n, team, delete } => (
                "Namespace",
                json!({"metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{team}")}}}),
                *delete,
            ),
            Op::Pod {
                ns,
                name,
                app,
                ip,
                delete,
            } => {
                let ip = format!("10.1.{ns}.{ip}");
                (
                    "Pod",
                    json!({"metadata": {"name": format!("p{name}"), "namespace": format!("ns{ns}"),
                                        "labels": {"app": format!("a{app}")}},
                           "spec": {"nodeName": "n", "containers": [{"name": "c",
                                    "ports": [{"name": "http", "containerPort": 80 + u16::from(*app)}]}]},
                           "status": {"phase": "Running", "podIPs": [{"ip": ip}]}}),
                    *delete,
                )
            }
            Op::BadPod { ns, name } => (
                "Pod",
                json!({"metadata": {"name": format!("p{name}"), "namespace": format!("ns{ns}"),
                                    "labels": {"app": "not a valid value!"}}}),
                false,
            ),
            Op::Policy {
                ns,
                name,
                app,
                port,
                delete,
            } => (
                "NetworkPolicy",
                json!({"metadata": {"name": format!("np{name}"), "namespace": format!("ns{ns}")},
                       "spec": {"podSelector": {"matchLabels": {"app": format!("a{app}")}},
                                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t1"}}}],
                                             "ports": [{"port": port}]}]}}),
                *delete,
            ),
            Op::Service {
                ns,
                name,
                port,
                delete,
            } => (
                "Service",
                json!({"metadata": {"name": format!("s{name}"), "namespace": format!("ns{ns}")},
                       "spec": {"clusterIP": format!("10.96.{ns}.{name}"), "selector": {"app": "a0"},
                                "ports": [{"port": port, "targetPort": 80}]}}),
                *delete,
            ),
            Op::Node { n, delete } => (
                "Node",
                json!({"metadata": {"name": format!("node{n}")},
                       "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.0.{n}")}]}}),
                *delete,
            ),
        };
        if delete {
            s.delete(kind(k), &obj);
        } else {
            s.apply(kind(k), obj);
        }
    }

    fn synced() -> Store {
        let mut s = Store::new(LoadOptions::default());
        s.crds_listed();
        for (i, k) in KINDS.iter().enumerate() {
            if !k.optional {
                s.init(i);
                s.init_done(i);
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn in_place_updates_equal_a_build_from_every_object(
            batches in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..12)
        ) {
            let mut s = synced();
            let mut current = s.build().unwrap();
            for batch in &batches {
                for op in batch {
                    run(&mut s, op);
                }
                let full = s.build_all();
                match (s.update(&current), full) {
                    (Ok((next, changes)), Ok(want)) => {
                        prop_assert_eq!(&next, &want);
                        let mut want_changes = diff_clusters(&current, &want);
                        let mut changes = changes;
                        let key = |c: &Change| format!("{c:?}");
                        want_changes.sort_by_key(key);
                        changes.sort_by_key(key);
                        prop_assert_eq!(
                            changes.iter().map(key).collect::<Vec<_>>(),
                            want_changes.iter().map(key).collect::<Vec<_>>()
                        );
                        current = next;
                    }
                    (Err(_), Err(_)) => {}
                    (a, b) => prop_assert!(false, "update {:?} vs build {:?}", a.map(|_| ()), b.map(|_| ())),
                }
            }
        }
    }

    #[test]
    fn the_pod_cidr_is_the_first_ipv4_range_of_the_node() {
        let mut s = synced();
        let node = kind("Node");
        s.apply(
            node,
            json!({"metadata": {"name": "a"},
            "spec": {"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.3.0/24"]}}),
        );
        s.apply(
            node,
            json!({"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.4.0/24"}}),
        );
        s.apply(
            node,
            json!({"metadata": {"name": "c"}, "spec": {"podCIDRs": ["fd00:1::/64"]}}),
        );
        s.apply(node, json!({"metadata": {"name": "d"}}));
        assert_eq!(s.node_pod_cidr("a").as_deref(), Some("10.244.3.0/24"));
        assert_eq!(s.node_pod_cidr("b").as_deref(), Some("10.244.4.0/24"));
        assert_eq!(
            s.node_pod_cidr("c"),
            None,
            "IPv6 only: the configured range"
        );
        assert_eq!(s.node_pod_cidr("d"), None);
        assert_eq!(s.node_pod_cidr("e"), None);
    }

    #[test]
    fn a_pod_change_is_applied_in_place_and_a_node_change_is_not() {
        let mut s = synced();
        run(
            &mut s,
            &Op::Namespace {
                n: 0,
                team: 1,
                delete: false,
            },
        );
        run(
            &mut s,
            &Op::Pod {
                ns: 0,
                name: 0,
                app: 0,
                ip: 1,
                delete: false,
            },
        );
        let current = s.build().unwrap();
        run(
            &mut s,
            &Op::Pod {
                ns: 0,
                name: 0,
                app: 1,
                ip: 1,
                delete: false,
            },
        );
        run(
            &mut s,
            &Op::Policy {
                ns: 0,
                name: 0,
                app: 1,
                port: 80,
                delete: false,
            },
        );
        assert!(s.update_in_place(&current).is_some());
        let (next, changes) = s.update(&current).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        // A pod in a namespace no object declares: the namespace is implied in place.
        run(
            &mut s,
            &Op::Pod {
                ns: 3,
                name: 0,
                app: 1,
                ip: 1,
                delete: false,
            },
        );
        let (next, changes) = s.update(&next).unwrap();
        assert!(next.namespaces.contains_key("ns3"), "{changes:?}");
        run(
            &mut s,
            &Op::Node {
                n: 0,
                delete: false,
            },
        );
        assert!(s.update_in_place(&next).is_none());
    }
}
