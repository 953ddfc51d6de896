//! Named network namespaces (`ip netns`) and running code inside them.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::link::run_ip;
use super::{NodeError, Result};

/// Where `ip netns add` puts the namespace files.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted on drop (errors are logged, not raised, so a panicking
/// test still cleans up).
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
    path: PathBuf,
    armed: bool,
}

impl NetnsGuard {
    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the namespace now, reporting errors.
    pub fn delete(mut self) -> Result<()> {
        self.armed = false;
        delete_netns(&self.name)
    }

    /// Keeps the namespace after the guard is gone (e.g. to inspect a failure by hand).
    pub fn leak(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = delete_netns(&self.name)
        {
            eprintln!("palisade node cleanup: {e}");
        }
    }
}

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates a named namespace with `ip netns add` (so other tools see it), fails if it exists.
pub fn create_netns(name: &str) -> Result<NetnsGuard> {
    run_ip(&["netns", "add", name])?;
    Ok(NetnsGuard {
        name: name.to_owned(),
        path: netns_path(name),
        armed: true,
    })
}

/// Deletes a named namespace; a namespace that does not exist is not an error (cleanup paths
/// call this more than once).
///
/// The kernel frees the namespace, and the interfaces in it, once nothing references it any
/// more: sockets or processes still inside keep it alive, unnamed.
pub fn delete_netns(name: &str) -> Result<()> {
    if !netns_exists(name) {
        return Ok(());
    }
    run_ip(&["netns", "delete", name]).map(drop)
}

/// Whether `/run/netns/<name>` exists.
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Names of all named namespaces.
pub fn list_netns() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NodeError::OpenNetns {
                path: NETNS_DIR.into(),
                source,
            });
        }
    };
    let mut names: Vec<String> = dir
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Pids of processes whose network namespace is `name` (`ip netns pids`).
pub fn netns_pids(name: &str) -> Result<Vec<u32>> {
    if !netns_exists(name) {
        return Ok(Vec::new());
    }
    let out = run_ip(&["netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// SIGKILLs every process inside `name` (never this process): what a crashed or careless test
/// left there would otherwise keep the namespace alive after deletion.
pub fn kill_netns_processes(name: &str) -> Result<()> {
    let me = std::process::id();
    for pid in netns_pids(name)? {
        if pid == me {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        // ESRCH: it exited in the meantime, which is what we wanted.
        if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGKILL)
            && e != nix::errno::Errno::ESRCH
        {
            eprintln!("palisade node cleanup: kill {pid} in {name}: {e}");
        }
    }
    Ok(())
}

/// Runs `f` on a new thread that first entered the network namespace at `path`, and returns
/// its result.
///
/// The calling thread never changes namespace. Sockets created by `f` stay in the namespace
/// they were created in, so `f` may return them for use from any thread. A panic in `f` is
/// resumed in the caller, so test assertions inside `f` behave as usual.
///
/// Uses `setns(2)` rather than `ip netns exec`, which would also remount `/sys`
/// (datapath.md §5.6); the mount namespace stays the caller's.
pub fn run_in_netns<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(path).map_err(|source| NodeError::OpenNetns {
        path: path.to_owned(),
        source,
    })?;
    let thread_name = format!(
        "netns:{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .spawn_scoped(scope, move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NodeError::EnterNetns {
                    path: path.to_owned(),
                    source,
                })?;
                drop(file);
                Ok(f())
            })
            .map_err(|source| NodeError::Thread {
                path: path.to_owned(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}
