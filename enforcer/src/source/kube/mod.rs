//! [`KubeSource`]: the cluster model from a Kubernetes API server (`run --kubernetes`).
//!
//! One kube-rs watcher per kind of [`kinds::KINDS`] (the initial list streamed in the watch
//! where the API server does so, else list then watch from the list's resourceVersion;
//! bookmarks; `410 Gone` and reconnects relist; backoff with jitter) feeds one aggregator
//! task that owns the [`store::Store`]. Custom-resource kinds are
//! watched while their CustomResourceDefinition is established: a watch on CRDs starts and
//! stops them, at start and whenever one appears or goes away.
//!
//! - The first model is built only when every watcher has listed once ([`store::Store::synced`]):
//!   [`KubeSource::connect`] waits for that, indefinitely, logging what it waits for. The
//!   agent touches no map before it (pinned state from a previous run keeps enforcing).
//! - After that, events are batched (`debounce`) and the model is updated
//!   ([`store::Store::update`]: in place for objects whose part depends on no other object,
//!   else rebuilt from the store and diffed against the last one): a relist that finds what
//!   was there changes nothing.
//! - The API server going away changes nothing: watchers retry with backoff, the store
//!   keeps what it had, `status` says the source is disconnected.
//! - An object the policy core refuses keeps its last valid version in the model and is
//!   reported (agent log, `status`, and to its author by [`feedback`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use policy_compiler::manifest::LoadOptions;
use policy_compiler::model::{Cluster, Endpoint};

use super::{PodInfo, PodWait, PolicySource, SourceError, SourceEvent};

pub mod feedback;
pub mod kinds;
pub mod store;

use kinds::KINDS;

/// Retries of a failed watch: 0.8 s doubling to at most 5 s, with jitter, reset after two
/// minutes of success. kube-runtime's default waits up to 30 s, so after an API server
/// outage of half a minute the agent would go on enforcing a stale model that long after
/// the server is back; a 5 s cap costs one request per watched kind every 5 s during an
/// outage.
fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<watcher::ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter();
    kube::runtime::utils::ResetTimerBackoff::new(builder.into(), Duration::from_secs(120))
}
use store::{Outcome, Store};

/// Default quiet time after an event before the model is rebuilt: events of one `kubectl
/// apply` arrive together.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);
/// Default bound on how long a registration waits for its Pod object.
pub const DEFAULT_POD_WAIT: Duration = Duration::from_secs(10);
/// How often the progress of the first sync, and a lasting outage, are logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How to reach the API server and what to read.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// A kubeconfig file (development); `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// This node: registrations of pods scheduled elsewhere are refused.
    pub node_name: String,
    /// The loader's limits and validation (the same as for a manifest directory).
    pub load: LoadOptions,
    pub debounce: Duration,
    pub pod_wait: Duration,
}

/// State shared between the aggregator task and the agent's threads.
#[derive(Debug)]
struct Shared {
    current: Mutex<Arc<Cluster>>,
    /// Pods the source knows, with the node each is scheduled on; registrations wait on
    /// `pods_changed` for theirs.
    pods: Mutex<HashMap<String, Option<String>>>,
    pods_changed: Condvar,
    notes: Mutex<Vec<String>>,
    /// How initial lists are read, once known: streamed (`true`) or list then watch.
    streaming: Mutex<Option<bool>>,
    /// This node's IPv4 pod CIDR from its Node object.
    pod_cidr: Mutex<Option<String>>,
    /// Relists of a kind already listed (a watch that could not resume).
    relists: AtomicU64,
}

/// The Kubernetes source. Dropping it stops its watchers.
#[derive(Debug)]
pub struct KubeSource {
    shared: Arc<Shared>,
    initial: Arc<Cluster>,
    rx: Option<mpsc::Receiver<SourceEvent>>,
    aggregator: tokio::task::AbortHandle,
    feedback: tokio::task::AbortHandle,
    opts: KubeOptions,
    server: String,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        // The aggregator owns the watchers' handles and aborts them when it ends.
        self.aggregator.abort();
        self.feedback.abort();
    }
}

/// A client for `opts`: the kubeconfig file, or the in-cluster service account.
pub async fn client(opts: &KubeOptions) -> Result<Client, SourceError> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| SourceError::Kube {
                detail: format!("kubeconfig {}: {e}", path.display()),
            })?;
            Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| SourceError::Kube {
                    detail: format!("kubeconfig {}: {e}", path.display()),
                })?
        }
        None => Config::incluster().map_err(|e| SourceError::Kube {
            detail: format!(
                "in-cluster configuration: {e} (outside a pod, pass --kubeconfig FILE)"
            ),
        })?,
    };
    Client::try_from(config).map_err(|e| SourceError::Kube {
        detail: format!("API client: {e}"),
    })
}

impl KubeSource {
    /// Connects, starts the watchers and returns once every kind has been listed (waiting
    /// as long as that takes; progress is logged). Must run inside a tokio runtime, which
    /// keeps running the watchers afterwards.
    pub async fn connect(opts: KubeOptions) -> Result<KubeSource, SourceError> {
        let client = client(&opts).await?;
        let server = client.default_namespace().to_string();
        let server = match &opts.kubeconfig {
            Some(p) => format!("API server of {} (namespace {server})", p.display()),
            None => "in-cluster API server".to_string(),
        };
        let shared = Arc::new(Shared {
            current: Mutex::new(Arc::new(Cluster::default())),
            pods: Mutex::new(HashMap::new()),
            pods_changed: Condvar::new(),
            notes: Mutex::new(Vec::new()),
            streaming: Mutex::new(None),
            pod_cidr: Mutex::new(None),
            relists: AtomicU64::new(0),
        });
        let (out_tx, out_rx) = mpsc::channel(16);
        let (init_tx, init_rx) = oneshot::channel();
        let (fb_tx, fb_rx) = tokio::sync::watch::channel(Vec::new());
        let feedback = tokio::spawn(feedback::run(client.clone(), opts.node_name.clone(), fb_rx))
            .abort_handle();
        let agg = Aggregator {
            client,
            store: Store::new(opts.load),
            shared: shared.clone(),
            out: out_tx,
            debounce: opts.debounce,
            watchers: HashMap::new(),
            errors: HashMap::new(),
            feedback: fb_tx,
            streaming: false,
            node_name: opts.node_name.clone(),
        };
        let aggregator = tokio::spawn(agg.run(init_tx)).abort_handle();
        let initial = match init_rx.await {
            Ok(c) => Arc::new(c),
            Err(_) => {
                feedback.abort();
                return Err(SourceError::Kube {
                    detail: "the watcher task ended before the first sync".into(),
                });
            }
        };
        Ok(KubeSource {
            shared,
            initial,
            rx: Some(out_rx),
            aggregator,
            feedback,
            opts,
            server,
        })
    }

    /// How many times a kind already listed was listed again (a watch that could not resume
    /// from its resourceVersion: `410 Gone` after compaction, an API-server restart).
    pub fn relists(&self) -> u64 {
        self.shared.relists.load(Ordering::Relaxed)
    }

    /// How the initial lists are read: streamed in the watch (`Some(true)`) or list, then
    /// watch (`Some(false)`); `None` before the probe has answered.
    pub fn streaming_lists(&self) -> Option<bool> {
        *self
            .shared
            .streaming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl PolicySource for KubeSource {
    fn describe(&self) -> String {
        self.server.clone()
    }

    fn initial(&self) -> Arc<Cluster> {
        self.initial.clone()
    }

    fn subscribe(&mut self) -> Result<mpsc::Receiver<SourceEvent>, SourceError> {
        self.rx.take().ok_or(SourceError::Kube {
            detail: "already subscribed".into(),
        })
    }

    fn current(&self) -> Arc<Cluster> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn pod_info(&self, namespace: &str, pod: &str) -> Option<PodInfo> {
        self.current()
            .endpoints
            .get(&Endpoint::pod_key(namespace, pod))
            .map(PodInfo::of)
    }

    fn node_pod_cidr(&self) -> Option<String> {
        self.shared
            .pod_cidr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn notes(&self) -> Vec<String> {
        self.shared
            .notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `pod_wait` for the Pod object (the kubelet runs CNI ADD right after
    /// creating it, so it is normally there already); refuses a pod scheduled on another
    /// node.
    fn await_pod(&self, namespace: &str, pod: &str) -> Result<(), PodWait> {
        let key = Endpoint::pod_key(namespace, pod);
        let deadline = Instant::now() + self.opts.pod_wait;
        let mut pods = self
            .shared
            .pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(node) = pods.get(&key) {
                return match node {
                    Some(n) if !self.opts.node_name.is_empty() && *n != self.opts.node_name => {
                        Err(PodWait::OtherNode(format!(
                            "pod {key} is scheduled on node {n:?}, this agent is node {:?}",
                            self.opts.node_name
                        )))
                    }
                    _ => Ok(()),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PodWait::NotYet(format!(
                    "pod {key} is not among the API server's pods (waited {} ms); retry later",
                    self.opts.pod_wait.as_millis()
                )));
            }
            pods = self
                .shared
                .pods_changed
                .wait_timeout(pods, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// What the watcher tasks send the aggregator.
#[derive(Debug)]
enum Msg {
    Event(usize, Box<Event<DynamicObject>>),
    Error(usize, String),
    Crd(Box<Event<CustomResourceDefinition>>),
    CrdError(String),
}

struct Aggregator {
    client: Client,
    store: Store,
    shared: Arc<Shared>,
    out: mpsc::Sender<SourceEvent>,
    debounce: Duration,
    /// Running watchers by kind; aborted when the kind goes away or the source ends.
    watchers: HashMap<usize, tokio::task::AbortHandle>,
    /// The last error of each watcher (kind index; `usize::MAX` for the CRD watcher), until
    /// it delivers again.
    errors: HashMap<usize, String>,
    /// What to tell policy authors ([`feedback`]); published once the model is in use.
    feedback: tokio::sync::watch::Sender<Vec<store::Report>>,
    /// Whether the API server streams initial lists in the watch ([`list_strategy`]).
    streaming: bool,
    node_name: String,
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        for (_, h) in self.watchers.drain() {
            h.abort();
        }
    }
}

const CRD_WATCHER: usize = usize::MAX;

/// How long a streamed list may take to show its end on the probe (a server that ignores
/// `sendInitialEvents` never sends the end-of-initial-events bookmark).
const STREAMING_PROBE: Duration = Duration::from_secs(10);

/// Whether the API server streams initial lists in the watch (`sendInitialEvents`, the
/// WatchList feature): a streamed watch of Namespaces must reach the end of its initial
/// events within [`STREAMING_PROBE`]. A refusal or no end means list, then watch. While the
/// server cannot be reached the probe is retried (the first model waits for it anyway).
async fn list_strategy(client: &Client) -> bool {
    use k8s_openapi::api::core::v1::Namespace;
    let mut last_log = Instant::now() - PROGRESS_EVERY;
    loop {
        let api: Api<Namespace> = Api::all(client.clone());
        let mut s = watcher::watcher(api, watcher::Config::default().streaming_lists()).boxed();
        let probe = tokio::time::timeout(STREAMING_PROBE, async {
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(Event::InitDone) => return Ok(true),
                    Ok(_) => {}
                    // The server answered and refused the parameters.
                    Err(
                        watcher::Error::WatchError(e)
                        | watcher::Error::WatchStartFailed(kube::Error::Api(e)),
                    ) if (400..500).contains(&e.code) => {
                        return Ok(false);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err("the watch ended".to_string())
        })
        .await;
        match probe {
            Ok(Ok(streaming)) => return streaming,
            Err(_) => return false,
            Ok(Err(e)) => {
                if last_log.elapsed() >= PROGRESS_EVERY {
                    warn!(error = e, "cannot reach the API server; retrying");
                    last_log = Instant::now();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
/// How long feedback waits for more events (a relist, a burst of edits) before it is
/// recomputed.
const FEEDBACK_DELAY: Duration = Duration::from_millis(200);

impl Aggregator {
    async fn run(mut self, init: oneshot::Sender<Cluster>) {
        self.streaming = list_strategy(&self.client).await;
        info!(
            streaming_lists = self.streaming,
            "initial lists: {}",
            if self.streaming {
                "streamed in the watch (sendInitialEvents)"
            } else {
                "list, then watch (the API server does not stream lists)"
            }
        );
        *self
            .shared
            .streaming
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(self.streaming);
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        for (i, k) in KINDS.iter().enumerate() {
            if !k.optional {
                self.spawn_watcher(i, &tx);
            }
        }
        self.watchers.insert(
            CRD_WATCHER,
            spawn_crd_watcher(self.client.clone(), self.watch_config(), tx.clone()),
        );
        // The first sync: every active kind listed once.
        let started = Instant::now();
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.tick().await;
        let first = loop {
            if self.store.synced() {
                match self.store.build() {
                    Ok(c) => break c,
                    Err(e) => {
                        // Cross-object problems only (each object was checked alone):
                        // wait for the objects to change.
                        warn!(
                            error = e.to_string(),
                            "the API server's objects do not load together; waiting for a change"
                        );
                    }
                }
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        self.handle(m, &tx);
                    }
                    None => return,
                },
                _ = progress.tick() => {
                    let errors: Vec<String> = self.errors.values().cloned().collect();
                    warn!(
                        waited_s = started.elapsed().as_secs(),
                        waiting_for = self.store.unsynced().join(","),
                        last_error = errors.first().cloned().unwrap_or_default(),
                        "waiting for the API server's first list of every kind; nothing is enforced from it until then"
                    );
                    self.set_notes(true);
                }
            }
        };
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            objects = self.store.object_count(),
            endpoints = first.endpoints.len(),
            policies = first.policies.len(),
            "the API server's objects are listed"
        );
        let mut current = Arc::new(first);
        self.publish(&current);
        if init.send((*current).clone()).is_err() {
            return;
        }
        self.feedback.send_replace(self.store.reports());
        let mut fb_dirty = false;
        let mut fb_deadline = tokio::time::Instant::now();
        // Batches after the first model.
        let mut dirty = false;
        let mut deadline = tokio::time::Instant::now();
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { return };
                    let object_event = matches!(m, Msg::Event(..) | Msg::Crd(..));
                    if self.handle(m, &tx) && !dirty {
                        dirty = true;
                        deadline = tokio::time::Instant::now() + self.debounce;
                    }
                    // Any event may change what authors should read (a refused edit, a
                    // status someone overwrote): feedback follows on its own clock.
                    if object_event && !fb_dirty {
                        fb_dirty = true;
                        fb_deadline = tokio::time::Instant::now() + FEEDBACK_DELAY;
                    }
                }
                _ = tokio::time::sleep_until(fb_deadline), if fb_dirty => {
                    fb_dirty = false;
                    let reports = self.store.reports();
                    self.feedback.send_if_modified(|cur| {
                        let changed = *cur != reports;
                        if changed {
                            *cur = reports;
                        }
                        changed
                    });
                }
                _ = tokio::time::sleep_until(deadline), if dirty => {
                    dirty = false;
                    // Notes first: whoever sees the change also sees the status it brings.
                    self.set_notes(false);
                    let t = Instant::now();
                    match self.store.update(&current) {
                        Ok((next, changes)) => {
                            debug!(
                                elapsed_us = t.elapsed().as_micros() as u64,
                                changes = changes.len(),
                                "model updated"
                            );
                            current = Arc::new(next);
                            self.publish(&current);
                            if !changes.is_empty()
                                && self.out.send(SourceEvent::Changes(changes)).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let msg = format!("the API server's objects do not load together; the last good model stays: {e}");
                            if self.out.send(SourceEvent::Error(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ = progress.tick() => {
                    if !self.errors.is_empty() {
                        let errors: Vec<String> = self.errors.values().cloned().collect();
                        warn!(
                            error = errors.join("; "),
                            "the API server cannot be watched; the last model stays enforced"
                        );
                    }
                    self.set_notes(false);
                }
            }
        }
    }

    /// Applies one message to the store; whether the model may have changed.
    fn handle(&mut self, m: Msg, tx: &mpsc::Sender<Msg>) -> bool {
        match m {
            Msg::Event(kind, ev) => {
                self.errors.remove(&kind);
                match *ev {
                    Event::Init => {
                        if self.store.listed(kind) {
                            self.shared.relists.fetch_add(1, Ordering::Relaxed);
                            info!(
                                kind = KINDS[kind].kind,
                                "relisting (the watch could not resume: 410 Gone, or a reconnect)"
                            );
                        }
                        self.store.init(kind);
                        false
                    }
                    Event::InitApply(o) => {
                        self.store.init_apply(kind, to_value(o));
                        false
                    }
                    Event::InitDone => self.store.init_done(kind),
                    Event::Apply(o) => match self.store.apply(kind, to_value(o)) {
                        Outcome::Unchanged => false,
                        Outcome::Changed => true,
                        Outcome::Invalid(why) => {
                            warn!(
                                error = why,
                                "object refused; its last valid version (if any) stays enforced"
                            );
                            self.set_notes(!self.store.synced());
                            false
                        }
                    },
                    Event::Delete(o) => self.store.delete(kind, &to_value(o)) == Outcome::Changed,
                }
            }
            Msg::Error(kind, e) => {
                let k = KINDS.get(kind).map(|k| k.kind).unwrap_or("?");
                if self.errors.insert(kind, format!("{k}: {e}")).is_none() {
                    warn!(
                        kind = k,
                        error = e,
                        "watch failed; retrying with backoff (the last model stays)"
                    );
                    self.set_notes(!self.store.synced());
                }
                false
            }
            Msg::CrdError(e) => {
                if self
                    .errors
                    .insert(CRD_WATCHER, format!("CustomResourceDefinition: {e}"))
                    .is_none()
                {
                    warn!(
                        error = e,
                        "watching CustomResourceDefinitions failed; retrying with backoff"
                    );
                    self.set_notes(!self.store.synced());
                }
                false
            }
            Msg::Crd(ev) => {
                self.errors.remove(&CRD_WATCHER);
                self.crd_event(*ev, tx)
            }
        }
    }

    fn crd_event(&mut self, ev: Event<CustomResourceDefinition>, tx: &mpsc::Sender<Msg>) -> bool {
        match ev {
            Event::Init => false,
            Event::InitApply(crd) | Event::Apply(crd) => {
                let Some(kind) = crd.metadata.name.as_deref().and_then(kinds::by_crd_name) else {
                    return false;
                };
                if established(&crd, KINDS[kind].version) {
                    if !self.store.is_active(kind) {
                        info!(
                            kind = KINDS[kind].kind,
                            "CRD established; watching its objects"
                        );
                        self.store.set_active(kind, true);
                        self.spawn_watcher(kind, tx);
                    }
                    false
                } else {
                    false
                }
            }
            Event::Delete(crd) => {
                let Some(kind) = crd.metadata.name.as_deref().and_then(kinds::by_crd_name) else {
                    return false;
                };
                info!(kind = KINDS[kind].kind, "CRD deleted; its objects are gone");
                if let Some(h) = self.watchers.remove(&kind) {
                    h.abort();
                }
                self.store.set_active(kind, false)
            }
            Event::InitDone => {
                self.store.crds_listed();
                false
            }
        }
    }

    /// Every watcher's settings: bookmarks on (the default), streaming lists where the
    /// server streams them.
    fn watch_config(&self) -> watcher::Config {
        let c = watcher::Config::default();
        if self.streaming {
            c.streaming_lists()
        } else {
            c
        }
    }

    fn spawn_watcher(&mut self, kind: usize, tx: &mpsc::Sender<Msg>) {
        if let Some(h) = self.watchers.remove(&kind) {
            h.abort();
        }
        let k = &KINDS[kind];
        let ar = ApiResource {
            group: k.group.into(),
            version: k.version.into(),
            api_version: k.api_version(),
            kind: k.kind.into(),
            plural: k.plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let tx = tx.clone();
        let config = self.watch_config();
        let h = tokio::spawn(async move {
            let mut s = watcher::watcher(api, config)
                .backoff(watch_backoff())
                .boxed();
            while let Some(ev) = s.next().await {
                let msg = match ev {
                    Ok(e) => Msg::Event(kind, Box::new(e)),
                    Err(e) => Msg::Error(kind, e.to_string()),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        })
        .abort_handle();
        self.watchers.insert(kind, h);
    }

    /// Makes the model visible to the agent's threads and wakes waiting registrations.
    fn publish(&self, current: &Arc<Cluster>) {
        *self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = current.clone();
        let mut pods = self
            .shared
            .pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self
            .shared
            .pod_cidr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.store.node_pod_cidr(&self.node_name);
        pods.clear();
        // Every endpoint of this source is a pod (workloads are not watched).
        for key in current.endpoints.keys() {
            pods.insert(key.clone(), self.store.pod_node(key).flatten());
        }
        self.shared.pods_changed.notify_all();
    }

    fn set_notes(&self, syncing: bool) {
        let mut notes = Vec::new();
        if syncing {
            notes.push(format!(
                "Kubernetes source: waiting for the first list of {}",
                self.store.unsynced().join(", ")
            ));
        }
        let mut errors: Vec<&String> = self.errors.values().collect();
        errors.sort();
        for e in errors {
            notes.push(format!(
                "Kubernetes source: cannot watch the API server ({e}); the last model stays enforced"
            ));
        }
        notes.extend(self.store.invalid());
        *self
            .shared
            .notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = notes;
    }
}

fn spawn_crd_watcher(
    client: Client,
    config: watcher::Config,
    tx: mpsc::Sender<Msg>,
) -> tokio::task::AbortHandle {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, config)
            .backoff(watch_backoff())
            .boxed();
        while let Some(ev) = s.next().await {
            let msg = match ev {
                Ok(e) => Msg::Crd(Box::new(e)),
                Err(e) => Msg::CrdError(e.to_string()),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    })
    .abort_handle()
}

/// Whether a CRD is established and serves `version`.
fn established(crd: &CustomResourceDefinition, version: &str) -> bool {
    let serves = crd
        .spec
        .versions
        .iter()
        .any(|v| v.name == version && v.served);
    let up = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    serves && up
}

fn to_value(o: DynamicObject) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
}
