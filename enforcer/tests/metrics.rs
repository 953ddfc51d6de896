//! The Prometheus endpoint of a running enforcer: after real allowed and denied traffic the
//! scrape holds the datapath's counters by reason and direction, the policy revision, endpoints
//! and map pressure; `promtool check metrics` accepts it; a real Prometheus server scrapes it and
//! answers queries over the series.
//!
//! Privileged tier (network namespaces, BPF) and needs `promtool` and `prometheus` (Debian
//! package `prometheus`); under `CI=true` anything missing fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{Node, Pod, TcpOutcome};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: mt}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 8080}]
"#;

fn v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 248, 0, host)
}

fn tcp(from: &Pod, to: &Pod, port: u16, connects: bool) {
    let got = from
        .tcp_connect(
            to.addr_v4(port),
            Duration::from_millis(if connects { 3000 } else { 400 }),
        )
        .unwrap();
    assert_eq!(
        matches!(got, TcpOutcome::Connected { .. }),
        connects,
        "tcp -> {port}: {got:?}"
    );
}

/// `ip netns exec <node> <cmd>`.
fn in_node(node: &Node, cmd: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", node.netns_name(), cmd]);
    c
}

/// A scrape asking for OpenMetrics (as Prometheus does) or, `plain`, the text format 0.0.4.
fn scrape_as(node: &Node, plain: bool) -> String {
    let accept = if plain {
        "Accept: text/plain"
    } else {
        "Accept: application/openmetrics-text; version=1.0.0"
    };
    let out = in_node(node, "curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            accept,
            "http://127.0.0.1:9963/metrics",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the first sample whose line starts with `series` (name and labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_are_valid_openmetrics_and_a_real_prometheus_scrapes_them() {
    let Some(node) = Node::for_test("mt", "metrics endpoint") else {
        return;
    };
    for tool in ["promtool", "prometheus", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            palisade_testkit::privileged::skip_or_fail(
                "metrics endpoint",
                &format!("{tool} not found (Debian package prometheus)"),
            );
            return;
        }
    }
    let src = std::env::temp_dir().join(format!("palisade-metrics-manifests-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("policy.yaml"), POLICIES).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true);
    let _ = std::fs::remove_dir_all(&src);
    let enforcer = enforcer.unwrap_or_else(|e| panic!("starting the enforcer: {e}"));
    let pod = |name: &str, host: u8, app: &str| {
        let p = node.add_pod("mt", name, v4(host), None).unwrap();
        enforcer.register(&p, &[("app", app)]).unwrap();
        p
    };
    let srv = pod("srv", 10, "srv");
    let cl = pod("cl", 20, "cl");
    let _t = srv.serve_tcp(8080).unwrap();
    let _t2 = srv.serve_tcp(9090).unwrap();
    tcp(&cl, &srv, 8080, true);
    tcp(&cl, &srv, 9090, false);
    // A policy change through the source: one more revision and one implementation delay.
    std::fs::write(
        enforcer.manifests.join("more.yaml"),
        POLICIES
            .replace("name: web", "name: web-2")
            .replace("8080", "8081"),
    )
    .unwrap();

    let t0 = Instant::now();
    let text = loop {
        let t = scrape_as(&node, false);
        let ready = sample(
            &t,
            r#"palisade_drop_count_total{reason="POLICY_DENIED",direction="ingress"}"#,
        )
        .is_some()
            && sample(&t, r#"palisade_forward_count_total{direction="ingress"}"#).is_some()
            && sample(&t, r#"palisade_policy_changes_total{outcome="applied"}"#).unwrap_or(0.0)
                >= 1.0;
        if ready || t0.elapsed() > Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{text}"
    );
    assert!(
        sample(
            &text,
            r#"palisade_drop_count_total{reason="POLICY_DENIED",direction="ingress"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"palisade_forward_count_total{direction="ingress"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"palisade_verdicts_total{direction="ingress",action="dropped"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "palisade_policy_revision").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"palisade_endpoints{state="ready"}"#),
        Some(2.0),
        "{text}"
    );
    let pressure = sample(&text, r#"palisade_bpf_map_pressure{map="pal_policy"}"#).unwrap();
    assert!(pressure > 0.0 && pressure < 1.0, "{text}");
    assert!(
        sample(&text, "palisade_policy_implementation_delay_seconds_count").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // Anything but GET /metrics is 404.
    let other = in_node(&node, "curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9963/",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&other.stdout), "404");

    // promtool lints the exposition.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let plain = scrape_as(&node, true);
    assert!(
        !plain.contains("# EOF") && plain.contains("# TYPE palisade_drop_count_total counter"),
        "{plain}"
    );
    check
        .stdin
        .take()
        .unwrap()
        .write_all(plain.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus, in the node namespace, scrapes the agent every second.
    let dir = std::env::temp_dir().join(format!("palisade-prometheus-{}", node.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n- job_name: palisade\n  static_configs: [{targets: ['127.0.0.1:9963']}]\n",
    )
    .unwrap();
    let prom = Killed(
        in_node(&node, "prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:19090")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Value {
        let out = in_node(&node, "curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "--data-urlencode",
                &format!("query={q}"),
                "http://127.0.0.1:19090/api/v1/query",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let value = |v: &Value| -> Option<f64> {
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    };
    let t0 = Instant::now();
    loop {
        let up = query(r#"up{job="palisade"}"#);
        let denied = query(r#"palisade_drop_count_total{reason="POLICY_DENIED"}"#);
        if value(&up) == Some(1.0) && value(&denied).unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped the agent: up={up} denied={denied}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rev = query("palisade_policy_revision");
    assert!(value(&rev).unwrap_or(0.0) >= 1.0, "{rev}");
    let pressure = query(r#"palisade_bpf_map_pressure{map="pal_ipcache"}"#);
    assert!(value(&pressure).unwrap_or(0.0) > 0.0, "{pressure}");
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
    drop(enforcer);
}
