//! [`DirSource`]: a directory of manifests, loaded with the policy core's loader and watched
//! (debounced) for changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use policy_compiler::manifest::{self, LoadError, LoadOptions};
use policy_compiler::model::{Cluster, Endpoint};

use super::{PodInfo, PolicySource, SourceError, SourceEvent, diff_clusters};

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
    /// What `notes` answers, set at the end of each load: never waits for a reload.
    notes: Mutex<Vec<String>>,
}

impl DirSource {
    /// Loads `dir` once, strictly (a document the loader cannot model is an error) and
    /// with the default limits. Fails when `dir` is not a directory, cannot be read or
    /// holds an invalid manifest: there is no earlier state to fall back to.
    pub fn open(dir: &Path, debounce: Duration) -> Result<DirSource, SourceError> {
        let opts = LoadOptions {
            strict_kinds: true,
            ..LoadOptions::default()
        };
        DirSource::with_options(dir, opts, debounce)
    }

    pub fn with_options(
        dir: &Path,
        opts: LoadOptions,
        debounce: Duration,
    ) -> Result<DirSource, SourceError> {
        // A file here would load as an empty policy set (allow-all).
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(SourceError::NotADirectory {
                    dir: dir.to_path_buf(),
                });
            }
        }
        let cluster = Arc::new(load(dir, &opts).map_err(|source| SourceError::Load {
            dir: dir.to_path_buf(),
            source,
        })?);
        warn_if_no_policies(dir, &cluster);
        Ok(DirSource {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                opts,
                current: Mutex::new(cluster.clone()),
                notes: Mutex::new(notes(dir, &cluster, None)),
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

    fn notes(&self) -> Vec<String> {
        self.inner
            .notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
        let result = load(&self.dir, &self.opts);
        let standing = match &result {
            Ok(new) => notes(&self.dir, new, None),
            Err(e) => notes(&self.dir, &current, Some(e)),
        };
        *self.notes.lock().unwrap_or_else(PoisonError::into_inner) = standing;
        match result {
            Ok(new) => {
                warn_if_no_policies(&self.dir, &new);
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

/// An empty policy set is a valid result (every pod unisolated: allow-all), but rarely
/// the intent: say so loudly each time the source arrives at it.
fn warn_if_no_policies(dir: &Path, cluster: &Cluster) {
    if cluster.policies.is_empty() {
        tracing::warn!(
            source.dir = %dir.display(),
            "no policies: the manifest directory holds no NetworkPolicy, so no pod is isolated and all traffic is allowed"
        );
    }
}

/// The source's standing problems for `status`: no policies in force, or the last reload
/// failed (`failed`).
fn notes(dir: &Path, in_force: &Cluster, failed: Option<&LoadError>) -> Vec<String> {
    let mut out = Vec::new();
    if in_force.policies.is_empty() {
        out.push(format!(
            "no policies: {} holds no NetworkPolicy (all traffic is allowed)",
            dir.display()
        ));
    }
    if let Some(e) = failed {
        out.push(format!(
            "manifest reload failed, still enforcing the previous policy: {e}"
        ));
    }
    out
}

/// Loads the directory; the loader's warnings (kinds not modelled, equal admin priorities, a
/// `nodes` peer that matches no address, ...) go to the agent's log.
fn load(dir: &Path, opts: &LoadOptions) -> Result<Cluster, LoadError> {
    let loaded = manifest::load_paths(&[dir.to_path_buf()], opts)?;
    for w in &loaded.report.warnings {
        tracing::warn!(manifests.dir = %dir.display(), warning = %w, "manifest warning");
    }
    Ok(loaded.cluster)
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
