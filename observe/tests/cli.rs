#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! `palisade observe` as a user runs it, over `fixtures/node.jsonl`: a verdict log the real
//! enforcer wrote on a local node in `enforcer/tests/hubble.rs` (allows, default-deny and
//! explicit-deny drops with their policy-verdict lines, an audit, connection closes, a
//! start checkpoint, two loss lines appended at the end).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-observe");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node.jsonl")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-observe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

fn flows(args: &[&str]) -> Vec<Value> {
    let f = fixture();
    let mut a = vec![f.to_str().unwrap(), "--no-rotated", "-o", "jsonpb"];
    a.extend_from_slice(args);
    ok(&a)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

fn all_flows() -> Vec<Value> {
    std::fs::read_to_string(fixture())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap(),
                        p["name"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn policy_rule_and_hubble_filters_select_what_the_fields_say() {
    let every = all_flows();
    assert!(every.len() > 10);
    let count = |pred: &dyn Fn(&Value) -> bool| every.iter().filter(|f| pred(f)).count();

    // Everything hb/default-deny denied: the drop events naming it.
    let got = flows(&["--policy", "hb/default-deny", "--type", "drop"]);
    assert_eq!(got.len(), 2, "{got:?}");
    for f in &got {
        assert_eq!(f["verdict"], "DROPPED");
        assert!(names(&f["ingress_denied_by"]).contains(&"hb/default-deny".to_string()));
    }
    // A kind-qualified policy, and a policy that only allowed.
    let got = flows(&[
        "--policy",
        "PalisadeNetworkPolicy hb/no-free",
        "--type",
        "drop",
    ]);
    assert_eq!(got.len(), 3);
    assert!(flows(&["--policy", "NetworkPolicy hb/no-free"]).is_empty());
    let got = flows(&["--policy", "hb/web", "--verdict", "FORWARDED"]);
    assert_eq!(
        got.len(),
        count(&|f| f["verdict"] == "FORWARDED"
            && names(&f["ingress_allowed_by"]).contains(&"hb/web".to_string()))
    );
    assert!(!got.is_empty());

    // The raw fast path (verdict decided by the prefilter alone, printed as logged) equals
    // the parsed path (--since the epoch forces a parse).
    let fast = flows(&["--verdict", "DROPPED"]);
    let parsed = flows(&["--verdict", "DROPPED", "--since", "1970-01-01T00:00:00Z"]);
    assert_eq!(fast, parsed);
    assert_eq!(fast.len(), count(&|f| f["verdict"] == "DROPPED"));

    // A rule, in both spellings.
    let a = flows(&["--rule", "hb/web:ingress:1"]);
    let b = flows(&["--rule", "hb/web ingress rule #1"]);
    assert_eq!(a, b);
    assert!(!a.is_empty());
    for f in &a {
        assert_eq!(f["extensions"]["value"]["rule"], "hb/web ingress rule #1");
    }

    // Hubble's flags, AND across flags, OR within one.
    let got = flows(&[
        "--verdict",
        "DROPPED",
        "--verdict",
        "AUDIT",
        "--to-namespace",
        "free",
    ]);
    assert_eq!(
        got.len(),
        count(&|f| (f["verdict"] == "DROPPED" || f["verdict"] == "AUDIT")
            && f["destination"]["namespace"] == "free")
    );
    assert_eq!(
        flows(&["--from-pod", "hb/cl", "--protocol", "udp"]).len(),
        count(&|f| f["source"]["pod_name"] == "cl" && f["l4"].get("UDP").is_some())
    );
    assert_eq!(
        flows(&["-l", "app=aud"]).len(),
        count(&|f| f["destination"]["pod_name"] == "aud" || f["source"]["pod_name"] == "aud")
    );
    assert_eq!(
        flows(&["--port", "9090", "--traffic-direction", "ingress"]).len(),
        count(
            &|f| f["l4"]["TCP"]["destination_port"] == 9090 && f["traffic_direction"] == "INGRESS"
        )
    );
    assert_eq!(
        flows(&["--drop-reason-desc", "policy_deny"]).len(),
        count(&|f| f["drop_reason_desc"] == "POLICY_DENY")
    );

    // Time windows: everything since the first flow, nothing before it; --until the first.
    let first = every[0]["time"].as_str().unwrap();
    assert_eq!(flows(&["--since", first]).len(), every.len());
    assert_eq!(
        flows(&["--until", first]).len(),
        count(&|f| f["time"] == first)
    );
    assert!(flows(&["--since", "1s"]).len() < every.len());

    // --first / --last.
    let two = flows(&["--first", "2"]);
    assert_eq!(two, every[..2].to_vec());
    // (Loss lines are printed only without filters; a filter keeps them out of --last.)
    let last = flows(&["--last", "2", "--type", "policy-verdict"]);
    assert_eq!(last, every[every.len() - 2..].to_vec());
}

#[test]
fn output_formats() {
    let f = fixture();
    let f = f.to_str().unwrap();
    let compact = ok(&[f, "--no-rotated", "--print-policy-names"]);
    assert!(
        compact.contains("policy-verdict:L3-L4 INGRESS ALLOWED BY web (NetworkPolicy)"),
        "{compact}"
    );
    assert!(compact.contains("POLICY_DENIED DROPPED"), "{compact}");
    assert!(
        compact.contains("EVENTS LOST: PERF_EVENT_RING_BUFFER 5"),
        "{compact}"
    );
    let dict = ok(&[f, "--no-rotated", "-o", "dict", "--verdict", "AUDIT"]);
    assert!(dict.contains("    VERDICT: AUDIT"), "{dict}");
    assert!(
        dict.contains("   POLICIES: PalisadeNetworkPolicy free/audit"),
        "{dict}"
    );
    assert!(
        dict.contains("       RULE: PalisadeNetworkPolicy free/audit ingress rule #0"),
        "{dict}"
    );
    let table = ok(&[f, "--no-rotated", "-o", "table", "--type", "drop"]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("TIMESTAMP") && rows[0].contains("SUMMARY"),
        "{table}"
    );
    assert_eq!(rows.len(), 1 + 3);
    // json and jsonpb print the lines as logged.
    let raw = std::fs::read_to_string(fixture()).unwrap();
    let json = ok(&[f, "--no-rotated", "-o", "json"]);
    let logged: Vec<&str> = raw
        .lines()
        .filter(|l| !l.starts_with("{\"node_status\""))
        .collect();
    assert_eq!(json.lines().collect::<Vec<_>>(), logged);
}

#[test]
fn summary_counts_and_draws_connections() {
    let f = fixture();
    let f = f.to_str().unwrap();
    let s: Value =
        serde_json::from_str(&ok(&[f, "--no-rotated", "--summary", "-o", "json"])).unwrap();
    assert_eq!(s["events_lost"], 7);
    assert_eq!(s["by_verdict"]["AUDIT"], 1);
    assert_eq!(
        s["by_verdict"]["DROPPED"], 3,
        "each drop once, not with its policy-verdict twin"
    );
    let denied = s["top_denied"].as_array().unwrap();
    assert_eq!(denied.len(), 3);
    assert!(
        denied.iter().any(|d| d["source"] == "free/x"
            && d["port"] == "5353/UDP"
            && d["by"] == serde_json::json!(["PalisadeNetworkPolicy hb/no-free"])),
        "{denied:?}"
    );
    assert_eq!(s["policies"]["hb/default-deny"]["denied"], 2);
    let text = ok(&[
        f,
        "--no-rotated",
        "--summary",
        "--policy",
        "hb/default-deny",
    ]);
    assert!(text.contains("top denied"), "{text}");
    let dot = ok(&[f, "--no-rotated", "--summary", "-o", "dot"]);
    assert!(dot.starts_with("digraph flows {"), "{dot}");
    assert!(
        dot.contains("\"free/x\" -> \"hb/srv\" [color=\"#c62828\""),
        "{dot}"
    );
    // SVG needs Graphviz (`graphviz` in ./palisade prereqs); CI has it.
    let has_dot = Command::new("dot").arg("-V").output().is_ok();
    if has_dot || palisade_ci() {
        let svg = ok(&[f, "--no-rotated", "--summary", "-o", "svg"]);
        assert!(svg.contains("<svg") && svg.contains("free/x"), "{svg}");
    }
}

fn palisade_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    let f = fixture();
    let f = f.to_str().unwrap();
    for args in [
        vec![f, "--verdict", "MAYBE"],
        vec![f, "--type", "trace"],
        vec![f, "--policy", "a/b/c"],
        vec![f, "--rule", "nonsense"],
        vec![f, "--since", "yesterday"],
        vec![f, "-o", "yaml"],
        vec![f, "--summary", "-o", "table"],
        vec![f, "--no-such-flag"],
        vec![f, "--key", "00"],
        vec![f, "--verify", "--key", "xyz"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(!o.stderr.is_empty());
    }
    let o = run(&["/nonexistent/verdicts.jsonl"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let help = ok(&["--help"]);
    for want in [
        "--policy",
        "--verify",
        "everything shop/default-deny denied",
        "Exit status",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
}

#[test]
fn verify_names_the_first_bad_line_and_rotated_files_are_one_log() {
    let d = tmpdir("verify");
    let raw = std::fs::read_to_string(fixture()).unwrap();
    let lines: Vec<&str> = raw.lines().collect();
    // Split into a rotated file and the current one: still one chain, one log.
    let log = d.join("verdicts.jsonl");
    std::fs::write(d.join("verdicts.jsonl.1"), lines[..9].join("\n") + "\n").unwrap();
    std::fs::write(&log, lines[9..].join("\n") + "\n").unwrap();
    let l = log.to_str().unwrap();
    let out = ok(&["--verify", l]);
    assert!(out.contains("OK: the chain holds"), "{out}");
    assert_eq!(flows(&[]).len(), {
        let o = ok(&[l, "-o", "jsonpb"]);
        o.lines().filter(|l| l.starts_with("{\"flow\"")).count()
    });

    // The key from the checkpoint verifies; another does not.
    let key = lines[0]
        .split("key=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(ok(&["--verify", l, "--key", key]).contains("OK"));
    let o = run(&["--verify", l, "--key", &"ab".repeat(32)]);
    assert_eq!(o.status.code(), Some(1));

    // Modify a record in the current file: named by file and line.
    let mut cur: Vec<String> = lines[9..].iter().map(|s| s.to_string()).collect();
    cur[2] = cur[2].replace("\"FORWARDED\"", "\"DROPPED\"");
    if cur[2] == lines[11] {
        cur[2] = cur[2].replace("\"DROPPED\"", "\"FORWARDED\"");
    }
    std::fs::write(&log, cur.join("\n") + "\n").unwrap();
    let o = run(&["--verify", l]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("FAILED: {l}:3: record")), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn follow_prints_appended_lines_and_follows_rotation() {
    let d = tmpdir("follow");
    let log = d.join("verdicts.jsonl");
    let raw = std::fs::read_to_string(fixture()).unwrap();
    let flows_only: Vec<&str> = raw.lines().filter(|l| l.starts_with("{\"flow\"")).collect();
    std::fs::write(&log, format!("{}\n", flows_only[0])).unwrap();
    let mut child = Command::new(EXE)
        .args([
            log.to_str().unwrap(),
            "--follow",
            "-o",
            "jsonpb",
            "--verdict",
            "DROPPED",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    // Append, then rotate and write to a new file, as the agent does.
    let dropped: Vec<&str> = flows_only
        .iter()
        .copied()
        .filter(|l| l.contains("\"verdict\":\"DROPPED\""))
        .collect();
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "{}", flows_only[1]).unwrap();
        writeln!(f, "{}", dropped[0]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    std::fs::rename(&log, d.join("verdicts.jsonl.1")).unwrap();
    std::fs::write(&log, format!("{}\n", dropped[1])).unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 2 && t0.elapsed() < Duration::from_secs(5) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(got, vec![dropped[0].to_string(), dropped[1].to_string()]);
}

/// `--tier` keeps the flows a rule of that tier decided (`extensions.value.tier`), on the
/// prefilter's fast path and on the parsed path alike.
#[test]
fn tier_selects_the_flows_a_tier_decided() {
    let d = tmpdir("tier");
    let log = d.join("verdicts.jsonl");
    let mut out = Vec::new();
    let mut tiers = Vec::new();
    for (i, line) in std::fs::read_to_string(fixture())
        .unwrap()
        .lines()
        .enumerate()
    {
        let mut v: Value = serde_json::from_str(line).unwrap();
        if let Some(ext) = v.pointer_mut("/flow/extensions/value")
            && let Some(o) = ext.as_object_mut()
        {
            let t = ["admin", "networkpolicy", "baseline"][i % 3];
            o.insert("tier".into(), Value::from(t));
            tiers.push(t);
        }
        out.push(serde_json::to_string(&v).unwrap());
    }
    std::fs::write(&log, out.join("\n") + "\n").unwrap();
    let count = |args: &[&str]| {
        let mut a = vec![log.to_str().unwrap(), "--no-rotated", "-o", "jsonpb"];
        a.extend_from_slice(args);
        ok(&a).lines().filter(|l| l.contains("\"flow\"")).count()
    };
    let admin = tiers.iter().filter(|t| **t == "admin").count();
    assert!(admin > 0);
    assert_eq!(count(&["--tier", "admin"]), admin);
    assert_eq!(
        count(&["--tier", "admin", "--since", "1970-01-01T00:00:00Z"]),
        admin
    );
    assert_eq!(
        count(&["--tier", "admin", "--tier", "baseline"]),
        tiers.iter().filter(|t| **t != "networkpolicy").count()
    );
    let o = run(&[log.to_str().unwrap(), "--tier", "middle"]);
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
}
