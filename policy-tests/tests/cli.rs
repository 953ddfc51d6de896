//! The `policy-test` binary end to end: exit codes, output shapes and error messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fx(p: &str) -> String {
    fixtures().join(p).display().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_policy-test"))
        .args(args)
        .env_remove("CI")
        .output()
        .expect("run policy-test")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A bad-input run: exit 2, nothing on stdout, one `error: ` message on stderr.
fn bad_input(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stdout(o).is_empty(),
        "no partial output on bad input: {}",
        stdout(o)
    );
    let e = stderr(o);
    assert!(e.starts_with("error: "), "{e}");
    e
}

#[test]
fn check_exit_0_when_all_pass() {
    let o = run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("scenarios.yaml"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    // Not a terminal: plain text, one line per scenario, then the counts.
    assert!(out.contains("PASS  frontend may call the API"), "{out}");
    assert!(out.contains("production/allow-api ingress[0]"), "{out}");
    assert!(
        out.contains("allowed by") || out.contains("production/allow-web ingress[0]"),
        "{out}"
    );
    assert!(
        out.contains(
            "default deny: isolated by production/allow-db, production/deny-all (ingress)"
        ),
        "{out}"
    );
    assert!(out.ends_with("5 passed, 0 failed\n"), "{out}");
}

#[test]
fn check_exit_1_when_any_fails() {
    let o = run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("failing.yaml"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("FAIL  frontend may reach the database"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

#[test]
fn check_exit_2_on_bad_scenarios() {
    for f in [
        "bad/unknown-endpoint.yaml",
        "bad/syntax-error.yaml",
        "bad/http.yaml",
        "bad/unknown-field.yaml",
    ] {
        bad_input(&run(&["check", "-f", &fx("shop"), "--scenarios", &fx(f)]));
    }
}

#[test]
fn check_json_shape() {
    let o = run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("failing.yaml"),
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["summary"],
        serde_json::json!({"total": 2, "passed": 1, "failed": 1})
    );
    let s = &v["files"][0]["scenarios"];
    assert_eq!(s.as_array().unwrap().len(), 2);
    assert_eq!(s[0]["name"], "frontend may call the API");
    assert_eq!(s[0]["verdict"], "allow");
    assert_eq!(s[0]["expected"], "allow");
    assert_eq!(s[0]["pass"], true);
    assert_eq!(s[0]["port"], 8080);
    assert_eq!(s[0]["protocol"], "TCP");
    assert_eq!(s[0]["ingress"]["decision"], "allowed");
    assert_eq!(s[0]["ingress"]["rule"], "production/allow-api ingress[0]");
    assert_eq!(s[1]["verdict"], "deny");
    assert_eq!(s[1]["pass"], false);
    assert_eq!(s[1]["ingress"]["decision"], "default_deny");
    assert_eq!(
        s[1]["ingress"]["isolated_by"],
        serde_json::json!(["production/allow-db", "production/deny-all"])
    );
}

#[test]
fn check_junit_shape() {
    let o = run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("failing.yaml"),
        "--output",
        "junit",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let xml = stdout(&o);
    let report = quick_junit_report(&xml);
    assert!(
        report.contains("<testsuites name=\"policy-test\" tests=\"2\""),
        "{xml}"
    );
    assert!(report.contains("failures=\"1\""), "{xml}");
    assert!(
        xml.contains("<testcase name=\"frontend may call the API\""),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"expected allow, got deny: default deny"),
        "{xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
}

fn quick_junit_report(xml: &str) -> String {
    assert!(xml.starts_with("<?xml"), "{xml}");
    xml.to_string()
}

#[test]
fn unknown_endpoint_names_three_closest() {
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("bad/unknown-endpoint.yaml"),
    ]));
    assert!(e.contains("unknown-endpoint.yaml:4:9"), "{e}");
    assert!(e.contains("unknown endpoint \"production/backnd\""), "{e}");
    assert!(
        e.contains("closest existing: production/Deployment/backend, production/Deployment/frontend, production/db-0"),
        "{e}"
    );
    let e = bad_input(&run(&[
        "explain",
        "-f",
        &fx("shop"),
        "--from",
        "production/fronted",
        "--to",
        "production/db-0",
        "--port",
        "5432",
    ]));
    assert!(
        e.contains("closest existing: production/Deployment/frontend"),
        "{e}"
    );
}

#[test]
fn yaml_errors_have_file_line_column() {
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("bad/syntax-error.yaml"),
    ]));
    let want = format!("error: {}:5:5: ", fx("bad/syntax-error.yaml"));
    assert!(e.starts_with(&want), "{e}");
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("bad/unknown-field.yaml"),
    ]));
    let want = format!(
        "error: {}:6:5: unknown field `expcet`",
        fx("bad/unknown-field.yaml")
    );
    assert!(e.starts_with(&want), "{e}");
}

#[test]
fn missing_files_are_named() {
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("nope.yaml"),
    ]));
    assert!(e.contains("nope.yaml: no such file"), "{e}");
    let e = bad_input(&run(&["connections", "-f", &fx("no-such-dir")]));
    assert!(e.contains("no-such-dir: no such file or directory"), "{e}");
    let e = bad_input(&run(&["connections"]));
    assert!(e.contains("-f/--file"), "{e}");
}

#[test]
fn bad_http_requests_in_scenarios_are_usage_errors() {
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        &fx("bad/http.yaml"),
    ]));
    assert!(e.contains("is not an HTTP method token"), "{e}");
    assert!(e.contains("http.yaml:7:"), "{e}");
    assert!(e.contains("GET /api"), "{e}");
}

fn example(p: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(p)
        .display()
        .to_string()
}

#[test]
fn l7_scenarios_of_the_examples_pass_with_their_rules_named() {
    let o = run(&[
        "check",
        "-f",
        &example("l7"),
        "--scenarios",
        &example("l7-scenarios.yaml"),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("allowed by CiliumNetworkPolicy production/l7-frontend-policy ingress[0] http[0] (GET /api/v1/data)"), "{out}");
    assert!(
        out.contains(
            "deny-403 (expected deny-403); denied (403): no HTTP rule of PalisadeNetworkPolicy production/admin-guard ingress[0], PalisadeNetworkPolicy production/admin-guard ingress[1], CiliumNetworkPolicy production/l7-frontend-policy ingress[0] allows it (ingress)"
        ),
        "{out}"
    );
    assert!(out.contains("denied (403) by PalisadeNetworkPolicy production/admin-guard ingress[1] http[0] (DELETE /admin/users(/.*)?)"), "{out}");
    assert!(
        out.contains("deny-400 (expected deny-400); refused by the L7 proxy (400)"),
        "{out}"
    );
    assert!(out.contains("8 passed, 0 failed"), "{out}");
}

#[test]
fn explain_walks_the_http_rules_on_the_normalized_request() {
    let o = run(&[
        "explain",
        "-f",
        &example("l7"),
        "--from",
        "production/Deployment/frontend",
        "--to",
        "production/Deployment/backend",
        "--port",
        "8080",
        "--method",
        "GET",
        "--path",
        "/api/v1/%64ata/",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("through the L7 proxy on port 15080"), "{out}");
    assert!(out.contains("normalized path: /api/v1/data/"), "{out}");
    assert!(
        out.contains("http[0] (GET /api/v1/data): path wanted /api/v1/data, saw /api/v1/data/"),
        "{out}"
    );
    assert!(
        out.contains("decision: denied (403): no HTTP rule of "),
        "{out}"
    );
    let json = run(&[
        "explain",
        "-f",
        &example("l7"),
        "--from",
        "production/Deployment/frontend",
        "--to",
        "production/Deployment/backend",
        "--port",
        "8080",
        "--method",
        "GET",
        "--path",
        "/api/v1/data",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["http"]["sides"][0]["decision"], "allow", "{v}");
    assert_eq!(v["http"]["status"], serde_json::Value::Null);
}

#[test]
fn matrix_and_connections_mark_http_filtered_ports() {
    let m = stdout(&run(&[
        "matrix",
        "-f",
        &example("l7"),
        "--port",
        "8080/TCP",
    ]));
    assert!(m.contains("H allowed through the L7 proxy"), "{m}");
    assert!(
        m.contains("production/frontend[Deployment]\tH\tX\tX"),
        "{m}"
    );
    let c = stdout(&run(&["connections", "-f", &example("l7")]));
    assert!(
        c.contains("production/frontend[Deployment] => production/backend[Deployment] : TCP 8080 (TCP 8080 HTTP: ingress: GET|DELETE /admin/.*; deny DELETE /admin/users(/.*)?; GET /api/v1/data)"),
        "{c}"
    );
}

#[test]
fn invalid_policy_reports_the_api_server_message() {
    let e = bad_input(&run(&[
        "connections",
        "-f",
        &fx("shop"),
        "-f",
        &fx("invalid-policy"),
    ]));
    assert!(
        e.contains("NetworkPolicy production/bad-port is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"),
        "{e}"
    );
}

#[test]
fn unsupported_kinds_are_reported() {
    let o = run(&["connections", "-f", &fx("shop"), "-f", &fx("extra-kinds")]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o)
            .contains("warning: ignored 1 object(s) of kinds Palisade does not model: Ingress (1)")
    );
}

#[test]
fn diff_lists_changes() {
    let o = run(&["diff", "-f", &fx("shop"), "--against", &fx("shop-v2")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Connectivity diff:\n\
         diff-type: changed, source: production/frontend[Deployment], destination: production/backend[Deployment], ref1: TCP 8080, ref2: TCP 8080,8443\n\
         diff-type: removed, source: 192.168.0.0-192.168.0.255[External], destination: production/db-0[Pod], ref1: TCP 5432, ref2: No Connections\n\
         diff-type: removed, source: 192.168.2.0-192.168.255.255[External], destination: production/db-0[Pod], ref1: TCP 5432, ref2: No Connections\n"
    );
    let o = run(&[
        "diff",
        "-f",
        &fx("shop"),
        "--against",
        &fx("shop"),
        "--output",
        "json",
    ]);
    assert_eq!(stdout(&o).trim(), "[]");
    let o = run(&["diff", "-f", &fx("shop"), "--against", &fx("shop")]);
    assert_eq!(stdout(&o), "No connections diff\n");
}

#[test]
fn explain_names_the_isolating_policy() {
    let o = run(&[
        "explain",
        "-f",
        &fx("shop"),
        "--from",
        "production/frontend",
        "--to",
        "production/db-0",
        "--port",
        "postgres",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Flow: production/frontend[Deployment] -> production/db-0[Pod] on 5432/TCP"),
        "{out}"
    );
    assert!(
        out.contains("selected for ingress by: production/allow-db, production/deny-all"),
        "{out}"
    );
    assert!(
        out.contains("production/allow-db ingress[0]: no match: peer mismatch"),
        "{out}"
    );
    assert!(out.contains("Verdict: DENIED (default deny: isolated by production/allow-db, production/deny-all (ingress))"), "{out}");
    // Port and named-port mismatches.
    let o = run(&[
        "explain",
        "-f",
        &fx("shop"),
        "--from",
        "production/frontend",
        "--to",
        "production/backend",
        "--port",
        "9090",
    ]);
    let out = stdout(&o);
    assert!(out.contains("production/allow-api ingress[0]: no match: port mismatch: TCP/9090 is not among TCP 8080"), "{out}");
    assert!(out.contains("Verdict: DENIED"), "{out}");
    let o = run(&[
        "explain",
        "-f",
        &fx("shop"),
        "--from",
        "monitoring/prometheus",
        "--to",
        "production/backend",
        "--port",
        "9090",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["deciding"], "production/allow-api ingress[1]");
    assert_eq!(v["ingress"]["rules"][1]["matched"], true);
}

#[test]
fn connections_text_and_json() {
    let o = run(&["connections", "-f", &fx("shop")]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(
        out.contains(
            "production/frontend[Deployment] => production/backend[Deployment] : TCP 8080\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("192.168.2.0-192.168.255.255[External] => production/db-0[Pod] : TCP 5432\n"),
        "{out}"
    );
    assert!(
        !out.contains("192.168.1.0-192.168.1.255[External] => production/db-0[Pod]"),
        "{out}"
    );
    let o = run(&["connections", "-f", &fx("shop"), "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = &v[0];
    assert!(
        first["src"].is_string() && first["dst"].is_string() && first["conn"].is_string(),
        "{first}"
    );
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["conn"] == "TCP 8080"
                && c["ports"]["TCP"] == serde_json::json!([[8080, 8080]]))
    );
}

#[test]
fn matrix_text_and_json() {
    let o = run(&["matrix", "-f", &fx("shop"), "--port", "8080/TCP"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "Reachability on 8080/TCP (rows: from, columns: to; . allowed, X denied):"
    );
    assert_eq!(
        lines[1],
        "-\tmonitoring/prometheus[StatefulSet]\tproduction/backend[Deployment]\tproduction/db-0[Pod]\tproduction/frontend[Deployment]"
    );
    assert_eq!(lines[5], "production/frontend[Deployment]\t.\t.\tX\t.");
    let o = run(&[
        "matrix",
        "-f",
        &fx("shop"),
        "--port",
        "8080",
        "--port",
        "53/udp",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["workloads"].as_array().unwrap().len(), 4);
    assert_eq!(v["tables"][1]["port"], 53);
    assert_eq!(v["tables"][1]["protocol"], "UDP");
    assert_eq!(
        v["tables"][0]["allowed"][3],
        serde_json::json!([true, true, false, true])
    );
    let e = run(&["matrix", "-f", &fx("shop"), "--port", "80/ICMP"]);
    assert_eq!(e.status.code(), Some(2));
}

#[test]
fn help_has_examples_for_every_command() {
    let top = stdout(&run(&["--help"]));
    assert!(top.contains("Examples:"), "{top}");
    for cmd in ["check", "matrix", "connections", "explain", "diff"] {
        let h = stdout(&run(&[cmd, "--help"]));
        assert!(
            h.contains("Examples:") && h.contains(&format!("policy-test {cmd} ")),
            "{cmd}: {h}"
        );
    }
}

#[test]
fn ipblocks_flag_changes_pod_selection() {
    // db-0 has 10.0.1.5; a policy allowing 10.0.0.0/16 admits it only when ipBlocks select pods.
    let dir = std::env::temp_dir().join(format!("policy-test-ipb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-pods, namespace: monitoring}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16}\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    let args = |flag: &'static str| {
        run(&[
            "explain",
            "-f",
            &fx("shop"),
            "-f",
            &d,
            "--from",
            "production/db-0",
            "--to",
            "monitoring/prometheus",
            "--port",
            "80",
            flag,
        ])
    };
    assert!(stdout(&args("--ipblocks-select-pods=true")).contains("Verdict: ALLOWED"));
    let off = stdout(&args("--ipblocks-select-pods=false"));
    assert!(off.contains("Verdict: DENIED"), "{off}");
    assert!(off.contains("ipBlocks do not select pods"), "{off}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs policy-test, failing the test (and killing the process) after 20 s: a hang on bad
/// input must fail the suite, not stall it.
fn run_within(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_policy-test"))
        .args(args)
        .env_remove("CI")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run policy-test");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("policy-test {args:?} did not finish within 20 s: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn strict_makes_unmodelled_documents_errors_naming_file_and_document() {
    let o = run(&[
        "connections",
        "--strict",
        "-f",
        &fx("shop"),
        "-f",
        &fx("extra-kinds"),
    ]);
    let e = bad_input(&o);
    assert!(e.contains("ingress.yaml (document "), "{e}");
    assert!(e.contains("Ingress"), "{e}");
    // Without --strict the same input warns and names where the kind was found.
    let o = run(&["connections", "-f", &fx("shop"), "-f", &fx("extra-kinds")]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("Ingress at "), "{}", stderr(&o));
    assert!(stderr(&o).contains("--strict"), "{}", stderr(&o));
}

#[test]
fn a_fifo_or_dev_zero_is_bad_input_not_a_hang() {
    let dir = std::env::temp_dir().join(format!("policy-test-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("policies.yaml");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let o = run_within(&["connections", "-f", fifo.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    let e = bad_input(&o);
    assert!(e.contains("policies.yaml") && e.contains("FIFO"), "{e}");
    let e = bad_input(&run_within(&["connections", "-f", "/dev/zero"]));
    assert!(
        e.contains("/dev/zero") && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn the_file_size_cap_is_a_flag() {
    let e = bad_input(&run(&[
        "connections",
        "--max-file-bytes",
        "100",
        "-f",
        &fx("shop"),
    ]));
    assert!(e.contains("100-byte limit"), "{e}");
}

#[test]
fn scenario_names_cannot_forge_output_lines() {
    let dir = std::env::temp_dir().join(format!("policy-test-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sc = dir.join("s.yaml");
    let text = std::fs::read_to_string(fx("scenarios.yaml")).unwrap();
    // The first scenario's name gains a newline, a forged PASS line and an ESC sequence.
    let text = text.replacen(
        "- name: ",
        "- name: \"evil\\nPASS  forged: all good\\e[2K\\0 \" # ",
        1,
    );
    std::fs::write(&sc, text).unwrap();
    let o = run(&[
        "check",
        "-f",
        &fx("shop"),
        "--scenarios",
        sc.to_str().unwrap(),
        "--output",
        "text",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let out = stdout(&o);
    assert!(
        out.contains("evil\\nPASS  forged: all good\\u{1b}[2K\\0 "),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("PASS  forged")), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\0'), "{out}");
}

/// Issue 10 item 12: `--node-address` names the node's addresses as the enforcer maps them
/// (identity host): traffic from the node into an isolated pod is allowed; without it the
/// same address is external and default deny applies.
#[test]
fn node_addresses_are_always_allowed_into_isolated_pods() {
    let args = [
        "explain",
        "-f",
        &fx("shop"),
        "--from",
        "203.0.113.9",
        "--to",
        "production/db-0",
        "--port",
        "5432",
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Verdict: DENIED (default deny"),
        "{}",
        stdout(&o)
    );
    let mut with_node = args.to_vec();
    with_node.extend(["--node-address", "203.0.113.9"]);
    let o = run(&with_node);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Verdict: ALLOWED (traffic from the node (always allowed))"),
        "{}",
        stdout(&o)
    );
    // Another address of the node's network is not the node.
    with_node[4] = "203.0.113.10";
    let o = run(&with_node);
    assert!(
        stdout(&o).contains("Verdict: DENIED (default deny"),
        "{}",
        stdout(&o)
    );
}

/// The compiled policies are checked against the policy map's capacity: one identity's
/// policy larger than the map is bad input naming the identity, its policies and the
/// predicted count; one that fits only without a slot flip is a warning; the datapath's
/// real capacity says nothing for a small cluster.
#[test]
fn a_policy_larger_than_the_policy_map_is_an_error() {
    let shop = fx("shop");
    // The largest shop policy compiles to 4 entries.
    let e = bad_input(&run(&["-f", &shop, "matrix", "--policy-map-capacity", "3"]));
    assert!(e.contains("identity "), "{e}");
    assert!(e.contains("production/deny-all"), "{e}");
    assert!(
        e.contains("compiles to 4 entries, more than the pal_policy map holds (3)"),
        "{e}"
    );

    let o = run(&["-f", &shop, "matrix", "--policy-map-capacity", "7"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("changing it needs 8 entries at once"),
        "{}",
        stderr(&o)
    );

    let o = run(&["-f", &shop, "matrix"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("pal_policy"), "{}", stderr(&o));
}

#[test]
fn connections_as_a_graph_dot_svg_and_html() {
    let dot = run(&["connections", "-f", &example("manifests"), "-o", "dot"]);
    assert_eq!(dot.status.code(), Some(0), "{}", stderr(&dot));
    let d = stdout(&dot);
    assert!(d.starts_with("digraph connectivity {"), "{d}");
    assert!(
        d.contains("subgraph cluster_") && d.contains("label=\"namespace shop\""),
        "{d}"
    );
    assert!(
        d.contains(
            "\"shop/frontend[Deployment]\" -> \"shop/backend[Deployment]\" [label=\"TCP 8080\"];"
        ),
        "{d}"
    );
    assert!(
        d.contains("[shape=ellipse"),
        "external ranges are ellipses: {d}"
    );
    // L7-filtered edges name their HTTP rules.
    let l7 = stdout(&run(&["connections", "-f", &example("l7"), "-o", "dot"]));
    assert!(
        l7.contains("color=\"#7b3fa0\"") && l7.contains("GET /api/v1/data"),
        "{l7}"
    );
    // Graphviz renders it (graphviz is a prerequisite of the suite).
    let svg = run(&["connections", "-f", &example("manifests"), "-o", "svg"]);
    assert_eq!(svg.status.code(), Some(0), "{}", stderr(&svg));
    let s = stdout(&svg);
    assert!(
        s.contains("<svg") && s.contains("frontend[Deployment]"),
        "{s}"
    );
    let html = stdout(&run(&[
        "connections",
        "-f",
        &example("manifests"),
        "-o",
        "html",
    ]));
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && html.contains("<li><code>"),
        "{html}"
    );
}

/// A namespace in audit mode: the default deny of its pods forwards, and both explain and
/// check say the flow would be denied under enforcement.
#[test]
fn audit_namespace_says_would_deny() {
    let o = run(&[
        "explain",
        "-f",
        &fx("audit-ns"),
        "--from",
        "shop/cli",
        "--to",
        "shop/web",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("decision: audit: would deny: default deny (the namespace is in audit mode)"),
        "{out}"
    );
    assert!(
        out.contains("Verdict: ALLOWED (audit: would deny: default deny"),
        "{out}"
    );

    let dir = std::env::temp_dir().join(format!("pt-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sc = dir.join("s.yaml");
    std::fs::write(
        &sc,
        "scenarios:\n  - name: cli to web\n    from: shop/cli\n    to: shop/web\n    port: 80\n    expect: deny\n",
    )
    .unwrap();
    let o = run(&[
        "check",
        "-f",
        &fx("audit-ns"),
        "-s",
        sc.to_str().unwrap(),
        "-o",
        "text",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("allow (expected deny); audit: would deny:"),
        "{out}"
    );
}

/// The shipped examples with their cluster-admin guardrails: every scenario of
/// examples/scenarios.yaml holds, and `explain` walks the tiers: the Pass that hands the data
/// team over, the Deny it skips, the NetworkPolicy rule that decides, the baseline rule not
/// reached; a denied flow names the AdminNetworkPolicy rule with its tier and priority.
#[test]
fn examples_with_tiers_check_and_explain_walks_the_tiers() {
    let m = example("manifests");
    let o = run(&["check", "-f", &m, "--scenarios", &example("scenarios.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(
            "denied by AdminNetworkPolicy protect-sensitive ingress[1] \"nobody-else\" (admin tier, priority 10)"
        ),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "explain",
        "-f",
        &m,
        "--from",
        "data/StatefulSet/db",
        "--to",
        "vault/Deployment/secrets",
        "--port",
        "8200",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    for want in [
        "AdminNetworkPolicy protect-sensitive (admin tier, priority 10)",
        "ingress[0] \"platform-delegated\" (Pass): matches: passes: the rest of the admin tier is skipped; NetworkPolicy decides next",
        "ingress[1] \"nobody-else\" (Deny): matches: skipped: a Pass rule left this tier",
        "vault/open-to-all ingress[0]: matches: decides",
        "\"default-deny-from-pods\" (Deny): matches: not reached: an earlier rule decided",
        "Verdict: ALLOWED",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("note:"), "{out}");
    let o = run(&[
        "explain",
        "-f",
        &m,
        "--from",
        "sandbox/Deployment/playground",
        "--to",
        "vault/Deployment/secrets",
        "--port",
        "api",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["allowed"], false);
    let rules = v["ingress"]["rules"].as_array().unwrap();
    let deciding: Vec<&serde_json::Value> =
        rules.iter().filter(|r| r["outcome"] == "decides").collect();
    assert_eq!(deciding.len(), 1, "{rules:?}");
    assert_eq!(deciding[0]["tier"], "admin");
    assert_eq!(deciding[0]["action"], "Deny");
}

/// A scenario to a service is decided for each backend (named target ports resolved per
/// pod); the one behind a closed NetworkPolicy fails the scenario, and the output names the
/// translation.
#[test]
fn scenarios_to_a_service_decide_every_backend() {
    let o = run(&[
        "check",
        "-f",
        &fx("services/manifests.yaml"),
        "--scenarios",
        &fx("services/scenarios.yaml"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    for want in [
        "PASS  the frontend reaches the stable backends through the service: shop/frontend -> service shop/web 10.96.0.10:80 -> shop/web-0 10.0.0.10:8080 8080/TCP",
        "PASS  the frontend reaches the stable backends through the service: shop/frontend -> service shop/web 10.96.0.10:80 -> shop/web-1 10.0.0.11:9090 9090/TCP",
        "FAIL  the frontend reaches the stable backends through the service: shop/frontend -> service shop/web 10.96.0.10:80 -> shop/web-canary 10.0.0.12:8080 8080/TCP: deny",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    assert!(out.contains("shop/canary-closed"), "{out}");
    assert!(out.ends_with("2 passed, 1 failed\n"), "{out}");

    // JSON carries the translation.
    let o = run(&[
        "check",
        "-f",
        &fx("services/manifests.yaml"),
        "--scenarios",
        &fx("services/scenarios.yaml"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sc = &v["files"][0]["scenarios"];
    assert_eq!(sc.as_array().unwrap().len(), 3);
    assert_eq!(sc[0]["service"]["frontend"], "10.96.0.10:80");
    assert_eq!(sc[0]["service"]["endpoint"], "shop/web-0");
}

/// With a source port the scenario is the one flow Maglev picks, the same every run.
#[test]
fn a_source_port_picks_one_backend() {
    let args = [
        "check",
        "-f",
        &fx("services/manifests.yaml"),
        "--scenarios",
        &fx("services/picked.yaml"),
    ];
    let a = run(&args);
    let out = stdout(&a);
    assert_eq!(out.lines().count(), 2, "one flow and the summary: {out}");
    assert!(
        out.contains("-> service shop/web 10.96.0.10:80 -> shop/web"),
        "{out}"
    );
    assert_eq!(stdout(&run(&args)), out, "the pick is deterministic");
}

#[test]
fn bad_service_scenarios_are_usage_errors() {
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("services/manifests.yaml"),
        "--scenarios",
        &fx("services/bad/unknown-service.yaml"),
    ]));
    assert!(e.contains("unknown service \"shop/wbe\""), "{e}");
    assert!(e.contains("shop/web"), "lists the services: {e}");
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("services/manifests.yaml"),
        "--scenarios",
        &fx("services/bad/no-backends.yaml"),
    ]));
    assert!(
        e.contains("service shop/nothing port 80 has no backends"),
        "{e}"
    );
    let e = bad_input(&run(&[
        "check",
        "-f",
        &fx("services/manifests.yaml"),
        "--scenarios",
        &fx("services/bad/source-port-without-service.yaml"),
    ]));
    assert!(e.contains("sourcePort picks a service backend"), "{e}");
    assert!(
        e.contains("source-port-without-service.yaml:"),
        "names the file: {e}"
    );
}

/// `explain --service` shows the translation, then explains each backend; with
/// `--source-port` only the picked one.
#[test]
fn explain_through_a_service() {
    let o = run(&[
        "explain",
        "-f",
        &fx("services/manifests.yaml"),
        "--from",
        "shop/frontend",
        "--service",
        "shop/web",
        "--port",
        "http",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "service shop/web 10.96.0.10:80 (TCP) -> shop/web-0 10.0.0.10:8080 (backend 1 of 3)",
        "service shop/web 10.96.0.10:80 (TCP) -> shop/web-canary 10.0.0.12:8080 (backend 3 of 3)",
        "shop/canary-closed",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    let o = run(&[
        "explain",
        "-f",
        &fx("services/manifests.yaml"),
        "--from",
        "shop/frontend",
        "--service",
        "shop/web",
        "--port",
        "80",
        "--source-port",
        "40000",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["service"]["frontend"], "10.96.0.10:80");
    // --to and --service together, or --source-port without --service, are usage errors.
    let o = run(&[
        "explain",
        "-f",
        &fx("services/manifests.yaml"),
        "--from",
        "shop/frontend",
        "--to",
        "shop/web-0",
        "--service",
        "shop/web",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&[
        "explain",
        "-f",
        &fx("services/manifests.yaml"),
        "--from",
        "shop/frontend",
        "--to",
        "shop/web-0",
        "--source-port",
        "1",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
