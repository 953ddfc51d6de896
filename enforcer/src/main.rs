//! `palisade-enforcer`: the node agent and its small client commands.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use palisade_api::{Registration, Request, Response};
use palisade_enforcer::config::{Config, SystemEnv};
use palisade_enforcer::daemon::{Daemon, StartOptions};
use palisade_enforcer::lock::{EXIT_LOCKED, InstanceLock, LockError};
use palisade_enforcer::source::{DirSource, PolicySource};

#[derive(Debug, Parser)]
#[command(
    name = "palisade-enforcer",
    version,
    about = "Palisade node agent: enforces Kubernetes NetworkPolicy with tc eBPF on pod veths",
    long_about = "Palisade node agent.\n\n\
        `run` loads the eBPF datapath, compiles the manifests of a directory (or, with \
        --kubernetes, the objects of the API server) into identities and policy maps, serves the endpoint API the CNI plugin registers pods \
        with, and writes every verdict to a Hubble-compatible JSON-lines log.\n\n\
        The local-node demo is `palisade-demo` (`./palisade demo`).",
    after_help = "Examples:\n  \
        palisade-enforcer run --manifests examples/manifests --netns /run/netns/node\n  \
        palisade-enforcer run --kubernetes --config /etc/palisade/config.yaml   (in a DaemonSet pod)\n  \
        palisade-enforcer run --kubernetes --kubeconfig ~/.kube/config --node-name node-1\n  \
        palisade-enforcer register --namespace shop --pod web-1 --ifname lxc1 --ip 10.244.0.5 --label app=web\n  \
        palisade-enforcer status"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent in the foreground (SIGINT/SIGTERM stop it; enforcement stays).
    Run(RunArgs),
    /// Register an existing host-side veth as a pod's interface.
    Register(RegisterArgs),
    /// Remove a registration.
    Deregister {
        #[arg(long)]
        container_id: String,
        #[arg(long, default_value = palisade_api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Ask a running agent whether it is ready.
    Status {
        #[arg(long, default_value = palisade_api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show what the pinned datapath holds: endpoints, hooks, map sizes, counters. Reads
    /// pins only; safe next to a running agent.
    Inspect {
        #[arg(long, default_value = palisade_enforcer::config::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
        /// Network namespace of the pod interfaces (to name them and list TCX programs).
        #[arg(long)]
        netns: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// YAML/JSON configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of Kubernetes manifests (watched for changes).
    #[arg(long, conflicts_with = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Take the cluster model from the Kubernetes API server (watchers on namespaces,
    /// pods, nodes, services, EndpointSlices, NetworkPolicies and the policy CRDs that are
    /// installed) instead of a manifest directory. In-cluster service account by default.
    #[arg(long)]
    kubernetes: bool,
    /// A kubeconfig file for --kubernetes (development, tests); default: in-cluster.
    #[arg(long, requires = "kubernetes", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// bpffs directory for pins (mounted if it is not a bpffs yet).
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Endpoint API socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Verdict log file.
    #[arg(long)]
    verdict_log: Option<PathBuf>,
    /// Where registrations are kept across restarts.
    #[arg(long, default_value = "/run/palisade")]
    state_dir: PathBuf,
    /// Network namespace whose pod interfaces to enforce (a /run/netns path); default:
    /// the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    #[arg(long)]
    node_name: Option<String>,
    /// One of the node's own addresses (repeatable): identity host, always allowed into
    /// its pods. Default: the addresses of the enforced network namespace.
    #[arg(long = "node-address")]
    node_address: Vec<std::net::IpAddr>,
    /// An interface where traffic from outside enters the node (repeatable): node ports,
    /// external IPs and load-balancer IPs are translated there. Default: none.
    #[arg(long = "uplink", value_name = "IFNAME")]
    uplink: Vec<String>,
    /// Fail instead of mounting a bpffs on the pin root.
    #[arg(long)]
    no_mount: bool,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`), or `off`. Default
    /// 127.0.0.1:9963, in the enforced network namespace.
    #[arg(long, value_name = "ADDR|off", value_parser = parse_metrics_address)]
    metrics_address: Option<Option<std::net::SocketAddr>>,
    /// Only warnings and errors on stderr (no narration).
    #[arg(long)]
    quiet: bool,
    /// Format of the agent's own log on stderr: `text` (one line per event, untrusted
    /// values quoted and escaped) or `json` (one object per line). The verdict log is a
    /// separate file either way.
    #[arg(long, value_enum, default_value_t = palisade_enforcer::logging::LogFormat::Text)]
    log_format: palisade_enforcer::logging::LogFormat,
}

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    pod: String,
    /// Host-side interface name (in the agent's network namespace).
    #[arg(long)]
    ifname: String,
    /// Pod address (repeatable).
    #[arg(long = "ip", required = true)]
    ips: Vec<IpAddr>,
    /// Pod label key=value (repeatable); without any, the agent takes the labels of the
    /// Pod of that name in its manifests.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Registration key; default: namespace/pod.
    #[arg(long)]
    container_id: Option<String>,
    #[arg(long, default_value = palisade_api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("label {s:?}: expected key=value"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Register(a) => register(a),
        Cmd::Deregister {
            container_id,
            socket,
        } => client(&socket, &Request::Deregister { container_id }),
        Cmd::Status { socket } => client(&socket, &Request::Status),
        Cmd::Inspect { pin_root, netns } => inspect(&pin_root, netns.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade-enforcer: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn parse_metrics_address(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    match s {
        "off" | "none" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?}: expected ADDRESS:PORT (e.g. 127.0.0.1:9963) or off")),
    }
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let env = SystemEnv;
    let mut config = Config::load(a.config.as_deref(), &env)?;
    if let Some(v) = a.manifests {
        config.manifest_dir = v;
    }
    if let Some(v) = a.pin_root {
        config.pin_root = v;
    }
    if let Some(v) = a.socket {
        config.socket = v;
    }
    if let Some(v) = a.verdict_log {
        config.verdict_log = v;
    }
    if let Some(v) = a.node_name {
        config.node_name = v;
    }
    if !a.node_address.is_empty() {
        config.node_addresses = Some(a.node_address);
    }
    if !a.uplink.is_empty() {
        config.uplinks = a.uplink;
    }
    if let Some(v) = a.metrics_address {
        config.metrics_address = v;
    }
    let config = config.resolve(&env);
    if let Err(e) = config.validate() {
        eprintln!("palisade-enforcer: {e}");
        return Ok(ExitCode::from(2));
    }
    // A file (or nothing) where the manifest directory should be would load as an empty
    // policy set: allow-all. Refuse to start instead.
    if !a.kubernetes {
        match std::fs::metadata(&config.manifest_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                eprintln!(
                    "palisade-enforcer: manifest_dir: {} is not a directory (--manifests must name a directory of manifests)",
                    config.manifest_dir.display()
                );
                return Ok(ExitCode::from(2));
            }
            Err(e) => {
                eprintln!(
                    "palisade-enforcer: manifest_dir: {}: {e} (--manifests must name a directory of manifests)",
                    config.manifest_dir.display()
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    // Before anything is touched (mount, maps, socket): one agent per pin root and state
    // dir. Held until the process ends.
    let _lock = match InstanceLock::acquire(&config.pin_root, &a.state_dir) {
        Ok(l) => l,
        Err(e @ LockError::Held { .. }) => {
            eprintln!("palisade-enforcer: {e}");
            return Ok(ExitCode::from(EXIT_LOCKED));
        }
        Err(e) => return Err(e.into()),
    };
    // Enter the node's network namespace before any thread exists, so every thread of the
    // runtime (netlink, attach, the API) lives there. The mount namespace stays: pins must
    // be visible from the host.
    if let Some(ns) = &a.netns {
        enter_netns(ns)?;
    }
    palisade_enforcer::logging::init(a.log_format, a.quiet);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = || async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let mut source: Box<dyn PolicySource> = if a.kubernetes {
        match rt.block_on(connect_kubernetes(&config, a.kubeconfig, shutdown()))? {
            Some(s) => s,
            // Stopped before the first sync: nothing was touched.
            None => return Ok(ExitCode::SUCCESS),
        }
    } else {
        Box::new(
            DirSource::with_options(
                &config.manifest_dir,
                config.manifest_load_options(),
                config.source_debounce(),
            )
            .with_context(|| format!("manifests in {}", config.manifest_dir.display()))?,
        )
    };
    let rx = source.subscribe()?;
    // Daemon::start blocks (map writes, attach); the runtime keeps running the source's
    // watchers meanwhile.
    let daemon = Daemon::start(
        &StartOptions {
            config: config.clone(),
            state_dir: a.state_dir,
            mount_bpffs: !a.no_mount,
        },
        source,
    )?;
    rt.block_on(async move { Arc::new(daemon).run(rx, &config, shutdown()).await })?;
    Ok(ExitCode::SUCCESS)
}

/// The Kubernetes source, once every watcher has listed (however long the API server takes:
/// nothing is touched before). `None` when stopped by a signal meanwhile.
#[cfg(feature = "kubernetes")]
async fn connect_kubernetes(
    config: &Config,
    kubeconfig: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Box<dyn PolicySource>>> {
    use palisade_enforcer::api::{Server, ServerLimits};
    use palisade_enforcer::source::kube::{
        DEFAULT_DEBOUNCE, DEFAULT_POD_WAIT, KubeOptions, KubeSource,
    };
    let opts = KubeOptions {
        kubeconfig,
        node_name: config.node_name.clone(),
        load: config.manifest_load_options(),
        debounce: DEFAULT_DEBOUNCE,
        pod_wait: DEFAULT_POD_WAIT,
    };
    // Meanwhile the endpoint socket answers: not ready, and why; registrations "try again
    // later". The daemon binds it again once the model is complete.
    let server = Server::bind(&config.socket, ServerLimits::from_config(config))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = tokio::spawn(
        server.serve(std::sync::Arc::new(WaitingForApi), async move {
            let _ = stop_rx.await;
        }),
    );
    let result = tokio::select! {
        s = KubeSource::connect(opts) => s.map(|s| Some(Box::new(s) as Box<dyn PolicySource>)).map_err(Into::into),
        _ = shutdown => Ok(None),
    };
    let _ = stop_tx.send(());
    // Serving ends by removing the socket file.
    let _ = waiting.await;
    result
}

/// The endpoint API while the Kubernetes source waits for the API server's first lists:
/// nothing is loaded or touched yet, so nothing is registered or removed.
#[cfg(feature = "kubernetes")]
struct WaitingForApi;

#[cfg(feature = "kubernetes")]
const WAITING_FOR_API: &str = "waiting for the Kubernetes API server's first list of every watched kind (the agent's log says which and why); pinned enforcement from an earlier run stays as it is";

#[cfg(feature = "kubernetes")]
impl palisade_enforcer::api::EndpointRegistry for WaitingForApi {
    async fn register(&self, _: palisade_api::Registration) -> palisade_api::Response {
        palisade_api::Response::error(
            palisade_api::ErrorCode::NotReady,
            format!("{WAITING_FOR_API}; try again later"),
        )
    }
    async fn deregister(&self, _: String) -> palisade_api::Response {
        palisade_api::Response::error(
            palisade_api::ErrorCode::NotReady,
            format!("{WAITING_FOR_API}; try again later"),
        )
    }
    async fn status(&self) -> palisade_api::Response {
        palisade_api::Response::Status {
            api_version: palisade_api::PROTOCOL_VERSION,
            endpoints: 0,
            ready: false,
            reason: Some(WAITING_FOR_API.into()),
            warnings: Vec::new(),
            maps: Vec::new(),
            verdict_log: None,
        }
    }
}

#[cfg(not(feature = "kubernetes"))]
async fn connect_kubernetes(
    _config: &Config,
    _kubeconfig: Option<PathBuf>,
    _shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Box<dyn PolicySource>>> {
    anyhow::bail!("--kubernetes: this build has no Kubernetes source (feature `kubernetes`)")
}

fn inspect(
    pin_root: &std::path::Path,
    netns: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use palisade_enforcer::datapath::{self, Hook};
    use policy_compiler::abi;
    if let Some(ns) = netns {
        enter_netns(ns)?;
    }
    let dir = pin_root.join(format!("v{}", abi::ABI_VERSION));
    let snap = datapath::inspect(&dir).with_context(|| format!("pins in {}", dir.display()))?;
    println!("pins: {}", dir.display());
    println!(
        "maps: {} policy entries, {} ipcache entries, {} conntrack entries",
        snap.policy_entries, snap.ipcache_entries, snap.ct_entries
    );
    println!("endpoints:");
    for (ifindex, e) in &snap.endpoints {
        let name = nix::net::if_::if_nameindex()
            .ok()
            .and_then(|l| {
                l.iter()
                    .find(|i| i.index() == *ifindex)
                    .map(|i| i.name().to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "?".into());
        let hooks = match datapath::Datapath::query(&name) {
            Ok(h) => h
                .iter()
                .map(|(hook, progs)| {
                    let which = if *hook == Hook::FromPod {
                        "ingress"
                    } else {
                        "egress"
                    };
                    format!("{which}: [{}]", progs.join(", "))
                })
                .collect::<Vec<_>>()
                .join("  "),
            Err(e) => format!("tcx query failed: {e}"),
        };
        println!(
            "  ifindex {ifindex:<4} {name:<16} identity {:<8} {} rev {:<4} {hooks}",
            e.identity,
            if e.flags & abi::ENDPOINT_F_READY != 0 {
                "READY    "
            } else {
                "NOT READY"
            },
            e.revision
        );
    }
    println!("counters (packets, bytes):");
    for ((dir, code), v) in &snap.counters {
        let d = if *dir == abi::DIRECTION_INGRESS {
            "ingress"
        } else {
            "egress "
        };
        println!(
            "  {d} {:<40} {:>10} {:>12}",
            datapath::counter_name(*code),
            v.packets,
            v.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves the calling thread (before any other exists: the whole process) into a network
/// namespace, keeping the mount namespace so pins stay the host's.
fn enter_netns(ns: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(ns).with_context(|| format!("--netns {}", ns.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", ns.display()))
}

fn register(a: RegisterArgs) -> anyhow::Result<ExitCode> {
    let labels = (!a.labels.is_empty()).then(|| a.labels.into_iter().collect::<BTreeMap<_, _>>());
    let req = Request::Register(Registration {
        container_id: a
            .container_id
            .unwrap_or_else(|| format!("{}/{}", a.namespace, a.pod)),
        namespace: a.namespace,
        pod: a.pod,
        host_ifname: a.ifname,
        ips: a.ips,
        labels,
        named_ports: Vec::new(),
    });
    client(&a.socket, &req)
}

fn client(socket: &std::path::Path, req: &Request) -> anyhow::Result<ExitCode> {
    let resp = palisade_api::Client::connect(socket)
        .and_then(|mut c| c.request(req))
        .with_context(|| format!("enforcer at {}", socket.display()))?;
    println!("{}", serde_json::to_string(&resp)?);
    Ok(match resp {
        Response::Error { .. } | Response::Status { ready: false, .. } => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}
