//! Error vectors of reliability.md §3.2 that need no privileges: environment, stdin,
//! versions, config. Every failure must be CNI error JSON with the spec's code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::run_plugin;
use serde_json::{Value, json};

fn conf(version: &str) -> Value {
    json!({
        "cniVersion": version, "name": "palisade", "type": "palisade-cni",
        "ipam": { "type": "palisade", "subnet": "10.250.0.0/24", "dataDir": "/nonexistent/ipam" },
        "enforcerSocket": "/nonexistent/enforcer.sock",
    })
}

fn vars(command: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.into()),
        ("CNI_CONTAINERID", "abc".into()),
        ("CNI_NETNS", "/nonexistent/netns".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
    ]
}

fn replace(
    mut v: Vec<(&'static str, String)>,
    key: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    v.retain(|(k, _)| *k != key);
    if let Some(value) = value {
        v.push((key, value.into()));
    }
    v
}

#[test]
fn c_env_command_missing_and_unknown() {
    let r = run_plugin(
        None,
        &replace(vars("ADD"), "CNI_COMMAND", None),
        &conf("1.0.0").to_string(),
    );
    assert_eq!(r.err(4), "required env variables [CNI_COMMAND] missing");
    assert_eq!(
        r.json["cniVersion"], "1.0.0",
        "error carries the config's version"
    );
    run_plugin(None, &vars("FOO"), &conf("1.0.0").to_string()).err(4);
}

#[test]
fn c_env_missing_variables_are_named() {
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        let msg = run_plugin(
            None,
            &replace(vars("ADD"), var, None),
            &conf("1.0.0").to_string(),
        )
        .err(4);
        assert!(msg.contains(var), "{msg}");
    }
}

#[test]
fn c_cid_and_c_if() {
    let c = conf("1.1.0").to_string();
    assert_eq!(
        run_plugin(None, &replace(vars("ADD"), "CNI_CONTAINERID", Some("")), &c).err(3),
        "missing containerID"
    );
    for bad in ["-abc", "a/b", "a b", "a;b"] {
        let msg = run_plugin(
            None,
            &replace(vars("ADD"), "CNI_CONTAINERID", Some(bad)),
            &c,
        )
        .err(4);
        assert!(msg.contains("invalid characters in containerID"), "{msg}");
    }
    for bad in [
        "",
        ".",
        "..",
        "eth0/1",
        "eth:0",
        "eth 0",
        "abcdefghijklmnop",
    ] {
        run_plugin(None, &replace(vars("ADD"), "CNI_IFNAME", Some(bad)), &c).err(4);
    }
}

#[test]
fn c_name_c_type_c_json_c_ver() {
    let mut c = conf("1.1.0");
    c["name"] = json!("my net");
    run_plugin(None, &vars("ADD"), &c.to_string()).err(7);
    c.as_object_mut().unwrap().remove("name");
    run_plugin(None, &vars("ADD"), &c.to_string()).err(7);
    let mut c = conf("1.1.0");
    c["type"] = json!("../../bin/sh");
    run_plugin(None, &vars("ADD"), &c.to_string()).err(7);
    let mut c = conf("1.1.0");
    c["ipam"]["type"] = json!("/x");
    run_plugin(None, &vars("ADD"), &c.to_string()).err(7);
    for bad in ["", "{", "{\"cniVersion\":\"1.0.0\"} trailing", "[]", "null"] {
        run_plugin(None, &vars("ADD"), bad).err(6);
    }
    run_plugin(None, &vars("ADD"), &conf("9.9.9").to_string()).err(1);
    for verb in ["GC", "STATUS"] {
        let msg = run_plugin(None, &vars(verb), &conf("1.0.0").to_string()).err(1);
        assert!(msg.contains("does not allow"), "{msg}");
    }
    run_plugin(None, &vars("CHECK"), &conf("0.3.1").to_string()).err(1);
}

#[test]
fn c_unsupp_unknown_fields_are_ignored() {
    // Unknown keys are tolerated (documented in docs/cni.md); the ADD then fails later, at
    // the missing netns, not at decoding.
    let mut c = conf("1.0.0");
    c["somethingNew"] = json!({"a": 1});
    c["ipam"]["alsoNew"] = json!(true);
    let r = run_plugin(None, &vars("ADD"), &c.to_string());
    assert_ne!(r.json["code"].as_u64(), Some(2));
    assert_ne!(r.json["code"].as_u64(), Some(6));
}

#[test]
fn version_answers_every_supported_version() {
    let r = run_plugin(
        None,
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    r.ok();
    assert_eq!(r.json["cniVersion"], "1.0.0");
    let versions: Vec<&str> = r.json["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    // podman's probe: CNI_NETNS=dummy etc.
    let r = run_plugin(
        None,
        &[
            ("CNI_COMMAND", "VERSION".into()),
            ("CNI_NETNS", "dummy".into()),
            ("CNI_IFNAME", "dummy".into()),
            ("CNI_PATH", "dummy".into()),
        ],
        r#"{"cniVersion":"9.9.9"}"#,
    );
    r.ok();
    assert_eq!(r.json["cniVersion"], "1.1.0");
}

#[test]
fn add_with_missing_netns_fails_cleanly() {
    let dir = common::TempDir::new("errors");
    let mut c = conf("1.0.0");
    c["ipam"]["dataDir"] = json!(dir.0.join("ipam"));
    let r = run_plugin(None, &vars("ADD"), &c.to_string());
    r.err(102);
    // Nothing reserved.
    assert!(!dir.0.join("ipam/palisade/state.json").exists());
}

#[test]
fn c_env_invalid_pod_namespace_and_c_conf_relative_data_dir() {
    let c = conf("1.1.0").to_string();
    for ns in ["NS_BAD", "-x", "a/b", "x\ny"] {
        let env = replace(
            vars("ADD"),
            "CNI_ARGS",
            Some(&format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=p"
            )),
        );
        let msg = run_plugin(None, &env, &c).err(4);
        assert!(msg.contains("K8S_POD_NAMESPACE"), "{ns:?}: {msg}");
    }
    let mut rel = conf("1.1.0");
    rel["ipam"]["dataDir"] = json!("var/lib/ipam");
    let msg = run_plugin(None, &vars("ADD"), &rel.to_string()).err(7);
    assert!(
        msg.contains("ipam.dataDir") && msg.contains("absolute"),
        "{msg}"
    );
}
