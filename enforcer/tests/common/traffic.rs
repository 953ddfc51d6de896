//! Real traffic through a real agent: a node of network namespaces with `palisade-enforcer
//! run` on it (the `Cluster` fixture) and connection probes with what the policy should make
//! of them. Shared by the end-to-end tests (`e2e.rs`, `tiers.rs`).
//!
//! Conventions: every test owns its node and enforcer (removed on drop, also on panic); a
//! denied TCP attempt must end in `TimedOut` (a dropped SYN), never `Refused`; each test file
//! has its own address block `10.<block>.<subnet>.<host>` / `fd00:10:<block>:<subnet>::<host>`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{Node, Outside, Pod, ServerHandle, TcpOutcome};

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");
/// For outcomes expected to succeed (returns as soon as they do).
pub const OK: Duration = Duration::from_secs(3);
/// For outcomes expected to be dropped: a reply on a local veth takes well under 1 ms.
pub const DENY: Duration = Duration::from_millis(400);
/// How long a manifest change may take to reach the maps (debounce 200 ms + apply).
pub const CHANGE: Duration = Duration::from_secs(10);

/// A node with the enforcer running on it. Field order is drop order: the enforcer stops
/// (and its pins go) before the node's namespaces are deleted.
pub struct Cluster {
    pub enforcer: Enforcer,
    pub node: Node,
    /// The second octet of this test file's addresses.
    pub block: u8,
}

/// Sets up a node (its name starts with `tag`) and an enforcer on `manifests` (file name,
/// YAML); pods get addresses in `block`. `None` only where the privileged-test rule allows
/// skipping (never under `CI=true`).
pub fn start(tag: &str, block: u8, what: &str, manifests: &[(&str, &str)]) -> Option<Cluster> {
    start_with_config(tag, block, what, manifests, None)
}

/// [`start`] with a configuration file for the agent (YAML).
pub fn start_with_config(
    tag: &str,
    block: u8,
    what: &str,
    manifests: &[(&str, &str)],
    config: Option<&str>,
) -> Option<Cluster> {
    start_on(Node::for_test(tag, what)?, block, what, manifests, config)
}

/// [`start_with_config`] on a node with an outside host wired to its uplink
/// ([`Node::add_outside`]), which the agent's configuration may name.
pub fn start_with_outside(
    tag: &str,
    block: u8,
    what: &str,
    manifests: &[(&str, &str)],
    config: &str,
) -> Option<(Cluster, Outside)> {
    let node = Node::for_test(tag, what)?;
    let outside = node
        .add_outside()
        .unwrap_or_else(|e| panic!("{what}: wiring the outside host: {e}"));
    let c = start_on(node, block, what, manifests, Some(config))?;
    Some((c, outside))
}

fn start_on(
    node: Node,
    block: u8,
    what: &str,
    manifests: &[(&str, &str)],
    config: Option<&str>,
) -> Option<Cluster> {
    let tag = node.tag().to_string();
    let src = std::env::temp_dir().join(format!("palisade-{tag}-manifests-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    for (name, yaml) in manifests {
        std::fs::write(src.join(name), yaml).unwrap();
    }
    let config_path = src.with_extension("config.yaml");
    if let Some(c) = config {
        std::fs::write(&config_path, c).unwrap();
    }
    let enforcer = Enforcer::start_with_config(
        Path::new(EXE),
        &node,
        &src,
        true,
        config.map(|_| config_path.as_path()),
    );
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_file(&config_path);
    let enforcer = enforcer.unwrap_or_else(|e| panic!("{what}: starting the enforcer: {e}"));
    Some(Cluster {
        enforcer,
        node,
        block,
    })
}

impl Cluster {
    /// Adds a dual-stack pod at `<subnet>.<host>` of this file's block (not registered).
    pub fn pod(&self, ns: &str, name: &str, subnet: u8, host: u8) -> Pod {
        self.node
            .add_pod(
                ns,
                name,
                v4(self.block, subnet, host),
                Some(v6(self.block, subnet, host)),
            )
            .unwrap_or_else(|e| panic!("adding pod {ns}/{name}: {e}"))
    }

    /// Registers a pod with the agent with these labels; its endpoint id.
    pub fn register(&self, pod: &Pod, labels: &[(&str, &str)]) -> u32 {
        self.enforcer
            .register(pod, labels)
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.enforcer.log_path).unwrap_or_default()
    }

    /// Runs `change` (a manifest write or removal) and waits until the agent applied it.
    pub fn change_policy(&self, what: &str, change: impl FnOnce(&Enforcer)) {
        let before = self.enforcer.revision_lines();
        change(&self.enforcer);
        if self
            .enforcer
            .wait_for_policy_revision(before, CHANGE)
            .is_none()
        {
            panic!(
                "{what}: no policy revision within {CHANGE:?}; agent log:\n{}",
                self.log()
            );
        }
    }

    /// Writes (or replaces) one manifest file and waits until the agent applied it.
    pub fn write_policy(&self, what: &str, file: &str, yaml: &str) {
        self.change_policy(what, |e| e.write_manifest(file, yaml).unwrap());
    }
}

pub fn v4(block: u8, subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, block, subnet, host)
}

/// `fd00:10:<block>:<subnet>::<host>`, the block and host parts spelled with the IPv4
/// address's digits (`v6(244, 3, 21)` is `fd00:10:244:3::21`), so manifests read naturally.
pub fn v6(block: u8, subnet: u8, host: u8) -> Ipv6Addr {
    let digits = |n: u8| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits");
    Ipv6Addr::new(
        0xfd00,
        0x10,
        digits(block),
        subnet.into(),
        0,
        0,
        0,
        digits(host),
    )
}

pub fn serve_tcp(pod: &Pod, port: u16) -> ServerHandle {
    pod.serve_tcp(port)
        .unwrap_or_else(|e| panic!("tcp server {}:{port}: {e}", pod.identity()))
}

pub fn serve_udp(pod: &Pod, port: u16) -> ServerHandle {
    pod.serve_udp(port)
        .unwrap_or_else(|e| panic!("udp server {}:{port}: {e}", pod.identity()))
}

// ---- probes --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// An ICMP (ICMPv6) echo; the port is ignored.
    Icmp,
}

/// One connection attempt and what the policy should make of it.
pub struct Probe<'a> {
    pub from: &'a Pod,
    pub to: &'a Pod,
    pub dst: SocketAddr,
    pub proto: Proto,
    pub allow: bool,
    pub why: &'static str,
}

pub fn probe<'a>(
    from: &'a Pod,
    to: &'a Pod,
    proto: Proto,
    ipv6: bool,
    port: u16,
    allow: bool,
    why: &'static str,
) -> Probe<'a> {
    let dst = if ipv6 {
        to.addr_v6(port).expect("pod without IPv6")
    } else {
        to.addr_v4(port)
    };
    Probe {
        from,
        to,
        dst,
        proto,
        allow,
        why,
    }
}

pub fn tcp<'a>(from: &'a Pod, to: &'a Pod, port: u16, allow: bool, why: &'static str) -> Probe<'a> {
    probe(from, to, Proto::Tcp, false, port, allow, why)
}

pub fn tcp6<'a>(
    from: &'a Pod,
    to: &'a Pod,
    port: u16,
    allow: bool,
    why: &'static str,
) -> Probe<'a> {
    probe(from, to, Proto::Tcp, true, port, allow, why)
}

pub fn udp<'a>(from: &'a Pod, to: &'a Pod, port: u16, allow: bool, why: &'static str) -> Probe<'a> {
    probe(from, to, Proto::Udp, false, port, allow, why)
}

pub fn udp6<'a>(
    from: &'a Pod,
    to: &'a Pod,
    port: u16,
    allow: bool,
    why: &'static str,
) -> Probe<'a> {
    probe(from, to, Proto::Udp, true, port, allow, why)
}

impl Probe<'_> {
    pub fn describe(&self) -> String {
        format!(
            "{:?} {} -> {} {} should be {} ({})",
            self.proto,
            self.from.identity(),
            self.to.identity(),
            self.dst,
            if self.allow { "allowed" } else { "denied" },
            self.why
        )
    }

    /// `None` when the kernel did what the policy says, else what went wrong.
    pub fn check(&self) -> Option<String> {
        let timeout = if self.allow { OK } else { DENY };
        let got = match self.proto {
            Proto::Tcp => match self.from.tcp_connect(self.dst, timeout) {
                Ok(TcpOutcome::Connected { banner }) if self.allow => {
                    if banner == self.to.identity() {
                        return None;
                    }
                    format!("connected, but the banner was {banner:?}")
                }
                Ok(TcpOutcome::TimedOut) if !self.allow => return None,
                other => format!("{other:?}"),
            },
            Proto::Icmp => match self.from.ping(self.dst.ip(), timeout) {
                Ok(answered) if answered == self.allow => return None,
                other => format!("{other:?}"),
            },
            Proto::Udp => {
                let payload = format!("probe {}", self.dst);
                match self
                    .from
                    .udp_roundtrip(self.dst, payload.as_bytes(), timeout)
                {
                    Ok(Some(reply)) if self.allow => {
                        let want = format!("{}\n{payload}", self.to.identity());
                        if reply == want.as_bytes() {
                            return None;
                        }
                        format!("reply {:?}", String::from_utf8_lossy(&reply))
                    }
                    Ok(None) if !self.allow => return None,
                    Ok(Some(reply)) => format!("reply {:?}", String::from_utf8_lossy(&reply)),
                    other => format!("{other:?}"),
                }
            }
        };
        Some(format!("{}: got {got}", self.describe()))
    }
}

/// Runs every probe at once (denied ones each wait for the timeout) and fails with the list
/// of every probe the kernel got wrong.
pub fn expect_all(c: &Cluster, probes: &[Probe<'_>]) {
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = probes.iter().map(|p| s.spawn(move || p.check())).collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("probe thread panicked"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} probes wrong:\n  {}\nagent log:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n  "),
        c.log()
    );
}
