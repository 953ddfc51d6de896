//! The plugin driven by a real container runtime: podman 4.3 with its CNI backend
//! (docs/cni.md, /work/shared/reference/cni-runtimes.md §4). podman runs inside a
//! test-owned node namespace (`nsenter --net`), so host-side veths, routes and sysctls land
//! there; its storage, config and plugin directories are the test's own.
//!
//! * `podman_lifecycle_with_test_double`: two containers get addresses from the plugin,
//!   talk over TCP, and removal releases the addresses and links. The enforcer is the
//!   TEST DOUBLE (no policy).
//! * `podman_policy_with_real_enforcer`: the same through the real enforcer
//!   (`start_enforcer`), with default-deny and one allow rule: the allowed client reaches the
//!   server, another container does not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{FakeEnforcer, Mode, Netns, TempDir, node_uplink, privileged, sh};
use palisade_cni::api::{Request, Response};
use palisade_cni::enforcer::Client;

/// A podman with its own storage and a conflist for our plugin, inside a node namespace.
struct Podman {
    dir: TempDir,
    node: Netns,
}

const NETWORK: &str = "pltest";

impl Podman {
    fn new(subnet: &str, socket: &Path) -> Podman {
        let dir = TempDir::new("podman");
        let node = Netns::new("plpn");
        node_uplink(&node);
        let t = &dir.0;
        for d in [
            "cni/bin",
            "cni/net.d",
            "podman",
            "rootfs/bin",
            "rootfs/sbin",
            "rootfs/usr/bin",
            "rootfs/usr/sbin",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::copy(common::PLUGIN, t.join("cni/bin/palisade-cni")).unwrap();
        std::fs::copy("/bin/busybox", t.join("rootfs/bin/busybox")).unwrap();
        assert!(
            sh(
                "chroot",
                &[
                    t.join("rootfs").to_str().unwrap(),
                    "/bin/busybox",
                    "--install",
                    "-s"
                ]
            )
            .status
            .success()
        );
        std::fs::write(t.join("rootfs/www/index.html"), "palisade\n").unwrap();
        // The conflist a DaemonSet installs (docs/cni.md), with test paths.
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["1.0.0", "1.1.0"],
            "name": NETWORK,
            "plugins": [{
                "type": "palisade-cni",
                "ipam": { "type": "palisade", "subnet": subnet, "dataDir": t.join("ipam") },
                "enforcerSocket": socket,
            }],
        });
        std::fs::write(
            t.join("cni/net.d/10-palisade.conflist"),
            conflist.to_string(),
        )
        .unwrap();
        std::fs::write(
            t.join("podman/containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\"]\nnetwork_config_dir = \"{conf}\"\n\
                 default_network = \"{NETWORK}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"runc\"\n[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n",
                bin = t.join("cni/bin").display(),
                conf = t.join("cni/net.d").display(),
            ),
        )
        .unwrap();
        Podman { dir, node }
    }

    fn podman(&self, args: &[&str]) -> Output {
        let t = &self.dir.0;
        let s = |p: &str| t.join(p).display().to_string();
        Command::new("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .arg("podman")
            .args([
                "--root",
                &s("podman/storage"),
                "--runroot",
                &s("podman/run"),
                "--tmpdir",
                &s("podman/tmp"),
            ])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", t.join("podman/containers.conf"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn start(&self, name: &str, argv: &[&str]) {
        let rootfs = self.dir.0.join("rootfs").display().to_string();
        let mut args = vec!["run", "-d", "--name", name, "--rootfs", rootfs.as_str()];
        args.extend_from_slice(argv);
        self.podman_ok(&args);
    }

    fn ip_of(&self, name: &str) -> String {
        self.podman_ok(&[
            "inspect",
            name,
            "--format",
            &format!("{{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}"),
        ])
    }

    /// HTTP GET from container `from` to `ip:port`; the response, or None on failure.
    fn http(&self, from: &str, ip: &str, port: u16) -> Option<String> {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
        let out = self.podman(&["exec", from, "sh", "-c", &script]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && body.contains("200 OK")).then_some(body)
    }

    fn allocations(&self) -> usize {
        let Ok(b) = std::fs::read(self.dir.0.join("ipam").join(NETWORK).join("state.json")) else {
            return 0;
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["allocations"].as_array().map_or(0, Vec::len)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["system", "prune", "--force"]);
    }
}

fn runtime_available(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    let missing: Vec<&str> = ["podman", "runc", "conmon", "nsenter", "chroot"]
        .into_iter()
        .filter(|b| {
            sh("sh", &["-c", &format!("command -v {b}")])
                .stdout
                .is_empty()
        })
        .collect();
    let busybox = Path::new("/bin/busybox").exists();
    if missing.is_empty() && busybox {
        return true;
    }
    let why = format!(
        "missing {missing:?}{} (./palisade installs them)",
        if busybox { "" } else { " and /bin/busybox" }
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run under CI=true: {why}");
    }
    eprintln!("{test}: skipped: {why}");
    false
}

#[test]
fn podman_lifecycle_with_test_double() {
    if !runtime_available("podman_lifecycle_with_test_double") {
        return;
    }
    let sock_dir = TempDir::new("sock");
    let socket = sock_dir.0.join("enforcer.sock");
    let enforcer = FakeEnforcer::start(&socket, Mode::Accept);
    let p = Podman::new("10.216.0.0/24", &socket);

    p.start(
        "server",
        &["/usr/sbin/httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    p.start("client", &["/bin/sleep", "600"]);
    let (server_ip, client_ip) = (p.ip_of("server"), p.ip_of("client"));
    assert!(
        server_ip.starts_with("10.216.0.") && client_ip.starts_with("10.216.0."),
        "{server_ip} {client_ip}"
    );
    assert_ne!(server_ip, client_ip);
    assert_eq!(p.allocations(), 2);
    assert_eq!(p.node.links_with_prefix("lxc").len(), 2);
    // podman passes the container name as K8S_POD_NAME and no namespace.
    let pods: Vec<String> = enforcer
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Request::Register(reg) => Some(format!("{}/{}", reg.namespace, reg.pod)),
            _ => None,
        })
        .collect();
    assert!(
        pods.contains(&"default/server".to_owned()) && pods.contains(&"default/client".to_owned()),
        "{pods:?}"
    );

    let body = p
        .http("client", &server_ip, 8080)
        .expect("client reaches server");
    assert!(body.contains("palisade"));

    p.podman_ok(&["rm", "--force", "--time", "0", "server", "client"]);
    assert_eq!(p.allocations(), 0, "removal releases the addresses");
    assert!(
        p.node.links_with_prefix("lxc").is_empty(),
        "removal deletes the host links"
    );
}

/// The real enforcer, running until dropped.
struct EnforcerGuard {
    child: Child,
    _dir: TempDir,
}

impl Drop for EnforcerGuard {
    fn drop(&mut self) {
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

fn enforcer_binary() -> Option<PathBuf> {
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
fn start_enforcer(manifests: &Path, socket: &Path, node: &Netns) -> Result<EnforcerGuard, String> {
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
    let client = Client::new(socket, Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{} run exited with {status} before becoming ready",
                bin.display()
            ));
        }
        if let Ok(Response::Status { ready: true, .. }) = client.call(&Request::Status) {
            return Ok(EnforcerGuard { child, _dir: dir });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("enforcer not ready after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const POLICY: &str = r#"
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

#[test]
fn podman_policy_with_real_enforcer() {
    if !runtime_available("podman_policy_with_real_enforcer") {
        return;
    }
    let work = TempDir::new("policy");
    let manifests = work.0.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("policy.yaml"), POLICY).unwrap();
    let socket = work.0.join("enforcer.sock");
    // The node namespace must exist before the enforcer attaches to it, so podman's comes first.
    let p = Podman::new("10.217.0.0/24", &socket);
    let _enforcer = match start_enforcer(&manifests, &socket, &p.node) {
        Ok(g) => g,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("real enforcer unavailable under CI=true: {why}")
        }
        Err(why) => {
            eprintln!("podman_policy_with_real_enforcer: skipped: {why}");
            return;
        }
    };

    // podman names become pod names in namespace "default": server, client, intruder.
    p.start(
        "server",
        &["/usr/sbin/httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    p.start("client", &["/bin/sleep", "600"]);
    p.start("intruder", &["/bin/sleep", "600"]);
    let server_ip = p.ip_of("server");
    assert_eq!(p.allocations(), 3);

    assert!(
        p.http("client", &server_ip, 8080).is_some(),
        "allowed: client -> server:8080"
    );
    assert!(
        p.http("intruder", &server_ip, 8080).is_none(),
        "denied: intruder -> server:8080"
    );

    p.podman_ok(&[
        "rm", "--force", "--time", "0", "server", "client", "intruder",
    ]);
    assert_eq!(p.allocations(), 0, "removal releases the addresses");
    assert!(p.node.links_with_prefix("lxc").is_empty());
}
