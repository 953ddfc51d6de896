//! Every path and limit the enforcer uses, in one place, with documented defaults.
//!
//! The daemon reads an optional YAML (or JSON) file into [`Config`], fills in the node name
//! from the environment through [`Env`] (so tests can fake it), and refuses to start on an
//! invalid value with an error that names the field. Nothing else in the crate hard-codes a
//! path: tests point every path into a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use policy_compiler::abi::ABI_VERSION;
use policy_compiler::manifest::{self, Limits, LoadOptions};

/// Root of the enforcer's bpffs pins. The directory actually used is versioned
/// ([`Config::pin_dir`]) so a datapath with another ABI never reads maps it does not
/// understand.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/palisade";
/// Where the directory source reads manifests from.
pub const DEFAULT_MANIFEST_DIR: &str = "/etc/palisade/manifests";
/// The verdict log (Hubble `GetFlowsResponse` JSON lines).
pub const DEFAULT_VERDICT_LOG: &str = "/var/log/palisade/verdicts.jsonl";
/// Rotate the verdict log when the next line would take it past this size.
pub const DEFAULT_VERDICT_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Rotated verdict logs kept (`verdicts.jsonl.1` .. `.N`); the oldest is dropped.
pub const DEFAULT_VERDICT_LOG_KEEP: u32 = 5;
/// Seconds between verdict log checkpoints (written only when records are unsigned).
pub const DEFAULT_VERDICT_LOG_CHECKPOINT_SECS: u64 = 10;
/// How often expired conntrack entries are swept from user space.
pub const DEFAULT_CT_GC_INTERVAL_SECS: u64 = 30;
/// Quiet time after the last file event before the manifest directory is reloaded:
/// editors write a file in several steps (temp file, rename, chmod).
pub const DEFAULT_SOURCE_DEBOUNCE_MS: u64 = 200;
/// Longest request line the endpoint API reads; a registration is far below this.
pub const DEFAULT_API_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Concurrent endpoint API connections; more are answered `busy` and closed.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 64;
/// An endpoint API connection idle this long is closed, so a stuck client cannot hold a
/// connection slot forever.
pub const DEFAULT_API_IDLE_TIMEOUT_SECS: u64 = 60;

/// Environment variable naming the node (the Kubernetes downward API sets it from
/// `spec.nodeName`).
pub const ENV_NODE_NAME: &str = "NODE_NAME";

/// The enforcer's configuration. Every field has a default; a config file only names what
/// it changes. Unknown fields are errors, so a typo is not silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// bpffs directory under which maps and programs are pinned (default
    /// [`DEFAULT_PIN_ROOT`]); the pins live in `<pin_root>/v<ABI_VERSION>`.
    pub pin_root: PathBuf,
    /// Unix socket of the local endpoint API (default `palisade_api::DEFAULT_SOCKET`).
    pub socket: PathBuf,
    /// Directory of manifests read by the directory source (default
    /// [`DEFAULT_MANIFEST_DIR`]).
    pub manifest_dir: PathBuf,
    /// Verdict log file (default [`DEFAULT_VERDICT_LOG`]).
    pub verdict_log: PathBuf,
    /// Size at which the verdict log rotates (default 64 MiB).
    pub verdict_log_max_bytes: u64,
    /// Rotated verdict log files kept (default 5).
    pub verdict_log_keep: u32,
    /// Sync rotated-away log files to disk before renaming (default off: a crash may then
    /// lose what the kernel had not yet written back, never what was rotated).
    pub verdict_log_fsync: bool,
    /// The node's Ed25519 key signing the verdict log's checkpoints (a file of 64 hex
    /// digits, mode 0600; generated there when absent; a file others can read is refused).
    /// Absent (the default): `<state dir>/verdict-log.key`.
    pub verdict_log_key: Option<PathBuf>,
    /// Seconds between checkpoints while records are being written (default 10; also one
    /// at every start, rotation and shutdown).
    pub verdict_log_checkpoint_secs: u64,
    /// This node's name, written into every verdict log line. Empty means "take it from
    /// the environment" ([`Config::resolve`]).
    pub node_name: String,
    /// Conntrack sweep interval in seconds (default 30).
    pub ct_gc_interval_secs: u64,
    /// Manifest directory reload debounce in milliseconds (default 200).
    pub source_debounce_ms: u64,
    /// Longest endpoint API request line in bytes (default 64 KiB).
    pub api_max_request_bytes: usize,
    /// Concurrent endpoint API connections (default 64).
    pub api_max_connections: usize,
    /// Idle endpoint API connections are closed after this many seconds (default 60).
    pub api_idle_timeout_secs: u64,
    /// Largest manifest file read, in bytes (default 256 MiB); a larger file fails the
    /// load and the last good policy stays.
    pub manifest_max_file_bytes: u64,
    /// Most top-level documents in one manifest file (default 1,000,000).
    pub manifest_max_documents: usize,
    /// Most YAML/JSON nodes in one manifest file, aliases expanded (default 50,000,000).
    pub manifest_max_nodes: usize,
    /// The node's own addresses, which the ipcache maps to identity host (traffic from the
    /// pod's node is always allowed into it). Absent (the default): every address of the
    /// network namespace the agent enforces in, except loopback, unspecified, multicast and
    /// IPv6 link-local ([`crate::node::own_addresses`]), read at start. An empty list: none.
    pub node_addresses: Option<Vec<std::net::IpAddr>>,
    /// Where the Prometheus metrics are served (`GET /metrics`, OpenMetrics text); `null`
    /// turns them off. Default [`DEFAULT_METRICS_ADDRESS`].
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The CNI conflist the agent writes once it is ready ([`crate::cniconf`]); absent
    /// (the default): none.
    pub cni: Option<crate::cniconf::CniConfig>,
    /// The port of the in-process L7 proxy that HTTP rules redirect to (default
    /// [`policy_compiler::engine::DEFAULT_PROXY_PORT`], on every address of the enforced
    /// network namespace); `null` runs no proxy, and flows that HTTP rules redirect are
    /// dropped (`DROP_PROXY_UNAVAILABLE`). docs/l7.md.
    pub l7_proxy_port: Option<u16>,
    /// Open proxied connections one client identity may hold (default 4096); more are
    /// closed at accept and logged, so one workload cannot exhaust the proxy.
    pub l7_proxy_connections_per_identity: usize,
    /// Seconds an upstream connection of the L7 proxy is kept, after its client connection
    /// ended cleanly, for the next connection of the same client address to the same server
    /// (default 4, under the usual servers' keep-alive timeouts); 0 opens a new upstream
    /// connection for every client connection. docs/l7.md.
    pub l7_upstream_idle_secs: u64,
    /// The node's uplinks: interfaces (of the enforced network namespace) where traffic
    /// from outside enters the node. Each gets the uplink programs, which translate node
    /// ports, external IPs and load-balancer IPs for that traffic (docs/services.md,
    /// docs/datapath.md §13). Default: none (services are translated for pods only). An
    /// interface that does not exist fails the start; one dropped from this list is
    /// detached at the next start.
    pub uplinks: Vec<String>,
    /// Local delivery (docs/datapath.md §3.2, default on): established packets between two
    /// pods of this node go from one host veth to the other without the node's routing and
    /// netfilter forward hooks (to_pod still judges them). Off: the node's stack forwards
    /// every packet, for nodes whose own firewall must see pod-to-pod traffic.
    pub local_delivery: bool,
}

/// The metrics endpoint's default address: loopback of the enforced network namespace.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9963";

impl Default for Config {
    fn default() -> Self {
        Config {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            socket: PathBuf::from(palisade_api::DEFAULT_SOCKET),
            manifest_dir: PathBuf::from(DEFAULT_MANIFEST_DIR),
            verdict_log: PathBuf::from(DEFAULT_VERDICT_LOG),
            verdict_log_max_bytes: DEFAULT_VERDICT_LOG_MAX_BYTES,
            verdict_log_keep: DEFAULT_VERDICT_LOG_KEEP,
            verdict_log_fsync: false,
            verdict_log_key: None,
            verdict_log_checkpoint_secs: DEFAULT_VERDICT_LOG_CHECKPOINT_SECS,
            node_name: String::new(),
            ct_gc_interval_secs: DEFAULT_CT_GC_INTERVAL_SECS,
            source_debounce_ms: DEFAULT_SOURCE_DEBOUNCE_MS,
            api_max_request_bytes: DEFAULT_API_MAX_REQUEST_BYTES,
            api_max_connections: DEFAULT_API_MAX_CONNECTIONS,
            api_idle_timeout_secs: DEFAULT_API_IDLE_TIMEOUT_SECS,
            manifest_max_file_bytes: manifest::DEFAULT_MAX_FILE_BYTES,
            manifest_max_documents: manifest::DEFAULT_MAX_DOCUMENTS,
            manifest_max_nodes: manifest::DEFAULT_MAX_NODES,
            node_addresses: None,
            metrics_address: DEFAULT_METRICS_ADDRESS.parse().ok(),
            cni: None,
            l7_proxy_port: Some(policy_compiler::engine::DEFAULT_PROXY_PORT),
            l7_proxy_connections_per_identity: crate::proxy::DEFAULT_CONNECTIONS_PER_IDENTITY,
            l7_upstream_idle_secs: crate::proxy::pool::DEFAULT_IDLE.as_secs(),
            uplinks: Vec::new(),
            local_delivery: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid configuration: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// What the configuration reads from the process environment. A trait so tests can fake
/// it instead of mutating the real (process-global) environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// The kernel hostname, the node name of last resort.
    fn hostname(&self) -> Option<String>;
}

/// The real environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnv;

impl Env for SystemEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn hostname(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

impl Config {
    /// Reads a configuration file (YAML or JSON); fields it omits keep their defaults.
    /// The result is not yet resolved or validated: see [`Config::load`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_str_named(path, &text)
    }

    /// Parses configuration text; `path` only names it in errors.
    pub fn from_str_named(path: &Path, text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str::<Config>(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The daemon's entry point: the file if given (else defaults), resolved against the
    /// environment, validated.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let cfg = match path {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        let cfg = cfg.resolve(env);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Fills what the file left to the environment: an empty node name becomes
    /// `$NODE_NAME`, else the hostname.
    pub fn resolve(mut self, env: &dyn Env) -> Config {
        if self.node_name.is_empty() {
            self.node_name = env
                .var(ENV_NODE_NAME)
                .filter(|s| !s.is_empty())
                .or_else(|| env.hostname())
                .unwrap_or_default();
        }
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, path) in [
            ("pin_root", &self.pin_root),
            ("socket", &self.socket),
            ("manifest_dir", &self.manifest_dir),
            ("verdict_log", &self.verdict_log),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    field,
                    format!(
                        "must be an absolute path, got {:?}",
                        path.display().to_string()
                    ),
                ));
            }
            if path.file_name().is_none() {
                return Err(invalid(field, format!("{} names no file", path.display())));
            }
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(invalid(
                "socket",
                format!(
                    "path is {} bytes; a unix socket path is at most 107",
                    self.socket.as_os_str().len()
                ),
            ));
        }
        for (i, name) in self.uplinks.iter().enumerate() {
            // IFNAMSIZ is 16 with the NUL; '/' and whitespace cannot be in a name.
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', ':'])
                || name.chars().any(char::is_whitespace)
                || name == "."
                || name == ".."
            {
                return Err(invalid(
                    "uplinks",
                    format!(
                        "entry {i} ({name:?}) is not an interface name \
                         (1 to 15 bytes, no '/', ':' or whitespace)"
                    ),
                ));
            }
            if self.uplinks[..i].contains(name) {
                return Err(invalid("uplinks", format!("{name:?} is listed twice")));
            }
        }
        if self.l7_proxy_connections_per_identity == 0 {
            return Err(invalid(
                "l7_proxy_connections_per_identity",
                "must be at least 1".into(),
            ));
        }
        if self.l7_upstream_idle_secs > 3600 {
            return Err(invalid(
                "l7_upstream_idle_secs",
                format!(
                    "{} is more than an hour; idle upstream connections hold sockets on both ends",
                    self.l7_upstream_idle_secs
                ),
            ));
        }
        if self.l7_proxy_port == Some(0) {
            return Err(invalid(
                "l7_proxy_port",
                "must be a port between 1 and 65535, or null for no proxy".into(),
            ));
        }
        if self.verdict_log_max_bytes < 4096 {
            return Err(invalid(
                "verdict_log_max_bytes",
                format!("must be at least 4096, got {}", self.verdict_log_max_bytes),
            ));
        }
        if !(1..=1000).contains(&self.verdict_log_keep) {
            return Err(invalid(
                "verdict_log_keep",
                format!("must be between 1 and 1000, got {}", self.verdict_log_keep),
            ));
        }
        if let Some(k) = &self.verdict_log_key
            && (!k.is_absolute() || k.file_name().is_none())
        {
            return Err(invalid(
                "verdict_log_key",
                format!(
                    "must be an absolute file path, got {:?}",
                    k.display().to_string()
                ),
            ));
        }
        if !(1..=3600).contains(&self.verdict_log_checkpoint_secs) {
            return Err(invalid(
                "verdict_log_checkpoint_secs",
                format!(
                    "must be between 1 and 3600, got {}",
                    self.verdict_log_checkpoint_secs
                ),
            ));
        }
        check_node_name(&self.node_name)?;
        if !(1..=3600).contains(&self.ct_gc_interval_secs) {
            return Err(invalid(
                "ct_gc_interval_secs",
                format!(
                    "must be between 1 and 3600, got {}",
                    self.ct_gc_interval_secs
                ),
            ));
        }
        for (field, v) in [
            ("manifest_max_file_bytes", self.manifest_max_file_bytes),
            ("manifest_max_documents", self.manifest_max_documents as u64),
            ("manifest_max_nodes", self.manifest_max_nodes as u64),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        if self.source_debounce_ms > 60_000 {
            return Err(invalid(
                "source_debounce_ms",
                format!("must be at most 60000, got {}", self.source_debounce_ms),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.api_max_request_bytes) {
            return Err(invalid(
                "api_max_request_bytes",
                format!(
                    "must be between 1024 and 16777216, got {}",
                    self.api_max_request_bytes
                ),
            ));
        }
        if !(1..=4096).contains(&self.api_max_connections) {
            return Err(invalid(
                "api_max_connections",
                format!(
                    "must be between 1 and 4096, got {}",
                    self.api_max_connections
                ),
            ));
        }
        if self.api_idle_timeout_secs == 0 {
            return Err(invalid(
                "api_idle_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if let Some(cni) = &self.cni {
            cni.validate(&self.socket)?;
        }
        Ok(())
    }

    /// The pin directory of this build's ABI: `<pin_root>/v<ABI_VERSION>`.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(format!("v{ABI_VERSION}"))
    }

    pub fn ct_gc_interval(&self) -> Duration {
        Duration::from_secs(self.ct_gc_interval_secs)
    }

    /// How the directory source loads manifests: with these limits, and strictly: a
    /// document the loader cannot model (a misspelt kind, a NetworkPolicy of another
    /// apiVersion, no `kind`) fails the load, so the last good policy stays instead of the
    /// policy silently disappearing.
    pub fn manifest_load_options(&self) -> LoadOptions {
        LoadOptions {
            limits: Limits {
                max_file_bytes: self.manifest_max_file_bytes,
                max_documents: self.manifest_max_documents,
                max_nodes: self.manifest_max_nodes,
            },
            strict_kinds: true,
            ..LoadOptions::default()
        }
    }

    pub fn source_debounce(&self) -> Duration {
        Duration::from_millis(self.source_debounce_ms)
    }

    pub fn api_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.api_idle_timeout_secs)
    }
}

fn invalid(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

/// A node name is a DNS subdomain (RFC 1123), as Kubernetes requires of Node objects.
fn check_node_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(
            "node_name",
            format!("empty, and neither ${ENV_NODE_NAME} nor the hostname gave one"),
        ));
    }
    if name.len() > 253 {
        return Err(invalid(
            "node_name",
            format!("{} characters; at most 253", name.len()),
        ));
    }
    let ok = name.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    });
    if !ok {
        return Err(invalid(
            "node_name",
            format!("{name:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeEnv {
        vars: HashMap<String, String>,
        hostname: Option<String>,
    }

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn hostname(&self) -> Option<String> {
            self.hostname.clone()
        }
    }

    fn env(node: Option<&str>, host: Option<&str>) -> FakeEnv {
        FakeEnv {
            vars: node
                .map(|n| (ENV_NODE_NAME.to_string(), n.to_string()))
                .into_iter()
                .collect(),
            hostname: host.map(str::to_string),
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert_eq!(
            c.pin_dir(),
            PathBuf::from(format!("/sys/fs/bpf/palisade/v{ABI_VERSION}"))
        );
        assert_eq!(c.socket, PathBuf::from(palisade_api::DEFAULT_SOCKET));
        assert_eq!(
            c.verdict_log,
            PathBuf::from("/var/log/palisade/verdicts.jsonl")
        );
        assert_eq!(c.verdict_log_max_bytes, 64 * 1024 * 1024);
        assert_eq!(c.verdict_log_keep, 5);
        let c = c.resolve(&env(Some("node-1"), Some("host")));
        assert_eq!(c.node_name, "node-1");
        c.validate().unwrap();
    }

    #[test]
    fn node_name_falls_back_to_hostname() {
        let c = Config::default().resolve(&env(None, Some("worker-7")));
        assert_eq!(c.node_name, "worker-7");
        let c = Config::default().resolve(&env(None, None));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("node_name"), "{err}");
    }

    #[test]
    fn file_overrides_and_errors_name_the_field() {
        let p = Path::new("/etc/palisade/config.yaml");
        let c = Config::from_str_named(p, "verdict_log_keep: 2\nnode_name: n1\n").unwrap();
        assert_eq!(c.verdict_log_keep, 2);
        assert_eq!(c.verdict_log_max_bytes, DEFAULT_VERDICT_LOG_MAX_BYTES);
        c.validate().unwrap();

        let err = Config::from_str_named(p, "verdict_log_kept: 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.yaml") && err.contains("verdict_log_kept"),
            "{err}"
        );

        let c = Config::from_str_named(p, "node_name: n1\nverdict_log_keep: 0\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("verdict_log_keep"), "{err}");

        let c = Config::from_str_named(p, "node_name: n1\nsocket: run/x.sock\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("socket") && err.contains("absolute"), "{err}");

        let c = Config::from_str_named(p, "node_name: Bad_Name\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("node_name"), "{err}");

        let c = Config::from_str_named(p, "node_name: n1\nl7_upstream_idle_secs: 0\n").unwrap();
        c.validate().unwrap();
        let c = Config::from_str_named(p, "node_name: n1\nl7_upstream_idle_secs: 7200\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("l7_upstream_idle_secs"), "{err}");
    }
}
