//! A service's frontends (the addresses and ports clients connect to) and backends (the
//! pods behind each port).
//!
//! Backends come from the service's EndpointSlices when there are any (label
//! `kubernetes.io/service-name`), as kube-proxy reads them: the ready endpoints of the
//! frontend's family on the slice port of the service port's name; when none is ready, the
//! serving endpoints that are terminating (so connections drain instead of failing).
//! Without slices they are derived from the selector and the pods, as the EndpointSlice
//! controller would: a pod in the service's namespace whose labels match the selector is a
//! backend of a port when it has an address of the frontend's family and, for a named
//! `targetPort`, a container port of that name and protocol (resolved per pod, so two pods
//! may serve one service port on different numbers).

use std::net::IpAddr;
use std::sync::Arc;

use super::maglev::{self, MaglevError, Table};
use crate::model::{
    Cluster, Endpoint, EndpointSlice, Protocol, Service, ServicePortSpec, ServiceTarget,
    SliceEndpoint,
};

/// What kind of address a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    /// `spec.externalIPs`.
    External,
    /// `status.loadBalancer.ingress`.
    LoadBalancer,
    /// The node port, on every address of the node (`vip` is the unspecified address of
    /// the family).
    NodePort,
}

/// One address and port a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// One pod address and port behind a frontend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// The endpoint key (`ns/name`) of the pod, when the manifests have it.
    pub endpoint: Option<String>,
    /// The node it runs on (an EndpointSlice endpoint's `nodeName`); `None` for a backend
    /// derived from the selector (no node known) or an endpoint without one.
    pub node: Option<String>,
}

impl Backend {
    /// The name that seeds the backend's Maglev preferences: `addr:port` (`[v6]:port`).
    pub fn maglev_name(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// A pod the selector matched that cannot serve a port, and why (shown by `policy-test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub endpoint: String,
    pub reason: String,
}

/// A frontend with its backends, sorted by address then port (the Maglev table is built in
/// this order), and its lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendBackends {
    pub frontend: Frontend,
    pub port: ServicePortSpec,
    pub backends: Vec<Backend>,
    pub skipped: Vec<Skipped>,
    pub table: Arc<Table>,
    /// `sessionAffinity: ClientIP`: the timeout in seconds. The flow hash then leaves the
    /// source port out, so every connection of a client picks the same backend.
    pub affinity_s: Option<u32>,
}

impl FrontendBackends {
    /// The backend a new flow from `src:sport` to this frontend reaches; `None` when the
    /// frontend has no backend (the datapath rejects such flows). With session affinity the
    /// source port does not count: a client's connections all reach one backend (as long as
    /// the backend set does not change; the datapath keeps a client's backend for the
    /// affinity timeout across such changes).
    pub fn pick(&self, src: IpAddr, sport: u16) -> Option<&Backend> {
        let sport = if self.affinity_s.is_some() { 0 } else { sport };
        let slot = maglev::flow_slot(
            &self.table,
            src,
            self.frontend.vip,
            sport,
            self.frontend.port,
            self.frontend.protocol.0,
        );
        let i = self.table.backend(slot)?;
        self.backends.get(i as usize)
    }
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The target port of `port` on pod `ep`, or why it has none.
fn target_port(port: &ServicePortSpec, ep: &Endpoint) -> Result<u16, String> {
    match &port.target {
        ServiceTarget::Number(n) => Ok(*n),
        ServiceTarget::Named(name) => ep.named_port(name, port.protocol).ok_or_else(|| {
            format!(
                "no container port named {name:?} with protocol {}",
                port.protocol
            )
        }),
    }
}

/// Whether the service takes its pods from its selector (it has one, and no EndpointSlice).
pub fn selects_pods(cluster: &Cluster, svc: &Service) -> bool {
    svc.selector.as_ref().is_some_and(|s| !s.is_empty()) && slices_of(cluster, svc).is_empty()
}

/// The service's EndpointSlices.
fn slices_of<'a>(cluster: &'a Cluster, svc: &Service) -> Vec<&'a EndpointSlice> {
    // Keyed (namespace, name): the service's namespace is one range.
    cluster
        .endpoint_slices
        .range((svc.namespace.clone(), String::new())..)
        .take_while(|((ns, _), _)| *ns == svc.namespace)
        .map(|(_, s)| s)
        .filter(|s| s.service == svc.name)
        .collect()
}

/// Backends of `port` at `vip`'s family from EndpointSlices (kube-proxy's rule: ready
/// endpoints; none ready → serving and terminating ones).
fn slice_backends(slices: &[&EndpointSlice], port: &ServicePortSpec, vip: &IpAddr) -> Vec<Backend> {
    let pick = |want: &dyn Fn(&SliceEndpoint) -> bool| -> Vec<Backend> {
        let mut out = Vec::new();
        for s in slices {
            let Some(&(_, number, _)) = s
                .ports
                .iter()
                .find(|(n, _, p)| *n == port.name && *p == port.protocol)
            else {
                continue;
            };
            for e in s.endpoints.iter().filter(|e| want(e)) {
                for a in e.addresses.iter().filter(|a| same_family(a, vip)) {
                    out.push(Backend {
                        addr: *a,
                        port: number,
                        endpoint: e.pod.clone(),
                        node: e.node_name.clone(),
                    });
                }
            }
        }
        out
    };
    let ready = pick(&|e| e.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(&|e| e.serving && e.terminating)
}

/// The addresses a service is reached at, with their kind, and the port each uses.
fn frontend_addresses(svc: &Service, port: &ServicePortSpec) -> Vec<(FrontendKind, IpAddr, u16)> {
    let mut out: Vec<(FrontendKind, IpAddr, u16)> = svc
        .cluster_ips
        .iter()
        .map(|a| (FrontendKind::ClusterIp, *a, port.port))
        .collect();
    out.extend(
        svc.external_ips
            .iter()
            .map(|a| (FrontendKind::External, *a, port.port)),
    );
    out.extend(
        svc.load_balancer_ips
            .iter()
            .map(|a| (FrontendKind::LoadBalancer, *a, port.port)),
    );
    if let Some(np) = port.node_port {
        let mut families: Vec<bool> = svc.cluster_ips.iter().map(IpAddr::is_ipv4).collect();
        families.dedup();
        for v4 in families {
            let any: IpAddr = if v4 {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            out.push((FrontendKind::NodePort, any, np));
        }
    }
    out
}

/// Every frontend of `svc` (each cluster IP, external IP and load-balancer IP with each
/// port, and each node port per family) with its backends and table of `table_size` slots.
/// Headless and ExternalName services have no frontends.
pub fn frontends(
    cluster: &Cluster,
    svc: &Service,
    table_size: u32,
) -> Result<Vec<FrontendBackends>, MaglevError> {
    frontends_reusing(cluster, svc, table_size, &|_, _| None, None, None)
}

/// Where [`frontends_reusing`] may find a frontend's table already built for its backends.
pub type ReuseTable<'a> = &'a dyn Fn(&Frontend, &[Backend]) -> Option<Arc<Table>>;

/// The pods of one namespace by label (key, value): a service's selected pods are found from
/// its rarest label instead of by testing every pod of the namespace. Built once per
/// namespace for all its services.
#[derive(Debug, Default)]
pub struct PodIndex<'a> {
    by_label: crate::hash::FxHashMap<(&'a str, &'a str), Vec<&'a Endpoint>>,
}

impl<'a> PodIndex<'a> {
    /// The non-host-network pods of `namespace`.
    pub fn new(cluster: &'a Cluster, namespace: &str) -> PodIndex<'a> {
        let mut by_label: crate::hash::FxHashMap<(&'a str, &'a str), Vec<&'a Endpoint>> =
            Default::default();
        for e in namespace_pods(cluster, namespace) {
            for (k, v) in &e.labels {
                by_label
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(e);
            }
        }
        PodIndex { by_label }
    }

    /// The pods `sel` (non-empty) selects, in key order.
    fn select(&self, sel: &crate::k8s::Labels) -> Vec<&'a Endpoint> {
        let Some(rarest) = sel
            .iter()
            .map(|(k, v)| self.by_label.get(&(k.as_str(), v.as_str())))
            .min_by_key(|p| p.map_or(0, Vec::len))
            .flatten()
        else {
            return Vec::new();
        };
        rarest
            .iter()
            .copied()
            .filter(|e| sel.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .collect()
    }
}

/// The non-host-network pods of `namespace` (endpoints are keyed `namespace/name`: one
/// range), in key order.
fn namespace_pods<'a>(cluster: &'a Cluster, namespace: &str) -> impl Iterator<Item = &'a Endpoint> {
    cluster
        .endpoints
        .range(format!("{namespace}/")..)
        .take_while(move |(k, _)| {
            k.strip_prefix(namespace)
                .is_some_and(|r| r.starts_with('/'))
        })
        .map(|(_, e)| e)
        .filter(move |e| e.namespace == namespace && !e.host_network)
}

/// [`frontends`], taking a frontend's table from `reuse` when it has one for that frontend
/// and backend list (a table is a function of the backend set and the size: building one of
/// 16,381 slots for every service on every update would dominate the update's cost), and
/// selected pods from `index` (of the service's namespace) when given.
///
/// `node`: the node the frontends are for. Its `Local` traffic policies keep only its own
/// backends, as kube-proxy does: `internalTrafficPolicy: Local` for the cluster IPs,
/// `externalTrafficPolicy: Local` for the node ports, external and load-balancer IPs. A
/// backend from an EndpointSlice is the node's when its `nodeName` is the node's name; a
/// backend derived from the selector (no EndpointSlices: no node is known) counts as the
/// node's. `None` keeps every backend (the cluster-wide view of `policy-test`).
pub fn frontends_reusing(
    cluster: &Cluster,
    svc: &Service,
    table_size: u32,
    reuse: ReuseTable<'_>,
    index: Option<&PodIndex<'_>>,
    node: Option<&str>,
) -> Result<Vec<FrontendBackends>, MaglevError> {
    if svc.cluster_ips.is_empty() {
        return Ok(Vec::new());
    }
    let slices = slices_of(cluster, svc);
    let pods: Vec<&Endpoint> = match (&svc.selector, index) {
        // With EndpointSlices the pods are not looked at.
        _ if !slices.is_empty() => Vec::new(),
        (Some(sel), Some(index)) if !sel.is_empty() => index.select(sel),
        (Some(sel), None) if !sel.is_empty() => namespace_pods(cluster, &svc.namespace)
            .filter(|e| sel.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .collect(),
        // No selector (or an empty one, which Kubernetes treats as none for endpoints):
        // backends come from EndpointSlices.
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for port in &svc.ports {
        for (kind, vip, fport) in frontend_addresses(svc, port) {
            let vip = &vip;
            let mut backends = Vec::new();
            let mut skipped = Vec::new();
            if !slices.is_empty() {
                backends = slice_backends(&slices, port, vip);
            }
            for ep in pods.iter().filter(|_| slices.is_empty()) {
                match target_port(port, ep) {
                    Ok(p) => {
                        let addrs: Vec<&IpAddr> =
                            ep.ips.iter().filter(|a| same_family(a, vip)).collect();
                        if addrs.is_empty() {
                            skipped.push(Skipped {
                                endpoint: ep.key.clone(),
                                reason: format!(
                                    "no {} address",
                                    if vip.is_ipv4() { "IPv4" } else { "IPv6" }
                                ),
                            });
                        }
                        for a in addrs {
                            backends.push(Backend {
                                addr: *a,
                                port: p,
                                endpoint: Some(ep.key.clone()),
                                node: None,
                            });
                        }
                    }
                    Err(reason) => skipped.push(Skipped {
                        endpoint: ep.key.clone(),
                        reason,
                    }),
                }
            }
            let local_only = match kind {
                FrontendKind::ClusterIp => svc.internal_traffic_local,
                _ => svc.external_traffic_local,
            };
            if let Some(node) = node.filter(|_| local_only && !slices.is_empty()) {
                backends.retain(|b| b.node.as_deref() == Some(node));
            }
            backends.sort();
            backends.dedup();
            let frontend = Frontend {
                kind,
                vip: *vip,
                port: fport,
                protocol: port.protocol,
            };
            let table = match reuse(&frontend, &backends) {
                Some(t) if t.size == table_size => t,
                _ => {
                    let names: Vec<String> = backends.iter().map(Backend::maglev_name).collect();
                    Arc::new(Table::build(&names, table_size)?)
                }
            };
            out.push(FrontendBackends {
                frontend,
                port: port.clone(),
                backends,
                skipped,
                table,
                affinity_s: svc.session_affinity_s,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, load_str};

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.0.0.10}, {ip: "fd00::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]
status: {podIPs: [{ip: 10.0.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: metrics, containerPort: 9100}]}]
status: {podIPs: [{ip: 10.0.0.12}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.0.0.20}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ports: [{name: http, port: 80, targetPort: http}]
"#;

    fn cluster() -> Cluster {
        load_str("services.yaml", MANIFESTS, &LoadOptions::default())
            .unwrap()
            .cluster
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_families_split() {
        let c = cluster();
        let svc = &c.services[&("shop".to_string(), "web".to_string())];
        let fbs = frontends(&c, svc, 251).unwrap();
        assert_eq!(fbs.len(), 2, "one frontend per cluster IP");
        let v4 = &fbs[0];
        assert_eq!(v4.frontend.vip, "10.96.0.10".parse::<IpAddr>().unwrap());
        let got: Vec<(String, u16)> = v4
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.port))
            .collect();
        assert_eq!(
            got,
            vec![("10.0.0.10".into(), 8080), ("10.0.0.11".into(), 9090)],
            "the other namespace's pod is not a backend"
        );
        assert_eq!(v4.skipped.len(), 1);
        assert_eq!(v4.skipped[0].endpoint, "shop/web-2");
        assert!(
            v4.skipped[0].reason.contains("\"http\""),
            "{:?}",
            v4.skipped
        );
        let v6 = &fbs[1];
        assert_eq!(v6.backends.len(), 1, "only web-0 has an IPv6 address");
        assert!(v6.skipped.iter().any(|s| s.reason == "no IPv6 address"));
    }

    const SLICED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  externalIPs: [192.0.2.10]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
status: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-abc, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: api-0, namespace: shop}
- addresses: [10.0.1.2]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.1.3]
"#;

    #[test]
    fn endpoint_slices_give_the_ready_backends_and_every_frontend_kind() {
        let c = load_str("sliced.yaml", SLICED, &LoadOptions::default())
            .unwrap()
            .cluster;
        let svc = &c.services[&("shop".to_string(), "api".to_string())];
        assert_eq!(
            svc.session_affinity_s,
            Some(10_800),
            "the API server's default"
        );
        assert!(svc.external_traffic_local);
        let fbs = frontends(&c, svc, 251).unwrap();
        let kinds: Vec<(FrontendKind, String, u16)> = fbs
            .iter()
            .map(|f| (f.frontend.kind, f.frontend.vip.to_string(), f.frontend.port))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (FrontendKind::ClusterIp, "10.96.0.20".into(), 80),
                (FrontendKind::External, "192.0.2.10".into(), 80),
                (FrontendKind::LoadBalancer, "198.51.100.7".into(), 80),
                (FrontendKind::NodePort, "0.0.0.0".into(), 30080),
            ]
        );
        // Ready endpoints only (absent conditions read as ready); the terminating one is
        // left out while any is ready.
        let b: Vec<(String, Option<String>)> = fbs[0]
            .backends
            .iter()
            .map(|b| (b.maglev_name(), b.endpoint.clone()))
            .collect();
        assert_eq!(
            b,
            vec![
                ("10.0.1.1:8080".into(), Some("shop/api-0".into())),
                ("10.0.1.3:8080".into(), None),
            ]
        );
        // With nothing ready, the serving terminating endpoints drain.
        let drained = SLICED
            .replace("conditions: {ready: true}", "conditions: {ready: false}")
            .replace("- addresses: [10.0.1.3]\n", "");
        let c = load_str("drained.yaml", &drained, &LoadOptions::default())
            .unwrap()
            .cluster;
        let svc = &c.services[&("shop".to_string(), "api".to_string())];
        let fbs = frontends(&c, svc, 251).unwrap();
        let b: Vec<String> = fbs[0].backends.iter().map(Backend::maglev_name).collect();
        assert_eq!(b, vec!["10.0.1.2:8080".to_string()]);
    }

    #[test]
    fn session_affinity_keeps_a_client_on_one_backend() {
        let c = load_str("sliced.yaml", SLICED, &LoadOptions::default())
            .unwrap()
            .cluster;
        let svc = &c.services[&("shop".to_string(), "api".to_string())];
        let fb = &frontends(&c, svc, 251).unwrap()[0];
        assert_eq!(fb.affinity_s, Some(10_800));
        let mut per_client = std::collections::BTreeMap::new();
        for client in 1..=40u8 {
            let src = IpAddr::from([10, 0, 9, client]);
            let picks: std::collections::BTreeSet<String> = (30_000..30_050)
                .map(|sport| fb.pick(src, sport).unwrap().maglev_name())
                .collect();
            assert_eq!(picks.len(), 1, "client {src}: {picks:?}");
            per_client.insert(src, picks.into_iter().next().unwrap());
        }
        let used: std::collections::BTreeSet<&String> = per_client.values().collect();
        assert_eq!(used.len(), 2, "clients still spread over the backends");
    }

    #[test]
    fn invalid_services_and_slices_name_the_field() {
        for (doc, want) in [
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30000}]}\n",
                "spec.ports[0].nodePort",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {sessionAffinity: Sticky}\n",
                "spec.sessionAffinity",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 90000}}}\n",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {externalTrafficPolicy: Local}\n",
                "spec.externalTrafficPolicy",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {externalIPs: [not-an-ip]}\n",
                "spec.externalIPs[0]",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]\n",
                "endpoints[0].addresses",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\n",
                "kubernetes.io/service-name",
            ),
        ] {
            let e = load_str("bad.yaml", doc, &LoadOptions::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn pick_is_deterministic_and_uses_every_backend() {
        let c = cluster();
        let svc = &c.services[&("shop".to_string(), "web".to_string())];
        let v4 = &frontends(&c, svc, 251).unwrap()[0];
        let client: IpAddr = "10.0.0.99".parse().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for sport in 30_000..30_200 {
            let a = v4.pick(client, sport).unwrap();
            assert_eq!(Some(a), v4.pick(client, sport));
            seen.insert(a.endpoint.clone().unwrap());
        }
        assert_eq!(seen.len(), 2);
    }
}
