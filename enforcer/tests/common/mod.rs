//! Shared fixtures for the enforcer's privileged tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use palisade_enforcer::datapath::{Datapath, LoadOptions};

/// Whether this privileged test can run: the shared gate (`palisade_testkit::privileged`).
/// Under `CI=true` a test that cannot run fails with the reason; elsewhere it prints why and
/// the caller returns.
pub fn privileged(what: &str) -> bool {
    palisade_testkit::require_privileged(what)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A private bpffs mount for one test: the datapath pins live and die with it, so no
/// test sees another's conntrack or events, and nothing is left behind.
#[derive(Debug)]
pub struct PrivateBpffs {
    pub root: PathBuf,
}

impl PrivateBpffs {
    pub fn new(tag: &str) -> PrivateBpffs {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!(
            "/run/palisade-test/bpf-{tag}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&root).unwrap();
        nix::mount::mount(
            Some("bpffs"),
            &root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount bpffs on {}: {e}", root.display()));
        PrivateBpffs { root }
    }

    pub fn load(&self) -> Datapath {
        Datapath::load(&LoadOptions {
            pin_root: self.root.clone(),
            mount_if_missing: false,
            local_delivery: true,
        })
        .unwrap_or_else(|e| panic!("load datapath: {e}"))
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.root);
    }
}
pub mod hubble;
pub mod kube;
pub mod kube_proxy;
pub mod traffic;
