//! The privileged-test gate, the one every crate's tests use (docs/testing.md): a test that
//! needs root and network namespaces fails under `CI=true` (also `1`/`yes`) when it cannot
//! run, and may skip, saying why, only outside CI.

use std::fmt::Display;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, unshare};
use nix::unistd::geteuid;

/// Whether the environment says a skipped privileged test must count as a failure
/// (`CI=true`, also `1`/`yes`, any case).
pub fn ci_requires_privileged() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// Why privileged tests cannot run here, or `None` when they can: root, iproute2, and the
/// kernel allows a new network namespace.
pub fn privileged_unavailable_reason() -> Option<String> {
    if !geteuid().is_root() {
        return Some(format!("needs root (euid {})", geteuid()));
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => return Some(format!("`ip -V` failed ({status})")),
        Err(e) => return Some(format!("iproute2 `ip` not runnable: {e}")),
    }
    // A throwaway thread: unsharing changes only that thread's namespace, which dies with it.
    let probe = std::thread::spawn(|| unshare(CloneFlags::CLONE_NEWNET));
    match probe.join() {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("cannot create a network namespace: {e}")),
        Err(_) => Some("network namespace probe thread panicked".to_owned()),
    }
}

/// True when privileged tests can run. Otherwise applies [`skip_or_fail`] and returns false:
/// `if !require_privileged("datapath e2e") { return; }`.
pub fn require_privileged(what: &str) -> bool {
    match privileged_unavailable_reason() {
        None => true,
        Some(why) => {
            skip_or_fail(what, &why);
            false
        }
    }
}

/// A privileged test cannot run: panics (fails the test) under `CI=true`, else prints
/// `skipped: <what>: <why>` so the caller can return.
#[expect(
    clippy::panic,
    reason = "failing the calling test under CI is the point of this helper"
)]
pub fn skip_or_fail(what: &str, why: &dyn Display) {
    if ci_requires_privileged() {
        panic!("{what}: privileged test cannot run under CI=true: {why}");
    }
    eprintln!("skipped: {what}: {why}");
}
