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
use palisade_testkit::wrk::{self, WrkRun};
use std::time::Duration;

fn wrk(url: &str, connections: u32, seconds: u32, close: bool) -> WrkRun {
    let argv = wrk::args(
        url,
        connections,
        Duration::from_secs(u64::from(seconds)),
        close,
    );
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    wrk::parse(&text)
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
                    &|| async move {
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
    wrk::print_header();
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
                wrk::print_row(name, connections, close, &r);
                row.push(r);
            }
            results.push((close, connections, row));
        }
    }
    wrk::print_proxy_ratios(&results);
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
