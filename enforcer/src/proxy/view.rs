//! What the proxy knows of policy: a snapshot of the engine published after every successful
//! map update, and per connection the HTTP rules of each side that redirects it.
//!
//! The datapath redirects a TCP flow at the client's `from_pod` when the client's egress
//! entry redirects, or when the server is on this node and its ingress entry redirects
//! (docs/datapath.md §11, step 6b). The proxy applies the same sides: the client's egress
//! HTTP rules (the client is always local: its veth redirected the flow), then the server's
//! ingress HTTP rules when the server is local. The first side that refuses decides. The
//! proxy's upstream connection does not pass the client's `from_pod` again, so the client's
//! L3/L4 egress decision is re-taken here for every request: a policy change that denies the
//! flow outright stops the next request of a kept-alive connection (the server's ingress is
//! re-decided by its `to_pod`, which sees the upstream).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use palisade_l7proxy::{Decision, NormalizedRequest};
use policy_compiler::engine::Engine;
use policy_compiler::engine::l7::{CompiledL7, L7Origin, L7Set};
use policy_compiler::eval::{Flow, FlowPeer, maps};
use policy_compiler::model::{Direction, Protocol};

use crate::events::{L7AuditRefusal, L7Side};

/// The policy the proxy judges with, as of one map update.
#[derive(Debug)]
pub struct L7View {
    engine: Engine,
    /// Endpoints registered on this node (their ingress rules are applied here).
    local: BTreeSet<String>,
    /// The datapath revision this view was published with.
    pub revision: u64,
    /// Endpoint keys by address (pods, not host-network ones), so that a connection finds
    /// its endpoints without scanning the cluster.
    by_ip: HashMap<IpAddr, String>,
    /// Compiled rule sets, shared by the connections that use them.
    compiled: Mutex<HashMap<L7Set, Arc<CompiledL7>>>,
}

/// The rules of one connection under one view.
#[derive(Debug, Clone)]
pub struct ConnectionRules {
    pub client_identity: u32,
    pub server_identity: u32,
    /// Why no request may pass (the client's L3/L4 egress decision no longer admits the
    /// flow); `None` when requests are judged by `sides`.
    pub refused: Option<String>,
    /// The sides that redirect, in the order they judge (egress, then ingress).
    pub sides: Vec<(Direction, Arc<CompiledL7>)>,
}

/// One request's verdict with the sides that gave it.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub decision: Decision,
    pub sides: Vec<L7Side>,
}

impl L7View {
    pub fn new(engine: Engine, local: BTreeSet<String>, revision: u64) -> L7View {
        let mut by_ip = HashMap::new();
        for e in engine.cluster().endpoints.values() {
            if e.host_network {
                continue;
            }
            for ip in &e.ips {
                // The first endpoint holding an address wins, as `Cluster::endpoint_by_ip`.
                by_ip.entry(*ip).or_insert_with(|| e.key.clone());
            }
        }
        L7View {
            engine,
            local,
            revision,
            by_ip,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// An address as the flow evaluators name it: its endpoint, else the address.
    fn peer(&self, ip: IpAddr) -> FlowPeer {
        match self.by_ip.get(&ip) {
            Some(k) => FlowPeer::Endpoint(k.clone()),
            None => FlowPeer::Ip(ip),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn compiled(&self, set: &L7Set) -> Arc<CompiledL7> {
        let mut cache = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .entry(set.clone())
            .or_insert_with(|| Arc::new(self.engine.compile_l7(set)))
            .clone()
    }

    /// The rules of a TCP connection from `client` to `server:port`.
    pub fn connection(&self, client: IpAddr, server: IpAddr, port: u16) -> ConnectionRules {
        let flow = Flow {
            src: self.peer(client),
            dst: self.peer(server),
            protocol: Protocol::TCP,
            port,
        };
        let identity = |p: &FlowPeer| {
            maps::peer_identity(&self.engine, p).unwrap_or(policy_compiler::abi::IDENTITY_UNKNOWN)
        };
        let mut rules = ConnectionRules {
            client_identity: identity(&flow.src),
            server_identity: identity(&flow.dst),
            refused: None,
            sides: Vec::new(),
        };
        // A client that is no endpoint (a host outside the cluster, through the node's
        // uplink) has no egress policy here: only a local server's ingress rules can have
        // redirected it, and only they judge it.
        if let FlowPeer::Endpoint(client_key) = &flow.src {
            let verdict = maps::evaluate(&self.engine, &flow);
            if let Some(d) = &verdict.egress
                && !d.allowed()
            {
                rules.refused = Some(format!(
                    "{client_key}'s egress policy no longer admits this connection ({d:?})"
                ));
                return rules;
            }
        }
        let (egress, ingress) = maps::l7_sets(&self.engine, &flow);
        let server_local = matches!(&flow.dst, FlowPeer::Endpoint(k) if self.local.contains(k));
        if let Some(set) = egress
            && matches!(flow.src, FlowPeer::Endpoint(_))
        {
            rules.sides.push((Direction::Egress, self.compiled(&set)));
        }
        if server_local && let Some(set) = ingress {
            rules.sides.push((Direction::Ingress, self.compiled(&set)));
        }
        if rules.sides.is_empty() && !matches!(flow.src, FlowPeer::Endpoint(_)) {
            rules.refused = Some(format!(
                "the client {client} is not an endpoint, and no ingress HTTP rule of a local \
                 server applies to it"
            ));
        }
        rules
    }
}

impl ConnectionRules {
    /// Whether any side applies HTTP rules (else the datapath would not have redirected
    /// the connection under this view).
    pub fn inspects(&self) -> bool {
        !self.sides.is_empty()
    }

    /// Judges one request: each side in order; the first refusal stands. With no side
    /// (the policy changed to an L3/L4 allow since the connection was redirected) the
    /// request passes on the L3/L4 decision. `Err`: the client's L3/L4 egress decision no
    /// longer admits the connection (why).
    pub fn judge(&self, req: &NormalizedRequest) -> Result<Judgement, String> {
        if let Some(why) = &self.refused {
            return Err(why.clone());
        }
        let mut sides = Vec::new();
        let mut last = Decision::Allow { rule: 0 };
        for (direction, set) in &self.sides {
            let (d, origin): (Decision, Option<L7Origin>) = set.decide(req);
            let allowed = d.allowed();
            // What this side's audit-mode rules would do, reported only.
            let audit = if allowed {
                set.audit_refusal(req)
                    .map(|(decision, origin)| L7AuditRefusal { decision, origin })
            } else {
                None
            };
            sides.push(L7Side {
                direction: *direction,
                origin,
                audit,
            });
            last = d;
            if !allowed {
                break;
            }
        }
        Ok(Judgement {
            decision: last,
            sides,
        })
    }
}

/// The view in force, replaced as a whole after every successful map update.
#[derive(Debug, Default)]
pub struct ViewCell {
    current: Mutex<Option<Arc<L7View>>>,
}

impl ViewCell {
    pub fn publish(&self, view: L7View) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(view));
    }

    /// The view in force; `None` before the first publication.
    pub fn get(&self) -> Option<Arc<L7View>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use palisade_l7proxy::{NormalizeOptions, RequestHead, normalize};
    use policy_compiler::EngineConfig;
    use policy_compiler::manifest::{LoadOptions, load_str};

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: prod, labels: {app: frontend}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: prod, labels: {app: backend}}
status: {podIP: 10.1.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules: {http: [{method: GET, path: /api/.*}]}
";

    fn view(extra: &str, local: &[&str]) -> L7View {
        let loaded =
            load_str("t.yaml", &format!("{PODS}{extra}"), &LoadOptions::default()).unwrap();
        let (engine, _) = Engine::compile(&loaded.cluster, EngineConfig::default()).unwrap();
        L7View::new(engine, local.iter().map(|s| s.to_string()).collect(), 1)
    }

    fn get(path: &str) -> NormalizedRequest {
        let headers: [(&str, &[u8]); 1] = [("Host", b"backend")];
        normalize(
            &RequestHead {
                method: "GET",
                target: path.as_bytes(),
                headers: &headers,
            },
            NormalizeOptions::default(),
        )
        .unwrap()
    }

    const CLIENT: &str = "10.1.0.1";
    const SERVER: &str = "10.1.0.2";

    #[test]
    fn the_servers_ingress_rules_apply_only_when_it_is_local() {
        let local = view("", &["prod/frontend", "prod/backend"]);
        let r = local.connection(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), 8080);
        assert!(r.inspects());
        assert!(r.judge(&get("/api/x")).unwrap().decision.allowed());
        assert!(!r.judge(&get("/admin")).unwrap().decision.allowed());
        // The backend on another node: its own node applies its ingress rules.
        let remote = view("", &["prod/frontend"]);
        let r = remote.connection(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), 8080);
        assert!(!r.inspects(), "{r:?}");
    }

    #[test]
    fn a_client_whose_egress_no_longer_admits_the_flow_is_refused_with_the_reason() {
        let v = view(
            "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
",
            &["prod/frontend", "prod/backend"],
        );
        let r = v.connection(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), 8080);
        let err = r.judge(&get("/api/x")).unwrap_err();
        assert!(err.contains("egress policy no longer admits"), "{err}");
    }

    #[test]
    fn a_client_outside_the_cluster_is_judged_only_by_a_local_servers_ingress_rules() {
        // No rule admits the world: refused.
        let v = view("", &["prod/backend"]);
        let r = v.connection("10.9.9.9".parse().unwrap(), SERVER.parse().unwrap(), 8080);
        assert!(r.judge(&get("/api/x")).is_err());
        // HTTP rules for the world (traffic from outside, through the uplink): judged.
        let world = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules: {http: [{method: GET, path: /public/.*}]}
";
        let v = view(world, &["prod/backend"]);
        let r = v.connection("10.9.9.9".parse().unwrap(), SERVER.parse().unwrap(), 8080);
        assert!(r.inspects(), "{r:?}");
        assert!(r.judge(&get("/public/x")).unwrap().decision.allowed());
        assert!(!r.judge(&get("/api/x")).unwrap().decision.allowed());
        // The same server on another node: not this proxy's to judge.
        let v = view(world, &[]);
        let r = v.connection("10.9.9.9".parse().unwrap(), SERVER.parse().unwrap(), 8080);
        assert!(r.judge(&get("/public/x")).is_err());
    }
}
