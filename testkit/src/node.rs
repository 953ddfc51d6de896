//! A local node with pods in network namespaces, for tests, the demo and benchmarks.
//!
//! The datapath's e2e tests, the CNI plugin's tests, the README demo and the performance
//! benchmark all need the same thing: a "node" that routes between pods the way a Calico-style
//! CNI wires them, without a cluster and without touching the host's own networking. Everything
//! here lives in network namespaces this module creates:
//!
//! ```text
//!  pod netns pal-<tag>-<hash>            node netns pal-<tag>-node
//!  eth0  ipv4/32, ipv6/128   <── veth ──> lxc<hash>  proxy_arp=1, fe80::1/64
//!  default via 169.254.1.1 (v4)           ipv4/32 and ipv6/128 routes dev lxc<hash>
//!  default via fe80::1 (v6)               lo: 169.254.1.1/32 (the node's own address)
//! ```
//!
//! The node namespace plays the host: forwarding is on there (and only there), each pod's host
//! veth is where the tc datapath attaches, and pod-to-pod traffic crosses both pods' host veths.
//! Nothing here writes a sysctl, an address or a route in the root namespace: every lower-level
//! function takes the name of a namespace created with `ip netns add`.
//!
//! Cleanup is RAII: dropping a [`Node`] kills processes left in its namespaces, deletes every
//! host veth, every pod namespace and the node namespace, logging (never panicking on) errors, so
//! a panicking test still leaves nothing behind. Runs that died without unwinding are cleaned by
//! [`sweep_stale`], which reads the owner pid encoded in tags made by [`unique_tag`].
//!
//! Traffic helpers run in pure Rust on threads that entered the pod's namespace with `setns(2)`
//! ([`run_in_netns`]); `ip netns exec` is used only for external programs (nginx, curl, iperf3,
//! wrk), because it remounts `/sys` and would hide the host's bpffs (datapath.md §5.6).

mod link;
mod netns;
mod process;
mod traffic;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use crate::privileged::{
    ci_requires_privileged, privileged_unavailable_reason, require_privileged, skip_or_fail,
};
pub use link::{
    add_address, add_default_route, add_host_route, create_veth, delete_link, link_ifindex,
    list_links, read_sysctl, set_link_up, set_sysctl, validate_ifname,
};
pub use netns::{
    NetnsGuard, create_netns, delete_netns, kill_netns_processes, list_netns, netns_exists,
    netns_path, netns_pids, run_in_netns,
};
pub use process::{
    CommandOutput, HttpOutcome, NginxGuard, ProcessGuard, curl_in_netns, run_command_in_netns,
    spawn_in_netns,
};
pub use traffic::{
    EchoOutcome, ServerHandle, TcpOutcome, TcpSession, UdpOutcome, ping_in_netns,
    serve_tcp_in_netns, serve_udp_in_netns, tcp_connect_in_netns, tcp_session_in_netns,
    udp_probe_in_netns, udp_roundtrip_in_netns,
};

/// Every namespace this module creates starts with this, so leftovers are easy to find.
pub const NETNS_PREFIX: &str = "pal-";

/// The pods' IPv4 gateway. Nothing owns it on the pod's link: the host veth answers ARP for it
/// through `proxy_arp`, as Calico does, so every pod has the same gateway whatever its address.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pods' IPv6 gateway, configured on every host veth (link-local, so the same address on
/// every link is fine).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The interface name of the pod side of every veth.
pub const POD_IFNAME: &str = "eth0";

/// Longest accepted tag: keeps namespace names readable in `ip netns list`.
const MAX_TAG_LEN: usize = 32;

/// Errors from building, using or tearing down a local node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An external program (iproute2, nginx, curl, ...) could not be started.
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why the spawn failed (usually: not installed).
        #[source]
        source: std::io::Error,
    },
    /// An external program exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// An external program did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?}")]
    CommandTimedOut {
        /// The command line.
        command: String,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// Waiting for or reading the output of a process failed.
    #[error("could not {op} `{command}`")]
    Process {
        /// What was being done (`wait for`, `read the output of`, ...).
        op: &'static str,
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A program printed something this module cannot interpret.
    #[error("unexpected output from `{command}`: {output:?}")]
    UnexpectedOutput {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A namespace file could not be opened.
    #[error("could not open network namespace {}", path.display())]
    OpenNetns {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` into a namespace failed.
    #[error("could not enter network namespace {}", path.display())]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// No thread could be spawned to run code in a namespace.
    #[error("could not spawn a thread for network namespace {}", path.display())]
    Thread {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A node tag or tag prefix that would make unusable or ambiguous namespace names.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag.
        tag: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An interface name the kernel would refuse.
    #[error("invalid interface name {ifname:?}: 1 to 15 bytes, no '/', ':', '.' or whitespace")]
    InvalidIfname {
        /// The name.
        ifname: String,
    },
    /// An empty pod namespace or name.
    #[error("invalid pod {namespace:?}/{name:?}: namespace and name must be non-empty")]
    InvalidPod {
        /// The Kubernetes namespace.
        namespace: String,
        /// The pod name.
        name: String,
    },
    /// The same pod added twice to a node.
    #[error("pod {namespace}/{name} already exists on node {node}")]
    DuplicatePod {
        /// The Kubernetes namespace.
        namespace: String,
        /// The pod name.
        name: String,
        /// The node's tag.
        node: String,
    },
    /// Two pods whose names hash to the same host interface (astronomically unlikely; refused
    /// rather than silently sharing a veth name).
    #[error("pods {first} and {second} both map to interface {ifname}")]
    InterfaceCollision {
        /// The pod already on the node.
        first: String,
        /// The pod being added.
        second: String,
        /// The shared interface name.
        ifname: String,
    },
    /// The pod is not (or no longer) on this node.
    #[error("pod {namespace}/{name} is not on node {node}")]
    UnknownPod {
        /// The Kubernetes namespace.
        namespace: String,
        /// The pod name.
        name: String,
        /// The node's tag.
        node: String,
    },
    /// An interface that should exist in a namespace does not.
    #[error("no interface {ifname} in network namespace {netns}")]
    NoSuchInterface {
        /// The namespace name.
        netns: String,
        /// The interface name.
        ifname: String,
        /// The errno from `if_nametoindex`.
        #[source]
        source: nix::Error,
    },
    /// Reading or writing a sysctl inside a namespace failed.
    #[error("could not {op} sysctl {key} in network namespace {netns}")]
    Sysctl {
        /// `read` or `write`.
        op: &'static str,
        /// The namespace name.
        netns: String,
        /// The sysctl key.
        key: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation inside a namespace failed (not a policy outcome: those are values
    /// of [`TcpOutcome`], [`EchoOutcome`] or `None`).
    #[error("{op} in network namespace {}", netns.display())]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The namespace file.
        netns: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A temporary directory or file could not be created or written.
    #[error("could not write {}", path.display())]
    TempFile {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// nginx started but never accepted a connection.
    #[error(
        "nginx in {netns} did not accept connections on port {port} within {timeout:?}; error log: {log}"
    )]
    NginxNotReady {
        /// The pod namespace name.
        netns: String,
        /// The port.
        port: u16,
        /// How long it was given.
        timeout: Duration,
        /// The tail of nginx's error log.
        log: String,
    },
    /// A zero timeout was passed where the kernel needs a positive one.
    #[error("timeout must be positive")]
    ZeroTimeout,
}

/// Result type of this module.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// A network namespace playing a Kubernetes node, with pods wired to it by veth pairs.
///
/// Dropping it removes everything it created (see the module docs).
pub struct Node {
    tag: String,
    netns: NetnsGuard,
    pods: Mutex<Vec<PodEntry>>,
    /// The "outside" namespace, once [`Node::add_outside`] made it.
    outside: Mutex<Option<(Outside, NetnsGuard)>>,
}

/// The node's uplink interface (in the node namespace), made by [`Node::add_outside`].
pub const UPLINK_IFNAME: &str = "uplink0";
/// The node's address on its uplink.
pub const UPLINK_NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The outside host's address (a benchmarking range, RFC 2544: never routed anywhere real).
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The node's IPv6 address on its uplink.
pub const UPLINK_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1);
/// The outside host's IPv6 address.
pub const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 2);

/// A host outside the node: a namespace `pal-<tag>-out` whose `eth0` is wired to the node's
/// [`UPLINK_IFNAME`] (198.18.0.0/24, fd00:198:18::/64), with its default routes via the node.
/// Traffic from here enters the node the way traffic from another machine would: through
/// the uplink, to a node address, an external IP or a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outside {
    /// Name of its network namespace.
    pub netns: String,
    /// `/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// The node-side interface.
    pub uplink_ifname: String,
    /// Its index in the node namespace.
    pub uplink_ifindex: u32,
}

/// A pod and the namespace guard that owns its lifetime.
struct PodEntry {
    pod: Pod,
    netns: NetnsGuard,
}

/// One pod on a [`Node`]: a network namespace with `eth0`, addressed and routed through the node.
///
/// A plain description (cheap to clone); the [`Node`] owns the resources. Methods keep working
/// while the pod is on its node and fail with errors after it was removed.
/// Pods wired by someone else (the CNI plugin in the demo) are built with a struct literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Name of the pod's network namespace (as in `ip netns list`).
    pub netns: String,
    /// `/run/netns/<netns>`: for `setns(2)` and `CNI_NETNS`.
    pub netns_path: PathBuf,
    /// Name of the host-side veth in the node namespace: where the datapath attaches.
    pub host_ifname: String,
    /// Index of the host-side veth, in the node namespace.
    pub host_ifindex: u32,
    /// The pod's IPv4 address (on `eth0` as a /32).
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address (on `eth0` as a /128), if it has one.
    pub ipv6: Option<Ipv6Addr>,
    /// Name of the node namespace the pod is wired to.
    pub node_netns: String,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("tag", &self.tag)
            .field("netns", &self.netns.name())
            .field("pods", &self.pods().len())
            .finish()
    }
}

/// A tag unique to this process and call: `<prefix>-<pid base 36>-<counter base 36>`.
///
/// The pid lets [`sweep_stale`] tell a crashed run's namespaces from a live one's; the counter
/// keeps parallel tests in one process apart. `prefix` should be lowercase letters and digits
/// (no `-`), or the pid cannot be read back; [`Node::create`] rejects anything else.
pub fn unique_tag(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{}", base36(std::process::id()), base36(n))
}

/// Deletes namespaces left by crashed runs: those named `pal-<prefix>-<pid36>-...` (tags from
/// [`unique_tag`]) whose owner pid no longer exists. Processes still running inside them
/// (nginx from a killed test) are killed first, so the namespaces really go away.
///
/// Also removes the log directories of dead runs' processes (`$TMPDIR/palisade-{proc,nginx}-*`).
///
/// Returns the namespace names it deleted. Namespaces of live owners, and names it cannot
/// parse, are left alone: a reused pid only delays the sweep, it never deletes a live run's
/// namespaces.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>> {
    validate_prefix(prefix)?;
    process::sweep_stale_temp_dirs();
    let me = std::process::id();
    let head = format!("{NETNS_PREFIX}{prefix}-");
    let mut swept = Vec::new();
    for name in list_netns()? {
        let Some(rest) = name.strip_prefix(&head) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(parse_base36) else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = kill_netns_processes(&name) {
            eprintln!("palisade node sweep: {name}: {e}");
        }
        match delete_netns(&name) {
            Ok(()) => swept.push(name),
            Err(e) => eprintln!("palisade node sweep: {name}: {e}"),
        }
    }
    Ok(swept)
}

impl Node {
    /// Creates the node namespace `pal-<tag>-node`, with forwarding on and `lo` up.
    ///
    /// `lo` also carries [`GATEWAY_V4`] as the node's own address: ARP requests the node sends
    /// to pods then have a real sender address, and pods can reach "the host" at a fixed address.
    /// Proxy ARP answers for the gateway because the node routes it (to `lo`), not via the
    /// pod's own link.
    pub fn create(tag: &str) -> Result<Node> {
        validate_tag(tag)?;
        let name = format!("{NETNS_PREFIX}{tag}-node");
        let netns = create_netns(&name)?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // New links inherit these: no DAD delay on host veths.
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
        ] {
            set_sysctl(&name, key, value)?;
        }
        set_link_up(&name, "lo")?;
        add_address(&name, "lo", IpAddr::V4(GATEWAY_V4), 32)?;
        Ok(Node {
            tag: tag.to_owned(),
            netns,
            pods: Mutex::new(Vec::new()),
            outside: Mutex::new(None),
        })
    }

    /// For tests: sweeps stale namespaces of `prefix`, then creates a node with a fresh
    /// [`unique_tag`]. Applies the privileged-test rule: when the host cannot run it, fails the
    /// test under `CI=true`, else prints `skipped: ...` and returns `None`.
    pub fn for_test(prefix: &str, what: &str) -> Option<Node> {
        if !require_privileged(what) {
            return None;
        }
        if let Err(e) = sweep_stale(prefix) {
            eprintln!("palisade node sweep: {e}");
        }
        match Node::create(&unique_tag(prefix)) {
            Ok(node) => Some(node),
            Err(e) => {
                skip_or_fail(what, &format!("cannot create a node namespace: {e}"));
                None
            }
        }
    }

    /// The tag this node was created with.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Name of the node namespace (as in `ip netns list`).
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// `/run/netns/<node netns>`: for [`run_in_netns`] and anything that attaches in the node.
    pub fn netns_path(&self) -> &Path {
        self.netns.path()
    }

    /// Runs `f` on a thread inside the node namespace (see [`run_in_netns`]).
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        run_in_netns(self.netns_path(), f)
    }

    /// Wires an "outside" host to the node through its uplink ([`Outside`]); a second
    /// call returns the first one's. On error, whatever was created is removed again.
    pub fn add_outside(&self) -> Result<Outside> {
        let mut slot = self.outside.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((o, _)) = slot.as_ref() {
            return Ok(o.clone());
        }
        let name = format!("{NETNS_PREFIX}{}-out", self.tag);
        let guard = create_netns(&name)?;
        let node = self.netns_name();
        let wire = || -> Result<u32> {
            for key in [
                "net.ipv6.conf.all.accept_dad",
                "net.ipv6.conf.default.accept_dad",
            ] {
                set_sysctl(&name, key, "0")?;
            }
            set_link_up(&name, "lo")?;
            create_veth(node, UPLINK_IFNAME, &name, POD_IFNAME)?;
            set_link_up(node, UPLINK_IFNAME)?;
            set_link_up(&name, POD_IFNAME)?;
            add_address(node, UPLINK_IFNAME, IpAddr::V4(UPLINK_NODE_V4), 24)?;
            add_address(node, UPLINK_IFNAME, IpAddr::V6(UPLINK_NODE_V6), 64)?;
            add_address(&name, POD_IFNAME, IpAddr::V4(OUTSIDE_V4), 24)?;
            add_address(&name, POD_IFNAME, IpAddr::V6(OUTSIDE_V6), 64)?;
            add_default_route(&name, IpAddr::V4(UPLINK_NODE_V4), POD_IFNAME)?;
            add_default_route(&name, IpAddr::V6(UPLINK_NODE_V6), POD_IFNAME)?;
            link_ifindex(node, UPLINK_IFNAME)
        };
        let uplink_ifindex = match wire() {
            Ok(i) => i,
            Err(e) => {
                if let Err(cleanup) = delete_link(node, UPLINK_IFNAME) {
                    eprintln!("palisade node cleanup: {cleanup}");
                }
                return Err(e);
            }
        };
        let outside = Outside {
            netns: name,
            netns_path: guard.path().to_owned(),
            uplink_ifname: UPLINK_IFNAME.to_owned(),
            uplink_ifindex,
        };
        *slot = Some((outside.clone(), guard));
        Ok(outside)
    }

    /// The pods currently on the node, in the order they were added.
    pub fn pods(&self) -> Vec<Pod> {
        self.lock_pods()
            .iter()
            .map(|entry| entry.pod.clone())
            .collect()
    }

    /// Adds a pod: its namespace, a veth to the node, addresses and Calico-style routes.
    ///
    /// Names are derived from a stable hash of `namespace/name`, so the same pod always gets the
    /// same host interface (`lxc` + 12 hex digits) and namespace (`pal-<tag>-<8 hex digits>`).
    /// On error, whatever was created for this pod is removed again.
    pub fn add_pod(
        &self,
        namespace: &str,
        name: &str,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Pod> {
        if namespace.is_empty() || name.is_empty() {
            return Err(NodeError::InvalidPod {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        let identity = format!("{namespace}/{name}");
        let hash = fnv1a64(identity.as_bytes());
        let host_ifname = format!("lxc{:012x}", hash & 0xffff_ffff_ffff);
        let pod_netns = format!("{NETNS_PREFIX}{}-{:08x}", self.tag, hash >> 32);
        {
            let pods = self.lock_pods();
            for entry in pods.iter() {
                let other = &entry.pod;
                if other.namespace == namespace && other.name == name {
                    return Err(NodeError::DuplicatePod {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        node: self.tag.clone(),
                    });
                }
                if other.host_ifname == host_ifname || other.netns == pod_netns {
                    return Err(NodeError::InterfaceCollision {
                        first: other.identity(),
                        second: identity,
                        ifname: host_ifname,
                    });
                }
            }
        }

        let guard = create_netns(&pod_netns)?;
        let node = self.netns_name();
        let wire = || -> Result<u32> {
            for key in [
                "net.ipv6.conf.all.accept_dad",
                "net.ipv6.conf.default.accept_dad",
            ] {
                set_sysctl(&pod_netns, key, "0")?;
            }
            set_link_up(&pod_netns, "lo")?;
            create_veth(node, &host_ifname, &pod_netns, POD_IFNAME)?;

            set_sysctl(node, &format!("net.ipv4.conf.{host_ifname}.proxy_arp"), "1")?;
            set_sysctl(
                node,
                &format!("net.ipv6.conf.{host_ifname}.accept_dad"),
                "0",
            )?;
            set_sysctl(
                &pod_netns,
                &format!("net.ipv6.conf.{POD_IFNAME}.accept_dad"),
                "0",
            )?;
            set_link_up(node, &host_ifname)?;
            set_link_up(&pod_netns, POD_IFNAME)?;

            add_address(&pod_netns, POD_IFNAME, IpAddr::V4(ipv4), 32)?;
            add_host_route(&pod_netns, IpAddr::V4(GATEWAY_V4), POD_IFNAME)?;
            add_default_route(&pod_netns, IpAddr::V4(GATEWAY_V4), POD_IFNAME)?;
            add_host_route(node, IpAddr::V4(ipv4), &host_ifname)?;
            if let Some(ipv6) = ipv6 {
                add_address(node, &host_ifname, IpAddr::V6(GATEWAY_V6), 64)?;
                add_address(&pod_netns, POD_IFNAME, IpAddr::V6(ipv6), 128)?;
                add_default_route(&pod_netns, IpAddr::V6(GATEWAY_V6), POD_IFNAME)?;
                add_host_route(node, IpAddr::V6(ipv6), &host_ifname)?;
            }
            link_ifindex(node, &host_ifname)
        };
        let host_ifindex = match wire() {
            Ok(index) => index,
            Err(e) => {
                // Deleting the pod namespace (the guard) would also take the veth down, but only
                // asynchronously; delete it now so a retry can reuse the name.
                if let Err(cleanup) = delete_link(node, &host_ifname) {
                    eprintln!("palisade node cleanup: {cleanup}");
                }
                return Err(e);
            }
        };

        let pod = Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            netns: pod_netns,
            netns_path: guard.path().to_owned(),
            host_ifname,
            host_ifindex,
            ipv4,
            ipv6,
            node_netns: node.to_owned(),
        };
        self.lock_pods().push(PodEntry {
            pod: pod.clone(),
            netns: guard,
        });
        Ok(pod)
    }

    /// Removes a pod: kills its processes, deletes its host veth and its namespace.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        let entry = {
            let mut pods = self.lock_pods();
            let index = pods
                .iter()
                .position(|entry| {
                    entry.pod.namespace == pod.namespace && entry.pod.name == pod.name
                })
                .ok_or_else(|| NodeError::UnknownPod {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    node: self.tag.clone(),
                })?;
            pods.remove(index)
        };
        kill_netns_processes(&entry.pod.netns)?;
        delete_link(self.netns_name(), &entry.pod.host_ifname)?;
        entry.netns.delete()
    }

    fn lock_pods(&self) -> std::sync::MutexGuard<'_, Vec<PodEntry>> {
        // A panic while holding the lock leaves the list itself consistent (pushes and removes
        // are single operations), and cleanup must still run.
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let entries = std::mem::take(&mut *self.lock_pods());
        let node = self.netns.name().to_owned();
        for entry in entries {
            if let Err(e) = kill_netns_processes(&entry.pod.netns) {
                eprintln!("palisade node cleanup: {e}");
            }
            // Explicitly, because a socket still open in the pod namespace (a server handle
            // dropped after the node) keeps the namespace, and with it the veth, alive.
            if let Err(e) = delete_link(&node, &entry.pod.host_ifname) {
                eprintln!("palisade node cleanup: {e}");
            }
            drop(entry.netns);
        }
        let outside = self
            .outside
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((o, guard)) = outside {
            if let Err(e) = kill_netns_processes(&o.netns) {
                eprintln!("palisade node cleanup: {e}");
            }
            if let Err(e) = delete_link(&node, &o.uplink_ifname) {
                eprintln!("palisade node cleanup: {e}");
            }
            drop(guard);
        }
        if let Err(e) = kill_netns_processes(&node) {
            eprintln!("palisade node cleanup: {e}");
        }
        // The node namespace guard is dropped (deleted) after this function.
    }
}

impl Outside {
    /// Runs `f` on a thread inside the outside namespace (see [`run_in_netns`]).
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        run_in_netns(&self.netns_path, f)
    }
}

impl Pod {
    /// `namespace/name`: what the servers here send as their banner.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `ipv4:port`.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ipv4, port))
    }

    /// `[ipv6]:port`, when the pod has IPv6.
    pub fn addr_v6(&self, port: u16) -> Option<SocketAddr> {
        self.ipv6
            .map(|ip| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)))
    }

    /// Runs `f` on a thread inside the pod namespace (see [`run_in_netns`]).
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        run_in_netns(&self.netns_path, f)
    }

    /// A TCP server on `port` (IPv4 and IPv6) answering each connection with the line
    /// `namespace/name\n`, then echoing until EOF. Port 0 picks a free port
    /// ([`ServerHandle::port`]). Stops when the handle is dropped.
    pub fn serve_tcp(&self, port: u16) -> Result<ServerHandle> {
        serve_tcp_in_netns(&self.netns_path, port, &self.identity())
    }

    /// A UDP server on `port` (IPv4 and IPv6) answering each datagram with
    /// `namespace/name\n` followed by the datagram. Stops when the handle is dropped.
    pub fn serve_udp(&self, port: u16) -> Result<ServerHandle> {
        serve_udp_in_netns(&self.netns_path, port, &self.identity())
    }

    /// Connects from this pod to `dst` and reads the banner; see [`TcpOutcome`].
    pub fn tcp_connect(&self, dst: SocketAddr, timeout: Duration) -> Result<TcpOutcome> {
        tcp_connect_in_netns(&self.netns_path, dst, timeout)
    }

    /// Opens a connection from this pod to a [`Pod::serve_tcp`] server and keeps it, so a test
    /// can use it across a policy change. Refused or timed-out connects are errors here.
    pub fn tcp_session(&self, dst: SocketAddr, timeout: Duration) -> Result<TcpSession> {
        tcp_session_in_netns(&self.netns_path, dst, timeout)
    }

    /// Sends one datagram from this pod and waits for one reply: `None` when none came in
    /// time or the destination port was unreachable.
    pub fn udp_roundtrip(
        &self,
        dst: SocketAddr,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        udp_roundtrip_in_netns(&self.netns_path, dst, payload, timeout)
    }

    /// One ICMP (or ICMPv6) echo from this pod: `true` when the reply came in time.
    pub fn ping(&self, dst: IpAddr, timeout: Duration) -> Result<bool> {
        ping_in_netns(&self.netns_path, dst, timeout)
    }

    /// Starts `argv` in this pod (through `ip netns exec`); killed when the guard is dropped.
    pub fn spawn(&self, argv: &[&str]) -> Result<ProcessGuard> {
        spawn_in_netns(&self.netns, argv)
    }

    /// Runs `argv` in this pod to completion (killed after `timeout`), capturing its output.
    /// A non-zero exit is a value, not an error.
    pub fn run(&self, argv: &[&str], timeout: Duration) -> Result<CommandOutput> {
        run_command_in_netns(&self.netns, argv, timeout)
    }

    /// nginx on `port` (IPv4 and IPv6) answering every request with 200 and the body
    /// `namespace/name\n`; returns once it accepts connections. Stopped on drop.
    pub fn start_nginx(&self, port: u16) -> Result<NginxGuard> {
        NginxGuard::start(self, port)
    }

    /// `curl` from this pod; see [`HttpOutcome`].
    pub fn curl(&self, url: &str, timeout: Duration) -> Result<HttpOutcome> {
        curl_in_netns(&self.netns, url, timeout)
    }
}

fn validate_tag(tag: &str) -> Result<()> {
    let reason = if tag.is_empty() {
        Some("empty")
    } else if tag.len() > MAX_TAG_LEN {
        Some("longer than 32 bytes")
    } else if !tag
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only lowercase ASCII letters, digits and '-' are allowed")
    } else if tag.starts_with('-') || tag.ends_with('-') {
        Some("must not start or end with '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NodeError::InvalidTag {
            tag: tag.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(NodeError::InvalidTag {
            tag: prefix.to_owned(),
            reason: "a tag prefix must be non-empty lowercase ASCII letters and digits",
        });
    }
    Ok(())
}

/// FNV-1a: a hash whose output never changes between Rust versions, unlike `DefaultHasher`,
/// so interface names are stable across builds.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_base36(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    u32::from_str_radix(s, 36).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trips() {
        for n in [0, 1, 35, 36, 4_194_304, u32::MAX] {
            assert_eq!(parse_base36(&base36(n)), Some(n));
        }
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn unique_tags_are_valid_and_distinct() {
        let a = unique_tag("e2e");
        let b = unique_tag("e2e");
        assert_ne!(a, b);
        validate_tag(&a).unwrap();
        let pid = a.split('-').nth(1).and_then(parse_base36);
        assert_eq!(pid, Some(std::process::id()));
    }

    #[test]
    fn tags_and_prefixes_are_checked() {
        assert!(validate_tag("").is_err());
        assert!(validate_tag("Abc").is_err());
        assert!(validate_tag("a/b").is_err());
        assert!(validate_tag("-a").is_err());
        assert!(validate_tag(&"a".repeat(33)).is_err());
        assert!(validate_prefix("e2e").is_ok());
        assert!(validate_prefix("e2e-x").is_err());
    }

    #[test]
    fn host_ifnames_fit_the_kernel_limit() {
        let hash = fnv1a64(b"default/a");
        let name = format!("lxc{:012x}", hash & 0xffff_ffff_ffff);
        assert_eq!(name.len(), 15);
        validate_ifname(&name).unwrap();
        assert_ne!(fnv1a64(b"default/a"), fnv1a64(b"default/b"));
        // Stable across builds: a fixed vector.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
