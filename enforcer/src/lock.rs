//! One agent per pin root and state dir: an exclusive `flock` taken before the agent
//! touches anything.
//!
//! Two locks, both held for the agent's lifetime and released by the kernel when the
//! process ends (also on SIGKILL, so a crash never leaves a stale lock):
//!
//! - the pin root's: `/run/palisade-locks/pin<escaped pin root>.lock`. Not a file in the
//!   pin root: the pin root is a bpffs (no regular files) that the agent may mount over the
//!   directory, which would put a second agent on a different inode. The path is the
//!   canonical pin root when it exists, else the configured (absolute) one.
//! - the state dir's: `<state_dir>/enforcer.lock` (registrations live there).
//!
//! A second agent finds a lock held, names the holder's pid (written into the lock file),
//! and exits with [`EXIT_LOCKED`] having changed nothing: no mount, no map, no socket.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the pin-root locks live.
pub const PIN_LOCK_DIR: &str = "/run/palisade-locks";

/// Exit status of `run` when another agent holds a lock.
pub const EXIT_LOCKED: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another enforcer (pid {holder}) already runs on {what} {} (lock {} is held); this one exits without touching anything",
        path.display(),
        lock.display()
    )]
    Held {
        what: &'static str,
        path: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("{}: cannot take the lock: {source}", lock.display())]
    Io {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held locks; dropping this releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _locks: Vec<Flock<File>>,
    pub paths: Vec<PathBuf>,
}

impl InstanceLock {
    /// Takes the pin root's lock (in [`PIN_LOCK_DIR`]) and the state dir's.
    pub fn acquire(pin_root: &Path, state_dir: &Path) -> Result<InstanceLock, LockError> {
        InstanceLock::acquire_in(Path::new(PIN_LOCK_DIR), pin_root, state_dir)
    }

    /// As [`InstanceLock::acquire`], with the pin-root locks in `lock_dir`.
    pub fn acquire_in(
        lock_dir: &Path,
        pin_root: &Path,
        state_dir: &Path,
    ) -> Result<InstanceLock, LockError> {
        let pin = std::fs::canonicalize(pin_root).unwrap_or_else(|_| pin_root.to_path_buf());
        let pin_lock = lock_dir.join(format!("pin{}.lock", escape(&pin)));
        let state_lock = state_dir.join("enforcer.lock");
        let a = take(&pin_lock, "pin root", pin_root)?;
        let b = take(&state_lock, "state dir", state_dir)?;
        Ok(InstanceLock {
            _locks: vec![a, b],
            paths: vec![pin_lock, state_lock],
        })
    }
}

fn take(lock: &Path, what: &'static str, path: &Path) -> Result<Flock<File>, LockError> {
    let io = |source| LockError::Io {
        lock: lock.to_path_buf(),
        source,
    };
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut f) => {
            // The holder's pid, for the message a second agent prints.
            f.set_len(0).map_err(io)?;
            f.rewind().map_err(io)?;
            writeln!(f, "{}", std::process::id()).map_err(io)?;
            Ok(f)
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            Err(LockError::Held {
                what,
                path: path.to_path_buf(),
                lock: lock.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown".into()
                } else {
                    holder.to_string()
                },
            })
        }
        Err((_, e)) => Err(io(std::io::Error::from(e))),
    }
}

/// A path as one file name: `[A-Za-z0-9._-]` kept, anything else `%XX`; a name past 200
/// bytes keeps its tail and a hash of the whole path.
fn escape(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = p.as_os_str().as_bytes();
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 200 {
        // FNV-1a: stable across builds and runs.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let tail: String = out[out.len() - 150..].to_string();
        out = format!("{h:016x}-{tail}");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("palisade-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_lock_on_the_same_pin_root_or_state_dir_is_refused_and_named() {
        let d = tmp("second");
        let locks = d.join("locks");
        let pin = d.join("bpf");
        std::fs::create_dir_all(&pin).unwrap();
        let first = InstanceLock::acquire_in(&locks, &pin, &d.join("state-a")).unwrap();
        // Same pin root, other state dir.
        let err = InstanceLock::acquire_in(&locks, &pin, &d.join("state-b")).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                LockError::Held {
                    what: "pin root",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        // Same pin root spelt through a symlink.
        let link = d.join("bpf-link");
        std::os::unix::fs::symlink(&pin, &link).unwrap();
        assert!(InstanceLock::acquire_in(&locks, &link, &d.join("state-c")).is_err());
        // Other pin root, same state dir.
        let other = d.join("bpf2");
        let err = InstanceLock::acquire_in(&locks, &other, &d.join("state-a")).unwrap_err();
        assert!(
            matches!(
                err,
                LockError::Held {
                    what: "state dir",
                    ..
                }
            ),
            "{err}"
        );
        // Released on drop.
        drop(first);
        assert!(InstanceLock::acquire_in(&locks, &pin, &d.join("state-b")).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn long_paths_make_bounded_unique_names() {
        let a = escape(Path::new(&format!("/{}", "a".repeat(300))));
        let b = escape(Path::new(&format!("/{}b", "a".repeat(300))));
        assert!(a.len() <= 200 && b.len() <= 200);
        assert_ne!(a, b);
        assert_eq!(
            escape(Path::new("/sys/fs/bpf/palisade")),
            "%2Fsys%2Ffs%2Fbpf%2Fpalisade"
        );
    }
}
