//! The node agent: one policy engine, one datapath, the endpoint API, the verdict log.
//!
//! All state sits behind one mutex and every change takes the same path:
//! model change -> `Engine::apply` -> target -> update plan executed by [`sync::Synced::apply`]
//! (slots, transits, revision bump last; see the sync module for what a failure leaves).
//! Pods registered through the API are merged into the model with the source's view of
//! the same pod (labels from the registration win, addresses always come from it).
//!
//! Threads: the state mutex is only ever taken on blocking threads, never on the async
//! runtime's workers. API registrations and source batches run on `spawn_blocking`; the
//! verdict-log reader and conntrack GC run on their own thread (`palisade-events`). The
//! async side only awaits them, and `status` reads [`Health`] (a small lock never held
//! across a syscall) instead of the state. The agent's own log is `tracing` (text or JSON,
//! fields with stable dotted names); the verdict log is its own file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use palisade_api::{ErrorCode, Registration, Response};
use policy_compiler::abi;
use policy_compiler::identity::IdentityAllocator;
use policy_compiler::k8s::Labels;
use policy_compiler::model::{Endpoint, NamedPort, Namespace, WorkloadRef};
use policy_compiler::{Change, Cluster, Engine, EngineConfig, Protocol};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::api::{EndpointRegistry, Server, ServerLimits};
use crate::config::Config;
use crate::datapath::{self, Datapath, LoadOptions};
use crate::events::{BootClock, EngineResolver, FlowLogger, RotatingWriter};
use crate::maps::AyaMaps;
use crate::source::{PolicySource, SourceEvent};
use crate::sync::{self, LocalEndpoints, Synced};

mod health;
mod registry;
mod tasks;

pub use health::{Backoff, Health};
use health::{RECONCILE_FIRST, RECONCILE_MAX};
pub use registry::Registry;
use registry::{load_registrations, merge, merged_endpoint};

/// The registrations file in the state directory: what a restarted enforcer needs to
/// know which interfaces belong to which pods.
const REGISTRATIONS_FILE: &str = "endpoints.json";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] datapath::DatapathError),
    #[error("policy engine: {0}")]
    Engine(#[from] policy_compiler::engine::EngineError),
    #[error("state file {path}: {detail}")]
    State { path: PathBuf, detail: String },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error(transparent)]
    FlowLog(#[from] crate::events::FlowLogError),
    #[error(transparent)]
    Sync(#[from] sync::SyncError),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Whether an endpoint of this node has an ingress entry that redirects to the L7 proxy.
fn has_ingress_l7(engine: &Engine, local: &LocalEndpoints) -> bool {
    local.iter().any(|(key, _)| {
        engine.endpoint_policy(key).is_some_and(|p| {
            p.l7.iter()
                .any(|(k, _)| k.direction == abi::DIRECTION_INGRESS)
        })
    })
}

/// A registration as the enforcer keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    registration: Registration,
    ifindex: u32,
}

#[derive(Debug)]
struct State {
    engine: Engine,
    dp: Datapath,
    synced: Synced,
    local: LocalEndpoints,
    regs: BTreeMap<String, Stored>,
    revision: u32,
    ifnames: HashMap<u32, String>,
    /// Service frontends by datapath id, for the verdict log (after each successful sync).
    services: HashMap<u16, crate::events::ServiceFrontend>,
    /// The service frontends, kept current with `LbTarget::update` from the namespaces
    /// each batch touched (`Engine::take_services_touched`).
    lb: policy_compiler::plan::lb::LbTarget,
    /// `lb` no longer follows the engine (a refused change put an older engine back): the
    /// next sync rebuilds it from the cluster and compares every frontend.
    lb_stale: bool,
}

/// What a sync recomputes.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// The whole target, planned against the maps.
    All,
    /// The service frontends only (a batch of Service and EndpointSlice changes).
    Services,
}

/// The running agent, shared by the API server and the loops.
pub struct Daemon {
    state: Mutex<State>,
    health: Mutex<Health>,
    /// Wakes the reconcile task after a failed map update.
    reconcile_wake: tokio::sync::Notify,
    source: Box<dyn PolicySource>,
    state_dir: PathBuf,
    /// What status reports of the verdict log's chain (set by the events thread).
    verdict_log: Mutex<VerdictLogStatus>,
    /// What only the metrics endpoint reports (delays, changes by outcome, lost records).
    pub(crate) metrics: crate::metrics::Metrics,
    /// The L7 proxy's policy view and counters; `None` when no proxy runs.
    proxy: Option<Arc<crate::proxy::ProxyShared>>,
}

use palisade_api::VerdictLogStatus;

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("source", &self.source.describe())
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// What [`Daemon::start`] needs besides the configuration.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub config: Config,
    /// Registrations survive restarts here (default `/run/palisade`).
    pub state_dir: PathBuf,
    pub mount_bpffs: bool,
}

impl Daemon {
    /// Loads the datapath (adopting pins), compiles the source's snapshot with the
    /// registrations a previous run left, and reconciles the maps. Enforcement that was in
    /// place stays in place throughout: links are swapped, never detached.
    pub fn start(
        opts: &StartOptions,
        source: Box<dyn PolicySource>,
    ) -> Result<Daemon, DaemonError> {
        let t0 = Instant::now();
        let mut dp = Datapath::load(&LoadOptions {
            pin_root: opts.config.pin_root.clone(),
            mount_if_missing: opts.mount_bpffs,
            local_delivery: opts.config.local_delivery,
        })?;
        let adopted = dp.adopted().len();
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| DaemonError::State {
            path: opts.state_dir.clone(),
            detail: e.to_string(),
        })?;
        let mut regs = load_registrations(&opts.state_dir)?;
        // Interfaces that disappeared while the enforcer was down are forgotten.
        regs.retain(|_, s| {
            datapath::ifindex_of(&s.registration.host_ifname).ok() == Some(s.ifindex)
        });
        let mut cluster: Cluster = (*source.initial()).clone();
        let mut local = LocalEndpoints::default();
        let mut ifnames = HashMap::new();
        for s in regs.values() {
            let ep = merged_endpoint(&s.registration, source.as_ref());
            ensure_namespace(&mut cluster, &ep.namespace);
            local.insert(ep.key.clone(), s.ifindex);
            ifnames.insert(s.ifindex, s.registration.host_ifname.clone());
            cluster.endpoints.insert(ep.key.clone(), ep);
        }
        // The adopted maps (and conntrack) speak in the previous run's identity numbers.
        // A fresh compile may number differently (it sees all pods at once, not in
        // registration order); reconciling to other numbers would, between the ipcache and
        // the endpoint writes, check pods against each other's policy slots. So compile
        // once to learn the keys, then again keeping the numbers the maps use.
        // The node's own addresses are identity host (traffic from the node is always
        // allowed into its pods): configured, or read from the namespace we enforce in.
        let host_addresses = match &opts.config.node_addresses {
            Some(v) => v.clone(),
            None => crate::node::own_addresses()?,
        };
        info!(
            node.addresses = host_addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "node addresses are identity host"
        );
        let engine_config = EngineConfig {
            host_addresses,
            proxy_port: opts
                .config
                .l7_proxy_port
                .unwrap_or(policy_compiler::engine::DEFAULT_PROXY_PORT),
            ..EngineConfig::default()
        };
        let (scratch, _) = Engine::compile_owned(cluster.clone(), engine_config.clone())?;
        let numbering = numbering_in_maps(&mut dp, &scratch, &local)?;
        let (mut engine, _) =
            Engine::compile_owned_with_identities(cluster, engine_config, numbering)?;
        // The first target is built from the whole cluster; later ones update it.
        engine.take_services_touched();
        let revision = dp
            .endpoints()?
            .iter()
            .map(|(_, e)| e.revision)
            .max()
            .unwrap_or(0)
            + 1;
        // Step 6b's gate (cleared with the rest of `pal_proxy` at load) for the endpoints
        // this run starts with; `sync` keeps it from here on.
        dp.set_proxy_ingress_l7(has_ingress_l7(&engine, &local))?;
        // Adopt the slots the previous run wrote; every endpoint gets the new revision so
        // conntrack it admitted is decided once more against the reconciled policy.
        let mut synced = Synced::adopt(&mut AyaMaps(&mut dp))?;
        let target = sync::target_on_node(&engine, &local, revision, &opts.config.node_name);
        let stats = synced.reconcile(
            &mut AyaMaps(&mut dp),
            &target,
            policy_compiler::plan::PlanOptions {
                bump_all: true,
                ..Default::default()
            },
        )?;
        let services = sync::service_frontends(&target.lb, &synced.state().lb);
        if !target.lb.skipped.is_empty() {
            warn!(skipped = ?target.lb.skipped, "service frontends not translated");
        }
        // Connections an older agent (ABI v1, v2) tracked keep their replies across the
        // upgrade; each is re-decided against this policy on its next packet
        // (docs/upgrade.md).
        let imported = dp.import_older_conntrack();
        for s in regs.values() {
            dp.attach(&s.registration.host_ifname)?;
        }
        // The uplinks, once the service maps are written: traffic from outside to a
        // frontend is translated from the first packet on (docs/datapath.md §13).
        let mut uplinks = Vec::new();
        for name in &opts.config.uplinks {
            let ifindex = dp.attach_uplink(name)?;
            // The verdict log names the interface of what the uplink decides.
            ifnames.insert(ifindex, name.clone());
            uplinks.push((name.clone(), ifindex));
        }
        let configured: BTreeSet<u32> = uplinks.iter().map(|(_, i)| *i).collect();
        let dropped: BTreeSet<u32> = dp
            .adopted()
            .iter()
            .filter(|(i, h)| datapath::Hook::UPLINK.contains(h) && !configured.contains(i))
            .map(|(i, _)| *i)
            .collect();
        for ifindex in dropped {
            dp.detach_uplink(ifindex);
            info!(
                uplink.ifindex = ifindex,
                "uplink no longer configured: its programs are detached"
            );
        }
        // Only now, with every registered interface attached and the maps written, is what
        // an older ABI left behind released (docs/upgrade.md). A failure keeps the old
        // links, which still enforce: it is reported, not fatal.
        let retired = if dp.older_abis().is_empty() {
            None
        } else {
            Some(dp.retire_older_abis())
        };
        let endpoints = regs.len() as u32;
        let proxy = opts.config.l7_proxy_port.map(|_| {
            Arc::new(crate::proxy::ProxyShared::new(
                opts.config.l7_proxy_connections_per_identity,
                std::time::Duration::from_secs(opts.config.l7_upstream_idle_secs),
            ))
        });
        let daemon = Daemon {
            health: Mutex::new(Health {
                endpoints,
                usage: synced.usage(),
                capacity: *synced.capacity(),
                ..Health::default()
            }),
            reconcile_wake: tokio::sync::Notify::new(),
            state: Mutex::new(State {
                engine,
                dp,
                synced,
                local,
                regs,
                revision,
                ifnames,
                services,
                lb: target.lb,
                lb_stale: false,
            }),
            source,
            state_dir: opts.state_dir.clone(),
            verdict_log: Mutex::new(VerdictLogStatus::default()),
            metrics: crate::metrics::Metrics {
                proxy: proxy.clone(),
                ..crate::metrics::Metrics::default()
            },
            proxy,
        };
        {
            let st = daemon.lock();
            daemon.publish_l7_view(&st.engine, &st.local, revision);
        }
        match imported {
            Ok(0) => {}
            Ok(n) => info!(
                conntrack.imported = n,
                "conntrack entries of older ABI pins imported, each re-checked on its next packet"
            ),
            Err(e) => warn!(
                error = e.to_string(),
                "conntrack of older ABI pins not imported (their connections are decided as new flows)"
            ),
        }
        match retired {
            Some(Ok(r)) => info!(
                links.released = r.links_removed,
                links.kept = r.links_kept,
                dirs.removed = r.dirs_removed.len(),
                "older ABI pins retired (kept links: interfaces not attached yet)"
            ),
            Some(Err(e)) => warn!(
                error = e.to_string(),
                "older ABI pins stay (their programs keep enforcing)"
            ),
            None => {}
        }
        info!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            maps.policy_writes = stats.policy_writes,
            maps.ipcache_writes = stats.ipcache_writes,
            maps.service_writes = stats.lb_writes,
            links.adopted = adopted,
            endpoints = endpoints,
            uplinks = uplinks
                .iter()
                .map(|(n, i)| format!("{n}(ifindex {i})"))
                .collect::<Vec<_>>()
                .join(","),
            "datapath ready"
        );
        Ok(daemon)
    }

    /// The policy source's standing problems (no policies, a failed reload), for
    /// `status`; never waits for a reload.
    pub fn source_notes(&self) -> Vec<String> {
        self.source.notes()
    }

    /// What `status` answers; never waits for the state lock.
    pub fn verdict_log_status(&self) -> VerdictLogStatus {
        self.verdict_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_verdict_log_status(&self, logger: &FlowLogger) {
        *self
            .verdict_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = VerdictLogStatus {
            key: logger.public_key(),
            checkpoint: logger.last_checkpoint(),
        };
    }

    /// The verdict log key file: `verdict_log_key`, else `<state dir>/verdict-log.key`.
    fn verdict_log_key_path(&self, config: &Config) -> PathBuf {
        config
            .verdict_log_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("verdict-log.key"))
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Brings the maps to what the engine and the local endpoints say, at `revision`, and
    /// records the outcome: a failure marks the agent dirty (not ready, counted, logged
    /// with what it leaves) and wakes the reconcile task; a success clears it.
    fn sync(&self, st: &mut State, revision: u32) -> Result<sync::ApplyStats, sync::SyncError> {
        self.sync_scoped(st, revision, Scope::All)
    }

    /// [`Daemon::sync`], recomputing only what `scope` says may have changed.
    fn sync_scoped(
        &self,
        st: &mut State,
        revision: u32,
        scope: Scope,
    ) -> Result<sync::ApplyStats, sync::SyncError> {
        let was_dirty = st.synced.is_dirty();
        let result = match scope {
            // A dirty state is reconciled whole, whatever the batch.
            Scope::Services if !was_dirty && !st.lb_stale => self.sync_services(st),
            _ => self.sync_all(st, revision),
        };
        self.record_sync(st, revision, was_dirty, result)
    }

    /// A batch of Service and EndpointSlice changes: the service frontends of the
    /// namespaces it touched, recomputed and planned alone (no identity, policy, ipcache or
    /// endpoint entry can change, and the L7 view does not depend on services).
    fn sync_services(&self, st: &mut State) -> Result<sync::ApplyStats, sync::SyncError> {
        let State {
            engine,
            dp,
            synced,
            services,
            lb,
            ..
        } = st;
        let skipped = lb.skipped.clone();
        let touched = engine.take_services_touched();
        let keys = lb.update(engine.cluster(), &touched);
        let old_ids = sync::frontend_ids(&synced.state().lb, &keys);
        let result = synced.apply_services(&mut AyaMaps(dp), lb, &keys);
        if result.is_ok() {
            sync::update_service_frontends(services, lb, &synced.state().lb, &old_ids, &keys);
        }
        if lb.skipped != skipped && !lb.skipped.is_empty() {
            warn!(skipped = ?lb.skipped, "service frontends not translated");
        }
        result
    }

    /// The whole target, planned against what the maps hold.
    fn sync_all(&self, st: &mut State, revision: u32) -> Result<sync::ApplyStats, sync::SyncError> {
        let State {
            engine,
            dp,
            synced,
            local,
            services,
            lb,
            lb_stale,
            ..
        } = st;
        // Step 6b's gate goes up before an ingress HTTP rule reaches the maps and comes down
        // only after the last one left them: never a window in which a local destination's
        // ingress REDIRECT is not taken to the proxy at the source.
        let ingress_l7 = has_ingress_l7(engine, local);
        if ingress_l7 && let Err(e) = dp.set_proxy_ingress_l7(true) {
            warn!(error = e.to_string(), "pal_proxy not updated");
        }
        // The service frontends: the namespaces this batch touched, recomputed, and only the
        // frontends that changed planned; rebuilt and compared whole after a refusal.
        let skipped = lb.skipped.clone();
        let touched = engine.take_services_touched();
        let changed = if *lb_stale {
            *lb = policy_compiler::plan::lb::LbTarget::from_cluster(engine.cluster(), Some(lb));
            *lb_stale = false;
            None
        } else {
            Some(lb.update(engine.cluster(), &touched))
        };
        let old_ids = sync::frontend_ids(&synced.state().lb, changed.iter().flatten());
        let was_dirty = synced.is_dirty();
        let mut target = policy_compiler::plan::Target::from_engine_with(
            engine,
            local.iter().map(|(k, i)| (k.as_str(), *i)),
            revision,
            std::mem::take(lb),
        );
        target.lb_changed = changed;
        let result = synced.apply(&mut AyaMaps(dp), &target);
        *lb = std::mem::take(&mut target.lb);
        if result.is_ok() {
            match &target.lb_changed {
                Some(keys) if !was_dirty => {
                    sync::update_service_frontends(
                        services,
                        lb,
                        &synced.state().lb,
                        &old_ids,
                        keys,
                    );
                }
                _ => *services = sync::service_frontends(lb, &synced.state().lb),
            }
        }
        if lb.skipped != skipped && !lb.skipped.is_empty() {
            warn!(skipped = ?lb.skipped, "service frontends not translated");
        }
        if result.is_ok()
            && !ingress_l7
            && let Err(e) = dp.set_proxy_ingress_l7(false)
        {
            warn!(error = e.to_string(), "pal_proxy not updated");
        }
        if result.is_ok() {
            self.publish_l7_view(engine, local, revision);
        }
        result
    }

    /// Records a sync's outcome: health, metrics, the log, and a reconcile wake-up after a
    /// failed write.
    fn record_sync(
        &self,
        st: &mut State,
        revision: u32,
        was_dirty: bool,
        result: Result<sync::ApplyStats, sync::SyncError>,
    ) -> Result<sync::ApplyStats, sync::SyncError> {
        let synced = &st.synced;
        if result.is_ok() {
            self.metrics
                .revision
                .store(u64::from(revision), std::sync::atomic::Ordering::Relaxed);
        }
        // The health lock is released before logging: `status` never waits for a write.
        let failed_updates = {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            h.usage = synced.usage();
            h.capacity = *synced.capacity();
            match &result {
                Ok(_) => {
                    h.reconciles += u64::from(was_dirty);
                    h.dirty = false;
                    h.last_error = None;
                    h.rejected = None;
                }
                // Refused before any write: the maps hold what they held (the last good
                // policy, complete), so readiness does not change.
                Err(sync::SyncError::CapacityExceeded(e)) => {
                    h.dirty = synced.is_dirty();
                    h.rejected = Some(e.to_string());
                }
                Err(e) => {
                    h.dirty = true;
                    h.failed_updates += 1;
                    h.last_error = Some(e.to_string());
                }
            }
            h.failed_updates
        };
        match &result {
            Ok(_) if was_dirty => info!(
                policy.revision = revision,
                sync.failed_updates = failed_updates,
                "maps reconciled; ready again"
            ),
            Ok(_) => {}
            Err(sync::SyncError::CapacityExceeded(e)) => error!(
                policy.revision = revision,
                error = e.to_string(),
                "policy update refused: it does not fit the maps; the last good policy stays enforced"
            ),
            Err(e) => {
                // The error says how far the plan got; the plan's order keeps every flow
                // at its old or its new verdict until the reconcile finishes.
                error!(
                    policy.revision = revision,
                    sync.failed_updates = failed_updates,
                    error = e.to_string(),
                    "map update failed partway; not ready until the maps are reconciled"
                );
                self.reconcile_wake.notify_one();
            }
        }
        result
    }

    /// One reconcile attempt (blocking): dumps the maps and brings them to the current
    /// model. Nothing to do when an apply in between already reconciled.
    fn reconcile_blocking(&self) -> Result<(), sync::SyncError> {
        let mut st = self.lock();
        if !st.synced.is_dirty() {
            return Ok(());
        }
        let revision = st.revision + 1;
        self.sync(&mut st, revision)?;
        st.revision = revision;
        Ok(())
    }

    /// Gives the L7 proxy the policy the maps now hold: requests are judged by what the
    /// datapath enforces. A copy of the engine, made only when a proxy runs.
    fn publish_l7_view(&self, engine: &Engine, local: &LocalEndpoints, revision: u32) {
        if let Some(p) = &self.proxy {
            let keys = local.iter().map(|(k, _)| k.clone()).collect();
            p.views.publish(crate::proxy::view::L7View::new(
                engine.clone(),
                keys,
                u64::from(revision),
            ));
        }
    }

    fn set_endpoints(&self, n: usize) {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .endpoints = n as u32;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would leave maps half-written; the lock's
        // poison flag adds nothing to that, so keep serving with the inner state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy source's changes, merged with local registrations and applied.
    pub fn apply_source(&self, changes: Vec<Change>) -> Result<(), DaemonError> {
        let t0 = Instant::now();
        let mut st = self.lock();
        let mut merged = Vec::with_capacity(changes.len());
        let registered: HashMap<String, Registration> = st
            .regs
            .values()
            .map(|s| {
                (
                    Endpoint::pod_key(&s.registration.namespace, &s.registration.pod),
                    s.registration.clone(),
                )
            })
            .collect();
        for c in changes {
            match c {
                Change::UpsertEndpoint(e) if registered.contains_key(&e.key) => {
                    let reg = &registered[&e.key];
                    merged.push(Change::UpsertEndpoint(merge(reg, Some(&e))));
                }
                Change::DeleteEndpoint(k) if registered.contains_key(&k) => {
                    merged.push(Change::UpsertEndpoint(merge(&registered[&k], None)));
                }
                c => merged.push(c),
            }
        }
        let n = merged.len();
        // Kept to go back to when the maps cannot hold the result: the model then stays
        // what the maps enforce (the last good policy), and the next change builds on it.
        // A batch of Service and EndpointSlice changes keeps its undo instead of a copy of
        // the engine (which grows with the cluster).
        let undo = st.engine.undo_for(&merged);
        let last_good = undo.is_none().then(|| st.engine.clone());
        let counted = |c: &std::sync::atomic::AtomicU64| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        if let Err(e) = st.engine.apply(merged) {
            counted(&self.metrics.changes_refused);
            return Err(e.into());
        }
        let revision = st.revision + 1;
        let scope = match undo {
            Some(_) => Scope::Services,
            None => Scope::All,
        };
        let stats = match self.sync_scoped(&mut st, revision, scope) {
            Ok(s) => s,
            Err(e @ sync::SyncError::CapacityExceeded(_)) => {
                if let Some(engine) = last_good {
                    st.engine = engine;
                    // The service target followed the refused model.
                    st.lb_stale = true;
                }
                if let Some(undo) = undo {
                    // Nothing was written: the model and the service target go back to
                    // what the maps hold.
                    if let Err(e) = st.engine.apply(undo) {
                        warn!(error = e.to_string(), "service change not undone");
                    }
                    let State { engine, lb, .. } = &mut *st;
                    let touched = engine.take_services_touched();
                    lb.update(engine.cluster(), &touched);
                }
                counted(&self.metrics.changes_refused);
                return Err(e.into());
            }
            Err(e) => {
                counted(&self.metrics.changes_failed);
                return Err(e.into());
            }
        };
        st.revision = revision;
        drop(st);
        counted(&self.metrics.changes_applied);
        self.metrics
            .revision
            .store(u64::from(revision), std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .implementation_delay
            .observe(t0.elapsed().as_secs_f64());
        info!(
            policy.revision = revision,
            policy.changes = n,
            maps.policy_writes = stats.policy_writes,
            maps.policy_deletes = stats.policy_deletes,
            maps.ipcache_writes = stats.ipcache_writes,
            maps.endpoints_written = stats.endpoints_written,
            maps.service_writes = stats.lb_writes,
            maps.service_deletes = stats.lb_deletes,
            sync.services_only = stats.services_only,
            elapsed_us = t0.elapsed().as_micros() as u64,
            "policy revision applied"
        );
        Ok(())
    }

    /// The change that puts a pod back to what the source says of it (usually nothing).
    fn source_view(&self, key: &str) -> Change {
        self.source
            .current()
            .endpoints
            .get(key)
            .cloned()
            .map(Change::UpsertEndpoint)
            .unwrap_or_else(|| Change::DeleteEndpoint(key.to_string()))
    }

    /// A snapshot for `inspect`.
    pub fn describe(&self) -> String {
        let st = self.lock();
        let mut out = String::new();
        for (id, s) in &st.regs {
            out.push_str(&format!(
                "{id}: {}/{} on {} (ifindex {})\n",
                s.registration.namespace, s.registration.pod, s.registration.host_ifname, s.ifindex
            ));
        }
        out
    }
}

/// An allocator preferring, for every identity `scratch` gives a local endpoint or an
/// ipcache prefix, the number the pinned maps hold for that endpoint or prefix.
fn numbering_in_maps(
    dp: &mut Datapath,
    scratch: &Engine,
    local: &LocalEndpoints,
) -> Result<IdentityAllocator, DaemonError> {
    let ids = scratch.identities();
    let mut numbering = IdentityAllocator::new();
    let old_endpoints: HashMap<u32, u32> = dp
        .endpoints()?
        .into_iter()
        .map(|(ifindex, e)| (ifindex, e.identity))
        .collect();
    for (key, ifindex) in local.iter() {
        if let (Some(old), Some(new)) = (old_endpoints.get(ifindex), scratch.endpoint_identity(key))
            && let Some(k) = ids.key(new)
        {
            numbering.prefer(k.clone(), *old);
        }
    }
    for (cidr, old) in dp.ipcache_entries()? {
        let Some(&new) = scratch.ipcache().get(&cidr) else {
            continue;
        };
        if let Some(k) = ids.key(new) {
            numbering.prefer(k.clone(), old);
        } else if ids.cidr_identity(&cidr) == Some(new) {
            numbering.prefer_cidr(cidr, old);
        }
    }
    Ok(numbering)
}

fn ensure_namespace(cluster: &mut Cluster, ns: &str) {
    if !cluster.namespaces.contains_key(ns) {
        cluster
            .namespaces
            .insert(ns.to_string(), Namespace::new(ns, Labels::new(), false));
    }
}

fn api_error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::error(code, message)
}
