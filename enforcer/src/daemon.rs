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

use std::collections::{BTreeMap, HashMap};
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
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
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
}

/// What `status` reports, kept apart from [`State`] so answering never waits for a
/// registration or a map write in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Registered endpoints.
    pub endpoints: u32,
    /// A map update failed partway and the maps have not been reconciled since: every
    /// flow is decided by the old or the new policy, but which one is not known per flow.
    pub dirty: bool,
    /// Map updates (plans or reconciles) that failed since the start.
    pub failed_updates: u64,
    /// Successful reconciles after a failure since the start.
    pub reconciles: u64,
    /// The last failure, while dirty.
    pub last_error: Option<String>,
}

impl Health {
    /// Ready unless the maps are dirty.
    pub fn ready(&self) -> bool {
        !self.dirty
    }

    /// Why the agent is not ready, for `status`.
    pub fn reason(&self) -> Option<String> {
        self.dirty.then(|| {
            format!(
                "a map update failed and the maps are not reconciled yet ({} failed updates \
                 so far; reconcile retrying with backoff): {}",
                self.failed_updates,
                self.last_error.as_deref().unwrap_or("unknown error")
            )
        })
    }
}

/// Delays between reconcile attempts after a failed map update: doubling from `first`
/// up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// First and longest wait between reconcile attempts.
const RECONCILE_FIRST: Duration = Duration::from_millis(100);
const RECONCILE_MAX: Duration = Duration::from_secs(30);

/// The running agent, shared by the API server and the loops.
pub struct Daemon {
    state: Mutex<State>,
    health: Mutex<Health>,
    /// Wakes the reconcile task after a failed map update.
    reconcile_wake: tokio::sync::Notify,
    source: Box<dyn PolicySource>,
    state_dir: PathBuf,
}

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
        let (scratch, _) = Engine::compile_owned(cluster.clone(), EngineConfig::default())?;
        let numbering = numbering_in_maps(&mut dp, &scratch, &local)?;
        let (engine, _) =
            Engine::compile_owned_with_identities(cluster, EngineConfig::default(), numbering)?;
        let revision = dp
            .endpoints()?
            .iter()
            .map(|(_, e)| e.revision)
            .max()
            .unwrap_or(0)
            + 1;
        // Adopt the slots the previous run wrote; every endpoint gets the new revision so
        // conntrack it admitted is decided once more against the reconciled policy.
        let mut synced = Synced::adopt(&mut AyaMaps(&mut dp))?;
        let stats = synced.reconcile(
            &mut AyaMaps(&mut dp),
            &sync::target(&engine, &local, revision),
            policy_compiler::plan::PlanOptions { bump_all: true },
        )?;
        // Connections an ABI v1 agent tracked keep their replies across the upgrade; each
        // is re-decided against this policy on its next packet (docs/upgrade.md).
        let imported = dp.import_v1_conntrack();
        for s in regs.values() {
            dp.attach(&s.registration.host_ifname)?;
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
        let daemon = Daemon {
            health: Mutex::new(Health {
                endpoints,
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
            }),
            source,
            state_dir: opts.state_dir.clone(),
        };
        match imported {
            Ok(0) => {}
            Ok(n) => info!(
                conntrack.imported = n,
                "conntrack entries of the ABI v1 pins imported, each re-checked on its next packet"
            ),
            Err(e) => warn!(
                error = e.to_string(),
                "conntrack of the ABI v1 pins not imported (their connections are decided as new flows)"
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
            links.adopted = adopted,
            endpoints = endpoints,
            "datapath ready"
        );
        Ok(daemon)
    }

    /// What `status` answers; never waits for the state lock.
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
        let State {
            engine,
            dp,
            synced,
            local,
            ..
        } = st;
        let was_dirty = synced.is_dirty();
        let result = synced.apply(&mut AyaMaps(dp), &sync::target(engine, local, revision));
        // The health lock is released before logging: `status` never waits for a write.
        let failed_updates = {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            match &result {
                Ok(_) => {
                    h.reconciles += u64::from(was_dirty);
                    h.dirty = false;
                    h.last_error = None;
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
        st.engine.apply(merged)?;
        let revision = st.revision + 1;
        let stats = self.sync(&mut st, revision)?;
        st.revision = revision;
        drop(st);
        info!(
            policy.revision = revision,
            policy.changes = n,
            maps.policy_writes = stats.policy_writes,
            maps.policy_deletes = stats.policy_deletes,
            maps.ipcache_writes = stats.ipcache_writes,
            maps.endpoints_written = stats.endpoints_written,
            elapsed_us = t0.elapsed().as_micros() as u64,
            "policy revision applied"
        );
        Ok(())
    }

    /// Registers a pod interface. Blocking (map writes, attach, fsync of the registrations
    /// file): the API runs it on `spawn_blocking`. Takes the state lock once, so a
    /// replaced registration and its successor are one step for everyone else.
    fn register_blocking(&self, reg: Registration) -> Response {
        if let Some(msg) = validate_registration(&reg) {
            return api_error(ErrorCode::BadRequest, msg);
        }
        let ifindex = match datapath::ifindex_of(&reg.host_ifname) {
            Ok(i) => i,
            Err(e) => return api_error(ErrorCode::NoSuchInterface, e.to_string()),
        };
        let key = Endpoint::pod_key(&reg.namespace, &reg.pod);
        let mut st = self.lock();
        // Re-registration of the same container on another interface or as another pod
        // replaces the earlier one.
        if let Some(old) = st.regs.get(&reg.container_id)
            && (old.registration.host_ifname != reg.host_ifname
                || Endpoint::pod_key(&old.registration.namespace, &old.registration.pod) != key)
        {
            let (old_key, result) = self.deregister_in(&mut st, &reg.container_id);
            if let Err(e) = result {
                return api_error(
                    ErrorCode::Datapath,
                    format!("replacing the registration of {old_key}: {e}"),
                );
            }
        }
        if let Some((other, _)) = st.regs.iter().find(|(id, s)| {
            *id != &reg.container_id
                && Endpoint::pod_key(&s.registration.namespace, &s.registration.pod) == key
        }) {
            return api_error(
                ErrorCode::Conflict,
                format!("pod {key} is already registered by container {other}"),
            );
        }
        let ep = merged_endpoint(&reg, self.source.as_ref());
        let mut changes = Vec::new();
        if !st.engine.cluster().namespaces.contains_key(&ep.namespace) {
            changes.push(Change::UpsertNamespace(Namespace::new(
                &ep.namespace,
                Labels::new(),
                false,
            )));
        }
        changes.push(Change::UpsertEndpoint(ep));
        st.local.insert(key.clone(), ifindex);
        st.ifnames.insert(ifindex, reg.host_ifname.clone());
        let revision = st.revision + 1;
        let result = (|| -> Result<u32, DaemonError> {
            st.engine.apply(changes)?;
            // The plan writes the new endpoint last, on its complete slot.
            self.sync(&mut st, revision)?;
            let identity = st
                .engine
                .endpoint_identity(&key)
                .unwrap_or(abi::IDENTITY_UNKNOWN);
            // Maps first, then the hooks: the first packet already meets the policy.
            st.dp.attach(&reg.host_ifname)?;
            Ok(identity)
        })();
        match result {
            Ok(identity) => {
                st.revision = revision;
                st.regs.insert(
                    reg.container_id.clone(),
                    Stored {
                        registration: reg.clone(),
                        ifindex,
                    },
                );
                let saved = save_registrations(&self.state_dir, &st.regs);
                let endpoints = st.regs.len();
                drop(st);
                self.set_endpoints(endpoints);
                if let Err(e) = saved {
                    warn!(
                        endpoint.namespace = reg.namespace.as_str(),
                        endpoint.pod = reg.pod.as_str(),
                        error = e.to_string(),
                        "registered and enforced, but the registrations file was not saved"
                    );
                    return api_error(ErrorCode::State, e.to_string());
                }
                info!(
                    endpoint.namespace = reg.namespace.as_str(),
                    endpoint.pod = reg.pod.as_str(),
                    endpoint.container_id = reg.container_id.as_str(),
                    endpoint.ifname = reg.host_ifname.as_str(),
                    endpoint.ifindex = ifindex,
                    endpoint.identity = identity,
                    "registered"
                );
                Response::Registered {
                    endpoint: key,
                    identity,
                    ifindex,
                }
            }
            Err(e) => {
                // Leave nothing half-done: the interface has no endpoint entry and no
                // hooks, the model does not know the pod.
                st.dp.detach(ifindex);
                let _ = st.dp.remove_endpoint(ifindex);
                st.local.remove(&key);
                if st.engine.apply(vec![self.source_view(&key)]).is_ok() {
                    // A failure is recorded (dirty, not ready) and reconciled in the
                    // background; the pod's entry is already gone, so it fails closed.
                    let _ = self.sync(&mut st, revision);
                }
                drop(st);
                warn!(
                    endpoint.namespace = reg.namespace.as_str(),
                    endpoint.pod = reg.pod.as_str(),
                    endpoint.ifname = reg.host_ifname.as_str(),
                    error = e.to_string(),
                    "registration failed; the interface is not attached"
                );
                api_error(ErrorCode::Datapath, e.to_string())
            }
        }
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

    /// Removes a registration. Blocking, like [`Daemon::register_blocking`].
    fn deregister_blocking(&self, container_id: &str) -> Response {
        let mut st = self.lock();
        if !st.regs.contains_key(container_id) {
            return Response::Deregistered { existed: false };
        }
        let (key, res) = self.deregister_in(&mut st, container_id);
        let saved = save_registrations(&self.state_dir, &st.regs);
        let endpoints = st.regs.len();
        drop(st);
        self.set_endpoints(endpoints);
        match (res, saved) {
            (Ok(()), Ok(())) => {
                info!(
                    endpoint.key = key.as_str(),
                    endpoint.container_id = container_id,
                    "deregistered"
                );
                Response::Deregistered { existed: true }
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(
                    endpoint.key = key.as_str(),
                    endpoint.container_id = container_id,
                    error = e.to_string(),
                    "deregistration incomplete"
                );
                api_error(ErrorCode::Datapath, e.to_string())
            }
        }
    }

    /// Detaches and forgets `container_id` within a held lock; the caller saves the
    /// registrations. Returns the pod key and whether the maps were updated.
    fn deregister_in(
        &self,
        st: &mut State,
        container_id: &str,
    ) -> (String, Result<(), DaemonError>) {
        let Some(stored) = st.regs.remove(container_id) else {
            return (String::new(), Ok(()));
        };
        let reg = &stored.registration;
        let key = Endpoint::pod_key(&reg.namespace, &reg.pod);
        st.dp.detach(stored.ifindex);
        let _ = st.dp.remove_endpoint(stored.ifindex);
        // Best effort: an entry left behind expires, and a recycled ifindex gets a new
        // endpoint revision, which re-checks any survivor against the new pod's policy.
        let _ = st.dp.ct_flush_ifindex(stored.ifindex);
        st.local.remove(&key);
        st.ifnames.remove(&stored.ifindex);
        let change = self.source_view(&key);
        let revision = st.revision + 1;
        let res = st
            .engine
            .apply(vec![change])
            .map_err(DaemonError::from)
            .and_then(|_| self.sync(st, revision).map_err(DaemonError::from));
        st.revision = revision;
        (key, res.map(|_| ()))
    }

    /// Writes pending events to the verdict log. Events are read from the ring without
    /// the state lock, rendered under it (the resolver borrows the engine), and written
    /// after it is released, so a slow disk never holds up a registration.
    fn drain_events(
        &self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        logger: &mut FlowLogger,
    ) -> usize {
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = abi::VerdictEvent::from_bytes(&item) {
                events.push(ev);
            }
        }
        if events.is_empty() {
            return 0;
        }
        let lines: Vec<String> = {
            let st = self.lock();
            // The resolver indexes every endpoint: built only when there is an event.
            let resolver = EngineResolver::new(&st.engine).with_interfaces(st.ifnames.clone());
            events.iter().map(|e| logger.render(e, &resolver)).collect()
        };
        for line in &lines {
            if let Err(err) = logger.write(line) {
                warn!(error = err.to_string(), "verdict log write failed");
            }
        }
        lines.len()
    }

    /// Packets of one counter over both directions.
    fn counter_total(&self, code: u32) -> u64 {
        let st = self.lock();
        [abi::DIRECTION_INGRESS, abi::DIRECTION_EGRESS]
            .iter()
            .filter_map(|d| st.dp.counter(*d, code).ok())
            .map(|c| c.packets)
            .sum()
    }

    /// The `palisade-events` thread: waits for the ring buffer (or a 200 ms tick, which
    /// also covers a missed wakeup), writes the verdict log, reports lost events, flushes,
    /// and runs conntrack GC every `gc_every`. Ends after a last drain once `stop` is set.
    fn events_loop(
        &self,
        mut ring: aya::maps::RingBuf<aya::maps::MapData>,
        mut logger: FlowLogger,
        gc_every: Duration,
        stop: &AtomicBool,
    ) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        const TICK: Duration = Duration::from_millis(200);
        let mut lost_seen = 0u64;
        let mut last_tick = Instant::now();
        let mut last_gc = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if !stopping {
                let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
                // An error (EINTR) only shortens the wait; the tick logic below still runs.
                let _ = poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16));
            }
            self.drain_events(&mut ring, &mut logger);
            if stopping || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let lost = self.counter_total(abi::COUNTER_EVENTS_LOST);
                if lost != lost_seen {
                    let _ = logger.observe_ring_lost(lost);
                    lost_seen = lost;
                }
                let _ = logger.flush();
            }
            if !stopping && last_gc.elapsed() >= gc_every {
                last_gc = Instant::now();
                let n = self.lock().dp.ct_gc().unwrap_or(0);
                if n > 0 {
                    info!(conntrack.expired = n, "conntrack gc");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Runs until SIGINT/SIGTERM or `shutdown` fires: the API server, the source watch,
    /// the event reader, conntrack GC. On exit nothing is detached: pinned links and maps
    /// keep enforcing until the next enforcer adopts them.
    pub async fn run(
        self: Arc<Self>,
        mut source_rx: tokio::sync::mpsc::Receiver<SourceEvent>,
        config: &Config,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        let server = Server::bind(&config.socket, ServerLimits::from_config(config))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ring = self.lock().dp.take_events()?;
        let writer = RotatingWriter::from_config(config)?;
        let logger = FlowLogger::new(writer, &config.node_name, BootClock::from_system()?);

        let events_stop = Arc::new(AtomicBool::new(false));
        let events = {
            let daemon = self.clone();
            let stop = events_stop.clone();
            let gc_every = config.ct_gc_interval();
            std::thread::Builder::new()
                .name("palisade-events".into())
                .spawn(move || daemon.events_loop(ring, logger, gc_every, &stop))
                .map_err(|source| DaemonError::Thread {
                    name: "palisade-events",
                    source,
                })?
        };

        let api_stop = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let api = tokio::spawn(server.serve(Arc::new(Registry(self.clone())), api_stop));

        let src_daemon = self.clone();
        let mut src_stop = stop_rx.clone();
        let source_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The watch guard is dropped inside, before any branch awaits.
                    () = async { let _ = src_stop.wait_for(|s| *s).await; } => break,
                    ev = source_rx.recv() => match ev {
                        Some(SourceEvent::Changes(c)) => {
                            let d = src_daemon.clone();
                            let applied = tokio::task::spawn_blocking(move || d.apply_source(c)).await;
                            match applied {
                                Ok(Ok(())) => {}
                                // A failed map update is logged by `sync` with what it leaves;
                                // this is the model or the engine refusing the batch, in which
                                // case nothing was written and the previous maps stay.
                                Ok(Err(DaemonError::Sync(_))) => {}
                                Ok(Err(e)) => error!(
                                    error = e.to_string(),
                                    "the source's changes were not applied; the previous maps stay"
                                ),
                                Err(e) => error!(error = e.to_string(), "source apply task failed"),
                            }
                        }
                        Some(SourceEvent::Error(e)) => warn!(
                            error = e.as_str(),
                            "policy source unreadable; enforcement continues on the last good policy"
                        ),
                        None => break,
                    }
                }
            }
        });

        let rec_daemon = self.clone();
        let mut rec_stop = stop_rx.clone();
        let reconcile_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = async { let _ = rec_stop.wait_for(|s| *s).await; } => break,
                    () = rec_daemon.reconcile_wake.notified() => {}
                }
                let mut backoff = Backoff::new(RECONCILE_FIRST, RECONCILE_MAX);
                while rec_daemon.health().dirty {
                    tokio::select! {
                        () = async { let _ = rec_stop.wait_for(|s| *s).await; } => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    let d = rec_daemon.clone();
                    // Failures are recorded (and logged) by `sync`.
                    let _ = tokio::task::spawn_blocking(move || d.reconcile_blocking()).await;
                }
            }
        });

        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = reconcile_task.await;
        events_stop.store(true, Ordering::Release);
        let _ = source_task.await;
        match api.await {
            Ok(r) => r?,
            Err(e) => error!(error = e.to_string(), "api task failed"),
        }
        if tokio::task::spawn_blocking(move || events.join())
            .await
            .map_or(true, |r| r.is_err())
        {
            error!("the events thread panicked; the verdict log may miss its last lines");
        }
        info!("stopped; pinned programs and maps keep enforcing");
        Ok(())
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

/// The endpoint API's view of the agent: registrations run on the blocking pool, so the
/// state lock (held across map writes, attach and fsync) is never taken on an async worker.
#[derive(Debug)]
pub struct Registry(pub Arc<Daemon>);

/// Runs blocking agent work off the async workers.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        error!(error = e.to_string(), "endpoint API task failed");
        api_error(
            ErrorCode::Datapath,
            "internal error: the request's task failed",
        )
    })
}

impl EndpointRegistry for Registry {
    async fn register(&self, registration: Registration) -> Response {
        let d = self.0.clone();
        blocking(move || d.register_blocking(registration)).await
    }
    async fn deregister(&self, container_id: String) -> Response {
        let d = self.0.clone();
        blocking(move || d.deregister_blocking(&container_id)).await
    }
    async fn status(&self) -> Response {
        let health = self.0.health();
        Response::Status {
            api_version: palisade_api::PROTOCOL_VERSION,
            endpoints: health.endpoints,
            ready: health.ready(),
            reason: health.reason(),
        }
    }
}

fn validate_registration(reg: &Registration) -> Option<String> {
    if reg.container_id.is_empty() {
        return Some("container_id: must not be empty".into());
    }
    if reg.namespace.is_empty() || reg.pod.is_empty() {
        return Some("namespace and pod: must not be empty".into());
    }
    if reg.host_ifname.is_empty() || reg.host_ifname.len() > 15 {
        return Some(format!(
            "host_ifname {:?}: must be 1 to 15 bytes",
            reg.host_ifname
        ));
    }
    if reg.ips.is_empty() {
        return Some("ips: a pod needs at least one address".into());
    }
    for p in &reg.named_ports {
        if Protocol::from_name(&p.protocol).is_none() {
            return Some(format!(
                "named_ports[{}].protocol {:?}: must be TCP, UDP or SCTP",
                p.name, p.protocol
            ));
        }
    }
    None
}

/// The model endpoint of a registration, with the source's knowledge of the pod.
fn merged_endpoint(reg: &Registration, source: &dyn PolicySource) -> Endpoint {
    let key = Endpoint::pod_key(&reg.namespace, &reg.pod);
    let known = source.current().endpoints.get(&key).cloned();
    match known {
        Some(e) => merge(reg, Some(&e)),
        None => {
            let info = source.pod_info(&reg.namespace, &reg.pod);
            let mut e = merge(reg, None);
            if let Some(info) = info {
                if reg.labels.is_none() {
                    e.labels = info.labels;
                }
                if reg.named_ports.is_empty() {
                    e.ports = info.named_ports;
                }
                e.workload = info.workload;
            }
            e
        }
    }
}

fn merge(reg: &Registration, source: Option<&Endpoint>) -> Endpoint {
    let labels: Labels = match (&reg.labels, source) {
        (Some(l), _) => l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        (None, Some(e)) => e.labels.clone(),
        (None, None) => Labels::new(),
    };
    let mut ports: Vec<NamedPort> = reg
        .named_ports
        .iter()
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone(),
                port: p.port,
                protocol: Protocol::from_name(&p.protocol)?,
            })
        })
        .collect();
    if ports.is_empty()
        && let Some(e) = source
    {
        ports = e.ports.clone();
    }
    ports.sort();
    Endpoint {
        key: Endpoint::pod_key(&reg.namespace, &reg.pod),
        namespace: reg.namespace.clone(),
        name: reg.pod.clone(),
        workload: source.map(|e| e.workload.clone()).unwrap_or(WorkloadRef {
            kind: "Pod".into(),
            name: reg.pod.clone(),
        }),
        labels,
        ips: reg.ips.to_vec(),
        ports,
        host_network: false,
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

fn load_registrations(dir: &Path) -> Result<BTreeMap<String, Stored>, DaemonError> {
    let path = dir.join(REGISTRATIONS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| DaemonError::State {
            path,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(DaemonError::State {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Atomic replace: a crash leaves the old file or the new one, never half of either.
fn save_registrations(dir: &Path, regs: &BTreeMap<String, Stored>) -> Result<(), DaemonError> {
    let path = dir.join(REGISTRATIONS_FILE);
    let tmp = dir.join(format!(".{REGISTRATIONS_FILE}.tmp"));
    let err = |e: std::io::Error| DaemonError::State {
        path: path.clone(),
        detail: e.to_string(),
    };
    let body = serde_json::to_vec_pretty(regs).map_err(|e| DaemonError::State {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn health_is_not_ready_with_the_reason_while_dirty() {
        let mut h = Health {
            endpoints: 3,
            ..Health::default()
        };
        assert!(h.ready());
        assert_eq!(h.reason(), None);
        h.dirty = true;
        h.failed_updates = 2;
        h.last_error = Some("map operation 4 of 9 failed (write pal_policy): ENOSPC".into());
        assert!(!h.ready());
        let reason = h.reason().unwrap();
        assert!(
            reason.contains("2 failed updates")
                && reason.contains("map operation 4 of 9 failed")
                && reason.contains("reconcile retrying"),
            "{reason}"
        );
    }
}
