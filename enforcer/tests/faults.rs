#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! Faults at start: a second agent on the same pin root, and `--manifests` that is not a
//! directory. The second-agent test is privileged (a real node and a real first agent;
//! `Node::for_test` applies the privileged-test rule); the others need nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use palisade_api::{Request, Response};
use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::Node;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

/// Runs the enforcer with `args`, killing it and failing the test after 30 s.
fn run_within(args: &[&str]) -> Output {
    let mut child = Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "palisade-enforcer {args:?} still running after 30 s\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The endpoint lines of `inspect` (ifindex, interface, identity, readiness, revision,
/// attached programs): what a second agent must not change.
fn endpoint_lines(pin_root: &Path, netns: &Path) -> Vec<String> {
    let out = run_within(&[
        "inspect",
        "--pin-root",
        pin_root.to_str().unwrap(),
        "--netns",
        netns.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter(|l| l.starts_with("  ifindex") || l.starts_with("maps:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_second_agent_on_the_same_pin_root_exits_and_changes_nothing() {
    let what = "second agent on the same pin root";
    let Some(node) = Node::for_test("faults", what) else {
        return;
    };
    let src = std::env::temp_dir().join(format!("palisade-faults-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("np.yaml"), DENY).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true);
    let _ = std::fs::remove_dir_all(&src);
    let enforcer = enforcer.unwrap_or_else(|e| panic!("starting the first agent: {e}"));
    let pod = node
        .add_pod("shop", "web", "10.0.1.2".parse().unwrap(), None)
        .unwrap();
    enforcer.register(&pod, &[("app", "web")]).unwrap();
    let before = endpoint_lines(&enforcer.pin_root(), node.netns_path());
    assert!(
        before.iter().any(|l| l.contains(&pod.host_ifname)),
        "{before:?}"
    );

    // Same pin root and state dir, another socket and verdict log.
    let other_socket = enforcer.dir.join("second.sock");
    let out = run_within(&[
        "run",
        "--manifests",
        enforcer.manifests.to_str().unwrap(),
        "--pin-root",
        enforcer.pin_root().to_str().unwrap(),
        "--socket",
        other_socket.to_str().unwrap(),
        "--verdict-log",
        enforcer.dir.join("second.jsonl").to_str().unwrap(),
        "--state-dir",
        enforcer.dir.join("state").to_str().unwrap(),
        "--netns",
        node.netns_path().to_str().unwrap(),
        "--node-name",
        "local-node",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("another enforcer") && stderr.contains("pin root"),
        "{stderr}"
    );
    assert!(!other_socket.exists(), "the second agent bound a socket");
    assert!(!enforcer.dir.join("second.jsonl").exists());

    // The first agent's endpoint entries and links are untouched, and it still serves.
    assert_eq!(
        endpoint_lines(&enforcer.pin_root(), node.netns_path()),
        before
    );
    match enforcer.request(&Request::Status).unwrap() {
        Response::Status {
            ready, endpoints, ..
        } => {
            assert!(ready);
            assert_eq!(endpoints, 1);
        }
        other => panic!("{other:?}"),
    }
    drop(enforcer);
    drop(node);
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn manifests_that_are_not_a_directory_stop_the_start_with_exit_2() {
    let d = tmp("notdir");
    let file = d.join("np.yaml");
    std::fs::write(&file, DENY).unwrap();
    for p in [file.clone(), d.join("missing")] {
        let out = run_within(&[
            "run",
            "--manifests",
            p.to_str().unwrap(),
            "--pin-root",
            d.join("bpf").to_str().unwrap(),
            "--socket",
            d.join("s.sock").to_str().unwrap(),
            "--verdict-log",
            d.join("v.jsonl").to_str().unwrap(),
            "--state-dir",
            d.join("state").to_str().unwrap(),
            "--node-name",
            "n1",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", p.display());
        assert!(
            stderr.contains(&p.display().to_string()) && stderr.contains("directory"),
            "{stderr}"
        );
        assert!(!d.join("bpf").exists() && !d.join("state").exists());
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn warnings(e: &Enforcer) -> Vec<String> {
    match e.request(&Request::Status).unwrap() {
        Response::Status { warnings, .. } => warnings,
        other => panic!("{other:?}"),
    }
}

fn wait_for_warning(e: &Enforcer, needle: &str) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let w = warnings(e);
        if w.iter().any(|w| w.contains(needle)) {
            return w;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            panic!(
                "no status warning with {needle:?} within 10 s: {w:?}\nlog:\n{}",
                std::fs::read_to_string(&e.log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_misspelt_kind_keeps_the_policy_and_no_policies_is_loud() {
    let what = "misspelt kind and no policies";
    let Some(node) = Node::for_test("faults", what) else {
        return;
    };
    let src = std::env::temp_dir().join(format!("palisade-faults-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("np.yaml"), DENY).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true);
    let _ = std::fs::remove_dir_all(&src);
    let enforcer = enforcer.unwrap_or_else(|e| panic!("starting the agent: {e}"));
    let pod = node
        .add_pod("shop", "web", "10.0.1.2".parse().unwrap(), None)
        .unwrap();
    enforcer.register(&pod, &[("app", "web")]).unwrap();
    assert!(warnings(&enforcer).is_empty(), "{:?}", warnings(&enforcer));
    let before = endpoint_lines(&enforcer.pin_root(), node.netns_path());

    // `kind: Networkpolicy`: an error for the directory, reported in status and log; the
    // deny stays enforced (same endpoint revision, same map sizes).
    enforcer
        .write_manifest(
            "np.yaml",
            &DENY.replace("kind: NetworkPolicy", "kind: Networkpolicy"),
        )
        .unwrap();
    let w = wait_for_warning(&enforcer, "reload failed");
    assert!(
        w.iter()
            .any(|w| w.contains("np.yaml (document 1)") && w.contains("did you mean NetworkPolicy")),
        "{w:?}"
    );
    assert_eq!(
        endpoint_lines(&enforcer.pin_root(), node.netns_path()),
        before
    );
    let log = std::fs::read_to_string(&enforcer.log_path).unwrap();
    assert!(log.contains("Networkpolicy"), "{log}");

    // Every manifest deleted: applied (allow-all), but loudly.
    let revisions = enforcer.revision_lines();
    enforcer.remove_manifest("np.yaml").unwrap();
    assert!(
        enforcer
            .wait_for_policy_revision(revisions, Duration::from_secs(10))
            .is_some(),
        "deleting the last policy was not applied"
    );
    let w = wait_for_warning(&enforcer, "no policies");
    assert!(!w.iter().any(|w| w.contains("reload failed")), "{w:?}");
    let log = std::fs::read_to_string(&enforcer.log_path).unwrap();
    assert!(log.contains("no policies"), "{log}");
    drop(enforcer);
    drop(node);
}

#[test]
fn a_second_pod_cannot_take_over_a_registered_interface_or_address() {
    let what = "interface takeover";
    let Some(node) = Node::for_test("faults", what) else {
        return;
    };
    let src = std::env::temp_dir().join(format!("palisade-faults-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("np.yaml"), DENY).unwrap();
    let enforcer = Enforcer::start(Path::new(EXE), &node, &src, true);
    let _ = std::fs::remove_dir_all(&src);
    let enforcer = enforcer.unwrap_or_else(|e| panic!("starting the agent: {e}"));
    let a = node
        .add_pod("shop", "web", "10.0.1.2".parse().unwrap(), None)
        .unwrap();
    let b = node
        .add_pod("shop", "api", "10.0.1.3".parse().unwrap(), None)
        .unwrap();
    enforcer.register(&a, &[("app", "web")]).unwrap();
    let before = endpoint_lines(&enforcer.pin_root(), node.netns_path());

    let attempt = |ifname: &str, ip: &str| {
        enforcer
            .request(&Request::Register(palisade_api::Registration {
                container_id: "intruder".into(),
                namespace: "shop".into(),
                pod: "intruder".into(),
                host_ifname: ifname.into(),
                ips: vec![ip.parse().unwrap()],
                labels: Some([("app".to_string(), "x".to_string())].into()),
                named_ports: Vec::new(),
            }))
            .unwrap()
    };
    for (ifname, ip, needle) in [
        (a.host_ifname.as_str(), "10.0.1.9", "interface"),
        (b.host_ifname.as_str(), "10.0.1.2", "address 10.0.1.2"),
    ] {
        match attempt(ifname, ip) {
            Response::Error { code, message } => {
                assert_eq!(code, palisade_api::ErrorCode::Conflict, "{message}");
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{ifname} {ip}: accepted: {other:?}"),
        }
    }
    // Deregistering the refused registration removes nothing of the first pod's.
    match enforcer
        .request(&Request::Deregister {
            container_id: "intruder".into(),
        })
        .unwrap()
    {
        Response::Deregistered { existed } => assert!(!existed),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        endpoint_lines(&enforcer.pin_root(), node.netns_path()),
        before
    );
    match enforcer.request(&Request::Status).unwrap() {
        Response::Status {
            ready, endpoints, ..
        } => assert!(ready && endpoints == 1),
        other => panic!("{other:?}"),
    }
    drop(enforcer);
    drop(node);
}
