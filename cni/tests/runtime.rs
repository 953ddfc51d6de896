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

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::real::{POLICY, busybox_rootfs, can_run, missing_programs, start_enforcer};
use common::{FakeEnforcer, Mode, Netns, TempDir, node_uplink, privileged};
use palisade_api::Request;

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
        for d in ["cni/bin", "cni/net.d", "podman"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::copy(common::PLUGIN, t.join("cni/bin/palisade-cni")).unwrap();
        busybox_rootfs(&t.join("rootfs"));
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
    let missing = missing_programs(&["podman", "runc", "conmon", "nsenter", "chroot"]);
    let busybox = Path::new("/bin/busybox").exists();
    let why = (!missing.is_empty() || !busybox).then(|| {
        format!(
            "missing {missing:?}{} (./palisade installs them)",
            if busybox { "" } else { " and /bin/busybox" }
        )
    });
    can_run(test, why)
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
        Err(why) => {
            palisade_testkit::skip_or_fail(
                "podman_policy_with_real_enforcer: real enforcer unavailable",
                &why,
            );
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
