//! Manifests in, a compiled engine out, plus the views every command shares: workloads
//! (one row per `ns/name[Kind]`) and endpoint name resolution with suggestions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use policy_compiler::manifest::{self, LoadOptions, LoadReport};
use policy_compiler::model::{Peer, Peers};
use policy_compiler::{Cluster, Direction, Engine, EngineConfig, FlowPeer};

use crate::error::{EndpointError, InputError};
use crate::suggest;

/// Evaluation options shared by every command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Whether pod addresses take part in policy: ipBlocks select pods whose IPs fall
    /// inside them, and the datapath identifies a pod's traffic by its address (Palisade's
    /// default, as the upstream e2e suite expects). `false` is the offline analyzers'
    /// reading (netpol-analyzer): ipBlocks select only addresses outside the cluster and
    /// pods are known by their identity alone, so every address is an external one.
    pub ipblocks_select_pods: bool,
    /// How manifests are read: file size and parser limits, and whether a document the
    /// loader cannot model is an error (`--strict`) instead of a warning.
    pub load: LoadOptions,
    /// The node's own addresses (`--node-address`): identity host, always allowed into
    /// isolated pods, as the enforcer maps them ([`EngineConfig::host_addresses`]).
    pub host_addresses: Vec<IpAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ipblocks_select_pods: true,
            load: LoadOptions::default(),
            host_addresses: Vec::new(),
        }
    }
}

impl Options {
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            ipblocks_select_pods: self.ipblocks_select_pods,
            host_addresses: self.host_addresses.clone(),
            ..EngineConfig::default()
        }
    }
}

/// A workload: the unit rows and columns of `matrix` and lines of `connections` stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `ns/name[Kind]`.
    pub display: String,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// Endpoint keys, sorted.
    pub endpoints: Vec<String>,
    /// The endpoint that answers for the workload: its first endpoint by key.
    pub representative: String,
}

/// Loaded, compiled manifests.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub engine: Engine,
    pub report: LoadReport,
    /// Sorted by display name.
    pub workloads: Vec<Workload>,
    pub options: Options,
    /// Addresses that more than one endpoint claims, with the claimants.
    pub shared_ips: Vec<(IpAddr, Vec<String>)>,
    /// The services and, when there are any, the pods with their addresses: what a scenario
    /// to a service is translated with (backends, and the client address Maglev hashes).
    /// The engine keeps neither (services are not policy, and pod addresses are dropped
    /// unless ipBlocks select pods).
    pub services: Cluster,
}

impl Analysis {
    /// Loads files and directories (recursively) and compiles them.
    pub fn load(paths: &[PathBuf], options: &Options) -> Result<Analysis, InputError> {
        if paths.is_empty() {
            return Err(InputError::Usage(
                "no manifests given: pass files or directories with -f/--file".into(),
            ));
        }
        let loaded = manifest::load_paths(paths, &options.load)?;
        Analysis::from_cluster(&loaded.cluster, loaded.report, options)
    }

    /// Compiles a cluster built in memory.
    pub fn from_cluster(
        cluster: &Cluster,
        report: LoadReport,
        options: &Options,
    ) -> Result<Analysis, InputError> {
        let mut owners: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for e in cluster.endpoints.values() {
            for ip in &e.ips {
                owners.entry(*ip).or_default().push(e.key.clone());
            }
        }
        let shared_ips: Vec<(IpAddr, Vec<String>)> =
            owners.into_iter().filter(|(_, o)| o.len() > 1).collect();
        let (engine, _) = if options.ipblocks_select_pods {
            Engine::compile(cluster, options.engine_config())?
        } else {
            // Pods known by identity alone: no address of theirs reaches the ipcache.
            let mut c = cluster.clone();
            for e in c.endpoints.values_mut() {
                e.ips.clear();
            }
            Engine::compile(&c, options.engine_config())?
        };
        let services = if cluster.services.is_empty() {
            Cluster::default()
        } else {
            Cluster {
                services: cluster.services.clone(),
                endpoints: cluster.endpoints.clone(),
                ..Cluster::default()
            }
        };
        let mut by_display: BTreeMap<String, Workload> = BTreeMap::new();
        for (key, e) in &engine.cluster().endpoints {
            let w = by_display
                .entry(e.workload_display())
                .or_insert_with(|| Workload {
                    display: e.workload_display(),
                    namespace: e.namespace.clone(),
                    kind: e.workload.kind.clone(),
                    name: e.workload.name.clone(),
                    endpoints: Vec::new(),
                    representative: key.clone(),
                });
            w.endpoints.push(key.clone());
        }
        let workloads = by_display.into_values().collect();
        Ok(Analysis {
            engine,
            report,
            workloads,
            options: options.clone(),
            shared_ips,
            services,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        self.engine.cluster()
    }

    pub fn workload(&self, display: &str) -> Option<&Workload> {
        self.workloads
            .binary_search_by(|w| w.display.as_str().cmp(display))
            .ok()
            .and_then(|i| self.workloads.get(i))
    }

    /// Resolves `ns/name` (a pod, or a workload of that name when no pod has it),
    /// `ns/Kind/name`, `ns/name[Kind]`, or an IP address.
    pub fn resolve(&self, spec: &str) -> Result<FlowPeer, EndpointError> {
        let s = spec.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(FlowPeer::Ip(ip));
        }
        let eps = &self.cluster().endpoints;
        if eps.contains_key(s) {
            return Ok(FlowPeer::Endpoint(s.to_string()));
        }
        if let Some(w) = self.workload(s) {
            return Ok(FlowPeer::Endpoint(w.representative.clone()));
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [ns, kind, name] => {
                if let Some(w) = self.workloads.iter().find(|w| {
                    w.namespace == *ns && w.name == *name && w.kind.eq_ignore_ascii_case(kind)
                }) {
                    return Ok(FlowPeer::Endpoint(w.representative.clone()));
                }
            }
            [ns, name] => {
                let found: Vec<&Workload> = self
                    .workloads
                    .iter()
                    .filter(|w| w.namespace == *ns && w.name == *name)
                    .collect();
                if let [w] = found.as_slice() {
                    return Ok(FlowPeer::Endpoint(w.representative.clone()));
                }
            }
            _ => {}
        }
        Err(EndpointError::Unknown {
            name: s.to_string(),
            suggestions: self.suggest(s),
        })
    }

    /// The three existing endpoint names closest to `name`: pods as `ns/name`, workloads as
    /// `ns/Kind/name` (matched against every form `resolve` accepts for them).
    pub fn suggest(&self, name: &str) -> Vec<String> {
        let mut best: BTreeMap<String, usize> = BTreeMap::new();
        let mut score = |canonical: String, forms: &[String]| {
            let d = forms
                .iter()
                .map(|f| suggest::levenshtein(name, f))
                .min()
                .unwrap_or(usize::MAX);
            let e = best.entry(canonical).or_insert(d);
            *e = (*e).min(d);
        };
        let eps = &self.cluster().endpoints;
        for k in eps.keys().filter(|k| k.matches('/').count() == 1) {
            score(k.clone(), std::slice::from_ref(k));
        }
        for w in &self.workloads {
            let short = format!("{}/{}", w.namespace, w.name);
            if w.kind == "Pod" && eps.contains_key(&short) {
                continue;
            }
            let canonical = format!("{}/{}/{}", w.namespace, w.kind, w.name);
            score(canonical.clone(), &[canonical, short, w.display.clone()]);
        }
        let mut v: Vec<(usize, String)> = best.into_iter().map(|(n, d)| (d, n)).collect();
        v.sort();
        v.into_iter().take(3).map(|(_, n)| n).collect()
    }

    /// How a peer is named in outputs: the workload display for endpoints, the address
    /// otherwise.
    pub fn peer_display(&self, p: &FlowPeer) -> String {
        match p {
            FlowPeer::Endpoint(k) => match self.cluster().endpoints.get(k) {
                Some(e) if e.key.matches('/').count() == 1 && e.workload.kind != "Pod" => {
                    format!("{k} ({})", e.workload_display())
                }
                Some(e) => e.workload_display(),
                None => k.clone(),
            },
            FlowPeer::Ip(ip) => ip.to_string(),
        }
    }

    /// Warnings to print before any result: kinds that were not modelled, loader warnings,
    /// and selectors on labels identities leave out.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.report.unsupported_kinds.is_empty() {
            let kinds: Vec<String> = self
                .report
                .unsupported_kinds
                .iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect();
            let first: Vec<String> = self
                .report
                .unsupported_at
                .iter()
                .map(|(k, at)| format!("{k} at {at}"))
                .collect();
            out.push(format!(
                "ignored {} object(s) of kinds Palisade does not model: {} (first of each: {}; --strict makes these errors)",
                self.report.unsupported_total(),
                kinds.join(", "),
                first.join(", ")
            ));
        }
        out.extend(self.report.warnings.iter().cloned());
        if self.options.ipblocks_select_pods {
            for (ip, owners) in &self.shared_ips {
                let host = owners.iter().all(|k| {
                    self.cluster()
                        .endpoints
                        .get(k)
                        .is_some_and(|e| e.host_network)
                });
                out.push(format!(
                    "endpoints {} share the address {ip}{}: the datapath identifies traffic from it as {} \
                     (its first owner); --ipblocks-select-pods=false identifies pods by identity instead",
                    owners.join(", "),
                    if host { " (host-network pods)" } else { "" },
                    owners.first().map(String::as_str).unwrap_or("?"),
                ));
            }
        }
        let filter = &self.engine.config().label_filter;
        for (pref, p) in &self.cluster().policies {
            let mut keys: BTreeSet<&str> = p
                .pod_selector
                .keys()
                .filter(|k| filter.excludes(k))
                .collect();
            for dir in Direction::BOTH {
                for rule in p.rules(dir).unwrap_or(&[]) {
                    if let Peers::List(list) = &rule.peers {
                        for peer in list {
                            if let Peer::Endpoints { pods, .. } = peer {
                                keys.extend(pods.keys().filter(|k| filter.excludes(k)));
                            }
                        }
                    }
                }
            }
            for k in keys {
                out.push(format!(
                    "policy {pref} selects on label {k:?}, which Palisade leaves out of identities: \
                     that selector term never sees the label"
                ));
            }
        }
        out
    }
}
