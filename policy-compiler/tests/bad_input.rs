//! Hostile and broken manifest input: non-regular files, size caps, parser limits,
//! duplicate keys, and documents the loader cannot model. Every case must end in a named
//! error (or load), never hang or grow memory without bound: loads that could hang run on
//! a thread with a deadline, so a regression fails instead of stalling the suite.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use policy_compiler::manifest::{LoadError, LoadOptions, Loaded, load_paths, load_str};

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("palisade-bad-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads on a thread; fails the test if the load takes longer than 20 s (a hang).
fn load_within(paths: Vec<PathBuf>, opts: LoadOptions) -> Result<Loaded, LoadError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(load_paths(&paths, &opts));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("loading did not finish within 20 s: it hangs"))
}

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

#[test]
fn a_fifo_in_a_directory_is_a_named_error_not_a_hang() {
    let d = TempDir::new("fifo-dir");
    std::fs::write(d.0.join("a.yaml"), POLICY).unwrap();
    mkfifo(&d.0.join("b.yaml"));
    let err =
        load_within(vec![d.0.clone()], LoadOptions::default()).expect_err("a FIFO must not load");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::NotRegular { .. }), "{msg}");
    assert!(msg.contains("b.yaml") && msg.contains("FIFO"), "{msg}");
}

#[test]
fn a_fifo_given_explicitly_is_a_named_error_not_a_hang() {
    let d = TempDir::new("fifo-file");
    let fifo = d.0.join("policies");
    mkfifo(&fifo);
    let err = load_within(vec![fifo], LoadOptions::default()).expect_err("a FIFO must not load");
    assert!(err.to_string().contains("FIFO"), "{err}");
}

#[test]
fn dev_zero_is_refused_directly_and_through_a_symlink() {
    let err = load_within(vec!["/dev/zero".into()], LoadOptions::default())
        .expect_err("/dev/zero must not load");
    let msg = err.to_string();
    assert!(
        msg.contains("/dev/zero") && msg.contains("character device"),
        "{msg}"
    );
    let d = TempDir::new("zero-link");
    std::os::unix::fs::symlink("/dev/zero", d.0.join("zero.yaml")).unwrap();
    let err = load_within(vec![d.0.clone()], LoadOptions::default())
        .expect_err("a symlink to /dev/zero must not load");
    let msg = err.to_string();
    assert!(
        msg.contains("zero.yaml") && msg.contains("character device"),
        "{msg}"
    );
}

#[test]
fn files_over_the_size_cap_are_refused_and_the_cap_is_configurable() {
    let d = TempDir::new("cap");
    std::fs::write(d.0.join("p.yaml"), POLICY).unwrap();
    let mut opts = LoadOptions::default();
    opts.limits.max_file_bytes = 64;
    let err = load_within(vec![d.0.clone()], opts).expect_err("over the cap");
    let msg = err.to_string();
    assert!(
        matches!(err, LoadError::TooLarge { limit: 64, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("p.yaml") && msg.contains("max_file_bytes"),
        "{msg}"
    );
    opts.limits.max_file_bytes = POLICY.len() as u64;
    let l = load_within(vec![d.0.clone()], opts).unwrap();
    assert_eq!(l.cluster.policies.len(), 1);
    assert!(load_str("s.yaml", POLICY, &opts).is_ok());
    opts.limits.max_file_bytes = 10;
    assert!(matches!(
        load_str("s.yaml", POLICY, &opts),
        Err(LoadError::TooLarge { .. })
    ));
}

#[test]
fn multi_document_yaml_starting_with_a_flow_mapping_is_yaml() {
    let text = "{apiVersion: v1, kind: Namespace, metadata: {name: a}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
    let l = load_str("ns.yaml", text, &LoadOptions::default()).unwrap();
    assert!(l.cluster.namespaces.contains_key("a"));
    assert!(l.cluster.namespaces.contains_key("b"));
    // Valid JSON documents separated by `---` are YAML as well.
    let text = "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}}\n---\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"b\"}}\n";
    let l = load_str("ns.yml", text, &LoadOptions::default()).unwrap();
    assert_eq!(l.cluster.namespaces.len(), 2);
    // A .json file stays JSON: the same text is a JSON syntax error there.
    let err = load_str("ns.json", text, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::Syntax { line: 2, .. }), "{err}");
}

#[test]
fn duplicate_keys_are_errors_in_json_and_yaml_alike() {
    let json = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a", "app": "b"}}}"#;
    let err = load_str("p.json", json, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Syntax { line: 1, .. }), "{msg}");
    assert!(msg.contains("duplicate key \"app\""), "{msg}");
    let err = load_str("p.yaml", json, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  name: b\n";
    let err = load_str("p.yaml", yaml, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Syntax { .. }), "{msg}");
    assert!(msg.to_lowercase().contains("duplicate"), "{msg}");
}

fn namespaces(n: usize, yaml: bool) -> String {
    let mut s = String::new();
    for i in 0..n {
        if yaml {
            s.push_str(&format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{i}}}\n"
            ));
        } else {
            s.push_str(&format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"ns-{i}\"}}}}\n"
            ));
        }
    }
    s
}

#[test]
fn document_limits_are_generous_by_default_configurable_and_alike_for_yaml_and_json() {
    // Past the parser's stock 1,024 documents per file.
    for yaml in [true, false] {
        let name = if yaml { "n.yaml" } else { "n.json" };
        let text = namespaces(5_000, yaml);
        let l = load_str(name, &text, &LoadOptions::default()).unwrap();
        assert_eq!(l.cluster.namespaces.len(), 5_000, "{name}");
        let mut opts = LoadOptions::default();
        opts.limits.max_documents = 100;
        let err = load_str(name, &text, &opts)
            .err()
            .unwrap_or_else(|| panic!("{name}: 5,000 documents over a limit of 100 loaded"));
        assert!(
            err.to_string().contains("more than 100 documents"),
            "{name}: {err}"
        );
        let mut opts = LoadOptions::default();
        opts.limits.max_nodes = 1_000;
        let err = load_str(name, &text, &opts)
            .err()
            .unwrap_or_else(|| panic!("{name}: 5,000 documents over 1,000 nodes loaded"));
        assert!(
            err.to_string().contains("more than 1000 nodes"),
            "{name}: {err}"
        );
    }
}

#[test]
fn an_alias_bomb_is_still_refused() {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let err = load_str("bomb.yaml", &text, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::Syntax { .. }), "{err}");
}

#[test]
fn documents_the_loader_cannot_model_are_errors_in_strict_mode() {
    let cases = [
        (
            "kind: Networkpolicy",
            "apiVersion: networking.k8s.io/v1\nkind: Networkpolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n",
            "did you mean NetworkPolicy",
        ),
        (
            "no kind",
            "apiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n",
            "no `kind`",
        ),
        (
            "extensions/v1beta1",
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n",
            "extensions/v1beta1",
        ),
    ];
    let strict = LoadOptions {
        strict_kinds: true,
        ..LoadOptions::default()
    };
    for (what, text, needle) in cases {
        let doc = format!("{POLICY}---\n{text}");
        // Lenient (policy-test's default): loads, the document is reported.
        let l = load_str("p.yaml", &doc, &LoadOptions::default()).unwrap();
        assert_eq!(l.cluster.policies.len(), 1, "{what}");
        assert!(
            l.report.unsupported_total() + l.report.warnings.len() > 0,
            "{what}: must be reported"
        );
        // Strict: an error naming file and document.
        let err = load_str("p.yaml", &doc, &strict).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LoadError::Unmodelled { .. }), "{what}: {msg}");
        assert!(msg.starts_with("p.yaml (document 2): "), "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg}");
    }
}
