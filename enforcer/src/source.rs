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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use policy_compiler::engine::Change;
use policy_compiler::k8s::Labels;
use policy_compiler::manifest::{self, LoadError, LoadOptions};
use policy_compiler::model::{Cluster, Endpoint, NamedPort, Policy, WorkloadRef};
use policy_compiler::rules::PolicyRef;

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
    fn of(ep: &Endpoint) -> PodInfo {
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
    #[error("{}: already subscribed", dir.display())]
    AlreadySubscribed { dir: PathBuf },
    #[error("cannot start the watcher thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// Events buffered between the watcher thread and the sync loop. A slow consumer makes the
/// watcher wait (it never drops a batch: each batch is a diff the next one builds on).
const EVENT_QUEUE: usize = 16;

/// A directory of manifests (read recursively by `manifest::load_paths`), watched for
/// changes. The watch is on the directory itself: if the directory is removed, reloads
/// report errors and the last good snapshot stays in force until the enforcer restarts.
#[derive(Debug)]
pub struct DirSource {
    inner: Arc<Inner>,
    initial: Arc<Cluster>,
    debounce: Duration,
    /// Dropping the watcher ends the debounce thread (its channel disconnects).
    watcher: Option<RecommendedWatcher>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    opts: LoadOptions,
    /// The last good snapshot. The lock is held across a reload so reloads never
    /// interleave.
    current: Mutex<Arc<Cluster>>,
}

impl DirSource {
    /// Loads `dir` once. Fails when the directory cannot be read or holds an invalid
    /// manifest: there is no earlier state to fall back to.
    pub fn open(dir: &Path, debounce: Duration) -> Result<DirSource, SourceError> {
        DirSource::with_options(dir, LoadOptions::default(), debounce)
    }

    pub fn with_options(
        dir: &Path,
        opts: LoadOptions,
        debounce: Duration,
    ) -> Result<DirSource, SourceError> {
        let cluster = Arc::new(load(dir, &opts).map_err(|source| SourceError::Load {
            dir: dir.to_path_buf(),
            source,
        })?);
        Ok(DirSource {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                opts,
                current: Mutex::new(cluster.clone()),
            }),
            initial: cluster,
            debounce,
            watcher: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The last good snapshot.
    pub fn snapshot(&self) -> Arc<Cluster> {
        self.inner.snapshot()
    }

    /// Reloads the directory now and returns what changed: `None` when nothing did,
    /// `Changes` (and the snapshot advances) or `Error` (and the snapshot stays). The
    /// watcher calls this after each debounced burst of file events.
    pub fn reload(&self) -> Option<SourceEvent> {
        self.inner.reload()
    }

    /// Labels, named ports and workload of pod `namespace/pod` as the manifests give them.
    pub fn pod_labels(&self, namespace: &str, pod: &str) -> Option<PodInfo> {
        let snap = self.inner.snapshot();
        snap.endpoints
            .get(&Endpoint::pod_key(namespace, pod))
            .map(PodInfo::of)
    }
}

impl PolicySource for DirSource {
    fn describe(&self) -> String {
        format!("directory {}", self.inner.dir.display())
    }

    fn initial(&self) -> Arc<Cluster> {
        self.initial.clone()
    }

    fn current(&self) -> Arc<Cluster> {
        self.snapshot()
    }

    fn subscribe(&mut self) -> Result<mpsc::Receiver<SourceEvent>, SourceError> {
        if self.watcher.is_some() {
            return Err(SourceError::AlreadySubscribed {
                dir: self.inner.dir.clone(),
            });
        }
        let (raw_tx, raw_rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let relevant = match &res {
                Ok(ev) => is_relevant(ev),
                // A watcher error (e.g. inotify queue overflow) may hide changes:
                // reload to be sure.
                Err(_) => true,
            };
            if relevant {
                // The receiver is gone only when the thread ended; nothing to do then.
                let _ = raw_tx.send(());
            }
        })
        .map_err(|source| SourceError::Watch {
            dir: self.inner.dir.clone(),
            source,
        })?;
        watcher
            .watch(&self.inner.dir, RecursiveMode::Recursive)
            .map_err(|source| SourceError::Watch {
                dir: self.inner.dir.clone(),
                source,
            })?;

        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        // Changes made before the watch was in place are caught by one reload now.
        if let Some(ev) = self.inner.reload() {
            // The channel is fresh and has room.
            let _ = tx.try_send(ev);
        }
        let inner = self.inner.clone();
        let debounce = self.debounce;
        std::thread::Builder::new()
            .name("palisade-dirsource".into())
            .spawn(move || debounce_loop(&inner, debounce, &raw_rx, &tx))
            .map_err(|source| SourceError::Thread { source })?;
        self.watcher = Some(watcher);
        Ok(rx)
    }

    fn pod_info(&self, namespace: &str, pod: &str) -> Option<PodInfo> {
        self.pod_labels(namespace, pod)
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Cluster> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn reload(&self) -> Option<SourceEvent> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match load(&self.dir, &self.opts) {
            Ok(new) => {
                let changes = diff_clusters(&current, &new);
                if changes.is_empty() {
                    // Services or report-only differences: keep the newer snapshot anyway.
                    *current = Arc::new(new);
                    return None;
                }
                *current = Arc::new(new);
                Some(SourceEvent::Changes(changes))
            }
            Err(e) => Some(SourceEvent::Error(format!(
                "manifest reload failed, still enforcing the previous policy: {e}"
            ))),
        }
    }
}

fn load(dir: &Path, opts: &LoadOptions) -> Result<Cluster, LoadError> {
    manifest::load_paths(&[dir.to_path_buf()], opts).map(|l| l.cluster)
}

/// Waits for a file event, then for `debounce` of quiet, then reloads once. Ends when the
/// watcher is dropped or the event receiver is gone.
fn debounce_loop(
    inner: &Inner,
    debounce: Duration,
    raw: &std::sync::mpsc::Receiver<()>,
    tx: &mpsc::Sender<SourceEvent>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    while raw.recv().is_ok() {
        loop {
            match raw.recv_timeout(debounce) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if let Some(ev) = inner.reload()
            && tx.blocking_send(ev).is_err()
        {
            return;
        }
    }
}

/// Whether a file event can change what `load_paths` reads. Reads and editor scratch files
/// (`.foo.swp`, `foo~`, vim's `4913`) do not; anything else, including directory renames,
/// does.
fn is_relevant(ev: &notify::Event) -> bool {
    if matches!(ev.kind, EventKind::Access(_)) {
        return false;
    }
    if ev.paths.is_empty() {
        return true;
    }
    ev.paths.iter().any(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let scratch = name.starts_with('.')
            || name.ends_with('~')
            || name.ends_with(".swp")
            || name.ends_with(".swx")
            || name == "4913";
        !scratch
    })
}

/// Policy equality for diffs: `origin` (file and document, for messages) is left out, so
/// moving a policy between files or documents does not recompile anything.
fn same_policy(a: &Policy, b: &Policy) -> bool {
    a.namespace == b.namespace
        && a.name == b.name
        && a.pod_selector == b.pod_selector
        && a.ingress == b.ingress
        && a.egress == b.egress
}

/// The changes that turn `old` into `new`: upserts of new or modified namespaces, policies
/// and endpoints, then deletes of the ones that are gone. Services are not part of
/// [`Change`] and are not compared; a policy that only moved to another file is unchanged.
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
    for key in old.endpoints.keys() {
        if !new.endpoints.contains_key(key) {
            out.push(Change::DeleteEndpoint(key.clone()));
        }
    }
    for (ns, name) in old.policies.keys() {
        if !new.policies.contains_key(&(ns.clone(), name.clone())) {
            out.push(Change::DeletePolicy(PolicyRef {
                namespace: ns.clone(),
                name: name.clone(),
            }));
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
mod tests {
    use std::time::Instant;

    use super::*;

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "palisade-source-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const NS: &str =
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    team: a\n";

    fn pod(name: &str, app: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    app: {app}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - name: http\n      containerPort: 8080\nstatus:\n  podIPs:\n  - ip: {ip}\n"
        )
    }

    fn deny(name: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"
        )
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    fn kinds(changes: &[Change]) -> Vec<String> {
        let mut v: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::UpsertNamespace(n) => format!("+ns {}", n.name),
                Change::DeleteNamespace(n) => format!("-ns {n}"),
                Change::UpsertEndpoint(e) => format!("+ep {}", e.key),
                Change::DeleteEndpoint(k) => format!("-ep {k}"),
                Change::UpsertPolicy(p) => format!("+np {}/{}", p.namespace, p.name),
                Change::DeletePolicy(r) => format!("-np {r}"),
            })
            .collect();
        v.sort();
        v
    }

    fn changes(ev: Option<SourceEvent>) -> Vec<String> {
        match ev {
            Some(SourceEvent::Changes(c)) => kinds(&c),
            Some(SourceEvent::Error(e)) => panic!("unexpected error: {e}"),
            None => Vec::new(),
        }
    }

    #[test]
    fn diff_of_equal_clusters_is_empty() {
        let a = manifest::load_str(
            "a.yaml",
            &format!("{NS}---\n{}", pod("web", "web", "10.0.0.1")),
            &LoadOptions::default(),
        )
        .unwrap()
        .cluster;
        assert!(diff_clusters(&a, &a.clone()).is_empty());
        assert_eq!(diff_clusters(&Cluster::default(), &a).len(), 2);
        assert_eq!(
            kinds(&diff_clusters(&a, &Cluster::default())),
            vec!["-ep shop/web", "-ns shop"]
        );
    }

    #[test]
    fn reload_diffs_policies_pods_and_namespaces() {
        let d = TempDir::new("diff");
        write(&d.0, "00-ns.yaml", NS);
        write(&d.0, "10-pods.yaml", &pod("web", "web", "10.0.0.1"));
        write(&d.0, "20-np.yaml", &deny("default-deny"));
        let src = DirSource::open(&d.0, Duration::from_millis(10)).unwrap();
        assert_eq!(src.initial().policies.len(), 1);
        assert!(src.reload().is_none(), "no change, no event");

        // Modify a policy, add one.
        write(
            &d.0,
            "20-np.yaml",
            &format!(
                "{}---\n{}",
                deny("default-deny").replace("[Ingress]", "[Ingress, Egress]"),
                deny("second")
            ),
        );
        assert_eq!(
            changes(src.reload()),
            vec!["+np shop/default-deny", "+np shop/second"]
        );
        // Remove one; `second` moves from document 2 to 1, which is no change.
        write(&d.0, "20-np.yaml", &deny("second"));
        assert_eq!(changes(src.reload()), vec!["-np shop/default-deny"]);

        // Pods: relabel one, add one, then delete the file.
        write(
            &d.0,
            "10-pods.yaml",
            &format!(
                "{}---\n{}",
                pod("web", "web2", "10.0.0.1"),
                pod("db", "db", "10.0.0.2")
            ),
        );
        assert_eq!(changes(src.reload()), vec!["+ep shop/db", "+ep shop/web"]);
        assert_eq!(
            src.pod_labels("shop", "web")
                .unwrap()
                .labels
                .get("app")
                .map(String::as_str),
            Some("web2")
        );
        let info = src.pod_info("shop", "db").unwrap();
        assert_eq!(info.named_ports[0].name, "http");
        assert_eq!(info.named_ports[0].port, 8080);
        assert!(src.pod_labels("shop", "nope").is_none());
        std::fs::remove_file(d.0.join("10-pods.yaml")).unwrap();
        assert_eq!(changes(src.reload()), vec!["-ep shop/db", "-ep shop/web"]);

        // Namespace labels change; then the namespace goes (the policy still implies it,
        // undeclared).
        write(&d.0, "00-ns.yaml", &NS.replace("team: a", "team: b"));
        assert_eq!(changes(src.reload()), vec!["+ns shop"]);
        std::fs::remove_file(d.0.join("00-ns.yaml")).unwrap();
        assert_eq!(changes(src.reload()), vec!["+ns shop"]);
        assert!(!src.snapshot().namespaces["shop"].declared);
        std::fs::remove_file(d.0.join("20-np.yaml")).unwrap();
        assert_eq!(changes(src.reload()), vec!["-np shop/second", "-ns shop"]);
    }

    #[test]
    fn broken_manifest_keeps_previous_snapshot() {
        let d = TempDir::new("broken");
        write(&d.0, "np.yaml", &deny("default-deny"));
        let src = DirSource::open(&d.0, Duration::from_millis(10)).unwrap();
        let before = src.snapshot();

        write(
            &d.0,
            "np.yaml",
            "apiVersion: v1\nkind: [unclosed\n  foo: {\n",
        );
        match src.reload() {
            Some(SourceEvent::Error(e)) => {
                assert!(e.contains("np.yaml"), "{e}");
                assert!(
                    e.contains(":2:") || e.contains(":3:") || e.contains(":4:"),
                    "line in {e}"
                );
                assert!(e.contains("previous policy"), "{e}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(*src.snapshot(), *before, "previous snapshot kept");

        // An invalid (well-formed) policy also keeps the snapshot.
        write(
            &d.0,
            "np.yaml",
            &deny("default-deny").replace("podSelector: {}", "podSelector: {}\n  bogus: 1"),
        );
        assert!(matches!(src.reload(), Some(SourceEvent::Error(e)) if e.contains("np.yaml")));
        assert_eq!(*src.snapshot(), *before);

        // A fixed file is diffed against the last good snapshot.
        write(
            &d.0,
            "np.yaml",
            &format!("{}---\n{}", deny("default-deny"), deny("other")),
        );
        assert_eq!(changes(src.reload()), vec!["+np shop/other"]);
    }

    #[test]
    fn open_fails_on_bad_initial_input() {
        let d = TempDir::new("badinit");
        write(&d.0, "np.yaml", "kind: [\n");
        let err = DirSource::open(&d.0, Duration::from_millis(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("np.yaml"), "{err}");
    }

    #[test]
    fn watcher_delivers_debounced_changes_and_errors() {
        let d = TempDir::new("watch");
        std::fs::create_dir_all(d.0.join("sub")).unwrap();
        write(&d.0, "np.yaml", &deny("a"));
        let mut src = DirSource::open(&d.0, Duration::from_millis(100)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut rx = src.subscribe().unwrap();
        assert!(matches!(
            src.subscribe(),
            Err(SourceError::AlreadySubscribed { .. })
        ));

        let next = |rx: &mut mpsc::Receiver<SourceEvent>| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("event within 10 s")
                    .expect("channel open")
            })
        };

        // A save storm: several writes in quick succession, one batch.
        let start = Instant::now();
        for i in 0..5 {
            write(&d.0.join("sub"), "np2.yaml", &deny(&format!("b{i}")));
        }
        let ev = next(&mut rx);
        let got = match ev {
            SourceEvent::Changes(c) => kinds(&c),
            SourceEvent::Error(e) => panic!("{e}"),
        };
        // Depending on timing the first writes may land in their own batch; the final
        // state is what counts.
        assert!(
            got.contains(&"+np shop/b4".to_string())
                || src
                    .snapshot()
                    .policies
                    .contains_key(&("shop".into(), "b4".into())),
            "{got:?}"
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        // Drain until the snapshot has settled on b4.
        let deadline = Instant::now() + Duration::from_secs(10);
        while src.snapshot().policies.len() != 2 && Instant::now() < deadline {
            let _ = next(&mut rx);
        }
        assert_eq!(src.snapshot().policies.len(), 2);
        while rx.try_recv().is_ok() {}

        write(&d.0, "np.yaml", "kind: [\n");
        match next(&mut rx) {
            SourceEvent::Error(e) => assert!(e.contains("np.yaml"), "{e}"),
            SourceEvent::Changes(c) => panic!("expected error, got {:?}", kinds(&c)),
        }
        assert_eq!(src.snapshot().policies.len(), 2);
        // The fix is diffed against the last good snapshot.
        write(&d.0, "np.yaml", &format!("{}---\n{}", deny("a"), deny("c")));
        match next(&mut rx) {
            SourceEvent::Changes(c) => assert_eq!(kinds(&c), vec!["+np shop/c"]),
            SourceEvent::Error(e) => panic!("{e}"),
        }
        // Editor scratch files alone do not reload (and would produce no diff anyway).
        write(&d.0, ".np.yaml.swp", "garbage");
        let quiet = rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(500), rx.recv()).await });
        assert!(quiet.is_err(), "no event expected, got {quiet:?}");
    }
}
