//! A service's frontends (the addresses and ports clients connect to) and backends (the
//! pods behind each port), derived offline from the service's selector and the pods, as the
//! EndpointSlice controller would: a pod in the service's namespace whose labels match the
//! selector is a backend of a port when it has an address of the frontend's family and, for
//! a named `targetPort`, a container port of that name and protocol (resolved per pod, so
//! two pods may serve one service port on different numbers). A service without a selector
//! has no derived backends (its EndpointSlices are written by someone else).

use std::net::IpAddr;

use super::maglev::{self, MaglevError, Table};
use crate::model::{Cluster, Endpoint, Protocol, Service, ServicePortSpec, ServiceTarget};

/// One address and port a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// One pod address and port behind a frontend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// The endpoint key (`ns/name`) of the pod.
    pub endpoint: String,
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
    pub table: Table,
}

impl FrontendBackends {
    /// The backend a new flow from `src:sport` to this frontend reaches; `None` when the
    /// frontend has no backend (the datapath rejects such flows).
    pub fn pick(&self, src: IpAddr, sport: u16) -> Option<&Backend> {
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

/// Every frontend of `svc` (each cluster IP with each port) with its backends and table of
/// `table_size` slots. Headless services (no cluster IP) have no frontends.
pub fn frontends(
    cluster: &Cluster,
    svc: &Service,
    table_size: u32,
) -> Result<Vec<FrontendBackends>, MaglevError> {
    let pods: Vec<&Endpoint> = match &svc.selector {
        Some(sel) if !sel.is_empty() => cluster
            .endpoints
            .values()
            .filter(|e| {
                e.namespace == svc.namespace
                    && !e.host_network
                    && sel.iter().all(|(k, v)| e.labels.get(k) == Some(v))
            })
            .collect(),
        // No selector (or an empty one, which Kubernetes treats as none for endpoints):
        // backends come from EndpointSlices.
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for vip in &svc.cluster_ips {
        for port in &svc.ports {
            let mut backends = Vec::new();
            let mut skipped = Vec::new();
            for ep in &pods {
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
                                endpoint: ep.key.clone(),
                            });
                        }
                    }
                    Err(reason) => skipped.push(Skipped {
                        endpoint: ep.key.clone(),
                        reason,
                    }),
                }
            }
            backends.sort();
            backends.dedup();
            let names: Vec<String> = backends.iter().map(Backend::maglev_name).collect();
            let table = Table::build(&names, table_size)?;
            out.push(FrontendBackends {
                frontend: Frontend {
                    vip: *vip,
                    port: port.port,
                    protocol: port.protocol,
                },
                port: port.clone(),
                backends,
                skipped,
                table,
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
            seen.insert(a.endpoint.clone());
        }
        assert_eq!(seen.len(), 2);
    }
}
