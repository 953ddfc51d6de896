//! The verdict log's write path and what the hash chain costs: N events rendered and
//! written (a) as lines without a chain (the baseline: render + `RotatingWriter`, as
//! before chaining) and (b) through `FlowLogger` (render + seal each line + write, a
//! signed checkpoint every 10,000 records), same events, same run. Prints events/s and the
//! ratio. `cargo bench -p palisade-enforcer --bench verdict_log`;
//! `PALISADE_VERDICT_BENCH_EVENTS` sets N (default 300,000). Under `cargo test` (no `--bench`)
//! a smoke run of 3,000 events, one round, checks that both paths work and prints the same
//! lines without meaning anything by them.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use std::time::Instant;

use ed25519_dalek::SigningKey;
use palisade_enforcer::events::{
    BootClock, EngineResolver, FlowIds, FlowLogger, L7Event, L7Memo, L7Side, RotatingWriter,
    render_lines,
};
use palisade_l7proxy::proxy::{Outcome, RequestRecord};
use policy_compiler::abi::{self, VerdictEvent};
use policy_compiler::engine::l7::L7Origin;
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::model::Direction;
use policy_compiler::{Engine, EngineConfig};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"#;

fn events(e: &Engine, n: usize) -> Vec<VerdictEvent> {
    let rule = e
        .rules()
        .resolve(16)
        .map(|_| 16)
        .unwrap_or(abi::RULE_ID_NONE);
    (0..n)
        .map(|i| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[10, 0, 0, 1]);
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&[10, 0, 0, 2]);
            let deny = i % 4 == 0;
            VerdictEvent {
                time_ns: 1_000_000 * i as u64,
                saddr: a,
                daddr: b,
                sport_be: (30000 + (i % 30000) as u16).to_be(),
                dport_be: 5432u16.to_be(),
                protocol: 6,
                family: 4,
                direction: abi::DIRECTION_INGRESS,
                verdict: if deny {
                    abi::EVENT_VERDICT_DROPPED
                } else {
                    abi::EVENT_VERDICT_FORWARDED
                },
                kind: abi::EVENT_KIND_NEW_FLOW,
                tcp_flags: 2,
                drop_reason: if deny {
                    abi::DROP_POLICY_DENIED as u16
                } else {
                    0
                },
                ifindex: 3,
                src_identity: e.endpoint_identity("shop/web-1").unwrap_or(0),
                dst_identity: e.endpoint_identity("shop/db-0").unwrap_or(0),
                rule_id: if deny { abi::RULE_ID_NONE } else { rule },
                revision: 1,
                proxy_port_be: 0,
                service: 0,
                packet_len: 74,
            }
        })
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("PALISADE_VERDICT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 300_000 } else { 3_000 });
    let rounds = if full { 3 } else { 1 };
    if !full {
        println!("verdict log bench: smoke run (cargo bench passes --bench for the real one)");
    }
    let loaded = load_str("bench.yaml", MANIFESTS, &LoadOptions::default()).unwrap();
    let e = Engine::compile(&loaded.cluster, EngineConfig::default())
        .unwrap()
        .0;
    let r = EngineResolver::new(&e);
    let evs = events(&e, n);
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let base_path = dir.join(format!(
        "palisade-vl-bench-plain-{}.jsonl",
        std::process::id()
    ));
    let chain_path = dir.join(format!(
        "palisade-vl-bench-chain-{}.jsonl",
        std::process::id()
    ));
    let clock = BootClock::with_offset(1_700_000_000_000_000_000);

    let mut best = (f64::INFINITY, f64::INFINITY);
    let mut lines = 0usize;
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&base_path);
        let _ = std::fs::remove_file(&chain_path);
        // (a) render + write, no chain.
        let mut w = RotatingWriter::open(&base_path, 1 << 40, 1, false).unwrap();
        let mut ids = FlowIds::with_seed(1);
        let t0 = Instant::now();
        lines = 0;
        for ev in &evs {
            for l in render_lines(ev, &r, "node-a", clock.to_wall(ev.time_ns), &mut || {
                ids.next_id()
            }) {
                w.write_line(&l).unwrap();
                lines += 1;
            }
        }
        w.flush().unwrap();
        best.0 = best.0.min(t0.elapsed().as_secs_f64());

        // (b) FlowLogger: render + chain + write, a checkpoint every 10,000 records.
        let w = RotatingWriter::open(&chain_path, 1 << 40, 1, false).unwrap();
        let mut log = FlowLogger::new(w, "node-a", clock)
            .unwrap()
            .with_key(SigningKey::from_bytes(&[7; 32]));
        let t0 = Instant::now();
        for (i, ev) in evs.iter().enumerate() {
            log.log(ev, &r).unwrap();
            if i % 10_000 == 9_999 {
                log.checkpoint().unwrap();
            }
        }
        log.flush().unwrap();
        best.1 = best.1.min(t0.elapsed().as_secs_f64());
    }
    let plain = std::fs::metadata(&base_path).unwrap().len();
    let chained = std::fs::metadata(&chain_path).unwrap().len();
    println!("{n} events, {lines} lines (a policy denial is two), best of {rounds}");
    println!(
        "render + write, no chain (baseline): {:.3} s, {:.0} events/s, {:.1} MB",
        best.0,
        n as f64 / best.0,
        plain as f64 / 1e6
    );
    println!(
        "render + chain + write (FlowLogger): {:.3} s, {:.0} events/s, {:.1} MB",
        best.1,
        n as f64 / best.1,
        chained as f64 / 1e6
    );
    println!(
        "chain cost: {:.2}x the baseline's time, +{:.0} ns per line, +{:.1}% bytes",
        best.1 / best.0,
        (best.1 - best.0) * 1e9 / lines as f64,
        (chained as f64 / plain as f64 - 1.0) * 100.0
    );
    let _ = std::fs::remove_file(&base_path);
    let _ = std::fs::remove_file(&chain_path);

    // (c) L7 records (one per HTTP request the proxy judged) through FlowLogger, as the
    // agent writes them: render + chain + write.
    let l7 = l7_event(&e);
    let l7_path = dir.join(format!("palisade-vl-bench-l7-{}.jsonl", std::process::id()));
    let mut best_l7 = f64::INFINITY;
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&l7_path);
        let w = RotatingWriter::open(&l7_path, 1 << 40, 1, false).unwrap();
        let mut log = FlowLogger::new(w, "node-a", clock)
            .unwrap()
            .with_key(SigningKey::from_bytes(&[7; 32]));
        let t0 = Instant::now();
        // As the agent renders them: a batch at a time with one resolver (a batch is what
        // arrived in 200 ms; 10,000 here), endpoints and rules looked up once per batch.
        let mut memo = L7Memo::default();
        for i in 0..n {
            if i % 10_000 == 0 {
                memo = L7Memo::default();
            }
            let line = log.render_l7_memo(&l7, &r, &mut memo);
            log.write(line).unwrap();
            if i % 10_000 == 9_999 {
                log.checkpoint().unwrap();
            }
        }
        log.flush().unwrap();
        best_l7 = best_l7.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "L7 records, render + chain + write (FlowLogger): {:.3} s, {:.0} records/s, {:.2} µs a record ({:.2}x an L3/L4 event's time)",
        best_l7,
        n as f64 / best_l7,
        best_l7 * 1e6 / n as f64,
        best_l7 / best.1
    );
    let _ = std::fs::remove_file(&l7_path);
}

/// A forwarded `GET` the server's ingress HTTP rules allowed, as the proxy reports it.
fn l7_event(e: &Engine) -> L7Event {
    L7Event {
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "10.0.0.2:5432".parse().unwrap(),
        client_identity: e.endpoint_identity("shop/web-1").unwrap_or(0),
        server_identity: e.endpoint_identity("shop/db-0").unwrap_or(0),
        sides: vec![L7Side {
            direction: Direction::Ingress,
            origin: Some(L7Origin {
                rule_id: 16,
                http_index: Some(0),
            }),
            audit: None,
        }],
        revision: 3,
        record: RequestRecord {
            method: "GET".into(),
            target: "/api/v1/data?page=2".into(),
            path: Some("/api/v1/data".into()),
            host: Some("db:5432".into()),
            version: "HTTP/1.1",
            outcome: Outcome::Forwarded {
                rule: 0,
                status: 200,
            },
            latency: std::time::Duration::from_micros(180),
            upstream_error: None,
        },
    }
}
