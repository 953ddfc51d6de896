//! The real third-party programs of `../shared/realclients` (kube-apiserver + etcd, hubble):
//! where they are, and a throwaway API server for Kubernetes-mode tests.
//!
//! `PALISADE_REALCLIENTS` overrides the directory (the one holding `realclient` and
//! `start-apiserver.sh`); `KUBE_APISERVER` / `ETCD` override the binaries the start script
//! runs (it reads them itself). A test that cannot find them fails under `CI=true` and says
//! what is missing otherwise ([`crate::skip_or_fail`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of the `realclient` and `start-apiserver.sh` scripts.
pub fn dir() -> PathBuf {
    std::env::var_os("PALISADE_REALCLIENTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/realclients"),
        PathBuf::from,
    )
}

/// The unpacked binary `name` (`hubble`, `kube-apiserver`, `etcd`), or why there is none.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let script = dir().join("realclient");
    let out = Command::new(&script)
        .arg(name)
        .output()
        .map_err(|e| format!("{}: {e} (set PALISADE_REALCLIENTS)", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {name}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A real etcd + kube-apiserver on 127.0.0.1, stopped (and its directory removed) when
/// dropped.
#[derive(Debug)]
pub struct ApiServer {
    script: PathBuf,
    dir: PathBuf,
    /// The kubeconfig the start script wrote (token in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Bearer token with cluster-admin rights.
    pub token: String,
    /// The CA certificate file that signed the serving certificate.
    pub ca: PathBuf,
    /// The network namespace (`ip netns` name) etcd and the API server run in; `None`: the
    /// test process's own.
    netns: Option<String>,
}

impl ApiServer {
    /// Starts a fresh API server for the test named `tag`, or returns why it cannot.
    pub fn start(tag: &str) -> Result<ApiServer, String> {
        ApiServer::start_in(tag, None)
    }

    /// [`ApiServer::start`] inside the network namespace `netns` (an `ip netns` name), on its
    /// loopback: for an agent that runs in a node namespace (`run --netns`), whose threads
    /// reach 127.0.0.1 of that namespace only.
    pub fn start_in(tag: &str, netns: Option<&str>) -> Result<ApiServer, String> {
        let script = dir().join("start-apiserver.sh");
        if !script.exists() {
            return Err(format!(
                "{} not found (set PALISADE_REALCLIENTS to the realclients directory)",
                script.display()
            ));
        }
        let work =
            std::env::temp_dir().join(format!("palisade-apiserver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let mut server = ApiServer {
            script: script.clone(),
            dir: work.clone(),
            kubeconfig: PathBuf::new(),
            url: String::new(),
            token: String::new(),
            ca: PathBuf::new(),
            netns: netns.map(str::to_string),
        };
        // From here on, dropping `server` stops whatever the script started.
        let out = server
            .script_command()
            .arg("start")
            .arg(&work)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "start-apiserver.sh failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        server.kubeconfig = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim(),
        );
        let env = std::fs::read_to_string(work.join("env"))
            .map_err(|e| format!("{}: {e}", work.join("env").display()))?;
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| format!("{k} missing from the API server's env file"))
        };
        server.url = var("APISERVER_URL")?;
        server.token = var("APISERVER_TOKEN")?;
        server.ca = PathBuf::from(var("APISERVER_CA")?);
        Ok(server)
    }

    /// [`ApiServer::start`], or `None` after [`crate::skip_or_fail`] (a failure under CI).
    pub fn start_or_skip(tag: &str) -> Option<ApiServer> {
        ApiServer::start_in_or_skip(tag, None)
    }

    /// [`ApiServer::start_in`], or `None` after [`crate::skip_or_fail`] (a failure under CI).
    pub fn start_in_or_skip(tag: &str, netns: Option<&str>) -> Option<ApiServer> {
        match ApiServer::start_in(tag, netns) {
            Ok(s) => Some(s),
            Err(why) => {
                crate::skip_or_fail(&format!("{tag}: the real API server"), &why);
                None
            }
        }
    }

    /// The directory the start script works in (`env`, logs, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `script stop DIR`: ends etcd and kube-apiserver by their recorded PIDs. Dropping does
    /// the same; tests call this to play an API-server outage, then [`ApiServer::restart`].
    pub fn stop(&self) {
        let _ = self.script_command().arg("stop").arg(&self.dir).output();
    }

    /// Starts the stopped server again on the same ports with the same etcd data,
    /// certificates and token, so clients holding the kubeconfig reconnect.
    pub fn restart(&self) -> Result<(), String> {
        let env = std::fs::read_to_string(self.dir.join("env")).unwrap_or_default();
        let port_of = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .and_then(|u| u.rsplit(':').next())
                .map(str::to_string)
                .ok_or_else(|| format!("{k} missing from the API server's env file"))
        };
        let out = self
            .script_command()
            .arg("start")
            .arg(&self.dir)
            .env("APISERVER_PORT", port_of("APISERVER_URL")?)
            .env("ETCD_PORT", port_of("ETCD_URL")?)
            .output()
            .map_err(|e| format!("{}: {e}", self.script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "start-apiserver.sh (restart) failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

impl ApiServer {
    /// Compacts etcd's history up to its current revision (physically), so a watch that
    /// resumes from an older resourceVersion gets `410 Gone`. Returns the revision. Uses
    /// etcd's JSON gateway over plain HTTP with `curl`, in the server's namespace.
    pub fn compact_etcd(&self) -> Result<u64, String> {
        let env = std::fs::read_to_string(self.dir.join("env")).map_err(|e| e.to_string())?;
        let etcd = env
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_URL="))
            .ok_or("ETCD_URL missing from the API server's env file")?
            .to_string();
        let post = |path: &str, body: &str| -> Result<serde_json::Value, String> {
            let mut c = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "curl"]);
                    c
                }
                None => Command::new("curl"),
            };
            let out = c
                .args(["-sS", "--max-time", "10", "-X", "POST", "-d", body])
                .arg(format!("{etcd}{path}"))
                .output()
                .map_err(|e| format!("curl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "curl {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            serde_json::from_slice(&out.stdout).map_err(|e| format!("etcd {path}: {e}"))
        };
        let range = post("/v3/kv/range", r#"{"key":"AA=="}"#)?;
        let rev: u64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| format!("no revision in {range}"))?;
        post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        )?;
        Ok(rev)
    }

    /// The start script, run in the server's network namespace.
    fn script_command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.script);
                c
            }
            None => Command::new(&self.script),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
