//! The bundled CNI plugin (`palisade-cni`) invoked the way a container runtime does: the
//! CNI environment, the network configuration on stdin, inside the node's network namespace.
//! Used by the demo and by tests that play the kubelet.

use std::fmt;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::node::{self, NetnsGuard, Pod};

/// One CNI network on a node, through the real plugin binary.
#[derive(Debug, Clone)]
pub struct CniPlugin {
    /// The `palisade-cni` binary.
    pub plugin: PathBuf,
    pub node_netns: PathBuf,
    pub node_netns_name: String,
    /// The agent's endpoint socket.
    pub socket: PathBuf,
    pub ipam_dir: PathBuf,
    /// The IPAM range, e.g. `10.244.0.0/24`.
    pub subnet: String,
    pub network: String,
}

/// A failed CNI call: the plugin's error result (`code`, `msg`) when it wrote one.
#[derive(Debug, Clone)]
pub struct CniFailure {
    pub command: String,
    pub pod: String,
    /// The CNI error code (11: try again later).
    pub code: Option<u64>,
    pub msg: String,
    pub output: String,
}

impl fmt::Display for CniFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CNI {} {} failed (code {:?}): {}; output: {}",
            self.command, self.pod, self.code, self.msg, self.output
        )
    }
}

impl std::error::Error for CniFailure {}

impl CniPlugin {
    /// `palisade-cni` of this build: `$PALISADE_CNI_BIN`, else next to the running binary's
    /// directory chain in `target/` (a test binary lives in `target/<profile>/deps`).
    pub fn find_binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("PALISADE_CNI_BIN") {
            return Some(PathBuf::from(p));
        }
        let exe = std::env::current_exe().ok()?;
        exe.ancestors()
            .skip(1)
            .take(3)
            .map(|d| d.join("palisade-cni"))
            .find(|p| p.is_file())
    }

    /// The network configuration the plugin reads on stdin.
    pub fn config(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "palisade-cni",
            "ipam": {
                "type": "palisade",
                "subnet": self.subnet,
                "dataDir": self.ipam_dir,
            },
            "enforcerSocket": self.socket,
        })
        .to_string()
    }

    fn invoke(
        &self,
        command: &str,
        netns: &NetnsGuard,
        ns: &str,
        name: &str,
    ) -> Result<serde_json::Value, CniFailure> {
        let fail = |code, msg: String, output: String| CniFailure {
            command: command.to_string(),
            pod: format!("{ns}/{name}"),
            code,
            msg,
            output,
        };
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.node_netns.display()))
            .arg(&self.plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{ns}-{name}"))
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.plugin.parent().unwrap_or(Path::new("/")))
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(
                    None,
                    format!("running the plugin under nsenter: {e}"),
                    String::new(),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(self.config().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(None, e.to_string(), String::new()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        if !out.status.success() {
            let code = parsed.as_ref().and_then(|v| v["code"].as_u64());
            let msg = parsed
                .as_ref()
                .and_then(|v| v["msg"].as_str())
                .unwrap_or_default()
                .to_string();
            return Err(fail(
                code,
                msg,
                format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
        Ok(parsed.unwrap_or(serde_json::Value::Null))
    }

    /// CNI ADD for `ns/name` into `netns`: the pod as the node harness describes one.
    pub fn add(&self, netns: &NetnsGuard, ns: &str, name: &str) -> Result<Pod, CniFailure> {
        let r = self.invoke("ADD", netns, ns, name)?;
        let bad = |what: &str| CniFailure {
            command: "ADD".into(),
            pod: format!("{ns}/{name}"),
            code: None,
            msg: format!("{what} in the CNI result"),
            output: r.to_string(),
        };
        let addr = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| bad("no IPv4 address"))?;
        let host = r["interfaces"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i.get("sandbox").is_none()))
            .and_then(|i| i["name"].as_str())
            .map(str::to_string)
            .ok_or_else(|| bad("no host interface"))?;
        let host_ifindex = node::link_ifindex(&self.node_netns_name, &host)
            .map_err(|e| bad(&format!("host interface {host}: {e}")))?;
        Ok(Pod {
            namespace: ns.to_string(),
            name: name.to_string(),
            netns: netns.name().to_string(),
            netns_path: netns.path().to_path_buf(),
            host_ifname: host,
            host_ifindex,
            ipv4: addr,
            ipv6: None,
            node_netns: self.node_netns_name.clone(),
        })
    }

    /// CNI DEL of a pod added by [`CniPlugin::add`].
    pub fn del(&self, netns: &NetnsGuard, pod: &Pod) -> Result<(), CniFailure> {
        self.invoke("DEL", netns, &pod.namespace, &pod.name)
            .map(|_| ())
    }
}
