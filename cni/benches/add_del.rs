//! ADD and DEL latency of palisade-cni against Debian's reference `bridge` + `host-local`
//! (containernetworking-plugins, /usr/lib/cni), measured in the same run, alternating
//! plugins per iteration. Needs root. Each plugin is exec'd from a thread inside a
//! test-owned node namespace, as a runtime would exec it; the enforcer is the in-process
//! test double (answers at once), so the figure excludes the enforcer's own programming
//! time. Run: `cargo bench -p palisade-cni --bench add_del` (`PALISADE_CNI_BENCH_N`, default 200;
//! 5 when `cargo test --all-targets` runs it as a smoke test).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{FakeEnforcer, Mode, Netns, TempDir, node_uplink};
use nix::sched::{CloneFlags, setns};
use serde_json::json;

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn exec(plugin: &Path, vars: &[(&str, String)], stdin: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} failed: {}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p90, p99) = (
        percentile(&v, 0.50),
        percentile(&v, 0.90),
        percentile(&v, 0.99),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<28} p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(v[v.len() - 1])
    );
    (p50, p99)
}

/// The 1-minute load average: the tails depend on what else the machine runs.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("add_del: skipped: needs root");
        return;
    }
    if !Path::new(REFERENCE_DIR).join("bridge").exists() {
        eprintln!(
            "add_del: skipped: {REFERENCE_DIR}/bridge missing (apt-get install containernetworking-plugins)"
        );
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and then a short smoke run (both plugins work here) is enough.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("PALISADE_CNI_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 5 } else { 200 });
    let node = Netns::new("plbn");
    node_uplink(&node);
    let dir = TempDir::new("bench");
    let socket = dir.0.join("enforcer.sock");
    let _enforcer = FakeEnforcer::start(&socket, Mode::Accept);
    let ours = json!({
        "cniVersion": "1.0.0", "name": "palbench", "type": "palisade-cni",
        "ipam": { "type": "palisade", "subnet": "10.213.0.0/16", "dataDir": dir.0.join("ipam") },
        "enforcerSocket": socket,
    })
    .to_string();
    let reference = json!({
        "cniVersion": "1.0.0", "name": "refbench", "type": "bridge", "bridge": "refbr0",
        "isGateway": true, "ipMasq": false,
        "ipam": { "type": "host-local", "dataDir": dir.0.join("host-local"),
                  "ranges": [[{ "subnet": "10.214.0.0/16" }]], "routes": [{ "dst": "0.0.0.0/0" }] },
    })
    .to_string();
    let plugin = Path::new(common::PLUGIN).to_owned();
    let bridge = Path::new(REFERENCE_DIR).join("bridge");

    let load_before = load();
    let node_path = node.path();
    let samples = std::thread::scope(|s| {
        s.spawn(|| {
            setns(File::open(&node_path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
            let (mut add_ours, mut del_ours, mut add_ref, mut del_ref) =
                (vec![], vec![], vec![], vec![]);
            let warmup = 5;
            for i in 0..n + warmup {
                for (which, bin, conf, cni_path) in [
                    (0, &plugin, &ours, "/nonexistent"),
                    (1, &bridge, &reference, REFERENCE_DIR),
                ] {
                    let pod = Netns::new("plbp");
                    let cid = format!("bench{which}x{i}");
                    let vars = |cmd: &str| {
                        vec![
                            ("CNI_COMMAND", cmd.to_owned()),
                            ("CNI_CONTAINERID", cid.clone()),
                            ("CNI_NETNS", pod.path().display().to_string()),
                            ("CNI_IFNAME", "eth0".to_owned()),
                            ("CNI_PATH", cni_path.to_owned()),
                            (
                                "CNI_ARGS",
                                "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p".to_owned(),
                            ),
                        ]
                    };
                    let add = exec(bin, &vars("ADD"), conf);
                    let del = exec(bin, &vars("DEL"), conf);
                    if i >= warmup {
                        let (a, d) = if which == 0 {
                            (&mut add_ours, &mut del_ours)
                        } else {
                            (&mut add_ref, &mut del_ref)
                        };
                        a.push(add);
                        d.push(del);
                    }
                }
            }
            (add_ours, del_ours, add_ref, del_ref)
        })
        .join()
        .unwrap()
    });
    let (add_ours, del_ours, add_ref, del_ref) = samples;
    println!(
        "CNI ADD/DEL latency, {n} iterations each, alternating plugins; load average {load_before} -> {}",
        load()
    );
    let a = report("palisade-cni ADD", add_ours);
    let b = report("bridge+host-local ADD", add_ref);
    let c = report("palisade-cni DEL", del_ours);
    let d = report("bridge+host-local DEL", del_ref);
    let verdict = |ours: (Duration, Duration), theirs: (Duration, Duration)| {
        if ours.0 <= theirs.0 && ours.1 <= theirs.1 {
            "met"
        } else {
            "NOT met"
        }
    };
    println!(
        "target (no slower than the reference at p50 and p99): ADD {}, DEL {}",
        verdict(a, b),
        verdict(c, d)
    );
}
