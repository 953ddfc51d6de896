//! Shared fixtures for the plugin's integration tests: root gating, RAII guards for network
//! namespaces and directories, a CNI runner, and a **test double** of the enforcer.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_api::{ErrorCode, Request, Response};
use serde_json::{Value, json};

pub mod real;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_palisade-cni");

/// Whether this privileged test can run: the shared gate (`palisade_testkit::privileged`).
/// Under `CI=true` a test that cannot run fails; elsewhere it prints why and the caller
/// returns.
pub fn privileged(test: &str) -> bool {
    palisade_testkit::require_privileged(test)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, short enough for netns and interfaces.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop with everything in it.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        sh_ok("ip", &["netns", "add", &name]);
        sh_ok("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip ARGS` inside; returns stdout, panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh_ok("ip", &all)
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    pub fn has_link(&self, name: &str) -> bool {
        sh("ip", &["-n", &self.name, "link", "show", "dev", name])
            .status
            .success()
    }

    /// Links whose name starts with `prefix`.
    pub fn links_with_prefix(&self, prefix: &str) -> Vec<String> {
        let out: Vec<Value> =
            serde_json::from_str(&self.ip(&["-j", "link", "show"])).unwrap_or_default();
        out.iter()
            .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Makes a bare namespace look like a node, as `testkit/src/node.rs` does: forwarding on
/// and the pods' gateway 169.254.1.1/32 on `lo`. The node then answers the pods' ARP for the
/// gateway (on a node without that address, proxy ARP answers because the default route
/// covers it).
pub fn node_uplink(node: &Netns) {
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    node.ip(&["addr", "add", "169.254.1.1/32", "dev", "lo"]);
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique(&format!("palisade-cni-{tag}-")));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the test double answers `Register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Refuse,
    NotReady,
    /// Read the request, never answer.
    Hang,
}

/// TEST DOUBLE of the enforcer's endpoint API: speaks `palisade_api` over a unix
/// socket and answers from a fixed mode. It programs nothing; the real-runtime and policy
/// tests use the real enforcer (`start_enforcer` in tests/runtime.rs).
#[derive(Debug)]
pub struct FakeEnforcer {
    pub socket: PathBuf,
    pub mode: Arc<Mutex<Mode>>,
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeEnforcer {
    pub fn start(socket: &Path, mode: Mode) -> FakeEnforcer {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, r, s) = (mode.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (m, r) = (m.clone(), r.clone());
                std::thread::spawn(move || serve(conn, &m, &r));
            }
        });
        FakeEnforcer {
            socket: socket.to_owned(),
            mode,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn registered(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                Request::Register(reg) => Some(reg.container_id.clone()),
                _ => None,
            })
            .collect()
    }
}

fn serve(conn: UnixStream, mode: &Mutex<Mode>, requests: &Mutex<Vec<Request>>) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let request = match palisade_api::decode_request(line.as_bytes()) {
            Ok(r) => r,
            Err(resp) => {
                let _ = writeln!(writer, "{}", serde_json::to_string(&resp).unwrap());
                continue;
            }
        };
        requests.lock().unwrap().push(request.clone());
        let mode = *mode.lock().unwrap();
        let response = match (&request, mode) {
            (_, Mode::Hang) => {
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            (Request::Register(reg), Mode::Accept) => Response::Registered {
                endpoint: format!("{}/{}", reg.namespace, reg.pod),
                identity: 256,
                ifindex: 1,
            },
            (Request::Register(_), Mode::Refuse) => Response::Error {
                code: ErrorCode::Datapath,
                message: "test double refuses".into(),
            },
            (Request::Register(_), Mode::NotReady) => Response::Error {
                code: ErrorCode::NotReady,
                message: "test double not ready".into(),
            },
            (Request::Deregister { .. }, _) => Response::Deregistered { existed: true },
            (Request::Status, m) => Response::Status {
                api_version: palisade_api::PROTOCOL_VERSION,
                endpoints: 0,
                ready: m != Mode::NotReady,
                reason: None,
                warnings: Vec::new(),
                maps: Vec::new(),
                verdict_log: None,
            },
        };
        if writeln!(writer, "{}", serde_json::to_string(&response).unwrap()).is_err() {
            return;
        }
    }
}

impl Drop for FakeEnforcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub json: Value,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "plugin failed: {}", self.stdout);
        self
    }

    /// Asserts a CNI error with `code` and returns its message.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(
            self.code,
            Some(0),
            "plugin succeeded, expected error {code}: {}",
            self.stdout
        );
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "wrong error: {}",
            self.stdout
        );
        assert!(
            self.json["cniVersion"].is_string() && self.json["msg"].is_string(),
            "{}",
            self.stdout
        );
        self.json["msg"].as_str().unwrap_or_default().to_owned()
    }
}

/// Runs the plugin binary with exactly `vars` (plus PATH), optionally inside `node`'s netns
/// (which then is the plugin's host namespace).
pub fn run_plugin(node: Option<&Netns>, vars: &[(&str, String)], stdin: &str) -> Run {
    let mut cmd = match node {
        Some(n) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", n.path().display())).arg(PLUGIN);
            c
        }
        None => Command::new(PLUGIN),
    };
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH")
                .unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin")),
        )
        .envs(vars.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    use std::os::unix::process::ExitStatusExt;
    Run {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout,
        json,
    }
}

/// A test network: node netns, IPAM dir, enforcer socket path and a config.
#[derive(Debug)]
pub struct TestNet {
    pub node: Netns,
    pub dir: TempDir,
    pub name: String,
    pub subnet: String,
    pub extra: Value,
}

impl TestNet {
    pub fn new(subnet: &str) -> TestNet {
        let node = Netns::new("pln");
        node_uplink(&node);
        TestNet {
            node,
            dir: TempDir::new("net"),
            name: unique("pt"),
            subnet: subnet.to_owned(),
            extra: json!({}),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("enforcer.sock")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.0.join("ipam")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.ipam_dir().join(&self.name)
    }

    pub fn conf(&self, version: &str) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": self.name,
            "type": "palisade-cni",
            "ipam": { "type": "palisade", "subnet": self.subnet, "dataDir": self.ipam_dir() },
            "enforcerSocket": self.socket(),
            "enforcerTimeoutMs": 2000,
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), self.extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    pub fn vars(
        &self,
        command: &str,
        cid: &str,
        netns: Option<&Netns>,
    ) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", cid.to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/nonexistent".to_owned()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod-{cid}"),
            ),
        ];
        if let Some(n) = netns {
            v.push(("CNI_NETNS", n.path().display().to_string()));
        }
        v
    }

    pub fn run(&self, command: &str, cid: &str, netns: Option<&Netns>) -> Run {
        run_plugin(
            Some(&self.node),
            &self.vars(command, cid, netns),
            &self.conf("1.1.0").to_string(),
        )
    }

    pub fn gc(&self, valid: &[(&str, &str)]) -> Run {
        let mut c = self.conf("1.1.0");
        c["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|(cid, ifn)| json!({"containerID": cid, "ifname": ifn}))
            .collect();
        run_plugin(
            Some(&self.node),
            &[("CNI_COMMAND", "GC".into()), ("CNI_PATH", "/x".into())],
            &c.to_string(),
        )
    }

    /// Allocations in the state file: (ip, container id).
    pub fn allocations(&self) -> Vec<(String, String)> {
        let Ok(bytes) = std::fs::read(self.state_dir().join("state.json")) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["ip"].as_str().unwrap().to_owned(),
                    a["containerId"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn host_links(&self) -> Vec<String> {
        self.node.links_with_prefix("lxc")
    }
}
