//! `palisade-demo` (`./palisade demo`): the README's main job. A throwaway node of network
//! namespaces with one pod per workload of examples/manifests (plus a client pod outside
//! any policy), each created by the bundled CNI plugin (veth, IPAM, registration) and
//! serving its declared ports; the real enforcer on those manifests;
//! every pod tries every port of every other pod; the kernel's answers are printed next to
//! what the offline policy core predicts, with the verdict-log lines that explain them;
//! then a policy file is added and the same attempt flips. Everything is removed at the end.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use policy_compiler::eval::{Flow, FlowPeer, maps};
use policy_compiler::manifest::{LoadOptions, load_paths};
use policy_compiler::model::{Endpoint, WorkloadRef};
use policy_compiler::{Engine, EngineConfig, Protocol};

use palisade_testkit::cni::CniPlugin;
use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{self, Node, Pod, TcpOutcome};

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
    /// The CNI plugin binary (default: `palisade-cni` next to this program).
    #[arg(long)]
    pub cni_plugin: Option<PathBuf>,
    /// The agent binary (default: `palisade-enforcer` next to this program).
    #[arg(long)]
    pub enforcer: Option<PathBuf>,
    /// Keep the verdict log: after the agent stopped (its last checkpoint written), copy
    /// it here, and the agent's public key (from status) to `<path>.pub`, for
    /// `palisade observe`.
    #[arg(long)]
    pub keep_log: Option<PathBuf>,
    /// HTTP scenarios (policy-test's format) to send with curl through the agent's L7
    /// proxy, each next to policy-test's answer; their destination ports serve HTTP
    /// (nginx) instead of plain TCP.
    #[arg(long)]
    pub http_scenarios: Option<PathBuf>,
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
    let own = std::env::current_exe().context("locating palisade-demo")?;
    let exe = match &args.enforcer {
        Some(p) => p.clone(),
        None => own.with_file_name("palisade-enforcer"),
    };
    anyhow::ensure!(
        exe.exists(),
        "agent {} not found (cargo build --release -p palisade-enforcer, or --enforcer)",
        exe.display()
    );
    let cluster = load_paths(
        std::slice::from_ref(&args.manifests),
        &LoadOptions::default(),
    )
    .with_context(|| format!("loading {}", args.manifests.display()))?
    .cluster;

    let plugin = match &args.cni_plugin {
        Some(p) => p.clone(),
        None => own.with_file_name("palisade-cni"),
    };
    anyhow::ensure!(
        plugin.exists(),
        "CNI plugin {} not found (cargo build --release -p palisade-cni, or --cni-plugin)",
        plugin.display()
    );

    // One pod per workload, named like its first replica, with the workload's template
    // labels and ports: written as Pod objects, so the enforcer knows their labels when the
    // CNI plugin registers them by namespace/name (as a kubelet-driven runtime would).
    let mut specs: Vec<PodSpec> = Vec::new();
    for ep in cluster.endpoints.values() {
        let mut labels: Vec<(String, String)> = ep
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        specs.push(PodSpec {
            namespace: ep.namespace.clone(),
            name: format!("{}-0", ep.workload.name),
            labels,
            named: ep.ports.clone(),
        });
    }
    specs.push(PodSpec {
        namespace: "default".into(),
        name: "client".into(),
        labels: vec![("app".into(), "client".into())],
        named: Vec::new(),
    });
    let work = PathBuf::from(format!(
        "/run/palisade-local/demo-manifests-{}",
        std::process::id()
    ));
    let _work_guard = RemoveDir(work.clone());
    std::fs::create_dir_all(&work)?;
    for e in std::fs::read_dir(&args.manifests)? {
        let p = e?.path();
        if p.is_file()
            && let Some(name) = p.file_name()
        {
            std::fs::copy(&p, work.join(name))?;
        }
    }
    std::fs::write(work.join("90-demo-pods.yaml"), pod_manifests(&specs))?;

    println!(
        "== A local node: a node network namespace; pods get theirs from the bundled CNI plugin"
    );
    let node = Node::create(&node::unique_tag("demo"))?;
    // A host outside the node, wired to its uplink: node ports are reached from there.
    let outside = node.add_outside()?;
    let config = PathBuf::from(format!(
        "/run/palisade-local/demo-config-{}.yaml",
        std::process::id()
    ));
    let _config_guard = RemoveDir(config.clone());
    std::fs::write(&config, format!("uplinks: [{}]\n", outside.uplink_ifname))?;
    println!(
        "== Starting the enforcer on {} (default deny + explicit allows; uplink {} to a host outside the node)",
        args.manifests.display(),
        outside.uplink_ifname
    );
    let mut enforcer =
        Enforcer::start_with_config(&exe, &node, &work, !args.verbose, Some(&config))?;
    let cni = CniPlugin {
        plugin,
        node_netns: node.netns_path().to_path_buf(),
        node_netns_name: node.netns_name().to_string(),
        socket: enforcer.socket(),
        ipam_dir: enforcer.dir.join("ipam"),
        subnet: "10.244.0.0/24".into(),
        network: "palisade-demo".into(),
    };
    let mut pods: Vec<DemoPod> = Vec::new();
    let mut netns_guards = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let name = format!("{}{}-p{i}", node::NETNS_PREFIX, node.tag());
        let guard = node::create_netns(&name)?;
        // The runtime's loopback (what the CNI `loopback` plugin does).
        node::set_link_up(&name, "lo")?;
        let pod = cni.add(&guard, &spec.namespace, &spec.name)?;
        println!(
            "   CNI ADD {:<20} -> {:<12} on {} (registered with the enforcer before ADD returned)",
            format!("{}/{}", spec.namespace, spec.name),
            pod.ipv4,
            pod.host_ifname
        );
        netns_guards.push(guard);
        let ports: Vec<u16> = spec.named.iter().map(|p| p.port).collect();
        pods.push(DemoPod {
            pod,
            labels: spec.labels,
            ports,
            named: spec.named,
        });
    }
    // The HTTP scenarios, resolved and predicted by policy-test before any traffic.
    let http = match &args.http_scenarios {
        Some(path) => Some(http_predictions(&args.manifests, path)?),
        None => None,
    };
    let http_ports: Vec<(String, u16)> = http
        .iter()
        .flatten()
        .map(|h| (h.to.clone(), h.port))
        .collect();
    let mut servers = Vec::new();
    let mut nginx = Vec::new();
    println!();
    for p in &pods {
        for port in &p.ports {
            if http_ports.contains(&(p.pod.identity(), *port)) {
                nginx.push(p.pod.start_nginx(*port)?);
            } else {
                servers.push(p.pod.serve_tcp(*port)?);
            }
        }
        println!(
            "   {:<20} {:<12} labels {:<14} serving {}",
            format!("{}/{}", p.pod.namespace, p.pod.name),
            p.pod.ipv4,
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
    println!(
        "== Every pod tries every served port of every other pod (real TCP through the kernel)"
    );
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
            if predicted == *ok {
                ""
            } else {
                "   <- MISMATCH"
            }
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
    // In full: the first drop a cluster-admin guardrail made (it names the kind, the policy,
    // the tier, the priority and the rule), else the first drop.
    let dropped = |v: &&serde_json::Value| v["flow"]["verdict"] == "DROPPED";
    let shown = lines
        .iter()
        .filter(dropped)
        .find(|v| v["flow"]["extensions"]["value"]["tier"] == "admin")
        .or_else(|| lines.iter().find(dropped));
    if let Some(line) = shown {
        println!();
        println!("   One line in full:");
        println!("   {}", serde_json::to_string(line)?);
    }

    mismatches += run_services(&pods, &engine, &outside, &enforcer, timeout);

    let (client, backend) = (
        pods.iter().position(|p| p.pod.name == "client"),
        pods.iter()
            .position(|p| p.pod.namespace == "shop" && p.pod.name == "backend-0"),
    );
    if let (Some(c), Some(b)) = (client, backend) {
        println!();
        println!(
            "== Policy change while running: shop/client-to-backend lets default/client reach the backend"
        );
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

    if let Some(http) = &http {
        mismatches += run_http(&pods, http, &enforcer)?;
    }

    drop(servers);
    drop(nginx);
    for (p, g) in pods.iter().zip(&netns_guards) {
        if let Err(e) = cni.del(g, &p.pod) {
            eprintln!("palisade-demo: CNI DEL {}: {e:#}", p.pod.identity());
        }
    }
    println!();
    println!("== CNI DEL for every pod: addresses released, interfaces and registrations gone");
    drop(netns_guards);
    if let Some(keep) = &args.keep_log {
        keep_log(&mut enforcer, keep)?;
    }
    drop(enforcer);
    drop(node);
    println!();
    if mismatches == 0 {
        println!(
            "== Done: the kernel agreed with the offline prediction on every attempt; node removed."
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "== Done with {mismatches} disagreement(s) between kernel and prediction; node removed."
        );
        Ok(ExitCode::from(1))
    }
}

/// Stops the agent (it writes a last checkpoint) and copies its verdict log to `to` and
/// its public key to `<to>.pub`.
fn keep_log(enforcer: &mut Enforcer, to: &std::path::Path) -> anyhow::Result<()> {
    let key = match enforcer.request(&palisade_api::Request::Status) {
        Ok(palisade_api::Response::Status {
            verdict_log: Some(v),
            ..
        }) => v.key.unwrap_or_default(),
        other => anyhow::bail!("agent status without a verdict log key: {other:?}"),
    };
    enforcer.stop();
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    std::fs::copy(enforcer.verdict_log(), to)
        .with_context(|| format!("copying the verdict log to {}", to.display()))?;
    let mut pubkey = to.as_os_str().to_owned();
    pubkey.push(".pub");
    std::fs::write(&pubkey, format!("{key}\n"))
        .with_context(|| format!("{}", PathBuf::from(&pubkey).display()))?;
    Ok(())
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
    // A flow HTTP rules redirect connects (to the agent's L7 proxy, which then judges each
    // request): allowed at this level.
    maps::evaluate(engine, &flow).allowed()
}

/// Services through the datapath: each NodePort service from the host outside the node
/// (translated on the uplink), each ClusterIP from every pod; the pod that answered, next to
/// the prediction for that backend (the same evaluation as the pod-to-pod attempts; a
/// source outside the node is an address). Returns the disagreements.
fn run_services(
    pods: &[DemoPod],
    engine: &Engine,
    outside: &node::Outside,
    enforcer: &Enforcer,
    timeout: Duration,
) -> usize {
    // The model with the demo's pods and their addresses: the backends come from it.
    let cluster = engine.cluster();
    if cluster.services.is_empty() {
        return 0;
    }
    println!();
    println!(
        "== Services: node ports from a host outside the node ({}, through the uplink), cluster IPs from pods",
        node::OUTSIDE_V4
    );
    println!(
        "   {:<22}    {:<42} {:<9} {:<24} {:<9}",
        "from", "to", "kernel", "answered by", "predicted"
    );
    let mut mismatches = 0;
    let by_ip = |ip: IpAddr| pods.iter().find(|p| IpAddr::V4(p.pod.ipv4) == ip);
    let mut line = |from: String, to: String, outcome: Option<String>, predicted: bool| {
        let ok = outcome.is_some();
        if ok != predicted {
            mismatches += 1;
        }
        println!(
            "   {:<22} -> {:<42} {:<9} {:<24} {:<9}{}",
            from,
            to,
            if ok { "ALLOWED" } else { "DENIED" },
            outcome.unwrap_or_else(|| "-".into()),
            if predicted { "allow" } else { "deny" },
            if ok == predicted {
                ""
            } else {
                "   <- MISMATCH"
            }
        );
    };
    for svc in cluster.services.values() {
        let Ok(fronts) = policy_compiler::services::backends::frontends(
            cluster,
            svc,
            policy_compiler::services::maglev::DEFAULT_TABLE_SIZE,
        ) else {
            continue;
        };
        for fb in fronts {
            let fe = fb.frontend;
            if fe.protocol != Protocol::TCP || !fe.vip.is_ipv4() {
                continue;
            }
            // Which pod a connection reaches is the kernel's pick; the prediction is the
            // policy's answer for the backend that answered (or for every backend, when
            // none did: all must deny).
            let verdict = |from: &FlowPeer, banner: &Option<String>| -> bool {
                let backends: Vec<&DemoPod> =
                    fb.backends.iter().filter_map(|b| by_ip(b.addr)).collect();
                let judged: Vec<&DemoPod> = match banner {
                    Some(b) => backends
                        .into_iter()
                        .filter(|p| p.pod.identity() == *b)
                        .collect(),
                    None => backends,
                };
                let port = fb.backends.first().map_or(fe.port, |b| b.port);
                !judged.is_empty()
                    && judged.iter().all(|p| {
                        maps::evaluate(
                            engine,
                            &Flow {
                                src: from.clone(),
                                dst: FlowPeer::Endpoint(Endpoint::pod_key(
                                    &p.pod.namespace,
                                    &p.pod.name,
                                )),
                                protocol: Protocol::TCP,
                                port,
                            },
                        )
                        .allowed()
                    })
            };
            let name = format!("{}/{}", svc.namespace, svc.name);
            if fe.kind == policy_compiler::services::backends::FrontendKind::NodePort {
                let dst = SocketAddr::new(IpAddr::V4(node::UPLINK_NODE_V4), fe.port);
                let banner = match node::tcp_connect_in_netns(&outside.netns_path, dst, timeout) {
                    Ok(TcpOutcome::Connected { banner }) => Some(banner),
                    _ => None,
                };
                let from = FlowPeer::Ip(IpAddr::V4(node::OUTSIDE_V4));
                let predicted = verdict(&from, &banner);
                line(
                    "outside host".into(),
                    format!("{name} node port {dst}"),
                    banner,
                    predicted,
                );
                continue;
            }
            for p in pods {
                if fb.backends.iter().any(|b| b.addr == IpAddr::V4(p.pod.ipv4)) {
                    continue;
                }
                let dst = SocketAddr::new(fe.vip, fe.port);
                let banner = match p.pod.tcp_connect(dst, timeout) {
                    Ok(TcpOutcome::Connected { banner }) => Some(banner),
                    _ => None,
                };
                let from = FlowPeer::Endpoint(Endpoint::pod_key(&p.pod.namespace, &p.pod.name));
                let predicted = verdict(&from, &banner);
                line(p.pod.identity(), format!("{name} {dst}"), banner, predicted);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(600));
    println!("   The verdict log names the service of each translated flow:");
    for v in enforcer
        .verdicts()
        .iter()
        .filter(|v| v["flow"]["destination_service"]["name"].is_string())
    {
        println!(
            "   {}  (service {}/{})",
            summary(v),
            v["flow"]["destination_service"]["namespace"]
                .as_str()
                .unwrap_or("?"),
            v["flow"]["destination_service"]["name"]
                .as_str()
                .unwrap_or("?")
        );
    }
    mismatches
}

fn summary(v: &serde_json::Value) -> String {
    let f = &v["flow"];
    let verdict = f["verdict"].as_str().unwrap_or("?");
    let dir = f["traffic_direction"].as_str().unwrap_or("?");
    let text = f["Summary"].as_str().unwrap_or("");
    format!("{verdict:<9} {dir:<7} {text}")
}

struct PodSpec {
    namespace: String,
    name: String,
    labels: Vec<(String, String)>,
    named: Vec<policy_compiler::model::NamedPort>,
}

/// Removes a directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pod objects for the demo's pods: labels and named container ports.
fn pod_manifests(specs: &[PodSpec]) -> String {
    let mut out = String::new();
    for s in specs {
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ports = s
            .named
            .iter()
            .map(|p| {
                format!(
                    "{{name: {}, containerPort: {}, protocol: {}}}",
                    p.name, p.port, p.protocol
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{{labels}}}}}\nspec:\n  containers:\n  - name: app\n    image: demo\n    ports: [{ports}]\n",
            s.name, s.namespace
        ));
    }
    out
}

/// One HTTP scenario with policy-test's answer.
struct HttpCase {
    name: String,
    /// `namespace/pod` of the demo pods.
    from: String,
    to: String,
    port: u16,
    method: String,
    path: String,
    host: Option<String>,
    predicted: policy_tests::scenario::Expect,
    deciding: String,
}

/// Resolves the scenarios against the manifests and evaluates them as `policy-test check`
/// does; the demo's pod for a workload is `<workload>-0` in its namespace.
fn http_predictions(
    manifests: &std::path::Path,
    path: &std::path::Path,
) -> anyhow::Result<Vec<HttpCase>> {
    use policy_tests::{analysis, output, scenario};
    let a = analysis::Analysis::load(&[manifests.to_path_buf()], &analysis::Options::default())
        .with_context(|| format!("loading {}", manifests.display()))?;
    let file = scenario::load(path).with_context(|| format!("reading {}", path.display()))?;
    let resolved = scenario::resolve_all(&a, &file)
        .with_context(|| format!("resolving {}", path.display()))?;
    let outcomes = scenario::run(&a, &resolved, &output::Progress::hidden());
    let pod_of = |peer: &policy_compiler::FlowPeer| -> Option<String> {
        let policy_compiler::FlowPeer::Endpoint(key) = peer else {
            return None;
        };
        let ep = a.cluster().endpoints.get(key)?;
        Some(format!("{}/{}-0", ep.namespace, ep.workload.name))
    };
    let mut out = Vec::new();
    for o in outcomes {
        let Some(q) = &o.scenario.http else { continue };
        let (Some(from), Some(to)) = (pod_of(&o.flow.src), pod_of(&o.flow.dst)) else {
            continue;
        };
        out.push(HttpCase {
            name: o.scenario.name.clone(),
            from,
            to,
            port: o.flow.port,
            method: q.method.clone(),
            path: q.path.clone(),
            host: q.host.clone(),
            predicted: o.actual,
            deciding: o.deciding.clone(),
        });
    }
    Ok(out)
}

/// Sends every HTTP scenario with curl from its pod and prints the answer next to
/// policy-test's, then the L7 records of the verdict log. Returns the disagreements.
fn run_http(pods: &[DemoPod], cases: &[HttpCase], enforcer: &Enforcer) -> anyhow::Result<usize> {
    use policy_tests::scenario::Expect;
    println!();
    println!("== HTTP through the agent's L7 proxy (curl in the pod, nginx behind the rules)");
    println!(
        "   {:<46} {:<30} {:<10} {:<10}",
        "scenario", "request", "live", "predicted"
    );
    let mut mismatches = 0;
    for c in cases {
        let find = |id: &str| pods.iter().find(|p| p.pod.identity() == id);
        let (Some(from), Some(to)) = (find(&c.from), find(&c.to)) else {
            anyhow::bail!("scenario {:?}: no demo pod {} or {}", c.name, c.from, c.to);
        };
        let url = format!("http://{}:{}{}", to.pod.ipv4, c.port, c.path);
        let mut argv = vec![
            "curl".to_string(),
            "-s".into(),
            "-g".into(),
            "--path-as-is".into(),
            "--noproxy".into(),
            "*".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--max-time".into(),
            "2".into(),
            "-X".into(),
            c.method.clone(),
        ];
        if let Some(h) = &c.host {
            argv.push("-H".into());
            argv.push(format!("Host: {h}"));
        }
        argv.push(url);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = from.pod.run(&refs, Duration::from_secs(4))?;
        let status: u16 = out.stdout.trim().parse().unwrap_or(0);
        let live = match status {
            0 => Expect::Deny,
            403 => Expect::Deny403,
            400 | 414 => Expect::Deny400,
            _ => Expect::Allow,
        };
        let shown = if status == 0 {
            "no conn".to_string()
        } else {
            status.to_string()
        };
        let ok = live == c.predicted;
        mismatches += usize::from(!ok);
        println!(
            "   {:<46} {:<30} {:<10} {:<10}{}",
            c.name,
            format!("{} {}", c.method, c.path),
            shown,
            c.predicted.to_string(),
            if ok { "" } else { "   <- MISMATCH" }
        );
        println!("      {}", c.deciding);
    }
    std::thread::sleep(Duration::from_millis(600));
    println!();
    println!("== The L7 records of the verdict log: one per request the proxy judged");
    for v in enforcer
        .verdicts()
        .iter()
        .filter(|v| v["flow"]["Type"] == "L7")
    {
        println!("   {}", summary(v));
    }
    Ok(mismatches)
}
