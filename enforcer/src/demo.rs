//! `palisade-enforcer demo`: the README's main job. A throwaway node of network
//! namespaces with one pod per workload of examples/manifests (plus a client pod outside
//! any policy), each serving its declared ports; the real enforcer on those manifests;
//! every pod tries every port of every other pod; the kernel's answers are printed next to
//! what the offline policy core predicts, with the verdict-log lines that explain them;
//! then a policy file is added and the same attempt flips. Everything is removed at the end.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use policy_compiler::eval::{Decision, Flow, FlowPeer, maps};
use policy_compiler::manifest::{LoadOptions, load_paths};
use policy_compiler::model::{Endpoint, WorkloadRef};
use policy_compiler::{Engine, EngineConfig, Protocol};

use crate::harness::Enforcer;
use crate::node::{self, Node, Pod, TcpOutcome};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Manifests to enforce.
    #[arg(long, default_value = "examples/manifests")]
    pub manifests: PathBuf,
    /// How long a denied connection attempt waits before it counts as dropped.
    #[arg(long, default_value = "800")]
    pub timeout_ms: u64,
    /// Show the agent's own log lines.
    #[arg(long)]
    pub verbose: bool,
}

struct DemoPod {
    pod: Pod,
    labels: Vec<(String, String)>,
    ports: Vec<u16>,
    named: Vec<policy_compiler::model::NamedPort>,
}

const CLIENT_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-backend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}
      podSelector: {matchLabels: {app: client}}
    ports: [{port: 8080}]
";

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if let Some(why) = node::privileged_unavailable_reason() {
        anyhow::bail!("the demo builds network namespaces and loads eBPF: {why}");
    }
    let _ = node::sweep_stale("demo");
    let exe = std::env::current_exe().context("locating palisade-enforcer")?;
    let cluster = load_paths(std::slice::from_ref(&args.manifests), &LoadOptions::default())
        .with_context(|| format!("loading {}", args.manifests.display()))?
        .cluster;

    println!("== A local node: pods in network namespaces, wired to a node namespace by veth pairs");
    let node = Node::create(&node::unique_tag("demo"))?;
    let mut pods: Vec<DemoPod> = Vec::new();
    let mut n = 10u8;
    for ep in cluster.endpoints.values() {
        let name = format!("{}-0", ep.workload.name);
        let pod = node.add_pod(&ep.namespace, &name, Ipv4Addr::new(10, 244, 0, n), None)?;
        n += 10;
        let mut labels: Vec<(String, String)> =
            ep.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        let ports: Vec<u16> = ep.ports.iter().map(|p| p.port).collect();
        pods.push(DemoPod {
            pod,
            labels,
            ports,
            named: ep.ports.clone(),
        });
    }
    let client = node.add_pod("default", "client", Ipv4Addr::new(10, 244, 0, 200), None)?;
    pods.push(DemoPod {
        pod: client,
        labels: vec![("app".into(), "client".into())],
        ports: Vec::new(),
        named: Vec::new(),
    });
    let mut servers = Vec::new();
    for p in &pods {
        for port in &p.ports {
            servers.push(p.pod.serve_tcp(*port)?);
        }
        println!(
            "   {:<22} {:<15} on {:<16} labels {:<16} serving {}",
            format!("{}/{}", p.pod.namespace, p.pod.name),
            p.pod.ipv4,
            p.pod.host_ifname,
            p.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            if p.ports.is_empty() {
                "-".to_string()
            } else {
                p.ports
                    .iter()
                    .map(|p| format!("tcp/{p}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
    }

    println!();
    println!(
        "== Starting the enforcer on {} (default deny + explicit allows)",
        args.manifests.display()
    );
    let enforcer = Enforcer::start(&exe, &node, &args.manifests, !args.verbose)?;
    for p in &pods {
        let labels: Vec<(&str, &str)> = p
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let named = p
            .named
            .iter()
            .map(|n| palisade_cni::api::NamedPort {
                name: n.name.clone(),
                port: n.port,
                protocol: n.protocol.to_string(),
            })
            .collect();
        let id = enforcer.register_with_ports(&p.pod, &labels, named)?;
        println!(
            "   registered {}/{} -> identity {id}, tc programs attached to {}",
            p.pod.namespace, p.pod.name, p.pod.host_ifname
        );
    }

    // The offline prediction: the same compiler, the same map-level lookup.
    let mut model = cluster.clone();
    for p in &pods {
        let key = Endpoint::pod_key(&p.pod.namespace, &p.pod.name);
        model.endpoints.insert(
            key.clone(),
            Endpoint {
                key,
                namespace: p.pod.namespace.clone(),
                name: p.pod.name.clone(),
                workload: WorkloadRef {
                    kind: "Pod".into(),
                    name: p.pod.name.clone(),
                },
                labels: p.labels.iter().cloned().collect(),
                ips: vec![IpAddr::V4(p.pod.ipv4)],
                ports: p.named.clone(),
                host_network: false,
            },
        );
    }
    let (engine, _) = Engine::compile_owned(model, EngineConfig::default())?;

    println!();
    println!("== Every pod tries every served port of every other pod (real TCP through the kernel)");
    let timeout = Duration::from_millis(args.timeout_ms);
    let attempts = attempts(&pods);
    let results = try_all(&pods, &attempts, timeout);
    let mut mismatches = 0;
    println!(
        "   {:<22}    {:<28} {:<9} {:<9}",
        "from", "to", "kernel", "predicted"
    );
    for ((from, to, port), ok) in attempts.iter().zip(&results) {
        let predicted = predict(&engine, &pods[*from].pod, &pods[*to].pod, *port);
        if predicted != *ok {
            mismatches += 1;
        }
        println!(
            "   {:<22} -> {:<28} {:<9} {:<9}{}",
            pods[*from].pod.identity(),
            format!("{}:{port}", pods[*to].pod.identity()),
            if *ok { "ALLOWED" } else { "DENIED" },
            if predicted { "allow" } else { "deny" },
            if predicted == *ok { "" } else { "   <- MISMATCH" }
        );
    }

    std::thread::sleep(Duration::from_millis(600));
    println!();
    println!(
        "== The verdict log ({}): one Hubble-style JSON line per decision",
        enforcer.verdict_log().display()
    );
    let lines = enforcer.verdicts();
    for v in lines.iter().filter(|v| v.get("flow").is_some()) {
        println!("   {}", summary(v));
    }
    if let Some(first_drop) = lines
        .iter()
        .find(|v| v["flow"]["verdict"] == "DROPPED")
    {
        println!();
        println!("   One line in full:");
        println!("   {}", serde_json::to_string(first_drop)?);
    }

    println!();
    println!("== Policy change while running: shop/client-to-backend lets default/client reach the backend");
    let (client, backend) = (
        pods.iter().position(|p| p.pod.name == "client"),
        pods.iter().position(|p| p.pod.name == "backend-0"),
    );
    if let (Some(c), Some(b)) = (client, backend) {
        let dst = SocketAddr::new(IpAddr::V4(pods[b].pod.ipv4), 8080);
        let before = connected(&pods[c].pod, dst, timeout);
        enforcer.write_manifest("50-client-to-backend.yaml", CLIENT_POLICY)?;
        let mut after = false;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(150));
            if connected(&pods[c].pod, dst, Duration::from_millis(300)) {
                after = true;
                break;
            }
        }
        println!(
            "   default/client -> shop/backend-0:8080  before: {}  after: {}",
            if before { "ALLOWED" } else { "DENIED" },
            if after { "ALLOWED" } else { "DENIED" }
        );
        if before || !after {
            mismatches += 1;
        }
    }

    drop(servers);
    drop(enforcer);
    drop(node);
    println!();
    if mismatches == 0 {
        println!("== Done: the kernel agreed with the offline prediction on every attempt; node removed.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("== Done with {mismatches} disagreement(s) between kernel and prediction; node removed.");
        Ok(ExitCode::from(1))
    }
}

type Attempt = (usize, usize, u16);

fn attempts(pods: &[DemoPod]) -> Vec<Attempt> {
    let mut out = Vec::new();
    for (i, _) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            for port in &to.ports {
                out.push((i, j, *port));
            }
        }
    }
    out
}

fn connected(from: &Pod, dst: SocketAddr, timeout: Duration) -> bool {
    matches!(
        from.tcp_connect(dst, timeout),
        Ok(TcpOutcome::Connected { .. })
    )
}

/// All attempts at once: denied ones each wait for the timeout, so in parallel.
fn try_all(pods: &[DemoPod], attempts: &[Attempt], timeout: Duration) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = attempts
            .iter()
            .map(|(from, to, port)| {
                let from = &pods[*from].pod;
                let dst = SocketAddr::new(IpAddr::V4(pods[*to].pod.ipv4), *port);
                s.spawn(move || connected(from, dst, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    })
}

fn predict(engine: &Engine, from: &Pod, to: &Pod, port: u16) -> bool {
    let flow = Flow {
        src: FlowPeer::Endpoint(Endpoint::pod_key(&from.namespace, &from.name)),
        dst: FlowPeer::Endpoint(Endpoint::pod_key(&to.namespace, &to.name)),
        protocol: Protocol::TCP,
        port,
    };
    let v = maps::evaluate(engine, &flow);
    let ok = |d: &Option<Decision>| {
        matches!(
            d,
            None | Some(Decision::Allowed { .. }) | Some(Decision::NotIsolated)
        )
    };
    ok(&v.egress) && ok(&v.ingress)
}

fn summary(v: &serde_json::Value) -> String {
    let f = &v["flow"];
    let verdict = f["verdict"].as_str().unwrap_or("?");
    let dir = f["traffic_direction"].as_str().unwrap_or("?");
    let text = f["Summary"].as_str().unwrap_or("");
    format!("{verdict:<9} {dir:<7} {text}")
}
