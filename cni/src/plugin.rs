//! The verbs: ADD, DEL, CHECK, VERSION, GC, STATUS.
//!
//! ADD order (each step is a crash point the tests kill the plugin at):
//! 1. the pod interface and the host link must not exist yet;
//! 2. reserve the address (lock, allocate, rename the state file, unlock);
//! 3. create the veth pair, host route and sysctls;
//! 4. address and routes in the pod;
//! 5. register with the enforcer, which answers once the pod's policy is programmed.
//!
//! A failure in 3–5 rolls back (deregister, delete the link, release the address) and
//! returns a CNI error. A crash leaves at most a reservation and a host link, both tagged
//! with the container id: the runtime's DEL (sent after a failed ADD) or GC removes them.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Read;
use std::net::IpAddr;

use palisade_api::{ErrorCode, Registration, Request, Response};

use crate::config::{LATEST_VERSION, NetConf, SUPPORTED_VERSIONS, Version, VersionOnly};
use crate::env::{Command, Env};
use crate::error::Error;
use crate::ipam::Store;
use crate::link::{self, PodLink};
use crate::result::{AddResult, version_info};

/// What the process prints and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

/// ADD steps after which `PALISADE_CNI_FAULT=<name>` kills the plugin (test hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    AfterReserve,
    AfterHostLink,
    AfterPodConfig,
    AfterRegister,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 4] = [
        FaultPoint::AfterReserve,
        FaultPoint::AfterHostLink,
        FaultPoint::AfterPodConfig,
        FaultPoint::AfterRegister,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterReserve => "after_reserve",
            FaultPoint::AfterHostLink => "after_host_link",
            FaultPoint::AfterPodConfig => "after_pod_config",
            FaultPoint::AfterRegister => "after_register",
        }
    }
}

fn fault(env: &Env, point: FaultPoint) {
    if env.fault.as_deref() == Some(point.name()) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs one plugin invocation.
pub fn run<I>(vars: I, stdin: &mut dyn Read) -> Outcome
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let mut input = Vec::new();
    let read = stdin
        .read_to_end(&mut input)
        .map_err(|source| Error::Stdin { source });
    // Errors carry the configuration's version when it is one we speak.
    let error_version = serde_json::from_slice::<VersionOnly>(&input)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    let result = read
        .and_then(|_| Env::from_vars(vars))
        .and_then(|env| dispatch(&env, &input));
    match result {
        Ok(Some(value)) => {
            let mut stdout = serde_json::to_vec(&value).unwrap_or_default();
            stdout.push(b'\n');
            Outcome {
                stdout,
                exit_code: 0,
            }
        }
        Ok(None) => Outcome {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Err(e) => {
            let mut stdout = serde_json::to_vec(&e.to_cni(&error_version)).unwrap_or_default();
            stdout.push(b'\n');
            Outcome {
                stdout,
                exit_code: 1,
            }
        }
    }
}

fn dispatch(env: &Env, input: &[u8]) -> Result<Option<serde_json::Value>, Error> {
    if env.command == Command::Version {
        // VERSION answers whatever it is asked with; an unknown version gets the newest.
        let asked = serde_json::from_slice::<VersionOnly>(input)
            .ok()
            .and_then(|v| v.cni_version);
        let v = asked
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| LATEST_VERSION.to_owned());
        return Ok(Some(version_info(&v)));
    }
    let conf = NetConf::parse(input)?;
    let need = |min: Version, verb: &str| {
        if conf.version < min {
            Err(Error::IncompatibleVersion {
                version: conf.cni_version.clone(),
                reason: format!("config version does not allow {verb}"),
            })
        } else {
            Ok(())
        }
    };
    match env.command {
        Command::Add => add(env, &conf).map(Some),
        Command::Del => del(env, &conf).map(|()| None),
        Command::Check => {
            need(Version(0, 4, 0), "CHECK")?;
            check(env, &conf).map(|()| None)
        }
        Command::Gc => {
            need(Version(1, 1, 0), "GC")?;
            gc(&conf).map(|()| None)
        }
        Command::Status => {
            need(Version(1, 1, 0), "STATUS")?;
            status(&conf).map(|()| None)
        }
        Command::Version => Ok(None),
    }
}

struct Ids<'a> {
    container_id: &'a str,
    ifname: &'a str,
}

fn ids(env: &Env) -> Result<Ids<'_>, Error> {
    // Env::from_vars guarantees both for ADD, DEL and CHECK.
    let missing = |n: &str| Error::MissingEnv {
        names: n.to_owned(),
    };
    Ok(Ids {
        container_id: env
            .container_id
            .as_deref()
            .ok_or_else(|| missing("CNI_CONTAINERID"))?,
        ifname: env.ifname.as_deref().ok_or_else(|| missing("CNI_IFNAME"))?,
    })
}

/// The enforcer as the plugin sees it: one request per connection through
/// [`palisade_api::Client`], errors in the plugin's terms.
#[derive(Debug)]
struct Enforcer<'a> {
    socket: &'a std::path::Path,
    timeout: std::time::Duration,
}

impl Enforcer<'_> {
    /// Sends one request and reads one answer. No answer (no socket, timeout, closed
    /// connection) is "unreachable" (CNI code 11).
    fn call(&self, request: &Request) -> Result<Response, Error> {
        palisade_api::Client::call(self.socket, self.timeout, request).map_err(|source| {
            if source.is_unreachable() {
                Error::EnforcerUnreachable {
                    socket: self.socket.to_path_buf(),
                    source,
                }
            } else {
                Error::EnforcerProtocol {
                    socket: self.socket.to_path_buf(),
                    reason: source.to_string(),
                }
            }
        })
    }
}

fn client(conf: &NetConf) -> Enforcer<'_> {
    Enforcer {
        socket: &conf.enforcer_socket,
        timeout: conf.enforcer_timeout,
    }
}

/// `K8S_POD_NAMESPACE` must be a DNS-1123 label, as the API server requires; it may be
/// absent (the namespace is then `default`).
fn pod_identity_args(env: &Env) -> Result<(), Error> {
    if let Some(ns) = env.arg("K8S_POD_NAMESPACE")
        && let Some(reason) = dns1123_problem(ns, 63)
    {
        return Err(Error::InvalidEnv {
            name: "K8S_POD_NAMESPACE",
            reason: format!("{ns:?}: {reason}"),
        });
    }
    // Pod names are left to the enforcer's looser check: runtimes outside Kubernetes
    // (podman) pass container names here.
    Ok(())
}

/// Why `s` is not a DNS-1123 label of at most `max` bytes.
fn dns1123_problem(s: &str, max: usize) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    (!ok).then(|| {
        format!(
            "must be a lowercase RFC 1123 label of 1 to {max} characters: lowercase alphanumerics and '-', starting and ending with an alphanumeric"
        )
    })
}

fn add(env: &Env, conf: &NetConf) -> Result<serde_json::Value, Error> {
    let Ids {
        container_id,
        ifname,
    } = ids(env)?;
    let netns = env.netns.as_deref().ok_or_else(|| Error::MissingEnv {
        names: "CNI_NETNS".into(),
    })?;
    // Checked before anything is reserved: the enforcer would refuse them later anyway.
    pod_identity_args(env)?;
    let host_ifname = link::host_ifname(container_id);
    let store = Store::new(&conf.ipam, &conf.name);

    // 1. Nothing of ours may exist yet. A second ADD for the same attachment fails here or
    // at the reservation, and its error leaves the first attachment untouched.
    let mut pod_link = PodLink {
        network: &conf.name,
        container_id,
        netns,
        ifname,
        host_ifname: &host_ifname,
        ip: std::net::Ipv4Addr::UNSPECIFIED,
        mtu: conf.mtu,
    };
    pod_link.check_absent()?;
    if link::link_exists(&host_ifname) {
        return Err(Error::InterfaceExists {
            ifname: host_ifname,
            netns: "the host namespace".into(),
        });
    }

    // 2. Reserve.
    let ip = {
        let mut locked = store.lock()?;
        let ip = locked.state.allocate(container_id, ifname, &host_ifname)?;
        locked.commit()?;
        ip
    };
    fault(env, FaultPoint::AfterReserve);
    pod_link.ip = ip;

    let client = client(conf);
    let mut registered = false;
    let setup = (|| {
        // 3, 4.
        pod_link.create_host_side()?;
        fault(env, FaultPoint::AfterHostLink);
        pod_link.configure_pod_side()?;
        fault(env, FaultPoint::AfterPodConfig);
        // 5.
        registered = true;
        let registration = Registration {
            container_id: container_id.to_owned(),
            namespace: env.arg("K8S_POD_NAMESPACE").unwrap_or("default").to_owned(),
            pod: env.arg("K8S_POD_NAME").unwrap_or(container_id).to_owned(),
            host_ifname: host_ifname.clone(),
            ips: vec![IpAddr::V4(ip)],
            labels: None,
            named_ports: Vec::new(),
        };
        match client.call(&Request::Register(registration))? {
            Response::Registered { .. } => Ok(()),
            other => Err(refusal(conf, other)),
        }
    })();
    if let Err(e) = setup {
        // Roll back in reverse order; the first error is the one reported.
        if registered {
            let _ = client.call(&Request::Deregister {
                container_id: container_id.to_owned(),
            });
        }
        let _ = link::delete_host_link(&host_ifname);
        if let Ok(locked) = store.lock().as_mut()
            && locked.state.release(container_id, ifname).is_some()
        {
            let _ = locked.commit();
        }
        return Err(e);
    }
    fault(env, FaultPoint::AfterRegister);

    let (host_mac, pod_mac) = link::macs(container_id, ifname);
    Ok(AddResult {
        host_ifname: &host_ifname,
        host_mac: &host_mac,
        ifname,
        pod_mac: &pod_mac,
        mtu: conf.mtu,
        netns,
        ip,
    }
    .to_json(&conf.cni_version, conf.version))
}

fn refusal(conf: &NetConf, response: Response) -> Error {
    match response {
        Response::Error {
            code: ErrorCode::NotReady,
            message,
        } => Error::EnforcerNotReady {
            socket: conf.enforcer_socket.clone(),
            reason: message,
        },
        Response::Error { code, message } => Error::EnforcerRefused { code, message },
        other => Error::EnforcerProtocol {
            socket: conf.enforcer_socket.clone(),
            reason: format!("unexpected answer {other:?}"),
        },
    }
}

/// DEL: best effort and idempotent. An unreachable enforcer, a missing netns, link or
/// reservation are all success; only a broken IPAM store is an error.
fn del(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let Ids {
        container_id,
        ifname,
    } = ids(env)?;
    let store = Store::new(&conf.ipam, &conf.name);
    let allocation = store.lock()?.state.find(container_id, ifname).cloned();
    let _ = client(conf).call(&Request::Deregister {
        container_id: container_id.to_owned(),
    });
    // Without a reservation the host link is not this attachment's (the name derives from
    // the container id only, and every link ADD creates is reserved first).
    if let Some(a) = &allocation {
        link::delete_host_link(&a.host_ifname)?;
        let mut locked = store.lock()?;
        if locked.state.release(container_id, ifname).is_some() {
            locked.commit()?;
        }
    }
    Ok(())
}

fn check(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let Ids {
        container_id,
        ifname,
    } = ids(env)?;
    let netns = env.netns.as_deref().ok_or_else(|| Error::MissingEnv {
        names: "CNI_NETNS".into(),
    })?;
    let failed = |what: String| Err(Error::CheckFailed { what });
    let store = Store::new(&conf.ipam, &conf.name);
    let Some(a) = store.lock()?.state.find(container_id, ifname).cloned() else {
        return failed(format!("no address reserved for {container_id}/{ifname}"));
    };
    if let Some(prev) = &conf.prev_result {
        let want = format!("{}/32", a.ip);
        let listed = prev
            .get("ips")
            .and_then(|v| v.as_array())
            .is_some_and(|ips| {
                ips.iter()
                    .any(|i| i.get("address").and_then(|s| s.as_str()) == Some(&want))
            });
        if !listed {
            return failed(format!(
                "prevResult does not list the reserved address {want}"
            ));
        }
    }
    let host = a.host_ifname.as_str();
    if !link::link_exists(host) {
        return failed(format!("host interface {host} is missing"));
    }
    if link::read_sysctl(&link::proxy_arp_path(host))? != "1" {
        return failed(format!("proxy_arp is off on {host}"));
    }
    let dst = format!("{}/32", a.ip);
    let routes = json_lines(&link::ip_output(&[
        "-j", "-4", "route", "show", "to", "exact", &dst,
    ])?);
    if !routes
        .iter()
        .any(|r| r.get("dev").and_then(|d| d.as_str()) == Some(host))
    {
        return failed(format!("host route {dst} dev {host} is missing"));
    }
    let ip = a.ip.to_string();
    link::in_netns(netns, || {
        if !link::link_exists(ifname) {
            return failed(format!(
                "interface {ifname} is missing in {}",
                netns.display()
            ));
        }
        let addrs = json_lines(&link::ip_output(&[
            "-j", "-4", "addr", "show", "dev", ifname,
        ])?);
        let has_addr = addrs
            .iter()
            .filter_map(|l| l.get("addr_info")?.as_array())
            .flatten()
            .any(|i| {
                i.get("local").and_then(|v| v.as_str()) == Some(&ip)
                    && i.get("prefixlen").and_then(|v| v.as_u64()) == Some(32)
            });
        if !has_addr {
            return failed(format!("address {ip}/32 is missing on {ifname}"));
        }
        let gw = link::GATEWAY.to_string();
        let defaults = json_lines(&link::ip_output(&["-j", "-4", "route", "show", "default"])?);
        if !defaults.iter().any(|r| {
            r.get("gateway").and_then(|v| v.as_str()) == Some(&gw)
                && r.get("dev").and_then(|v| v.as_str()) == Some(ifname)
        }) {
            return failed(format!("default route via {gw} dev {ifname} is missing"));
        }
        Ok(())
    })?;
    // The enforcer must be up for the pod to be policed as configured.
    match client(conf).call(&Request::Status)? {
        Response::Status { ready: true, .. } => Ok(()),
        other => Err(refusal(conf, not_ready(other))),
    }
}

fn not_ready(r: Response) -> Response {
    match r {
        Response::Status { reason, .. } => Response::Error {
            code: ErrorCode::NotReady,
            message: match reason {
                Some(reason) => format!("status: not ready: {reason}"),
                None => "status: not ready".into(),
            },
        },
        other => other,
    }
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(out).unwrap_or_default()
}

/// GC: releases every reservation whose attachment is not in `cni.dev/valid-attachments`,
/// deletes its host link and deregisters it; then deletes host links of this network that
/// no remaining reservation accounts for (left by a plugin killed mid-ADD or mid-DEL).
fn gc(conf: &NetConf) -> Result<(), Error> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(Error::InvalidConfig {
            field: "cni.dev/valid-attachments",
            reason: "missing (GC without it would release every address)".into(),
        });
    };
    let store = Store::new(&conf.ipam, &conf.name);
    let client = client(conf);
    let mut errors = Vec::new();
    let mut locked = store.lock()?;
    let gone = locked.state.release_invalid(valid);
    let mut kept_back = Vec::new();
    for a in gone {
        let _ = client.call(&Request::Deregister {
            container_id: a.container_id.clone(),
        });
        match link::delete_host_link(&a.host_ifname) {
            Ok(()) => {}
            Err(e) => {
                errors.push(format!("{}: {e}", a.host_ifname));
                kept_back.push(a);
            }
        }
    }
    let owners: BTreeSet<String> = locked
        .state
        .allocations()
        .iter()
        .chain(&kept_back)
        .map(|a| a.host_ifname.clone())
        .collect();
    locked.state.restore(kept_back);
    locked.commit()?;
    for (name, container_id) in link::palisade_host_links(&conf.name)? {
        if owners.contains(&name) {
            continue;
        }
        let _ = client.call(&Request::Deregister { container_id });
        if let Err(e) = link::delete_host_link(&name) {
            errors.push(format!("{name}: {e}"));
        }
    }
    drop(locked);
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(Error::GcIncomplete {
            count: errors.len(),
            first: first.clone(),
        }),
    }
}

/// STATUS: success when an ADD could succeed now.
fn status(conf: &NetConf) -> Result<(), Error> {
    let unavailable = |source: Error| Error::NotAvailable {
        source: Box::new(source),
    };
    let store = Store::new(&conf.ipam, &conf.name);
    let free = store.lock()?.state.free_count();
    if free == 0 {
        return Err(unavailable(Error::PoolExhausted {
            range: conf.ipam.subnet_string(),
        }));
    }
    match client(conf).call(&Request::Status) {
        Ok(Response::Status { ready: true, .. }) => Ok(()),
        Ok(other) => Err(unavailable(refusal(conf, not_ready(other)))),
        Err(e) => Err(unavailable(e)),
    }
}
