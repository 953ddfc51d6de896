//! Kubernetes-mode benchmark (not a test): the real agent (`run --kubernetes`, release build)
//! on a local node, against the real kube-apiserver + etcd of ../shared/realclients running
//! in the node's network namespace.
//!
//! Cluster: `PODS` pods (default 5,000) in `NAMESPACES` namespaces (500), `POLICIES`
//! NetworkPolicies (1,000: per namespace a default deny and an allow from the next
//! namespace's `app1` pods to `app0` on 8080). Pods are spread over 50 other nodes (they
//! feed the ipcache only) except `LOCAL` pods (10) on this node, which are wired and
//! registered like the CNI plugin does and become endpoints with policy maps.
//!
//! Measured, with the baseline of the same run where one exists:
//!
//! * start to synced: agent start until it reports ready (every kind listed, first compile
//!   written to the maps); baseline: the same agent against an empty API server;
//! * agent memory: VmRSS once synced, per pod beyond the same agent on the same objects
//!   read from a manifest directory (same model, engine and compiled maps: what remains is
//!   the Kubernetes source's own), and beyond an agent on an empty cluster (kernel map
//!   memory is in neither);
//! * event to map: an API write (a local pod's label, a policy's port) until the agent has
//!   written the maps for it (its `policy revision applied` line, which follows the map
//!   writes), p50 and p99 over `CHANGES` (100) of each. Includes the API server's watch
//!   latency and the source's 20 ms debounce.
//!
//! Run:
//!
//!     cargo bench -p palisade-enforcer --bench kubernetes          # needs root
//!     PALISADE_K8S_BENCH_PODS=1000 cargo bench -p palisade-enforcer --bench kubernetes

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark: a failed step aborts the run, and RAII guards clean up"
)]

use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{Node, unique_tag};
use palisade_testkit::realclients::ApiServer;
use serde_json::{Value, json};

#[path = "../tests/common/mod.rs"]
mod common;

use common::kube::{api, obj};

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");
const NODE: &str = "local-node";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The agent's log, read from where it was when created.
struct LogTail {
    file: std::fs::File,
    buf: String,
}

impl LogTail {
    fn new(path: &Path) -> LogTail {
        let mut file = std::fs::File::open(path).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
        LogTail {
            file,
            buf: String::new(),
        }
    }

    /// Polls (every 0.2 ms) until a line containing `needle` appears; when it was seen.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Instant {
        let t0 = Instant::now();
        loop {
            let mut more = String::new();
            self.file.read_to_string(&mut more).unwrap();
            if !more.is_empty() {
                self.buf.push_str(&more);
                if let Some(i) = self.buf.find(needle) {
                    let seen = Instant::now();
                    let end = self.buf[i..].find('\n').map_or(self.buf.len(), |e| i + e);
                    self.buf.drain(..end);
                    return seen;
                }
                // Keep only a partial last line.
                if let Some(nl) = self.buf.rfind('\n') {
                    self.buf.drain(..=nl);
                }
            }
            assert!(t0.elapsed() < timeout, "no {needle:?} within {timeout:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut ms: Vec<f64>, target_p99: f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
    println!(
        "{name:<40} p50 {p50:>7.1} ms   p99 {p99:>7.1} ms   (n={}, target p99 ≤ {target_p99} ms: {})",
        ms.len(),
        if p99 <= target_p99 { "met" } else { "NOT met" }
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run, under the
    // privileged-test rule (fails under CI=true when it cannot run, skips elsewhere).
    let smoke = !std::env::args().any(|a| a == "--bench");
    if !palisade_testkit::require_privileged("kubernetes bench") {
        return;
    }
    let scale =
        |name: &str, full: usize, small: usize| env_usize(name, if smoke { small } else { full });
    let pods_n = scale("PALISADE_K8S_BENCH_PODS", 5_000, 200);
    let ns_n = scale("PALISADE_K8S_BENCH_NAMESPACES", 500, 20).max(1);
    let policies_per_ns = scale("PALISADE_K8S_BENCH_POLICIES", 1_000, 40).div_ceil(ns_n);
    let local_n = env_usize("PALISADE_K8S_BENCH_LOCAL", 10).max(2);
    let changes = scale("PALISADE_K8S_BENCH_CHANGES", 100, 10);
    if smoke {
        println!("kubernetes bench: smoke run (cargo bench passes --bench for the real one)");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "kubernetes-mode benchmark: {pods_n} pods ({local_n} on this node) in {ns_n} namespaces, {} policies; load {}",
        policies_per_ns * ns_n,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let node = Node::create(&unique_tag("k8b")).unwrap();
    let Some(server) = ApiServer::start_in_or_skip("kube-bench", Some(node.netns_name())) else {
        return;
    };
    let kc: PathBuf = server.kubeconfig.clone();

    // Baseline: the same agent against an empty cluster.
    let t0 = Instant::now();
    let empty = Enforcer::start_kubernetes(Path::new(EXE), &node, &kc, true).unwrap();
    let ready_empty = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss_empty = rss_kib(empty.pid().unwrap());
    drop(empty);

    // The cluster, as objects: namespaces, pods (with the status the kubelet would write),
    // policies.
    let local_ips: Vec<Ipv4Addr> = (0..local_n)
        .map(|i| Ipv4Addr::new(10, 243, 1, 10 + i as u8))
        .collect();
    let namespaces: Vec<Value> = (0..ns_n)
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t{n}")}}})
        })
        .collect();
    let pods: Vec<Value> = (0..pods_n)
        .map(|k| {
            let local = k < local_ips.len();
            let (ns, name, node, ip) = if local {
                (
                    "ns-0".to_string(),
                    format!("local-{k}"),
                    NODE.to_string(),
                    local_ips[k].to_string(),
                )
            } else {
                (
                    format!("ns-{}", k % ns_n),
                    format!("pod-{k}"),
                    format!("node-{}", k % 50),
                    Ipv4Addr::from(0x0a32_0000_u32 + k as u32).to_string(),
                )
            };
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns, "labels": {"app": format!("app{}", k % 5)}},
                   "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause",
                            "ports": [{"name": "http", "containerPort": 8080}]}]},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
        })
        .collect();
    let policies: Vec<Value> = (0..ns_n)
        .flat_map(|n| {
            (0..policies_per_ns).map(move |p| {
                let meta = |name: String| json!({"name": name, "namespace": format!("ns-{n}")});
                if p == 0 {
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": meta("default-deny".into()),
                           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
                } else {
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": meta(format!("allow-{p}")),
                           "spec": {"podSelector": {"matchLabels": {"app": "app0"}},
                                    "ingress": [{"from": [{
                                        "namespaceSelector": {"matchLabels": {"team": format!("t{}", (n + p) % ns_n)}},
                                        "podSelector": {"matchLabels": {"app": "app1"}}}],
                                        "ports": [{"port": 8080 + p as i32}]}]}})
                }
            })
        })
        .collect();

    // Baseline for memory: the same agent on the same objects from a manifest directory
    // (same model, same compiled maps; no API client, watchers or per-object store).
    let dir = std::env::temp_dir().join(format!("palisade-k8s-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all: Vec<&Value> = namespaces.iter().chain(&pods).chain(&policies).collect();
    for (i, chunk) in all.chunks(1000).enumerate() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": chunk});
        std::fs::write(dir.join(format!("{i:03}.json")), list.to_string()).unwrap();
    }
    let t0 = Instant::now();
    let from_dir = Enforcer::start(Path::new(EXE), &node, &dir, true).unwrap();
    let ready_dir = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss_dir = rss_kib(from_dir.pid().unwrap());
    drop(from_dir);
    let _ = std::fs::remove_dir_all(&dir);

    let t0 = Instant::now();
    api(&node, &kc, |c| async move {
        let nss: Api<Namespace> = Api::all(c.clone());
        futures::stream::iter(namespaces)
            .map(|o| {
                let nss = nss.clone();
                async move {
                    nss.create(&PostParams::default(), &obj(o)).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        futures::stream::iter(pods)
            .map(|o| {
                let c = c.clone();
                async move {
                    let ns = o["metadata"]["namespace"].as_str().unwrap().to_string();
                    let name = o["metadata"]["name"].as_str().unwrap().to_string();
                    let status = o["status"].clone();
                    let api: Api<KubePod> = Api::namespaced(c, &ns);
                    api.create(&PostParams::default(), &obj(o)).await.unwrap();
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        futures::stream::iter(policies)
            .map(|o| {
                let c = c.clone();
                async move {
                    let ns = o["metadata"]["namespace"].as_str().unwrap().to_string();
                    let api: Api<NetworkPolicy> = Api::namespaced(c, &ns);
                    api.create(&PostParams::default(), &obj(o)).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    });
    println!(
        "cluster written to the API server in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Start to synced.
    let t0 = Instant::now();
    let mut agent = Enforcer::start_kubernetes(Path::new(EXE), &node, &kc, true).unwrap();
    let ready_full = t0.elapsed();
    // Local pods: wired and registered as the CNI plugin does (labels from the API).
    let local: Vec<_> = local_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let p = node
                .add_pod("ns-0", &format!("local-{i}"), *ip, None)
                .unwrap();
            agent.register_from_source(&p).unwrap();
            p
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let rss_full = rss_kib(agent.pid().unwrap());
    println!(
        "start to synced (ready)                  {:>7.2} s    empty cluster {:.2} s   (target ≤ 10 s: {})",
        ready_full.as_secs_f64(),
        ready_empty.as_secs_f64(),
        if ready_full <= Duration::from_secs(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    let per_pod = |base: u64| (rss_full.saturating_sub(base)) as f64 * 1024.0 / pods_n as f64;
    println!(
        "agent memory (VmRSS)                     {:>7.1} MiB  same objects from a directory {:.1} MiB, empty cluster {:.1} MiB",
        rss_full as f64 / 1024.0,
        rss_dir as f64 / 1024.0,
        rss_empty as f64 / 1024.0,
    );
    println!(
        "  per pod beyond the directory agent     {:>7.0} bytes (target ≤ 5 KiB: {}); beyond the empty agent {:.0} bytes",
        per_pod(rss_dir),
        if per_pod(rss_dir) <= 5120.0 {
            "met"
        } else {
            "NOT met"
        },
        per_pod(rss_empty)
    );
    println!(
        "  (directory agent ready in {:.2} s on the same objects)",
        ready_dir.as_secs_f64()
    );
    // Event to map.
    let mut tail = LogTail::new(&agent.log_path);
    let mut label_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        let app = if i % 2 == 0 { "app1" } else { "app0" };
        let t = api(&node, &kc, |c| async move {
            let pods = Api::<KubePod>::namespaced(c, "ns-0");
            let t = Instant::now();
            pods.patch(
                "local-0",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": app}}})),
            )
            .await
            .unwrap();
            t
        });
        let seen = tail.wait_for("policy revision applied", Duration::from_secs(30));
        label_ms.push(seen.duration_since(t).as_secs_f64() * 1e3);
    }
    let mut policy_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        let port = 9000 + (i % 2) as i32;
        let t = api(&node, &kc, |c| async move {
            let nps = Api::<NetworkPolicy>::namespaced(c, "ns-0");
            let t = Instant::now();
            nps.patch(
                "allow-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"ingress": [{"from": [{"podSelector": {}}],
                                                              "ports": [{"port": port}]}]}})),
            )
            .await
            .unwrap();
            t
        });
        let seen = tail.wait_for("policy revision applied", Duration::from_secs(30));
        policy_ms.push(seen.duration_since(t).as_secs_f64() * 1e3);
    }
    summary("event to map: pod label change", label_ms, 100.0);
    summary("event to map: policy change", policy_ms, 100.0);

    agent.stop();
    for p in &local {
        let _ = node.remove_pod(p);
    }
    drop(agent);
    drop(server);
    drop(node);
}
