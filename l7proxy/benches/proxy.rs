//! L7 proxy benchmark: requests per second and latency through Palisade's connection loop
//! against HAProxy with an equivalent method + path ACL, and against nginx directly, side by
//! side in one run on loopback.
//!
//! `cargo bench -p palisade-l7proxy --bench proxy` (10 s per measurement); under `cargo test`
//! a smoke run (1 s each) checks that every path serves the allowed request and refuses the
//! denied one, and prints the same table without meaning anything by it.
//!
//! Paths: `direct` (wrk → nginx), `palisade` (wrk → `proxy::serve` with the rule
//! `GET /api/.*` → nginx), `haproxy` (wrk → HAProxy 2.6, `http-request deny` unless
//! `method GET` and `path_reg ^/api/.*`, → nginx). Each at 1 and 32 connections, keep-alive and
//! a new connection per request (`Connection: close`). wrk, nginx, the proxies and the
//! benchmark share the machine's cores: the ratios, not the absolute numbers, are the result.
//! Goals (issue): Palisade ≥ 1.2× HAProxy's req/s at 32 connections; added p50 ≤ 50 µs over
//! direct.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{Nginx, free_port, have, wait_listening};
use palisade_l7proxy::proxy::{ProxyConfig, RequestRecord, serve};
use palisade_l7proxy::{HttpRule, L7Action, RuleEntry, RuleSet};

/// One wrk measurement.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn duration_us(v: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mult)
}

fn wrk(url: &str, connections: u32, seconds: u32, close: bool) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let mut run = Run {
        rps: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        errors: 0,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => run.p50_us = duration_us(v).unwrap_or(0.0),
            ["99%", v] => run.p99_us = duration_us(v).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                run.errors += n.parse::<u64>().unwrap_or(0)
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    run
}

/// HAProxy in front of `upstream` with the same rule as Palisade's; killed on drop.
struct Haproxy {
    child: Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(upstream: SocketAddr) -> Haproxy {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "palisade-l7bench-haproxy-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            "global\n  nbthread 2\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
               option http-keep-alive\n  http-reuse always\n\
             frontend f\n  bind 127.0.0.1:{port}\n\
               acl allowed method GET\n  acl api path_reg ^/api/.*\n\
               http-request deny deny_status 403 unless allowed api\n  default_backend b\n\
             backend b\n  server nginx {upstream}\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, || "haproxy did not start".into());
        Haproxy { child, dir, addr }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Palisade's connection loop on a loopback port with the rule `GET /api/.*`.
fn palisade(upstream: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rules = Arc::new(
        RuleSet::compile(vec![RuleEntry {
            id: 1,
            action: L7Action::Allow,
            rule: HttpRule {
                method: Some("GET".into()),
                path: Some("/api/.*".into()),
                ..HttpRule::default()
            },
        }])
        .unwrap(),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::new(ProxyConfig::default());
    rt.spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let (rules, config) = (rules.clone(), config.clone());
            tokio::spawn(async move {
                let current = move || Some(rules.clone());
                let sink = |_: RequestRecord| {};
                let _ = serve(
                    client,
                    || async move {
                        let s = tokio::net::TcpStream::connect(upstream).await?;
                        s.set_nodelay(true)?;
                        Ok(s)
                    },
                    &current,
                    &sink,
                    &config,
                )
                .await;
            });
        }
    });
    (rt, addr)
}

fn status_of(addr: SocketAddr, method: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    for tool in ["nginx", "haproxy", "wrk", "curl"] {
        if !have(tool) {
            return;
        }
    }
    let seconds = if full { 10 } else { 1 };
    let nginx = Nginx::start();
    let (_rt, palisade_addr) = palisade(nginx.addr);
    let haproxy = Haproxy::start(nginx.addr);
    let paths = [
        ("direct", nginx.addr),
        ("palisade", palisade_addr),
        ("haproxy", haproxy.addr),
    ];
    // Every path serves the allowed request; both proxies refuse the denied one.
    for (name, addr) in paths {
        assert_eq!(status_of(addr, "GET", "/api/v1/data"), "200", "{name}");
        if name != "direct" {
            assert_eq!(status_of(addr, "POST", "/api/v1/data"), "403", "{name}");
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "L7 proxy benchmark ({}; {seconds} s per measurement; load average before: {})",
        if full {
            "full run"
        } else {
            "smoke run: cargo bench for the real one"
        },
        load.trim()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>8}",
        "path", "req/s", "p50 µs", "p99 µs", "errors"
    );
    let mut results = Vec::new();
    for close in [false, true] {
        for connections in [1u32, 32] {
            let mut row = Vec::new();
            for (name, addr) in paths {
                let r = wrk(
                    &format!("http://{addr}/api/v1/data"),
                    connections,
                    seconds,
                    close,
                );
                println!(
                    "{:<26} {:>10.0} {:>10.0} {:>10.0} {:>8}",
                    format!(
                        "{name} c={connections} {}",
                        if close { "new-conn" } else { "keep-alive" }
                    ),
                    r.rps,
                    r.p50_us,
                    r.p99_us,
                    r.errors
                );
                row.push(r);
            }
            results.push((close, connections, row));
        }
    }
    println!("ratios (same run):");
    for (close, connections, row) in &results {
        let (direct, pal, ha) = (row[0], row[1], row[2]);
        println!(
            "  c={connections} {:<10} palisade/haproxy req/s {:.2}  palisade/direct {:.2}  added p50 palisade {:+.0} µs, haproxy {:+.0} µs",
            if *close { "new-conn" } else { "keep-alive" },
            pal.rps / ha.rps.max(1.0),
            pal.rps / direct.rps.max(1.0),
            pal.p50_us - direct.p50_us,
            ha.p50_us - direct.p50_us,
        );
    }
    if let Some((_, _, row)) = results.iter().find(|(c, n, _)| !*c && *n == 32) {
        let ratio = row[1].rps / row[2].rps.max(1.0);
        println!(
            "goal palisade >= 1.2x haproxy req/s at 32 keep-alive connections: {ratio:.2} ({})",
            if ratio >= 1.2 { "met" } else { "NOT met" }
        );
    }
    let errors: u64 = results
        .iter()
        .flat_map(|(_, _, row)| row.iter().map(|r| r.errors))
        .sum();
    assert_eq!(errors, 0, "requests failed during the benchmark");
}
