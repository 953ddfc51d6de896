//! The L7 proxy through the real datapath redirect, side by side in one run on one node:
//! `wrk` in a client pod against nginx in a server pod,
//!
//! - `direct`: an L3/L4 allow (no proxy) — the baseline;
//! - `palisade`: an HTTP rule `GET /api/.*` on the port, so the agent's tc program redirects
//!   the connection to its in-process proxy (sk_lookup), which judges each request and
//!   connects upstream from the client's address;
//! - `haproxy`: HAProxy (Debian package) on the node's address with the equivalent ACL
//!   (`method GET`, `path_reg ^/api/.*`) in front of the same nginx.
//!
//! Each at 1 and 32 connections, keep-alive and a new connection per request, interleaved
//! rounds, medians. `cargo bench -p palisade-enforcer --bench l7_redirect` (5 s per
//! measurement, 3 rounds); under `cargo test` a smoke run (1 s, 1 round) checks that every
//! path serves the allowed request and both proxies refuse the denied one.
//! `PALISADE_L7_BENCH_SECONDS`, `PALISADE_L7_BENCH_ROUNDS` and `PALISADE_L7_BENCH_MODES`
//! (`keep-alive`, `new-conn`; both by default) narrow a run, e.g. for a profile. Needs root. The
//! ratios are the result: wrk, nginx, the agent and HAProxy share the machine's cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{GATEWAY_V4, Node, Pod};
use palisade_testkit::wrk::{self, WrkRun};

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: l4, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: \"8081\", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: \"/api/.*\"}
";

fn curl_status(pod: &Pod, method: &str, url: &str) -> String {
    pod.run(
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            "-X",
            method,
            url,
        ],
        Duration::from_secs(5),
    )
    .unwrap()
    .stdout
}

struct Haproxy(std::process::Child, std::path::PathBuf);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// HAProxy in the node namespace on `GATEWAY_V4:8443` in front of `upstream`.
fn haproxy(node: &Node, upstream: SocketAddr) -> Haproxy {
    let dir = std::env::temp_dir().join(format!("palisade-l7redirect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        "global\n  nbthread 2\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
           option http-keep-alive\n  http-reuse always\n\
         frontend f\n  bind {GATEWAY_V4}:8443\n\
           acl allowed method GET\n  acl api path_reg ^/api/.*\n\
           http-request deny deny_status 403 unless allowed api\n  default_backend b\n\
         backend b\n  server nginx {upstream}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", node.netns_name(), "haproxy", "-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Haproxy(child, dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    for tool in ["nginx", "haproxy", "wrk", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(std::env::var("CI").is_err(), "{tool} is missing");
            println!("l7_redirect: skipped, {tool} is missing");
            return;
        }
    }
    let Some(node) = Node::for_test("l7bench", "L7 redirect benchmark") else {
        return;
    };
    let src = std::env::temp_dir().join(format!("palisade-l7bench-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("bench.yaml"), MANIFESTS).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    let client = node
        .add_pod("bench", "client", "10.248.1.10".parse().unwrap(), None)
        .unwrap();
    let server = node
        .add_pod("bench", "server", "10.248.1.11".parse().unwrap(), None)
        .unwrap();
    enforcer.register(&client, &[("app", "client")]).unwrap();
    enforcer.register(&server, &[("app", "server")]).unwrap();
    let _n1 = server.start_nginx(8080).unwrap();
    let _n2 = server.start_nginx(8081).unwrap();
    let direct = SocketAddr::new(IpAddr::V4(server.ipv4), 8080);
    let _ha = haproxy(&node, direct);
    let paths = [
        ("direct", format!("http://{direct}")),
        ("palisade", format!("http://{}:8081", server.ipv4)),
        ("haproxy", format!("http://{GATEWAY_V4}:8443")),
    ];
    // Every path serves the allowed request; both proxies refuse the denied one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while curl_status(&client, "GET", &format!("{}/api/v1/data", paths[2].1)) != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "haproxy did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, base) in &paths {
        let url = format!("{base}/api/v1/data");
        assert_eq!(curl_status(&client, "GET", &url), "200", "{name}");
        if *name != "direct" {
            assert_eq!(curl_status(&client, "POST", &url), "403", "{name}");
        }
    }
    let (seconds, rounds) = if full { (5, 3) } else { (1, 1) };
    let knob = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let seconds = knob("PALISADE_L7_BENCH_SECONDS", seconds);
    let rounds = knob("PALISADE_L7_BENCH_ROUNDS", rounds);
    // `keep-alive`, `new-conn` or both (the default).
    let modes = std::env::var("PALISADE_L7_BENCH_MODES").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "L7 proxy through the datapath redirect ({}; {seconds} s per measurement, {rounds} \
         interleaved round(s), medians; load average before: {})",
        if full {
            "full run"
        } else {
            "smoke run: cargo bench for the real one"
        },
        load.trim()
    );
    wrk::print_header();
    let mut errors = 0;
    let mut table = Vec::new();
    for close in [false, true] {
        let mode = if close { "new-conn" } else { "keep-alive" };
        if !modes.is_empty() && !modes.split(',').any(|m| m == mode) {
            continue;
        }
        for connections in [1u32, 32] {
            let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); paths.len()];
            for _ in 0..rounds {
                for (i, (_, base)) in paths.iter().enumerate() {
                    let argv = wrk::args(
                        &format!("{base}/api/v1/data"),
                        connections,
                        Duration::from_secs(seconds),
                        close,
                    );
                    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                    let out = client
                        .run(&refs, Duration::from_secs(seconds + 30))
                        .unwrap();
                    assert!(out.status.success(), "wrk: {}", out.stderr);
                    runs[i].push(wrk::parse(&out.stdout));
                }
            }
            let mut row = Vec::new();
            for (i, (name, _)) in paths.iter().enumerate() {
                let r = WrkRun {
                    rps: median(runs[i].iter().map(|r| r.rps).collect()),
                    p50_us: median(runs[i].iter().map(|r| r.p50_us).collect()),
                    p99_us: median(runs[i].iter().map(|r| r.p99_us).collect()),
                    errors: runs[i].iter().map(|r| r.errors).sum(),
                };
                errors += r.errors;
                wrk::print_row(name, connections, close, &r);
                row.push(r);
            }
            table.push((close, connections, row));
        }
    }
    wrk::print_proxy_ratios(&table);
    assert_eq!(errors, 0, "requests failed during the benchmark");
    drop(enforcer);
}
