//! The real agent writes the CNI conflist only once it is ready and leaves it in place when
//! it stops (privileged: a node namespace, a private bpffs, the real `palisade-enforcer`).
//!
//! - A start that fails (the pin root is no bpffs and mounting is refused) writes nothing.
//! - From the first moment the conflist exists, the agent answers `status` ready on the
//!   socket the conflist names, and the plugin's parser accepts the file.
//! - SIGTERM stops the agent; the conflist stays as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_api::{Client, Request, Response};
use palisade_testkit::node::Node;

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, dir: &Path, node: &Node, extra: &[&str]) -> Agent {
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    Agent(
        Command::new(EXE)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--netns")
            .arg(node.netns_path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    )
}

fn status_ready(socket: &Path) -> bool {
    matches!(
        Client::call(socket, Duration::from_secs(5), &Request::Status),
        Ok(Response::Status { ready: true, .. })
    )
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

#[test]
fn the_conflist_is_written_once_the_agent_is_ready_and_kept_when_it_stops() {
    let Some(node) = Node::for_test("cnicf", "cni conflist") else {
        return;
    };
    let fs = common::PrivateBpffs::new("cniconf");
    let dir = PathBuf::from(format!("/run/palisade-test/cniconf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["manifests", "net.d", "not-bpffs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let socket = dir.join("enforcer.sock");
    let conflist = dir.join("net.d/10-palisade.conflist");
    let write_config = |pin_root: &Path| {
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            format!(
                "pin_root: {}\nsocket: {}\nmanifest_dir: {}\nverdict_log: {}\nnode_name: local-node\n\
                 metrics_address: null\ncni:\n  conf_dir: {}\n  subnet: 10.250.7.0/24\n",
                pin_root.display(),
                socket.display(),
                dir.join("manifests").display(),
                dir.join("verdicts.jsonl").display(),
                dir.join("net.d").display(),
            ),
        )
        .unwrap();
        path
    };

    // A start that fails before it is ready writes no conflist.
    let config = write_config(&dir.join("not-bpffs"));
    let mut failed = spawn(&config, &dir, &node, &["--no-mount"]);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = failed.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the agent did not exit: {}",
            log(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{}", log(&dir));
    assert!(
        std::fs::read_dir(dir.join("net.d"))
            .unwrap()
            .next()
            .is_none(),
        "a CNI configuration was written by an agent that never became ready"
    );

    // The real start: whenever the conflist exists, the agent is ready on its socket.
    let config = write_config(fs.path());
    let mut agent = spawn(&config, &dir, &node, &[]);
    let t0 = Instant::now();
    while !conflist.exists() {
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the agent exited: {}",
            log(&dir)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no conflist after 60 s: {}",
            log(&dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        status_ready(&socket),
        "conflist written before the agent answers ready"
    );
    let text = std::fs::read(&conflist).unwrap();
    assert_eq!(
        std::fs::metadata(&conflist).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let list: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let mut plugin = list["plugins"][0].clone();
    assert_eq!(plugin["type"], "palisade-cni");
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    let net = palisade_cni::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
    assert_eq!(net.enforcer_socket, socket);
    assert_eq!(net.ipam.subnet_string(), "10.250.7.0/24");
    let names: Vec<_> = std::fs::read_dir(dir.join("net.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["10-palisade.conflist"], "a temporary file is left");

    // A normal stop keeps it: pods keep working while the agent restarts.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t0 = Instant::now();
    while agent.0.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", log(&dir));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&conflist).unwrap(), text);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
