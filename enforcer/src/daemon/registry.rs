//! The endpoint API's side of the agent: registrations (blocking, one lock each), the
//! registrations file, and merging a registration with the source's view of the pod.

use super::*;

impl Daemon {
    /// Registers a pod interface. Blocking (map writes, attach, fsync of the registrations
    /// file): the API runs it on `spawn_blocking`. Takes the state lock once, so a
    /// replaced registration and its successor are one step for everyone else.
    fn register_blocking(&self, reg: Registration) -> Response {
        if let Some(msg) = validate_registration(&reg) {
            return api_error(ErrorCode::BadRequest, msg);
        }
        let ifindex = match datapath::ifindex_of(&reg.host_ifname) {
            Ok(i) => i,
            Err(e) => return api_error(ErrorCode::NoSuchInterface, e.to_string()),
        };
        // Before the state lock: the wait for the Pod object is bounded but not short.
        if reg.labels.is_none() {
            match self.source.await_pod(&reg.namespace, &reg.pod) {
                Ok(()) => {}
                Err(crate::source::PodWait::NotYet(msg)) => {
                    return api_error(ErrorCode::NotReady, msg);
                }
                Err(crate::source::PodWait::OtherNode(msg)) => {
                    return api_error(ErrorCode::BadRequest, msg);
                }
            }
        }
        let key = Endpoint::pod_key(&reg.namespace, &reg.pod);
        let mut st = self.lock();
        // Another container's live registration on the same interface or with one of the
        // same addresses is refused before anything changes: accepting it would let this
        // registration's failure or deregistration unpin the other pod's hooks.
        if let Some(msg) = conflicting(&st.regs, &reg, ifindex) {
            return api_error(ErrorCode::Conflict, msg);
        }
        // Re-registration of the same container on another interface or as another pod
        // replaces the earlier one.
        if let Some(old) = st.regs.get(&reg.container_id)
            && (old.registration.host_ifname != reg.host_ifname
                || Endpoint::pod_key(&old.registration.namespace, &old.registration.pod) != key)
        {
            let (old_key, result) = self.deregister_in(&mut st, &reg.container_id);
            if let Err(e) = result {
                return api_error(
                    ErrorCode::Datapath,
                    format!("replacing the registration of {old_key}: {e}"),
                );
            }
        }
        if let Some((other, _)) = st.regs.iter().find(|(id, s)| {
            *id != &reg.container_id
                && Endpoint::pod_key(&s.registration.namespace, &s.registration.pod) == key
        }) {
            return api_error(
                ErrorCode::Conflict,
                format!("pod {key} is already registered by container {other}"),
            );
        }
        let ep = merged_endpoint(&reg, self.source.as_ref());
        // Identities are node-local numbers: the log names the labels they stand for.
        let labels = ep
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut changes = Vec::new();
        if !st.engine.cluster().namespaces.contains_key(&ep.namespace) {
            changes.push(Change::UpsertNamespace(Namespace::new(
                &ep.namespace,
                Labels::new(),
                false,
            )));
        }
        changes.push(Change::UpsertEndpoint(ep));
        st.local.insert(key.clone(), ifindex);
        st.ifnames.insert(ifindex, reg.host_ifname.clone());
        let revision = st.revision + 1;
        let result = (|| -> Result<u32, DaemonError> {
            st.engine.apply(changes)?;
            // The plan writes the new endpoint last, on its complete slot.
            self.sync(&mut st, revision)?;
            let identity = st
                .engine
                .endpoint_identity(&key)
                .unwrap_or(abi::IDENTITY_UNKNOWN);
            // Maps first, then the hooks: the first packet already meets the policy.
            st.dp.attach(&reg.host_ifname)?;
            Ok(identity)
        })();
        match result {
            Ok(identity) => {
                st.revision = revision;
                st.regs.insert(
                    reg.container_id.clone(),
                    Stored {
                        registration: reg.clone(),
                        ifindex,
                    },
                );
                let saved = save_registrations(&self.state_dir, &st.regs);
                let endpoints = st.regs.len();
                drop(st);
                self.set_endpoints(endpoints);
                if let Err(e) = saved {
                    warn!(
                        endpoint.namespace = reg.namespace.as_str(),
                        endpoint.pod = reg.pod.as_str(),
                        error = e.to_string(),
                        "registered and enforced, but the registrations file was not saved"
                    );
                    return api_error(ErrorCode::State, e.to_string());
                }
                info!(
                    endpoint.namespace = reg.namespace.as_str(),
                    endpoint.pod = reg.pod.as_str(),
                    endpoint.container_id = reg.container_id.as_str(),
                    endpoint.ifname = reg.host_ifname.as_str(),
                    endpoint.ifindex = ifindex,
                    endpoint.identity = identity,
                    endpoint.labels = labels.as_str(),
                    "registered"
                );
                Response::Registered {
                    endpoint: key,
                    identity,
                    ifindex,
                }
            }
            Err(e) => {
                // Leave nothing half-done: the interface has no endpoint entry and no
                // hooks, the model does not know the pod.
                st.dp.detach(ifindex);
                let _ = st.dp.remove_endpoint(ifindex);
                st.local.remove(&key);
                if st.engine.apply(vec![self.source_view(&key)]).is_ok() {
                    // A failure is recorded (dirty, not ready) and reconciled in the
                    // background; the pod's entry is already gone, so it fails closed.
                    let _ = self.sync(&mut st, revision);
                }
                drop(st);
                warn!(
                    endpoint.namespace = reg.namespace.as_str(),
                    endpoint.pod = reg.pod.as_str(),
                    endpoint.ifname = reg.host_ifname.as_str(),
                    error = e.to_string(),
                    "registration failed; the interface is not attached"
                );
                api_error(ErrorCode::Datapath, e.to_string())
            }
        }
    }

    /// Removes a registration. Blocking, like [`Daemon::register_blocking`].
    fn deregister_blocking(&self, container_id: &str) -> Response {
        let mut st = self.lock();
        if !st.regs.contains_key(container_id) {
            return Response::Deregistered { existed: false };
        }
        let (key, res) = self.deregister_in(&mut st, container_id);
        let saved = save_registrations(&self.state_dir, &st.regs);
        let endpoints = st.regs.len();
        drop(st);
        self.set_endpoints(endpoints);
        match (res, saved) {
            (Ok(()), Ok(())) => {
                info!(
                    endpoint.key = key.as_str(),
                    endpoint.container_id = container_id,
                    "deregistered"
                );
                Response::Deregistered { existed: true }
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(
                    endpoint.key = key.as_str(),
                    endpoint.container_id = container_id,
                    error = e.to_string(),
                    "deregistration incomplete"
                );
                api_error(ErrorCode::Datapath, e.to_string())
            }
        }
    }

    /// Detaches and forgets `container_id` within a held lock; the caller saves the
    /// registrations. Returns the pod key and whether the maps were updated.
    fn deregister_in(
        &self,
        st: &mut State,
        container_id: &str,
    ) -> (String, Result<(), DaemonError>) {
        let Some(stored) = st.regs.remove(container_id) else {
            return (String::new(), Ok(()));
        };
        let reg = &stored.registration;
        let key = Endpoint::pod_key(&reg.namespace, &reg.pod);
        st.dp.detach(stored.ifindex);
        let _ = st.dp.remove_endpoint(stored.ifindex);
        // Best effort: an entry left behind expires, and a recycled ifindex gets a new
        // endpoint revision, which re-checks any survivor against the new pod's policy.
        let _ = st.dp.ct_flush_ifindex(stored.ifindex);
        st.local.remove(&key);
        st.ifnames.remove(&stored.ifindex);
        let change = self.source_view(&key);
        let revision = st.revision + 1;
        let res = st
            .engine
            .apply(vec![change])
            .map_err(DaemonError::from)
            .and_then(|_| self.sync(st, revision).map_err(DaemonError::from));
        st.revision = revision;
        (key, res.map(|_| ()))
    }
}

/// The endpoint API's view of the agent: registrations run on the blocking pool, so the
/// state lock (held across map writes, attach and fsync) is never taken on an async worker.
#[derive(Debug)]
pub struct Registry(pub Arc<Daemon>);

/// Runs blocking agent work off the async workers.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        error!(error = e.to_string(), "endpoint API task failed");
        api_error(
            ErrorCode::Datapath,
            "internal error: the request's task failed",
        )
    })
}

impl EndpointRegistry for Registry {
    async fn register(&self, registration: Registration) -> Response {
        let d = self.0.clone();
        blocking(move || d.register_blocking(registration)).await
    }
    async fn deregister(&self, container_id: String) -> Response {
        let d = self.0.clone();
        blocking(move || d.deregister_blocking(&container_id)).await
    }
    async fn status(&self) -> Response {
        let health = self.0.health();
        Response::Status {
            api_version: palisade_api::PROTOCOL_VERSION,
            endpoints: health.endpoints,
            ready: health.ready(),
            reason: health.reason(),
            warnings: {
                let mut w = self.0.source_notes();
                w.extend(health.warnings());
                w
            },
            maps: health.pressure(),
            verdict_log: Some(Box::new(self.0.verdict_log_status())),
        }
    }
}

/// The first live registration of another container that shares `reg`'s interface or an
/// address, described.
fn conflicting(
    regs: &BTreeMap<String, Stored>,
    reg: &Registration,
    ifindex: u32,
) -> Option<String> {
    for (id, s) in regs {
        if *id == reg.container_id {
            continue;
        }
        let owner = format!(
            "container {id:?} (pod {}/{})",
            s.registration.namespace, s.registration.pod
        );
        if s.registration.host_ifname == reg.host_ifname || s.ifindex == ifindex {
            return Some(format!(
                "interface {:?} (ifindex {ifindex}) is already registered by {owner}",
                reg.host_ifname
            ));
        }
        if let Some(ip) = reg.ips.iter().find(|ip| s.registration.ips.contains(ip)) {
            return Some(format!("address {ip} is already registered by {owner}"));
        }
    }
    None
}

/// Why an address cannot be a pod's: it would capture the node's own traffic (loopback,
/// unspecified, broadcast) or is not unicast to one host (multicast, link-local).
fn bad_pod_ip(ip: &std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("the unspecified address")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_broadcast() {
                Some("the broadcast address")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if v6.is_unicast_link_local() {
                Some("a link-local address")
            } else if v6.to_ipv4_mapped().is_some() {
                Some("an IPv4-mapped address")
            } else {
                None
            }
        }
    }
}

fn validate_registration(reg: &Registration) -> Option<String> {
    use policy_compiler::validate;
    if reg.container_id.is_empty() {
        return Some("container_id: must not be empty".into());
    }
    if reg.container_id.len() > 256 || reg.container_id.chars().any(char::is_control) {
        return Some(format!(
            "container_id {:?}: must be at most 256 bytes without control characters",
            reg.container_id
        ));
    }
    if reg.namespace.is_empty() || reg.pod.is_empty() {
        return Some("namespace and pod: must not be empty".into());
    }
    // The API server's rule for namespaces: a DNS-1123 label. Pod names are checked
    // loosely (runtimes outside Kubernetes pass container names such as `web_1`): at most
    // 253 bytes, no '/' and no control characters.
    if let Some(d) = validate::is_dns1123_label(&reg.namespace).first() {
        return Some(format!("namespace {:?}: {d}", reg.namespace));
    }
    if reg.pod.len() > 253 || reg.pod.chars().any(|c| c == '/' || c.is_control()) {
        return Some(format!(
            "pod {:?}: must be at most 253 bytes without '/' or control characters",
            reg.pod
        ));
    }
    if reg.host_ifname.is_empty() || reg.host_ifname.len() > 15 {
        return Some(format!(
            "host_ifname {:?}: must be 1 to 15 bytes",
            reg.host_ifname
        ));
    }
    if reg.host_ifname == "lo"
        || reg.host_ifname == "."
        || reg.host_ifname == ".."
        || reg
            .host_ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "host_ifname {:?}: must be a pod's host-side interface (not lo; no '/', ':', spaces or control characters)",
            reg.host_ifname
        ));
    }
    if reg.ips.is_empty() {
        return Some("ips: a pod needs at least one address".into());
    }
    for (i, ip) in reg.ips.iter().enumerate() {
        if let Some(why) = bad_pod_ip(ip) {
            return Some(format!("ips[{i}] {ip}: {why} cannot be a pod's address"));
        }
        if reg.ips[..i].contains(ip) {
            return Some(format!("ips[{i}] {ip}: duplicate address"));
        }
    }
    if let Some(labels) = &reg.labels {
        let labels: Labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut errors = Vec::new();
        validate::validate_labels(&labels, "labels", &mut errors);
        if let Some(e) = errors.first() {
            return Some(e.to_string());
        }
    }

    for p in &reg.named_ports {
        if Protocol::from_name(&p.protocol).is_none() {
            return Some(format!(
                "named_ports[{}].protocol {:?}: must be TCP, UDP or SCTP",
                p.name, p.protocol
            ));
        }
    }
    None
}

/// The model endpoint of a registration, with the source's knowledge of the pod.
pub(super) fn merged_endpoint(reg: &Registration, source: &dyn PolicySource) -> Endpoint {
    let key = Endpoint::pod_key(&reg.namespace, &reg.pod);
    let known = source.current().endpoints.get(&key).cloned();
    match known {
        Some(e) => merge(reg, Some(&e)),
        None => {
            let info = source.pod_info(&reg.namespace, &reg.pod);
            let mut e = merge(reg, None);
            if let Some(info) = info {
                if reg.labels.is_none() {
                    e.labels = info.labels;
                }
                if reg.named_ports.is_empty() {
                    e.ports = info.named_ports;
                }
                e.workload = info.workload;
            }
            e
        }
    }
}

pub(super) fn merge(reg: &Registration, source: Option<&Endpoint>) -> Endpoint {
    let labels: Labels = match (&reg.labels, source) {
        (Some(l), _) => l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        (None, Some(e)) => e.labels.clone(),
        (None, None) => Labels::new(),
    };
    let mut ports: Vec<NamedPort> = reg
        .named_ports
        .iter()
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone(),
                port: p.port,
                protocol: Protocol::from_name(&p.protocol)?,
            })
        })
        .collect();
    if ports.is_empty()
        && let Some(e) = source
    {
        ports = e.ports.clone();
    }
    ports.sort();
    Endpoint {
        key: Endpoint::pod_key(&reg.namespace, &reg.pod),
        namespace: reg.namespace.clone(),
        name: reg.pod.clone(),
        workload: source.map(|e| e.workload.clone()).unwrap_or(WorkloadRef {
            kind: "Pod".into(),
            name: reg.pod.clone(),
        }),
        labels,
        ips: reg.ips.to_vec(),
        ports,
        host_network: false,
    }
}

pub(super) fn load_registrations(dir: &Path) -> Result<BTreeMap<String, Stored>, DaemonError> {
    let path = dir.join(REGISTRATIONS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| DaemonError::State {
            path,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(DaemonError::State {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Atomic replace: a crash leaves the old file or the new one, never half of either.
pub(super) fn save_registrations(
    dir: &Path,
    regs: &BTreeMap<String, Stored>,
) -> Result<(), DaemonError> {
    let path = dir.join(REGISTRATIONS_FILE);
    let tmp = dir.join(format!(".{REGISTRATIONS_FILE}.tmp"));
    let err = |e: std::io::Error| DaemonError::State {
        path: path.clone(),
        detail: e.to_string(),
    };
    let body = serde_json::to_vec_pretty(regs).map_err(|e| DaemonError::State {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn reg(id: &str, ifname: &str, ips: &[&str]) -> Registration {
        Registration {
            container_id: id.into(),
            namespace: "shop".into(),
            pod: format!("pod-{id}"),
            host_ifname: ifname.into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            labels: None,
            named_ports: Vec::new(),
        }
    }

    #[test]
    fn registrations_are_validated_with_the_api_servers_rules() {
        assert_eq!(
            validate_registration(&reg("a", "lxc1", &["10.0.0.2", "fd00::2"])),
            None
        );
        let bad: Vec<(Registration, &str)> = vec![
            (reg("a", "lo", &["10.0.0.2"]), "not lo"),
            (reg("a", "lxc/1", &["10.0.0.2"]), "host_ifname"),
            (reg("a", "lxc1", &["0.0.0.0"]), "unspecified"),
            (reg("a", "lxc1", &["127.0.0.1"]), "loopback"),
            (reg("a", "lxc1", &["255.255.255.255"]), "broadcast"),
            (reg("a", "lxc1", &["169.254.1.1"]), "link-local"),
            (reg("a", "lxc1", &["fe80::1"]), "link-local"),
            (reg("a", "lxc1", &["224.0.0.1"]), "multicast"),
            (reg("a", "lxc1", &["ff02::1"]), "multicast"),
            (reg("a", "lxc1", &["::"]), "unspecified"),
            (reg("a", "lxc1", &["::1"]), "loopback"),
            (reg("a", "lxc1", &["10.0.0.2", "10.0.0.2"]), "duplicate"),
            (
                Registration {
                    namespace: "NS_BAD".into(),
                    ..reg("a", "lxc1", &["10.0.0.2"])
                },
                "namespace \"NS_BAD\"",
            ),
            (
                Registration {
                    pod: "web\r\nforged".into(),
                    ..reg("a", "lxc1", &["10.0.0.2"])
                },
                "pod",
            ),
            (
                Registration {
                    labels: Some(BTreeMap::from([("app".into(), "a\nk8s:app=admin".into())])),
                    ..reg("a", "lxc1", &["10.0.0.2"])
                },
                "labels",
            ),
            (
                Registration {
                    labels: Some(BTreeMap::from([("bad key!".into(), "x".into())])),
                    ..reg("a", "lxc1", &["10.0.0.2"])
                },
                "labels",
            ),
        ];
        for (r, needle) in bad {
            let msg = validate_registration(&r)
                .unwrap_or_else(|| panic!("accepted: {r:?} (expected {needle})"));
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
    }

    #[test]
    fn a_registration_on_a_live_interface_or_address_conflicts() {
        let mut regs = BTreeMap::new();
        regs.insert(
            "a".to_string(),
            Stored {
                registration: reg("a", "lxc1", &["10.0.0.2", "fd00::2"]),
                ifindex: 7,
            },
        );
        // Same container again: no conflict (a re-registration).
        assert_eq!(
            conflicting(&regs, &reg("a", "lxc1", &["10.0.0.2"]), 7),
            None
        );
        let m = conflicting(&regs, &reg("b", "lxc1", &["10.0.0.3"]), 7).unwrap();
        assert!(
            m.contains("interface \"lxc1\"") && m.contains("\"a\""),
            "{m}"
        );
        // Renamed interface, same ifindex.
        assert!(conflicting(&regs, &reg("b", "eth9", &["10.0.0.3"]), 7).is_some());
        let m = conflicting(&regs, &reg("b", "lxc2", &["10.0.0.9", "fd00::2"]), 8).unwrap();
        assert!(m.contains("address fd00::2"), "{m}");
        assert_eq!(
            conflicting(&regs, &reg("b", "lxc2", &["10.0.0.3"]), 8),
            None
        );
    }
}
