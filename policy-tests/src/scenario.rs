//! Scenario files: flows with an expected verdict, checked against the compiled maps.
//!
//! ```yaml
//! scenarios:
//!   - name: frontend may call the API
//!     from: production/frontend      # pod "ns/name"; workload "ns/Kind/name"; or {ip: 203.0.113.7}
//!     to: production/backend         # or {service: production/api}: each backend, decided
//!     sourcePort: 40000              # with a service: only the backend Maglev picks
//!     port: 8080                     # number, or a container-port name of the destination
//!     protocol: TCP                  # TCP (default) | UDP | SCTP
//!     expect: allow                  # allow | deny | deny-403 | deny-400
//!     http: {method: GET, path: /api/v1/data, host: backend, headers: {x-tenant: a}}
//! ```
//!
//! `http:` makes the scenario one HTTP request on the connection: where a side sends the
//! connection to the L7 proxy, the request is decided by its HTTP rules (`deny-403`: an HTTP
//! rule denies it or none allows it; `deny-400`: the proxy refuses the request itself, e.g. an
//! encoded slash in the path). `deny` is an L3/L4 deny. Unknown fields are errors naming the
//! field, with a `file:line:column` position.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use policy_compiler::eval::maps;
use policy_compiler::{Decision, Direction, Flow, FlowPeer, Protocol, Verdict};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::analysis::Analysis;
use crate::error::{EndpointError, InputError};
use crate::output::Progress;

/// The expected (or actual) outcome of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    /// Denied at L3/L4 (no connection).
    Deny,
    /// The L7 proxy answers 403: an HTTP rule denies the request or none allows it.
    #[serde(rename = "deny-403")]
    Deny403,
    /// The L7 proxy refuses the request itself (400, or 414 for a long target).
    #[serde(rename = "deny-400")]
    Deny400,
}

impl Expect {
    pub fn of(allowed: bool) -> Expect {
        if allowed { Expect::Allow } else { Expect::Deny }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Deny403 => "deny-403",
            Expect::Deny400 => "deny-400",
        })
    }
}

/// A flow end as written: a name (`ns/name`, `ns/Kind/name`, `ns/name[Kind]`), an
/// address (`{ip: ...}`), or, as a destination, a service (`{service: ns/name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PeerSpec {
    Name(String),
    Ip { ip: IpAddr },
    Service { service: String },
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSpec::Name(n) => f.write_str(n),
            PeerSpec::Ip { ip } => write!(f, "{ip}"),
            PeerSpec::Service { service } => write!(f, "service {service}"),
        }
    }
}

impl<'de> Deserialize<'de> for PeerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PeerSpec, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PeerSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an endpoint name (ns/name, ns/Kind/name), {ip: ADDRESS} or {service: ns/name}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PeerSpec, E> {
                Ok(PeerSpec::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<PeerSpec, A::Error> {
                let mut out: Option<PeerSpec> = None;
                while let Some(k) = m.next_key::<String>()? {
                    if out.is_some() {
                        return Err(de::Error::custom(format!(
                            "{k}: give one of `ip` or `service`, not both"
                        )));
                    }
                    let s: String = m.next_value()?;
                    out = Some(match k.as_str() {
                        "ip" => PeerSpec::Ip {
                            ip: s.parse::<IpAddr>().map_err(|_| {
                                de::Error::custom(format!("invalid IP address {s:?}"))
                            })?,
                        },
                        "service" => {
                            if s.split('/').count() != 2 || s.split('/').any(str::is_empty) {
                                return Err(de::Error::custom(format!(
                                    "service {s:?}: expected namespace/name"
                                )));
                            }
                            PeerSpec::Service { service: s }
                        }
                        _ => return Err(de::Error::unknown_field(&k, &["ip", "service"])),
                    });
                }
                out.ok_or_else(|| de::Error::missing_field("ip"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A destination port as written: a number, or a container-port name of the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

impl std::str::FromStr for PortRef {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRef, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(PortRef::Number(n)),
                _ => Err(format!("port {s} is out of range 1-65535")),
            };
        }
        if s.is_empty() {
            return Err("empty port".into());
        }
        Ok(PortRef::Name(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRef, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or a container-port name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRef, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p > 0)
                    .map(PortRef::Number)
                    .ok_or_else(|| E::custom(format!("port {v} is out of range 1-65535")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRef, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("port {v} is out of range 1-65535"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRef, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An HTTP request on the scenario's connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    scenarios: Vec<Spanned<RawScenario>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    from: Spanned<PeerSpec>,
    to: Spanned<PeerSpec>,
    port: Spanned<PortRef>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    expect: Expect,
    #[serde(default)]
    http: Option<Spanned<HttpSpec>>,
    #[serde(default, rename = "sourcePort")]
    source_port: Option<Spanned<u16>>,
}

/// A position in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl Position {
    fn at(file: &Path, l: &Location) -> Position {
        Position {
            file: file.to_path_buf(),
            line: l.line(),
            column: l.column(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One scenario, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub from: PeerSpec,
    pub to: PeerSpec,
    pub port: PortRef,
    pub protocol: Protocol,
    pub expect: Expect,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::l7::HttpQuery>,
    /// With a service destination: the client's source port, so the one backend Maglev
    /// picks for the 5-tuple is decided (all backends otherwise).
    #[serde(skip_serializing_if = "Option::is_none", rename = "sourcePort")]
    pub source_port: Option<u16>,
    #[serde(skip)]
    pub at: Position,
    #[serde(skip)]
    from_at: Position,
    #[serde(skip)]
    to_at: Position,
    #[serde(skip)]
    port_at: Position,
}

/// The scenarios of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioFile {
    pub path: PathBuf,
    pub scenarios: Vec<Scenario>,
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<ScenarioFile, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            InputError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            InputError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    parse(path, &text)
}

/// Parses scenario YAML; `path` is used in messages.
pub fn parse(path: &Path, text: &str) -> Result<ScenarioFile, InputError> {
    if text.trim().is_empty() {
        return Err(InputError::Syntax {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "empty file: expected a mapping with `scenarios:`".into(),
        });
    }
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        InputError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: first_line(&e.to_string()),
        }
    })?;
    let mut scenarios = Vec::with_capacity(raw.scenarios.len());
    for s in raw.scenarios {
        let at = Position::at(path, &s.referenced);
        let r = s.value;
        let http = match &r.http {
            None => None,
            Some(h) => {
                let location =
                    || key_position(path, text, "http", &s.referenced, &h.referenced).to_string();
                let method = h.value.method.clone().unwrap_or_else(|| "GET".to_string());
                if !palisade_l7proxy::request::is_token(&method) {
                    return Err(InputError::Scenario {
                        location: location(),
                        scenario: r.name,
                        message: format!("http.method {method:?} is not an HTTP method token"),
                    });
                }
                Some(crate::l7::HttpQuery {
                    method,
                    path: h.value.path.clone().unwrap_or_else(|| "/".to_string()),
                    host: h.value.host.clone(),
                    headers: h.value.headers.clone().unwrap_or_default(),
                })
            }
        };
        if http.is_none() && matches!(r.expect, Expect::Deny403 | Expect::Deny400) {
            return Err(InputError::Scenario {
                location: at.to_string(),
                scenario: r.name,
                message: format!("expect: {} needs an `http:` request", r.expect),
            });
        }
        let protocol = match &r.protocol {
            None => Protocol::TCP,
            Some(p) => Protocol::from_name(&p.value)
                .filter(|p| p.has_ports())
                .ok_or_else(|| InputError::Scenario {
                    location: Position::at(path, &p.referenced).to_string(),
                    scenario: r.name.clone(),
                    message: format!("unknown protocol {:?}: expected TCP, UDP or SCTP", p.value),
                })?,
        };
        if matches!(r.from.value, PeerSpec::Service { .. }) {
            return Err(InputError::Scenario {
                location: Position::at(path, &r.from.referenced).to_string(),
                scenario: r.name,
                message: "from: a service is a destination only; name a pod or an address".into(),
            });
        }
        let source_port = match &r.source_port {
            None => None,
            Some(p) if !matches!(r.to.value, PeerSpec::Service { .. }) => {
                return Err(InputError::Scenario {
                    location: Position::at(path, &p.referenced).to_string(),
                    scenario: r.name,
                    message: "sourcePort picks a service backend: `to` must be {service: ns/name}"
                        .into(),
                });
            }
            Some(p) if p.value == 0 => {
                return Err(InputError::Scenario {
                    location: Position::at(path, &p.referenced).to_string(),
                    scenario: r.name,
                    message: "sourcePort 0 is out of range 1-65535".into(),
                });
            }
            Some(p) => Some(p.value),
        };
        scenarios.push(Scenario {
            name: r.name,
            source_port,
            from_at: Position::at(path, &r.from.referenced),
            to_at: Position::at(path, &r.to.referenced),
            port_at: Position::at(path, &r.port.referenced),
            from: r.from.value,
            to: r.to.value,
            port: r.port.value,
            protocol,
            expect: r.expect,
            http,
            at,
        });
    }
    Ok(ScenarioFile {
        path: path.to_path_buf(),
        scenarios,
    })
}

/// The position of the key `key` whose value starts at `value`: a block mapping value
/// starts on the line after its key, so look back (not past the scenario's start).
fn key_position(
    path: &Path,
    text: &str,
    key: &str,
    scenario: &Location,
    value: &Location,
) -> Position {
    let lines: Vec<&str> = text.lines().collect();
    let first = scenario.line().max(1);
    let mut l = value.line();
    while l >= first {
        if let Some(line) = lines.get((l - 1) as usize) {
            let body = line.trim_start().trim_start_matches("- ");
            if body
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
            {
                let column = (line.len() - body.len() + 1) as u64;
                return Position {
                    file: path.to_path_buf(),
                    line: l,
                    column,
                };
            }
        }
        l -= 1;
    }
    Position::at(path, value)
}

/// serde-saphyr renders `error: line L column C: message` and may append a source
/// snippet; the position is given apart, so keep the message alone.
pub(crate) fn first_line(msg: &str) -> String {
    let mut line = msg.lines().next().unwrap_or(msg).trim();
    line = line.strip_prefix("error: ").unwrap_or(line);
    if let Some((pos, msg)) = line.strip_prefix("line ").and_then(|r| r.split_once(": "))
        && pos
            .split(" column ")
            .all(|n| n.bytes().all(|b| b.is_ascii_digit()))
    {
        line = msg;
    }
    if let Some(i) = line.rfind(" at line ")
        && line[i + 9..]
            .split(", column ")
            .all(|n| n.bytes().all(|b| b.is_ascii_digit()))
    {
        line = &line[..i];
    }
    line.to_string()
}

/// Resolves a flow end that is an endpoint or an address (a service is resolved by
/// [`resolve_service`]).
pub fn resolve_peer(a: &Analysis, p: &PeerSpec) -> Result<FlowPeer, EndpointError> {
    match p {
        PeerSpec::Ip { ip } => Ok(FlowPeer::Ip(*ip)),
        PeerSpec::Name(n) => a.resolve(n),
        PeerSpec::Service { service } => Err(EndpointError::Malformed {
            name: service.clone(),
            reason: "a service is a destination only".into(),
        }),
    }
}

/// How a scenario to a service was translated: the frontend and the backend the flow
/// reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Via {
    pub service: String,
    /// `vip:port`.
    pub frontend: String,
    /// `addr:port`.
    pub backend: String,
    /// The backend's endpoint key, or its address when the manifests have no pod for it.
    pub endpoint: String,
}

/// The flows a scenario to `service` makes: one per backend of the frontend the port names
/// (the service's first cluster IP of the source's family), or, with a source port, the one
/// backend Maglev picks for that 5-tuple.
pub fn resolve_service(
    a: &Analysis,
    src: &FlowPeer,
    service: &str,
    port: &PortRef,
    protocol: Protocol,
    source_port: Option<u16>,
) -> Result<Vec<(Flow, Via)>, EndpointError> {
    use policy_compiler::services::{backends, maglev};
    let cluster = &a.services;
    let (ns, name) = service.split_once('/').unwrap_or(("", service));
    let svc = cluster
        .services
        .get(&(ns.to_string(), name.to_string()))
        .ok_or_else(|| EndpointError::UnknownService {
            name: service.to_string(),
            known: cluster
                .services
                .keys()
                .map(|(n, s)| format!("{n}/{s}"))
                .collect(),
        })?;
    let src_ip: Option<IpAddr> = match src {
        FlowPeer::Ip(ip) => Some(*ip),
        FlowPeer::Endpoint(k) => cluster
            .endpoints
            .get(k)
            .and_then(|e| e.ips.first().copied()),
    };
    let frontends = backends::frontends(cluster, svc, maglev::DEFAULT_TABLE_SIZE).map_err(|e| {
        EndpointError::ServiceTable {
            service: service.to_string(),
            reason: e.to_string(),
        }
    })?;
    if frontends.is_empty() && svc.cluster_ips.is_empty() {
        return Err(EndpointError::Headless {
            service: service.to_string(),
        });
    }
    let matches_port = |f: &&backends::FrontendBackends| {
        f.frontend.kind == backends::FrontendKind::ClusterIp
            && f.frontend.protocol == protocol
            && match port {
                PortRef::Number(n) => f.frontend.port == *n,
                PortRef::Name(n) => f.port.name.as_deref() == Some(n.as_str()),
            }
    };
    let family = |f: &&backends::FrontendBackends| {
        src_ip.is_none_or(|ip| ip.is_ipv4() == f.frontend.vip.is_ipv4())
    };
    let fb = frontends
        .iter()
        .filter(matches_port)
        .find(family)
        .or_else(|| frontends.iter().find(matches_port))
        .ok_or_else(|| EndpointError::UnknownServicePort {
            service: service.to_string(),
            port: port.to_string(),
            protocol: protocol.to_string(),
            known: svc
                .ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{} ({} {})", n, p.protocol, p.port),
                    None => format!("{} {}", p.protocol, p.port),
                })
                .collect(),
        })?;
    let frontend = match fb.frontend.vip {
        IpAddr::V4(v) => format!("{v}:{}", fb.frontend.port),
        IpAddr::V6(v) => format!("[{v}]:{}", fb.frontend.port),
    };
    let chosen: Vec<&backends::Backend> = match (source_port, src_ip) {
        (Some(sport), Some(ip)) => fb.pick(ip, sport).into_iter().collect(),
        _ => fb.backends.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(EndpointError::NoBackends {
            service: service.to_string(),
            port: port.to_string(),
            skipped: fb
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.endpoint, s.reason))
                .collect(),
        });
    }
    Ok(chosen
        .into_iter()
        .map(|b| {
            (
                Flow {
                    src: src.clone(),
                    // A backend the manifests have no pod for (an EndpointSlice endpoint
                    // without a known targetRef) is decided by its address.
                    dst: b
                        .endpoint
                        .clone()
                        .map_or(FlowPeer::Ip(b.addr), FlowPeer::Endpoint),
                    protocol,
                    port: b.port,
                },
                Via {
                    service: service.to_string(),
                    frontend: frontend.clone(),
                    backend: b.maglev_name(),
                    endpoint: b.endpoint.clone().unwrap_or_else(|| b.addr.to_string()),
                },
            )
        })
        .collect())
}

/// Resolves a port for a destination: numbers as they are, names against the destination
/// endpoint's container ports of that protocol.
pub fn resolve_port(
    a: &Analysis,
    dst: &FlowPeer,
    port: &PortRef,
    protocol: Protocol,
) -> Result<u16, EndpointError> {
    match port {
        PortRef::Number(n) => Ok(*n),
        PortRef::Name(name) => match dst {
            FlowPeer::Ip(ip) => Err(EndpointError::NamedPortToIp {
                port: name.clone(),
                destination: ip.to_string(),
            }),
            FlowPeer::Endpoint(k) => {
                let ep = a.cluster().endpoints.get(k);
                match ep.and_then(|e| e.named_port(name, protocol)) {
                    Some(p) => Ok(p),
                    None => Err(EndpointError::UnknownPortName {
                        port: name.clone(),
                        protocol: protocol.to_string(),
                        destination: a.peer_display(dst),
                        known: ep
                            .map(|e| {
                                e.ports
                                    .iter()
                                    .map(|p| format!("{} ({} {})", p.name, p.protocol, p.port))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }),
                }
            }
        },
    }
}

/// A scenario resolved against the manifests: one flow, or, to a service, one per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedScenario {
    pub scenario: Scenario,
    pub flow: Flow,
    pub via: Option<Via>,
}

/// Resolves every scenario; the first problem is an error (nothing is evaluated then).
pub fn resolve_all(a: &Analysis, file: &ScenarioFile) -> Result<Vec<ResolvedScenario>, InputError> {
    let mut out = Vec::with_capacity(file.scenarios.len());
    for s in &file.scenarios {
        let err = |at: &Position, e: EndpointError| InputError::Scenario {
            location: at.to_string(),
            scenario: s.name.clone(),
            message: e.to_string(),
        };
        let src = resolve_peer(a, &s.from).map_err(|e| err(&s.from_at, e))?;
        if let PeerSpec::Service { service } = &s.to {
            let flows = resolve_service(a, &src, service, &s.port, s.protocol, s.source_port)
                .map_err(|e| err(&s.to_at, e))?;
            for (flow, via) in flows {
                out.push(ResolvedScenario {
                    scenario: s.clone(),
                    flow,
                    via: Some(via),
                });
            }
            continue;
        }
        let dst = resolve_peer(a, &s.to).map_err(|e| err(&s.to_at, e))?;
        let port = resolve_port(a, &dst, &s.port, s.protocol).map_err(|e| err(&s.port_at, e))?;
        out.push(ResolvedScenario {
            scenario: s.clone(),
            flow: Flow {
                src,
                dst,
                protocol: s.protocol,
                port,
            },
            via: None,
        });
    }
    Ok(out)
}

/// The result of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub scenario: Scenario,
    pub flow: Flow,
    /// The service translation, for a scenario to a service.
    pub via: Option<Via>,
    pub verdict: Verdict,
    pub actual: Expect,
    pub pass: bool,
    /// The deciding rule(s) or the reason for a deny.
    pub deciding: String,
    pub elapsed: Duration,
}

/// Evaluates resolved scenarios with the map-level evaluator. Adds its work to `progress`
/// and leaves finishing it to the caller.
pub fn run(a: &Analysis, scenarios: &[ResolvedScenario], progress: &Progress) -> Vec<Outcome> {
    progress.add_length(scenarios.len() as u64);
    scenarios
        .iter()
        .map(|r| {
            let t = std::time::Instant::now();
            let verdict = maps::evaluate(&a.engine, &r.flow);
            let mut actual = Expect::of(verdict.allowed());
            let mut deciding = describe(a, &verdict);
            if let (Some(q), true) = (&r.scenario.http, verdict.allowed()) {
                let o = crate::l7::evaluate(a, &r.flow, q);
                (actual, deciding) = http_result(&o, deciding);
            }
            progress.inc(1);
            Outcome {
                pass: actual == r.scenario.expect,
                scenario: r.scenario.clone(),
                flow: r.flow.clone(),
                via: r.via.clone(),
                verdict,
                actual,
                deciding,
                elapsed: t.elapsed(),
            }
        })
        .collect()
}

/// The outcome of a request the L3/L4 verdict lets through, and what decided it.
fn http_result(o: &crate::l7::HttpOutcome, l4: String) -> (Expect, String) {
    if let Some(why) = &o.refused {
        return (
            Expect::Deny400,
            format!(
                "refused by the L7 proxy ({}): {why}",
                o.status.unwrap_or(400)
            ),
        );
    }
    if o.sides.is_empty() {
        return (
            Expect::Allow,
            format!("{l4} (no L7 rules: requests are not inspected)"),
        );
    }
    for side in &o.sides {
        let rule = side.rule.clone().unwrap_or_default();
        match side.decision.as_str() {
            "allow" => {}
            "deny" => {
                return (
                    Expect::Deny403,
                    format!("denied (403) by {rule} ({})", side.direction),
                );
            }
            "no-match" => {
                let of = if rule.is_empty() {
                    String::new()
                } else {
                    format!(" of {rule}")
                };
                return (
                    Expect::Deny403,
                    format!(
                        "denied (403): no HTTP rule{of} allows it ({})",
                        side.direction
                    ),
                );
            }
            _ => {
                return (
                    Expect::Deny400,
                    format!(
                        "refused ({}): {} ({})",
                        side.status.unwrap_or(400),
                        side.decision,
                        side.direction
                    ),
                );
            }
        }
    }
    let rules: Vec<String> = o.sides.iter().filter_map(|s| s.rule.clone()).collect();
    let audits: Vec<String> = o
        .sides
        .iter()
        .filter_map(|s| {
            s.audit
                .as_ref()
                .map(|a| format!("audit: {a} ({})", s.direction))
        })
        .collect();
    let mut text = if rules.is_empty() {
        l4
    } else {
        format!("allowed by {}", rules.join(", "))
    };
    for a in audits {
        text.push_str("; ");
        text.push_str(&a);
    }
    (Expect::Allow, text)
}

/// What decided a verdict: the allowing rules (`prod/allow-web ingress[0]`), `allowed: not
/// isolated`, or the denying side (`default deny: isolated by prod/deny-all (ingress)`).
pub fn describe(a: &Analysis, v: &Verdict) -> String {
    let sides = [
        (Direction::Egress, v.egress.as_ref()),
        (Direction::Ingress, v.ingress.as_ref()),
    ];
    if v.allowed() {
        let rules: Vec<String> = sides
            .iter()
            .filter_map(|(dir, d)| match d {
                // Forwarded only because of audit mode: say what enforcement would do.
                Some(Decision::Denied { rule, audit: true }) => Some(format!(
                    "audit: would deny: {} ({dir})",
                    rule_name(a, *rule)
                )),
                _ => d.and_then(Decision::rule).map(|rule| rule_name(a, rule)),
            })
            .collect();
        if rules.is_empty() {
            "allowed: not isolated".to_string()
        } else {
            rules.join(", ")
        }
    } else {
        let reasons: Vec<String> = sides
            .iter()
            .filter_map(|(dir, d)| match d {
                Some(Decision::DefaultDeny { isolated_by }) => Some(format!(
                    "default deny: isolated by {} ({dir})",
                    join_policies(isolated_by)
                )),
                Some(Decision::NotReady) => {
                    Some(format!("{dir}: endpoint has no policy map (not ready)"))
                }
                Some(Decision::InvalidIdentity) => {
                    Some(format!("{dir}: peer address has no identity"))
                }
                Some(Decision::Denied { rule, .. }) => {
                    Some(format!("denied by {} ({dir})", rule_name(a, *rule)))
                }
                _ => None,
            })
            .collect();
        reasons.join("; ")
    }
}

/// `ns/name direction[index]` for a rule id.
pub fn rule_name(a: &Analysis, rule: u32) -> String {
    a.engine
        .rules()
        .resolve(rule)
        .map(|r| {
            // A rule of the admin or baseline tier: its name, tier and priority too.
            let tiered = a.cluster().policies.get(&r.policy).and_then(|p| {
                let name = p.rules(r.direction)?.get(r.index)?.name.clone();
                match p.tier {
                    policy_compiler::model::PolicyTier::NetworkPolicy => None,
                    t => Some((name, t)),
                }
            });
            match tiered {
                None => r.to_string(),
                Some((name, t)) => {
                    let name = name.map(|n| format!(" {n:?}")).unwrap_or_default();
                    format!("{r}{name} ({} tier, priority {})", t.name(), t.priority())
                }
            }
        })
        .unwrap_or_else(|| match rule {
            policy_compiler::abi::RULE_ID_HOST => "traffic from the node (always allowed)".into(),
            policy_compiler::abi::RULE_ID_NONE => {
                "default deny (the namespace is in audit mode)".into()
            }
            _ => format!("rule #{rule}"),
        })
}

/// Counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
}

pub fn summary(outcomes: &[Outcome]) -> Summary {
    let passed = outcomes.iter().filter(|o| o.pass).count();
    Summary {
        total: outcomes.len(),
        passed,
        failed: outcomes.len() - passed,
    }
}

fn flow_text(o: &Outcome) -> String {
    match &o.via {
        None => format!(
            "{} -> {} {}/{}",
            o.scenario.from, o.scenario.to, o.flow.port, o.flow.protocol
        ),
        Some(v) => format!(
            "{} -> service {} {} -> {} {} {}/{}",
            o.scenario.from,
            v.service,
            v.frontend,
            v.endpoint,
            v.backend,
            o.flow.port,
            o.flow.protocol
        ),
    }
}

/// Plain text: one line per scenario, then `N passed, N failed`.
pub fn to_plain(files: &[(PathBuf, Vec<Outcome>)]) -> String {
    let mut s = String::new();
    let mut all = Vec::new();
    for (path, outcomes) in files {
        if files.len() > 1 {
            s.push_str(&format!("{}:\n", path.display()));
        }
        for o in outcomes {
            s.push_str(&format!(
                "{}  {}: {}: {} (expected {}); {}\n",
                if o.pass { "PASS" } else { "FAIL" },
                crate::output::escape_text(&o.scenario.name),
                flow_text(o),
                o.actual,
                o.scenario.expect,
                o.deciding
            ));
        }
        all.extend(outcomes.iter().cloned());
    }
    let sm = summary(&all);
    s.push_str(&format!("{} passed, {} failed\n", sm.passed, sm.failed));
    s
}

/// A table for terminals.
pub fn to_table(files: &[(PathBuf, Vec<Outcome>)]) -> String {
    let mut t = crate::output::table(&[
        "Scenario",
        "Flow",
        "Verdict",
        "Expected",
        "Deciding policy/rule",
        "Result",
    ]);
    let mut all = Vec::new();
    for (_, outcomes) in files {
        for o in outcomes {
            t.add_row(vec![
                crate::output::escape_text(&o.scenario.name).into_owned(),
                flow_text(o),
                o.actual.to_string(),
                o.scenario.expect.to_string(),
                o.deciding.clone(),
                if o.pass {
                    "PASS".to_string()
                } else {
                    "FAIL".to_string()
                },
            ]);
        }
        all.extend(outcomes.iter().cloned());
    }
    let sm = summary(&all);
    format!("{t}\n{} passed, {} failed\n", sm.passed, sm.failed)
}

fn decision_json(a: &Analysis, d: Option<&Decision>) -> serde_json::Value {
    match d {
        None => serde_json::Value::Null,
        Some(Decision::Allowed { rule }) => {
            serde_json::json!({"decision": "allowed", "rule": rule_name(a, *rule)})
        }
        Some(Decision::DefaultDeny { isolated_by }) => serde_json::json!({
            "decision": "default_deny",
            "isolated_by": isolated_by.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Some(Decision::NotIsolated) => serde_json::json!({"decision": "not_isolated"}),
        Some(Decision::NotReady) => serde_json::json!({"decision": "not_ready"}),
        Some(Decision::InvalidIdentity) => serde_json::json!({"decision": "invalid_identity"}),
        Some(Decision::Redirected {
            rule,
            proxy_port,
            audit,
        }) => serde_json::json!({
            "decision": "redirected", "rule": rule_name(a, *rule), "proxy_port": proxy_port,
            "audit": audit,
        }),
        Some(Decision::Denied { rule, audit }) => serde_json::json!({
            "decision": if *audit { "audit" } else { "denied" }, "rule": rule_name(a, *rule),
        }),
    }
}

/// `{"files": [{"file", "scenarios": [...]}], "summary": {...}}`.
pub fn to_json(a: &Analysis, files: &[(PathBuf, Vec<Outcome>)]) -> serde_json::Value {
    let mut all = Vec::new();
    let files_json: Vec<serde_json::Value> = files
        .iter()
        .map(|(path, outcomes)| {
            all.extend(outcomes.iter().cloned());
            let sc: Vec<serde_json::Value> = outcomes
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "name": o.scenario.name,
                        "from": o.scenario.from.to_string(),
                        "to": o.scenario.to.to_string(),
                        "port": o.flow.port,
                        "protocol": o.flow.protocol.to_string(),
                        "expected": o.scenario.expect,
                        "verdict": o.actual,
                        "pass": o.pass,
                        "deciding": o.deciding,
                        "egress": decision_json(a, o.verdict.egress.as_ref()),
                        "ingress": decision_json(a, o.verdict.ingress.as_ref()),
                        "service": o.via.as_ref().map(|v| serde_json::json!({
                            "name": v.service,
                            "frontend": v.frontend,
                            "backend": v.backend,
                            "endpoint": v.endpoint,
                        })),
                    })
                })
                .collect();
            serde_json::json!({"file": path.display().to_string(), "scenarios": sc})
        })
        .collect();
    serde_json::json!({"files": files_json, "summary": summary(&all)})
}

/// JUnit XML: one suite per scenario file, one test case per scenario.
pub fn to_junit(files: &[(PathBuf, Vec<Outcome>)]) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new("policy-test");
    for (path, outcomes) in files {
        let mut suite = TestSuite::new(path.display().to_string());
        for o in outcomes {
            let status = if o.pass {
                TestCaseStatus::success()
            } else {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(format!(
                    "expected {}, got {}: {}",
                    o.scenario.expect, o.actual, o.deciding
                ));
                st.set_type("verdict mismatch");
                st.set_description(format!("{} ({})", flow_text(o), o.scenario.at));
                st
            };
            let mut tc = TestCase::new(o.scenario.name.clone(), status);
            tc.set_classname(path.display().to_string());
            tc.set_time(o.elapsed);
            tc.add_property(quick_junit::Property::new("deciding", o.deciding.clone()));
            suite.add_test_case(tc);
        }
        report.add_test_suite(suite);
    }
    report.to_string()
}

/// `ns/a, ns/b`: the policies that isolate an endpoint, as messages name them.
pub fn join_policies(policies: &[policy_compiler::rules::PolicyRef]) -> String {
    policies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn p(text: &str) -> Result<ScenarioFile, InputError> {
        parse(Path::new("s.yaml"), text)
    }

    #[test]
    fn service_destinations_parse_and_bad_ones_are_named() {
        let f = p("scenarios:\n- {name: a, from: ns/x, to: {service: ns/web}, port: 80, sourcePort: 4000, expect: allow}\n").unwrap();
        assert_eq!(
            f.scenarios[0].to,
            PeerSpec::Service {
                service: "ns/web".into()
            }
        );
        assert_eq!(f.scenarios[0].source_port, Some(4000));
        for (text, want) in [
            ("{service: web}", "expected namespace/name"),
            ("{service: ns/web, ip: 10.0.0.1}", "not both"),
            ("{svc: ns/web}", "unknown field"),
        ] {
            let e = p(&format!(
                "scenarios:\n- {{name: a, from: ns/x, to: {text}, port: 80, expect: allow}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = p(
            "scenarios:\n- {name: a, from: {service: ns/web}, to: ns/x, port: 80, expect: allow}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a service is a destination only"), "{e}");
        let e = p("scenarios:\n- {name: a, from: ns/x, to: {service: ns/web}, port: 80, sourcePort: 0, expect: allow}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sourcePort 0"), "{e}");
    }

    #[test]
    fn parses_every_form() {
        let f = p("scenarios:\n  - name: a\n    from: prod/web\n    to: {ip: 203.0.113.7}\n    port: 443\n    expect: allow\n  - name: b\n    from: prod/Deployment/api\n    to: prod/db\n    port: postgres\n    protocol: udp\n    expect: deny\n").unwrap();
        assert_eq!(f.scenarios.len(), 2);
        let (a, b) = (&f.scenarios[0], &f.scenarios[1]);
        assert_eq!(a.from, PeerSpec::Name("prod/web".into()));
        assert_eq!(
            a.to,
            PeerSpec::Ip {
                ip: "203.0.113.7".parse().unwrap()
            }
        );
        assert_eq!(a.port, PortRef::Number(443));
        assert_eq!(a.protocol, Protocol::TCP);
        assert_eq!(a.expect, Expect::Allow);
        assert_eq!(a.at.line, 2);
        assert_eq!(b.port, PortRef::Name("postgres".into()));
        assert_eq!(b.protocol, Protocol::UDP);
        assert_eq!(b.expect, Expect::Deny);
        assert_eq!(b.port_at.line, 10);
    }

    #[test]
    fn unknown_field_is_named_with_position() {
        let e = p("scenarios:\n  - name: a\n    from: x/y\n    to: x/z\n    port: 1\n    expect: allow\n    exepct: deny\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("s.yaml:7:"), "{m}");
        assert!(m.contains("exepct"), "{m}");
    }

    #[test]
    fn http_scenarios_parse_and_l7_expectations_need_a_request() {
        let f = p("scenarios:\n  - name: a\n    from: x/y\n    to: x/z\n    port: 80\n    expect: deny-403\n    http: {method: POST, path: /a, headers: {x-tenant: b}}\n").unwrap();
        let h = f.scenarios[0].http.clone().unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str()), ("POST", "/a"));
        assert_eq!(f.scenarios[0].expect, Expect::Deny403);
        let e = p("scenarios:\n  - name: a\n    from: x/y\n    to: x/z\n    port: 80\n    expect: deny-403\n").unwrap_err();
        assert!(e.to_string().contains("needs an `http:` request"), "{e}");
        let e = p("scenarios:\n  - name: a\n    from: x/y\n    to: x/z\n    port: 80\n    expect: allow\n    http: {method: \"G T\"}\n").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("is not an HTTP method token"), "{m}");
        assert!(m.starts_with("s.yaml:7:"), "{m}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = p("scenarios:\n  - name: a\n    from: [x\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("s.yaml:"), "{m}");
        let InputError::Syntax { line, .. } = e else {
            panic!("{m}")
        };
        assert!(line >= 3, "{m}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (yaml, needle) in [
            ("port: 70000\n    expect: allow", "out of range"),
            ("port: 80\n    expect: maybe", "maybe"),
            (
                "port: 80\n    protocol: ICMP\n    expect: allow",
                "unknown protocol",
            ),
        ] {
            let text = format!("scenarios:\n  - name: a\n    from: x/y\n    to: x/z\n    {yaml}\n");
            let m = p(&text).unwrap_err().to_string();
            assert!(m.contains(needle), "{m}");
        }
    }
}
