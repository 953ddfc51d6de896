//! A real enforcer process on a local node: used by the demo, the end-to-end tests and
//! the benchmarks. It runs the `palisade-enforcer run` binary inside the node's network
//! namespace with private pins, socket, state and verdict log, and removes all of them on
//! drop (including the bpffs mounted for the pins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_api::{Client, ClientError, NamedPort, Registration, Request, Response};

use crate::node::{Node, Pod};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the enforcer did not become ready within {secs} s; its log:\n{log}")]
    NotReady { secs: u64, log: String },
    #[error("registering {pod}: {detail}")]
    Register { pod: String, detail: String },
}

type Result<T> = std::result::Result<T, HarnessError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// A running enforcer on a [`Node`].
#[derive(Debug)]
pub struct Enforcer {
    exe: PathBuf,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    node_netns: PathBuf,
    child: Option<Child>,
    /// Where the enforcer's stderr goes (appended across restarts).
    pub log_path: PathBuf,
    quiet: bool,
    /// Kubernetes mode (`run --kubernetes --kubeconfig FILE`) instead of the manifests.
    kubeconfig: Option<PathBuf>,
    /// A configuration file (`run --config FILE`), for settings without a flag (`cni`).
    config: Option<PathBuf>,
}

impl Enforcer {
    /// Starts `exe run` for `node` on a copy of `manifests` (so tests and the demo can
    /// change policy by writing files). `quiet` keeps the agent's narration in its log
    /// file only.
    pub fn start(exe: &Path, node: &Node, manifests: &Path, quiet: bool) -> Result<Enforcer> {
        Enforcer::start_with_config(exe, node, manifests, quiet, None)
    }

    /// [`Enforcer::start`] with a configuration file (`run --config FILE`).
    pub fn start_with_config(
        exe: &Path,
        node: &Node,
        manifests: &Path,
        quiet: bool,
        config: Option<&Path>,
    ) -> Result<Enforcer> {
        let mut e = Enforcer::prepare(exe, node, quiet, None)?;
        // A copy in the agent's own directory: restarts read it, and it goes with the agent.
        if let Some(c) = config {
            let copy = e.dir.join("config.yaml");
            std::fs::copy(c, &copy).map_err(io(format!("copying {}", c.display())))?;
            e.config = Some(copy);
        }
        std::fs::create_dir_all(&e.manifests)
            .map_err(io(format!("creating {}", e.manifests.display())))?;
        if manifests.is_dir() {
            for entry in
                std::fs::read_dir(manifests).map_err(io(manifests.display().to_string()))?
            {
                let p = entry.map_err(io("reading manifests"))?.path();
                if p.is_file()
                    && let Some(name) = p.file_name()
                {
                    std::fs::copy(&p, e.manifests.join(name))
                        .map_err(io(p.display().to_string()))?;
                }
            }
        }
        e.spawn()?;
        Ok(e)
    }

    /// Starts `exe run --kubernetes` for `node` on the API server of `kubeconfig` (which
    /// must be reachable from the node's network namespace), as node `local-node`.
    pub fn start_kubernetes(
        exe: &Path,
        node: &Node,
        kubeconfig: &Path,
        quiet: bool,
    ) -> Result<Enforcer> {
        Enforcer::start_kubernetes_with_config(exe, node, kubeconfig, quiet, None)
    }

    /// [`Enforcer::start_kubernetes`] with a configuration file (`run --config FILE`).
    pub fn start_kubernetes_with_config(
        exe: &Path,
        node: &Node,
        kubeconfig: &Path,
        quiet: bool,
        config: Option<&Path>,
    ) -> Result<Enforcer> {
        let mut e = Enforcer::prepare(exe, node, quiet, Some(kubeconfig.to_path_buf()))?;
        e.config = config.map(Path::to_path_buf);
        // Listing a large cluster takes longer than loading the datapath.
        e.spawn_no_wait()?;
        e.wait_ready(Duration::from_secs(120))?;
        Ok(e)
    }

    /// The agent's directory for `node` (pins, socket, state, log), not started yet.
    fn prepare(
        exe: &Path,
        node: &Node,
        quiet: bool,
        kubeconfig: Option<PathBuf>,
    ) -> Result<Enforcer> {
        let dir = PathBuf::from(format!("/run/palisade-local/{}", node.tag()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Enforcer {
            exe: exe.to_path_buf(),
            log_path: dir.join("enforcer.log"),
            manifests: dir.join("manifests"),
            dir,
            node_netns: node.netns_path().to_path_buf(),
            child: None,
            quiet,
            kubeconfig,
            config: None,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("enforcer.sock")
    }
    pub fn pin_root(&self) -> PathBuf {
        self.dir.join("bpf")
    }
    pub fn verdict_log(&self) -> PathBuf {
        self.dir.join("verdicts.jsonl")
    }

    /// (Re)starts the process and waits for its API.
    pub fn spawn(&mut self) -> Result<()> {
        self.spawn_no_wait()?;
        self.wait_ready(Duration::from_secs(30))
    }

    /// (Re)starts the process without waiting for it to become ready.
    pub fn spawn_no_wait(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io(self.log_path.display().to_string()))?;
        let stderr = if self.quiet {
            Stdio::from(log)
        } else {
            Stdio::inherit()
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        match &self.kubeconfig {
            Some(k) => cmd.arg("--kubernetes").arg("--kubeconfig").arg(k),
            None => cmd.arg("--manifests").arg(&self.manifests),
        };
        let child = cmd
            .arg("--pin-root")
            .arg(self.pin_root())
            .arg("--socket")
            .arg(self.socket())
            .arg("--verdict-log")
            .arg(self.verdict_log())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--netns")
            .arg(&self.node_netns)
            .arg("--node-name")
            .arg("local-node")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io(format!("starting {}", self.exe.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the agent answers `ready` on its socket.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(HarnessError::NotReady {
                    secs: t0.elapsed().as_secs(),
                    log: format!("exited with {status}\n{}", self.log_tail()),
                });
            }
            if let Ok(Response::Status { ready: true, .. }) = self.request(&Request::Status) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(HarnessError::NotReady {
            secs: timeout.as_secs(),
            log: self.log_tail(),
        })
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            })
            .unwrap_or_default()
    }

    pub fn request(&self, req: &Request) -> std::result::Result<Response, ClientError> {
        Client::connect_with_timeout(&self.socket(), Duration::from_secs(10))?.request(req)
    }

    /// Registers a pod's interface as the CNI plugin does in Kubernetes mode: no labels, so
    /// the agent takes them (and named ports) from its Pod object.
    pub fn register_from_source(&self, pod: &Pod) -> Result<u32> {
        self.register_reg(pod, None, Vec::new())
    }

    /// Registers a pod's interface with explicit labels.
    pub fn register(&self, pod: &Pod, labels: &[(&str, &str)]) -> Result<u32> {
        self.register_with_ports(pod, labels, Vec::new())
    }

    /// Registers a pod's interface with explicit labels and named container ports.
    pub fn register_with_ports(
        &self,
        pod: &Pod,
        labels: &[(&str, &str)],
        named_ports: Vec<NamedPort>,
    ) -> Result<u32> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        self.register_reg(pod, Some(labels), named_ports)
    }

    fn register_reg(
        &self,
        pod: &Pod,
        labels: Option<BTreeMap<String, String>>,
        named_ports: Vec<NamedPort>,
    ) -> Result<u32> {
        let mut ips = vec![std::net::IpAddr::V4(pod.ipv4)];
        if let Some(v6) = pod.ipv6 {
            ips.push(v6.into());
        }
        let reg = Registration {
            container_id: format!("{}/{}", pod.namespace, pod.name),
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            host_ifname: pod.host_ifname.clone(),
            ips,
            labels,
            named_ports,
        };
        match self.request(&Request::Register(reg)) {
            Ok(Response::Registered { identity, .. }) => Ok(identity),
            Ok(other) => Err(HarnessError::Register {
                pod: pod.identity(),
                detail: format!("{other:?}"),
            }),
            Err(e) => Err(HarnessError::Register {
                pod: pod.identity(),
                detail: e.to_string(),
            }),
        }
    }

    /// Writes (or replaces) a manifest file; the agent picks it up through its watch.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<()> {
        let p = self.manifests.join(name);
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).map_err(io(tmp.display().to_string()))?;
        std::fs::rename(&tmp, &p).map_err(io(p.display().to_string()))
    }

    pub fn remove_manifest(&self, name: &str) -> Result<()> {
        let p = self.manifests.join(name);
        std::fs::remove_file(&p).map_err(io(p.display().to_string()))
    }

    /// Waits until the agent's log shows a policy revision after `after` lines; returns
    /// the new line count. The agent prints one "policy revision" line per applied batch.
    pub fn wait_for_policy_revision(&self, after: usize, timeout: Duration) -> Option<usize> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            let lines = self.revision_lines();
            if lines > after {
                return Some(lines);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn revision_lines(&self) -> usize {
        std::fs::read_to_string(&self.log_path)
            .map(|s| s.lines().filter(|l| l.contains("policy revision")).count())
            .unwrap_or(0)
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the agent gets no chance to clean up (links and maps stay pinned).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every verdict-log line so far, parsed.
    pub fn verdicts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.verdict_log())
            .map(|s| {
                s.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        self.stop();
        let pins = self.pin_root();
        let _ = nix::mount::umount2(&pins, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
