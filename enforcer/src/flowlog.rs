//! The verdict log: one JSON line per datapath verdict event, each a Hubble jsonpb
//! `GetFlowsResponse` (`{"flow":{…},"node_name":…,"time":…}`), so tools that read
//! `hubble observe -o jsonpb` output read this file.
//!
//! Rendering is pure ([`render_flow`]: event + [`FlowResolver`] + node name + time + id ->
//! JSON) so it is tested without root or a kernel. The resolver supplies what the kernel
//! does not know: which pod and labels an identity stands for, which policy rule a rule id
//! is, and — for a default-deny drop, which carries no rule — the policies that isolated the
//! endpoint. Engine-specific details go under `flow.extensions` with an `@type`, as the
//! proto's `google.protobuf.Any` allows.
//!
//! Notes on the mapping:
//! * 64-bit counters (`revision`, `num_events_lost`) are written as JSON numbers; protojson
//!   readers accept numbers as well as strings for them.
//! * For ICMP the datapath stores the ICMP type in the event's `tcp_flags` byte
//!   (`ebpf/lib/events.h`); the code is not carried, so `code` is left out (protojson
//!   omits zero values, so an echo request reads exactly as Hubble prints it).
//!
//! [`RotatingWriter`] appends the lines to a size-rotated file and [`FlowLogger`] ties
//! rendering, the boot-time clock, flow ids and loss accounting together: every event the
//! datapath or the writer lost is reported as a Hubble `lost_events` line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use policy_compiler::abi::{self, VerdictEvent};
use policy_compiler::engine::Engine;
use policy_compiler::identity::{IdentityInfo, Reserved};
use policy_compiler::model::{Direction, Endpoint, Protocol};
use policy_compiler::rules::{PolicyRef, RuleRef};

use crate::config::Config;

/// `@type` of `flow.extensions`.
pub const EXTENSIONS_TYPE: &str = "type.googleapis.com/palisade.v1.FlowDetails";
/// The policy kind every Palisade rule comes from today.
pub const POLICY_KIND: &str = "NetworkPolicy";

/// Hubble `event_type.type` of a drop notification.
pub const EVENT_TYPE_DROP: u8 = 1;
/// Hubble `event_type.type` of a policy verdict notification.
pub const EVENT_TYPE_POLICY_VERDICT: u8 = 5;

/// One side of a flow, as Hubble's `Endpoint` message shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEndpoint {
    pub identity: u32,
    pub namespace: String,
    pub pod_name: String,
    /// Already in Hubble form: `k8s:app=web`, `reserved:world`, `cidr:10.0.0.0/8`.
    pub labels: Vec<String>,
    /// `(kind, name)` of the owning workload; empty for a bare pod.
    pub workloads: Vec<(String, String)>,
}

/// What the verdict log needs from the control plane.
pub trait FlowResolver {
    /// The endpoint with `identity` at address `ip` (the pod comes from the address, the
    /// labels from the identity: pods with equal labels share an identity).
    fn endpoint(&self, identity: u32, ip: Option<IpAddr>) -> FlowEndpoint;
    /// The rule a policy value's rule id stands for (ids >= `RULE_ID_FIRST_POLICY`).
    fn rule(&self, rule_id: u32) -> Option<RuleRef>;
    /// The policies that isolate `direction` of the endpoints with `identity`: what a
    /// default-deny drop is attributed to.
    fn isolated_by(&self, identity: u32, direction: Direction) -> Vec<PolicyRef>;
    /// The host-side interface name of `ifindex`, when known.
    fn interface_name(&self, ifindex: u32) -> Option<String>;
}

/// A [`FlowResolver`] over a compiled engine (which also holds this node's registered
/// endpoints, merged in by the sync loop). Build one per batch of events: it indexes
/// endpoint addresses once.
#[derive(Debug)]
pub struct EngineResolver<'a> {
    engine: &'a Engine,
    by_ip: HashMap<IpAddr, &'a Endpoint>,
    interfaces: HashMap<u32, String>,
}

impl<'a> EngineResolver<'a> {
    pub fn new(engine: &'a Engine) -> EngineResolver<'a> {
        let mut by_ip = HashMap::new();
        for ep in engine.cluster().endpoints.values() {
            if ep.host_network {
                continue;
            }
            for ip in &ep.ips {
                by_ip.entry(*ip).or_insert(ep);
            }
        }
        EngineResolver {
            engine,
            by_ip,
            interfaces: HashMap::new(),
        }
    }

    /// Interface names by ifindex (the sync loop knows them from registrations).
    pub fn with_interfaces(mut self, interfaces: HashMap<u32, String>) -> Self {
        self.interfaces = interfaces;
        self
    }
}

impl FlowResolver for EngineResolver<'_> {
    fn endpoint(&self, identity: u32, ip: Option<IpAddr>) -> FlowEndpoint {
        let mut out = FlowEndpoint {
            identity,
            ..FlowEndpoint::default()
        };
        match self.engine.identities().info(identity) {
            Some(IdentityInfo::Reserved(r)) => out.labels = vec![r.name().to_string()],
            Some(IdentityInfo::Cidr(c)) => {
                out.labels = vec![format!("cidr:{c}"), Reserved::World.name().to_string()];
            }
            Some(IdentityInfo::Cluster(key)) => {
                out.namespace = key.namespace.to_string();
                out.labels = key.log_labels();
                if let Some(ep) = ip.and_then(|ip| self.by_ip.get(&ip)) {
                    out.pod_name = ep.name.clone();
                    if ep.workload.kind != "Pod" {
                        out.workloads = vec![(ep.workload.kind.clone(), ep.workload.name.clone())];
                    }
                }
            }
            None => {}
        }
        out
    }

    fn rule(&self, rule_id: u32) -> Option<RuleRef> {
        self.engine.rules().resolve(rule_id).cloned()
    }

    fn isolated_by(&self, identity: u32, direction: Direction) -> Vec<PolicyRef> {
        self.engine
            .policy_for_identity(identity)
            .map(|p| p.isolated_by(direction).to_vec())
            .unwrap_or_default()
    }

    fn interface_name(&self, ifindex: u32) -> Option<String> {
        self.interfaces.get(&ifindex).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlowLogError {
    #[error("{}: cannot create the log directory: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot rotate to {}: {source}", from.display(), to.display())]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the {clock} clock: {source}")]
    Clock {
        clock: &'static str,
        #[source]
        source: nix::Error,
    },
}

// ---- time ------------------------------------------------------------------------------

/// A wall-clock instant (nanoseconds since the Unix epoch, may be negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallTime(pub i128);

impl WallTime {
    pub fn now() -> WallTime {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => WallTime(d.as_nanos() as i128),
            Err(e) => WallTime(-(e.duration().as_nanos() as i128)),
        }
    }

    /// RFC 3339 in UTC with nanoseconds, as protojson writes a `Timestamp`:
    /// `2024-05-01T12:34:56.123456789Z`.
    pub fn rfc3339(self) -> String {
        let secs = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i128) -> (i128, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Maps `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time with an offset taken
/// once: events carry the kernel's cheap clock, users read dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClock {
    /// realtime − monotonic, in nanoseconds.
    offset_ns: i128,
}

impl BootClock {
    /// Samples both clocks now. Call again ([`BootClock::refresh`]) after the wall clock
    /// is stepped if exact times matter.
    pub fn from_system() -> Result<BootClock, FlowLogError> {
        use nix::time::{ClockId, clock_gettime};
        let ns = |clock: &'static str, id: ClockId| {
            clock_gettime(id)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
                .map_err(|source| FlowLogError::Clock { clock, source })
        };
        let mono = ns("monotonic", ClockId::CLOCK_MONOTONIC)?;
        let real = ns("realtime", ClockId::CLOCK_REALTIME)?;
        Ok(BootClock {
            offset_ns: real - mono,
        })
    }

    /// A clock with a given offset (tests, replays).
    pub fn with_offset(offset_ns: i128) -> BootClock {
        BootClock { offset_ns }
    }

    pub fn refresh(&mut self) -> Result<(), FlowLogError> {
        *self = BootClock::from_system()?;
        Ok(())
    }

    pub fn to_wall(&self, ktime_ns: u64) -> WallTime {
        WallTime(self.offset_ns + ktime_ns as i128)
    }
}

// ---- flow ids ----------------------------------------------------------------------------

/// UUID-shaped flow ids: a random 128-bit seed per process with a counter folded into
/// its low bits, so ids are unique within a run and unlikely to repeat across runs.
#[derive(Debug, Clone)]
pub struct FlowIds {
    seed: u128,
    next: u64,
}

impl FlowIds {
    /// Seeded from `/dev/urandom`, else from the standard library's per-process random
    /// hasher keys.
    pub fn new() -> FlowIds {
        let mut buf = [0u8; 16];
        let seed = match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)) {
            Ok(()) => u128::from_ne_bytes(buf),
            Err(_) => {
                let rs = std::collections::hash_map::RandomState::new();
                let mut a = rs.build_hasher();
                a.write_u64(std::process::id() as u64);
                let mut b = rs.build_hasher();
                b.write_u64(!(std::process::id() as u64));
                ((a.finish() as u128) << 64) | b.finish() as u128
            }
        };
        FlowIds::with_seed(seed)
    }

    pub fn with_seed(seed: u128) -> FlowIds {
        FlowIds { seed, next: 0 }
    }

    /// The next id, formatted as a version-4 UUID.
    pub fn next_id(&mut self) -> String {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        // The counter occupies the low 62 bits, below the variant bits, so consecutive ids
        // differ for 2^62 events.
        let mut v = self.seed ^ (n & ((1u64 << 62) - 1)) as u128;
        v = (v & !(0xf_u128 << 76)) | (0x4_u128 << 76); // version 4
        v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62); // RFC 4122 variant
        let h = format!("{v:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl Default for FlowIds {
    fn default() -> Self {
        FlowIds::new()
    }
}

// ---- decoding ------------------------------------------------------------------------------

fn addr(family: u8, a: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
        _ => None,
    }
}

fn direction(d: u8) -> Option<Direction> {
    match d {
        abi::DIRECTION_INGRESS => Some(Direction::Ingress),
        abi::DIRECTION_EGRESS => Some(Direction::Egress),
        _ => None,
    }
}

/// Hubble `Verdict` enum name of an `EVENT_VERDICT_*` code (same numbering).
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        abi::EVENT_VERDICT_FORWARDED => "FORWARDED",
        abi::EVENT_VERDICT_DROPPED => "DROPPED",
        3 => "ERROR",
        abi::EVENT_VERDICT_AUDIT => "AUDIT",
        abi::EVENT_VERDICT_REDIRECTED => "REDIRECTED",
        6 => "TRACED",
        7 => "TRANSLATED",
        _ => "VERDICT_UNKNOWN",
    }
}

/// `flow.extensions.kind` of an `EVENT_KIND_*` code.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        abi::EVENT_KIND_NEW_FLOW => "new_flow",
        abi::EVENT_KIND_CT_CLOSE => "ct_close",
        abi::EVENT_KIND_REVOKED => "revoked",
        _ => "unknown",
    }
}

/// `ns/policy ingress rule #N`, N being the index in `spec.ingress` (0-based, as
/// `policy-test explain` prints `ingress[N]`).
pub fn rule_text(r: &RuleRef) -> String {
    format!("{} {} rule #{}", r.policy, r.direction, r.index)
}

const TCP_FLAGS: [(u8, &str); 8] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

// ---- rendering -----------------------------------------------------------------------------

/// The `flow` object of one event. Pure: everything it needs is passed in.
pub fn render_flow(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> Value {
    let src_ip = addr(ev.family, &ev.saddr);
    let dst_ip = addr(ev.family, &ev.daddr);
    let sport = u16::from_be(ev.sport_be);
    let dport = u16::from_be(ev.dport_be);
    let proxy_port = u16::from_be(ev.proxy_port_be);
    let dir = direction(ev.direction);
    let proto = Protocol(ev.protocol);

    let mut flow = Map::new();
    flow.insert("time".into(), json!(time.rfc3339()));
    flow.insert("uuid".into(), json!(uuid));
    flow.insert("verdict".into(), json!(verdict_name(ev.verdict)));
    let dropped = ev.verdict == abi::EVENT_VERDICT_DROPPED;
    if ev.drop_reason != 0 {
        flow.insert("drop_reason".into(), json!(ev.drop_reason));
        flow.insert(
            "drop_reason_desc".into(),
            json!(abi::drop_reason_name(ev.drop_reason as u32)),
        );
    }
    if let (Some(s), Some(d)) = (src_ip, dst_ip) {
        flow.insert(
            "IP".into(),
            json!({
                "source": s.to_string(),
                "destination": d.to_string(),
                "ipVersion": if ev.family == 6 { "IPv6" } else { "IPv4" },
            }),
        );
    }
    if let Some(l4) = render_l4(ev, sport, dport) {
        flow.insert("l4".into(), l4);
    }
    let src = resolver.endpoint(ev.src_identity, src_ip);
    let dst = resolver.endpoint(ev.dst_identity, dst_ip);
    flow.insert("source".into(), render_endpoint(&src));
    flow.insert("destination".into(), render_endpoint(&dst));
    flow.insert("Type".into(), json!("L3_L4"));
    flow.insert("node_name".into(), json!(node_name));
    flow.insert(
        "event_type".into(),
        if dropped {
            json!({"type": EVENT_TYPE_DROP, "sub_type": ev.drop_reason})
        } else {
            json!({"type": EVENT_TYPE_POLICY_VERDICT})
        },
    );
    flow.insert(
        "traffic_direction".into(),
        json!(match dir {
            Some(Direction::Ingress) => "INGRESS",
            Some(Direction::Egress) => "EGRESS",
            None => "TRAFFIC_DIRECTION_UNKNOWN",
        }),
    );
    flow.insert("is_reply".into(), json!(false));
    let mut iface = Map::new();
    iface.insert("index".into(), json!(ev.ifindex));
    if let Some(name) = resolver.interface_name(ev.ifindex) {
        iface.insert("name".into(), json!(name));
    }
    flow.insert("interface".into(), Value::Object(iface));
    if ev.verdict == abi::EVENT_VERDICT_REDIRECTED && proxy_port != 0 {
        flow.insert("proxy_port".into(), json!(proxy_port));
    }

    // Attribution.
    let rule = if ev.rule_id >= abi::RULE_ID_FIRST_POLICY {
        resolver.rule(ev.rule_id)
    } else {
        None
    };
    let default_deny = dropped
        && ev.drop_reason as u32 == abi::DROP_POLICY_DENIED
        && ev.rule_id == abi::RULE_ID_NONE;
    let isolated: Vec<PolicyRef> = match dir {
        Some(d) if default_deny => {
            let subject = match d {
                Direction::Ingress => ev.dst_identity,
                Direction::Egress => ev.src_identity,
            };
            resolver.isolated_by(subject, d)
        }
        _ => Vec::new(),
    };
    let policy = |p: &PolicyRef| {
        json!({
            "name": p.name,
            "namespace": p.namespace,
            "kind": POLICY_KIND,
            "revision": ev.revision,
        })
    };
    let (allowed, denied): (Vec<Value>, Vec<Value>) = match ev.verdict {
        abi::EVENT_VERDICT_FORWARDED | abi::EVENT_VERDICT_REDIRECTED => {
            (rule.iter().map(|r| policy(&r.policy)).collect(), Vec::new())
        }
        abi::EVENT_VERDICT_AUDIT => (Vec::new(), rule.iter().map(|r| policy(&r.policy)).collect()),
        abi::EVENT_VERDICT_DROPPED if default_deny => {
            (Vec::new(), isolated.iter().map(policy).collect())
        }
        abi::EVENT_VERDICT_DROPPED => {
            (Vec::new(), rule.iter().map(|r| policy(&r.policy)).collect())
        }
        _ => (Vec::new(), Vec::new()),
    };
    if let Some(d) = dir {
        if !allowed.is_empty() {
            flow.insert(format!("{d}_allowed_by"), Value::Array(allowed));
        }
        if !denied.is_empty() {
            flow.insert(format!("{d}_denied_by"), Value::Array(denied));
        }
    }

    flow.insert(
        "Summary".into(),
        json!(summary(
            ev,
            proto,
            src_ip,
            dst_ip,
            sport,
            dport,
            rule.as_ref(),
            &isolated,
            dir
        )),
    );

    let mut ext = Map::new();
    ext.insert("@type".into(), json!(EXTENSIONS_TYPE));
    ext.insert("rule_id".into(), json!(ev.rule_id));
    if let Some(r) = &rule {
        ext.insert("rule".into(), json!(rule_text(r)));
        ext.insert("rule_index".into(), json!(r.index));
    } else if ev.rule_id == abi::RULE_ID_NOT_ISOLATED {
        ext.insert("rule".into(), json!("not isolated"));
    }
    if default_deny {
        ext.insert(
            "isolated_by".into(),
            json!(isolated.iter().map(ToString::to_string).collect::<Vec<_>>()),
        );
    }
    ext.insert("kind".into(), json!(kind_name(ev.kind)));
    ext.insert("policy_revision".into(), json!(ev.revision));
    if ev.packet_len != 0 {
        ext.insert("packet_len".into(), json!(ev.packet_len));
    }
    flow.insert("extensions".into(), Value::Object(ext));
    Value::Object(flow)
}

fn render_l4(ev: &VerdictEvent, sport: u16, dport: u16) -> Option<Value> {
    let ports = || json!({"source_port": sport, "destination_port": dport});
    Some(match Protocol(ev.protocol) {
        Protocol::TCP => {
            let mut tcp = Map::new();
            tcp.insert("source_port".into(), json!(sport));
            tcp.insert("destination_port".into(), json!(dport));
            let flags: Map<String, Value> = TCP_FLAGS
                .iter()
                .filter(|(bit, _)| ev.tcp_flags & bit != 0)
                .map(|(_, name)| ((*name).to_string(), json!(true)))
                .collect();
            if !flags.is_empty() {
                tcp.insert("flags".into(), Value::Object(flags));
            }
            json!({ "TCP": tcp })
        }
        Protocol::UDP => json!({ "UDP": ports() }),
        Protocol::SCTP => json!({ "SCTP": ports() }),
        Protocol::ICMP => json!({ "ICMPv4": {"type": ev.tcp_flags} }),
        Protocol::ICMPV6 => json!({ "ICMPv6": {"type": ev.tcp_flags} }),
        _ => return None,
    })
}

fn render_endpoint(e: &FlowEndpoint) -> Value {
    let mut m = Map::new();
    m.insert("identity".into(), json!(e.identity));
    if !e.namespace.is_empty() {
        m.insert("namespace".into(), json!(e.namespace));
    }
    if !e.labels.is_empty() {
        m.insert("labels".into(), json!(e.labels));
    }
    if !e.pod_name.is_empty() {
        m.insert("pod_name".into(), json!(e.pod_name));
    }
    if !e.workloads.is_empty() {
        m.insert(
            "workloads".into(),
            Value::Array(
                e.workloads
                    .iter()
                    .map(|(kind, name)| json!({"name": name, "kind": kind}))
                    .collect(),
            ),
        );
    }
    Value::Object(m)
}

fn hostport(ip: Option<IpAddr>, port: u16, with_port: bool) -> String {
    match (ip, with_port) {
        (Some(IpAddr::V6(a)), true) => format!("[{a}]:{port}"),
        (Some(a), true) => format!("{a}:{port}"),
        (Some(a), false) => a.to_string(),
        (None, _) => "?".to_string(),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the parts of one event"
)]
fn summary(
    ev: &VerdictEvent,
    proto: Protocol,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: u16,
    dport: u16,
    rule: Option<&RuleRef>,
    isolated: &[PolicyRef],
    dir: Option<Direction>,
) -> String {
    let ports = proto.has_ports();
    let proto_name = match (proto, ev.family) {
        (Protocol::ICMP, _) => "ICMPv4".to_string(),
        (p, _) => p.to_string(),
    };
    let flow = format!(
        "{proto_name} {} -> {}",
        hostport(src, sport, ports),
        hostport(dst, dport, ports)
    );
    let by_rule = |verb: &str| match rule {
        Some(r) => format!("{verb} by {}", rule_text(r)),
        None => format!("{verb} by rule {}", ev.rule_id),
    };
    let decision = match ev.verdict {
        abi::EVENT_VERDICT_FORWARDED if ev.rule_id == abi::RULE_ID_NOT_ISOLATED => match dir {
            Some(d) => format!("allowed, {d} not isolated"),
            None => "allowed, not isolated".to_string(),
        },
        abi::EVENT_VERDICT_FORWARDED if ev.rule_id >= abi::RULE_ID_FIRST_POLICY => {
            by_rule("allowed")
        }
        abi::EVENT_VERDICT_FORWARDED => "allowed".to_string(),
        abi::EVENT_VERDICT_REDIRECTED => format!(
            "redirected to proxy port {}, {}",
            u16::from_be(ev.proxy_port_be),
            by_rule("allowed")
        ),
        abi::EVENT_VERDICT_AUDIT => format!("audit: {}", by_rule("would be denied")),
        abi::EVENT_VERDICT_DROPPED => match ev.drop_reason as u32 {
            abi::DROP_POLICY_DENIED if ev.rule_id == abi::RULE_ID_NONE => {
                if isolated.is_empty() {
                    "default deny".to_string()
                } else {
                    format!(
                        "default deny, isolated by {}",
                        isolated
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            }
            abi::DROP_POLICY_DENY => by_rule("denied"),
            r => format!("dropped: {}", abi::drop_reason_name(r)),
        },
        v => format!("verdict {}", verdict_name(v)),
    };
    let suffix = match ev.kind {
        abi::EVENT_KIND_CT_CLOSE => " (connection closed)",
        abi::EVENT_KIND_REVOKED => " (tracked flow revoked after a policy change)",
        _ => "",
    };
    format!("{flow} {decision}{suffix}")
}

/// One verdict log line: `{"flow":…,"node_name":…,"time":…}`.
pub fn render_line(
    ev: &VerdictEvent,
    resolver: &dyn FlowResolver,
    node_name: &str,
    time: WallTime,
    uuid: &str,
) -> String {
    let v = json!({
        "flow": render_flow(ev, resolver, node_name, time, uuid),
        "node_name": node_name,
        "time": time.rfc3339(),
    });
    v.to_string()
}

/// Where lost events were lost (Hubble `LostEventSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostSource {
    /// The datapath could not reserve ring buffer space (`COUNTER_EVENTS_LOST`).
    RingBuffer,
    /// User space could not write events it had read.
    Writer,
}

impl LostSource {
    pub fn hubble_name(self) -> &'static str {
        match self {
            LostSource::RingBuffer => "PERF_EVENT_RING_BUFFER",
            LostSource::Writer => "OBSERVER_EVENTS_QUEUE",
        }
    }
}

/// A Hubble `lost_events` line.
pub fn render_lost_line(source: LostSource, lost: u64, node_name: &str, time: WallTime) -> String {
    json!({
        "lost_events": {
            "source": source.hubble_name(),
            "num_events_lost": lost,
            "cpu": null,
        },
        "node_name": node_name,
        "time": time.rfc3339(),
    })
    .to_string()
}

// ---- writing -------------------------------------------------------------------------------

/// Appends lines to a file and rotates it by size: `log` -> `log.1` -> … -> `log.N`, the
/// oldest dropped. A line is accepted when `write_line` returns `Ok`; an accepted line is
/// flushed before any rotation, so rotation never loses one. Between rotations lines sit
/// in a buffer until [`RotatingWriter::flush`] (call it after each batch of events).
#[derive(Debug)]
pub struct RotatingWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    fsync: bool,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl RotatingWriter {
    /// Opens (appending) or creates `path`, creating its parent directories.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: u32,
        fsync: bool,
    ) -> Result<RotatingWriter, FlowLogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| FlowLogError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut w = RotatingWriter {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            fsync,
            file: None,
            size: 0,
        };
        w.reopen()?;
        Ok(w)
    }

    pub fn from_config(cfg: &Config) -> Result<RotatingWriter, FlowLogError> {
        RotatingWriter::open(
            &cfg.verdict_log,
            cfg.verdict_log_max_bytes,
            cfg.verdict_log_keep,
            cfg.verdict_log_fsync,
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the current file, buffered lines included.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path of rotated file `n` (1 = newest).
    pub fn rotated_path(&self, n: u32) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Appends `line` and a newline, rotating first when the line would take a non-empty
    /// file past the size limit (a line longer than the limit gets a file of its own).
    /// `Err` means the line was not accepted.
    pub fn write_line(&mut self, line: &str) -> Result<(), FlowLogError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let path = &self.path;
        let f = self.file.as_mut().ok_or_else(|| FlowLogError::Open {
            path: path.clone(),
            source: std::io::Error::other("log file not open"),
        })?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .map_err(|source| FlowLogError::Write {
                path: path.clone(),
                source,
            })?;
        self.size += len;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), FlowLogError> {
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(|source| FlowLogError::Write {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), FlowLogError> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
            .map_err(|source| FlowLogError::Open {
                path: self.path.clone(),
                source,
            })?;
        self.size = f
            .metadata()
            .map_err(|source| FlowLogError::Open {
                path: self.path.clone(),
                source,
            })?
            .len();
        self.file = Some(BufWriter::with_capacity(64 * 1024, f));
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), FlowLogError> {
        // Everything accepted reaches the file before it is renamed away.
        self.flush()?;
        if let Some(f) = self.file.as_mut()
            && self.fsync
        {
            f.get_ref()
                .sync_all()
                .map_err(|source| FlowLogError::Write {
                    path: self.path.clone(),
                    source,
                })?;
        }
        let oldest = self.rotated_path(self.keep);
        match std::fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FlowLogError::Rotate {
                    from: oldest.clone(),
                    to: oldest,
                    source,
                });
            }
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated_path(n);
            let to = self.rotated_path(n + 1);
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(FlowLogError::Rotate { from, to, source }),
            }
        }
        let to = self.rotated_path(1);
        std::fs::rename(&self.path, &to).map_err(|source| FlowLogError::Rotate {
            from: self.path.clone(),
            to,
            source,
        })?;
        self.file = None;
        self.size = 0;
        self.reopen()
    }
}

/// The verdict log as the enforcer uses it: renders events, assigns ids and times, and
/// accounts for every lost event.
#[derive(Debug)]
pub struct FlowLogger {
    writer: RotatingWriter,
    node_name: String,
    clock: BootClock,
    ids: FlowIds,
    /// The datapath's lost-events counter as last reported.
    ring_lost_seen: u64,
    /// Events this process failed to write, not yet reported.
    writer_lost_pending: u64,
}

impl FlowLogger {
    pub fn new(writer: RotatingWriter, node_name: &str, clock: BootClock) -> FlowLogger {
        FlowLogger {
            writer,
            node_name: node_name.to_string(),
            clock,
            ids: FlowIds::new(),
            ring_lost_seen: 0,
            writer_lost_pending: 0,
        }
    }

    pub fn with_ids(mut self, ids: FlowIds) -> FlowLogger {
        self.ids = ids;
        self
    }

    pub fn writer(&self) -> &RotatingWriter {
        &self.writer
    }

    pub fn clock_mut(&mut self) -> &mut BootClock {
        &mut self.clock
    }

    /// Writes one event. A failed write is counted and reported as a `lost_events` line
    /// once writing works again.
    pub fn log(
        &mut self,
        ev: &VerdictEvent,
        resolver: &dyn FlowResolver,
    ) -> Result<(), FlowLogError> {
        self.report_writer_losses()?;
        let uuid = self.ids.next_id();
        let line = render_line(
            ev,
            resolver,
            &self.node_name,
            self.clock.to_wall(ev.time_ns),
            &uuid,
        );
        self.writer.write_line(&line).inspect_err(|_| {
            self.writer_lost_pending += 1;
        })
    }

    /// Takes the datapath's cumulative lost-events count (summed over CPUs) and writes a
    /// `lost_events` line with the growth since the last call. Returns the growth.
    pub fn observe_ring_lost(&mut self, total: u64) -> Result<u64, FlowLogError> {
        // A counter that went backwards was reset (datapath reloaded): count from there.
        let delta = if total >= self.ring_lost_seen {
            total - self.ring_lost_seen
        } else {
            total
        };
        if delta == 0 {
            return Ok(0);
        }
        let line = render_lost_line(
            LostSource::RingBuffer,
            delta,
            &self.node_name,
            WallTime::now(),
        );
        self.writer.write_line(&line)?;
        self.ring_lost_seen = total;
        Ok(delta)
    }

    pub fn flush(&mut self) -> Result<(), FlowLogError> {
        self.writer.flush()
    }

    fn report_writer_losses(&mut self) -> Result<(), FlowLogError> {
        if self.writer_lost_pending == 0 {
            return Ok(());
        }
        let line = render_lost_line(
            LostSource::Writer,
            self.writer_lost_pending,
            &self.node_name,
            WallTime::now(),
        );
        self.writer.write_line(&line)?;
        self.writer_lost_pending = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
