//! Fixtures for the tests that use real programs: a busybox rootfs for containers, and the
//! REAL enforcer (`palisade-enforcer run`) with a small policy. Used by tests/runtime.rs
//! (podman) and tests/cri.rs (containerd CRI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_api::{Client, Request, Response};

use super::{Netns, TempDir, sh};

/// Fills `root` with busybox-static and its applet links, plus `/www/index.html`
/// ("palisade") for `httpd -h /www`.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    // A child forked by a parallel test between the copy's open and close inherits the
    // write descriptor until it execs, and exec of the copy fails with ETXTBSY meanwhile.
    let mut out = sh(
        "chroot",
        &[root.to_str().unwrap(), "/bin/busybox", "--install", "-s"],
    );
    for _ in 0..20 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("Text file busy")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        out = sh(
            "chroot",
            &[root.to_str().unwrap(), "/bin/busybox", "--install", "-s"],
        );
    }
    assert!(
        out.status.success(),
        "busybox --install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("www/index.html"), "palisade\n").unwrap();
}

/// Programs from `bins` that are not on PATH.
pub fn missing_programs<'a>(bins: &[&'a str]) -> Vec<&'a str> {
    bins.iter()
        .copied()
        .filter(|b| {
            sh("sh", &["-c", &format!("command -v {b}")])
                .stdout
                .is_empty()
        })
        .collect()
}

/// Whether a test that needs real programs can run: `why` is None when it can. Under
/// `CI=true` a test that cannot run fails; elsewhere it prints why and the caller returns.
pub fn can_run(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return true };
    palisade_testkit::skip_or_fail(test, &why);
    false
}

/// The real enforcer, running until dropped.
#[derive(Debug)]
pub struct EnforcerGuard {
    child: Child,
    /// The bpffs the enforcer mounts for its pins; unmounted on drop so `dir` can go.
    pin_root: PathBuf,
    _dir: TempDir,
}

impl Drop for EnforcerGuard {
    fn drop(&mut self) {
        self.stop();
        let _ = nix::mount::umount2(&self.pin_root, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl EnforcerGuard {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn enforcer_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_ENFORCER_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("palisade-enforcer"))
        .find(|p| p.exists())
}

/// Starts the real enforcer on `node` with the policy in `manifests`, listening on
/// `socket`, and waits until it reports ready. Err says why it cannot run.
pub fn start_enforcer(
    manifests: &Path,
    socket: &Path,
    node: &Netns,
) -> Result<EnforcerGuard, String> {
    let bin = enforcer_binary()
        .ok_or("palisade-enforcer is not built (cargo build -p palisade-enforcer)")?;
    let dir = TempDir::new("enforcer");
    let pin_root = dir.0.join("bpffs");
    std::fs::create_dir_all(&pin_root).map_err(|e| e.to_string())?;
    let mut child = Command::new(&bin)
        .arg("run")
        .arg("--manifests")
        .arg(manifests)
        .arg("--pin-root")
        .arg(&pin_root)
        .arg("--socket")
        .arg(socket)
        .arg("--verdict-log")
        .arg(dir.0.join("verdicts.jsonl"))
        .arg("--netns")
        .arg(node.path())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = nix::mount::umount2(&pin_root, nix::mount::MntFlags::MNT_DETACH);
            return Err(format!(
                "{} run exited with {status} before becoming ready",
                bin.display()
            ));
        }
        if let Ok(Response::Status { ready: true, .. }) =
            Client::call(socket, Duration::from_secs(2), &Request::Status)
        {
            return Ok(EnforcerGuard {
                child,
                pin_root,
                _dir: dir,
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = nix::mount::umount2(&pin_root, nix::mount::MntFlags::MNT_DETACH);
            return Err("enforcer not ready after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub const POLICY: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: server, namespace: default, labels: { app: server } }
spec: { containers: [ { name: httpd, image: busybox, ports: [ { name: http, containerPort: 8080 } ] } ] }
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: default, labels: { app: client } }
spec: { containers: [ { name: c, image: busybox } ] }
---
apiVersion: v1
kind: Pod
metadata: { name: intruder, namespace: default, labels: { app: intruder } }
spec: { containers: [ { name: c, image: busybox } ] }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: default-deny, namespace: default }
spec: { podSelector: {}, policyTypes: [ Ingress ] }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: allow-client-to-server, namespace: default }
spec:
  podSelector: { matchLabels: { app: server } }
  ingress:
    - from: [ { podSelector: { matchLabels: { app: client } } } ]
      ports: [ { port: 8080, protocol: TCP } ]
"#;
