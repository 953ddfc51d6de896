//! `palisade observe` throughput: lines per second through the release binary over a
//! generated log of `PALISADE_OBSERVE_BENCH_LINES` lines (default 1,000,000), built from the
//! real enforcer's lines in `tests/fixtures/node.jsonl` (each copy with its own uuid). The
//! baseline, measured in the same run on the same file: `grep -c` of the same verdict
//! string (a lower bound for "read every byte and look at it"). Not a test: run with
//! `cargo bench -p palisade-observe --bench filter`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-observe");

fn generate(path: &Path, n: usize) -> u64 {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node.jsonl"),
    )
    .unwrap();
    let templates: Vec<&str> = fixture
        .lines()
        .filter(|l| l.starts_with("{\"flow\""))
        .collect();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut bytes = 0u64;
    for i in 0..n {
        let t = templates[i % templates.len()];
        let at = t.find("\"uuid\":\"").unwrap() + 8;
        let line = format!("{}{:08x}{}", &t[..at], i, &t[at + 8..]);
        bytes += line.len() as u64 + 1;
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
    }
    w.flush().unwrap();
    bytes
}

fn time(cmd: &mut Command) -> f64 {
    let t0 = Instant::now();
    let st = cmd.stdout(Stdio::null()).status().unwrap();
    assert!(st.success() || st.code() == Some(1), "{cmd:?}: {st}");
    t0.elapsed().as_secs_f64()
}

fn best_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn main() {
    let n: usize = std::env::var("PALISADE_OBSERVE_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!(
        "palisade-observe-bench-{}.jsonl",
        std::process::id()
    ));
    let bytes = generate(&path, n);
    let p = path.to_str().unwrap();
    println!(
        "log: {n} lines, {:.0} MB ({} bytes/line), {}",
        bytes as f64 / 1e6,
        bytes / n as u64,
        path.display()
    );
    // Warm the page cache.
    let _ = std::fs::read(&path).unwrap();

    // grep's output goes to a pipe: with stdout on /dev/null GNU grep stops at the first match.
    let base = best_of(3, || {
        let t0 = Instant::now();
        let o = Command::new("grep")
            .args(["-c", "\"verdict\":\"DROPPED\"", p])
            .output()
            .unwrap();
        assert!(o.status.success());
        t0.elapsed().as_secs_f64()
    });
    println!(
        "baseline grep -c '\"verdict\":\"DROPPED\"': {:.3} s, {:.2} M lines/s",
        base,
        n as f64 / base / 1e6
    );
    let queries: &[(&str, &[&str])] = &[
        (
            "--verdict DROPPED -o jsonpb",
            &["--verdict", "DROPPED", "-o", "jsonpb"],
        ),
        (
            "--policy hb/default-deny --type drop",
            &["--policy", "hb/default-deny", "--type", "drop"],
        ),
        (
            "--from-pod hb/cl --protocol udp",
            &["--from-pod", "hb/cl", "--protocol", "udp"],
        ),
        (
            "--rule hb/web:ingress:1 -o jsonpb",
            &["--rule", "hb/web:ingress:1", "-o", "jsonpb"],
        ),
        (
            "--verdict AUDIT --since 1d",
            &["--verdict", "AUDIT", "--since", "1d"],
        ),
        ("(no filter) -o jsonpb", &["-o", "jsonpb"]),
        ("--summary", &["--summary"]),
        ("--verify", &["--verify"]),
    ];
    for (name, args) in queries {
        let t = best_of(3, || {
            time(Command::new(EXE).arg(p).arg("--no-rotated").args(*args))
        });
        println!(
            "palisade observe {name}: {:.3} s, {:.2} M lines/s, {:.1}x grep's time",
            t,
            n as f64 / t / 1e6,
            t / base
        );
    }
    let _ = std::fs::remove_file(&path);
}
