use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use policy_compiler::manifest::{self, LoadOptions};

use super::*;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "palisade-source-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
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

const NS: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    team: a\n";

fn pod(name: &str, app: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    app: {app}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - name: http\n      containerPort: 8080\nstatus:\n  podIPs:\n  - ip: {ip}\n"
    )
}

fn deny(name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn kinds(changes: &[Change]) -> Vec<String> {
    let mut v: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::UpsertNamespace(n) => format!("+ns {}", n.name),
            Change::DeleteNamespace(n) => format!("-ns {n}"),
            Change::UpsertEndpoint(e) => format!("+ep {}", e.key),
            Change::DeleteEndpoint(k) => format!("-ep {k}"),
            Change::UpsertPolicy(p) => format!("+np {}/{}", p.namespace, p.name),
            Change::DeletePolicy(r) => format!("-np {r}"),
            Change::UpsertService(s) => format!("+svc {}/{}", s.namespace, s.name),
            Change::DeleteService((ns, n)) => format!("-svc {ns}/{n}"),
            Change::UpsertEndpointSlice(s) => format!("+eps {}/{}", s.namespace, s.name),
            Change::DeleteEndpointSlice((ns, n)) => format!("-eps {ns}/{n}"),
        })
        .collect();
    v.sort();
    v
}

fn changes(ev: Option<SourceEvent>) -> Vec<String> {
    match ev {
        Some(SourceEvent::Changes(c)) => kinds(&c),
        Some(SourceEvent::Error(e)) => panic!("unexpected error: {e}"),
        None => Vec::new(),
    }
}

#[test]
fn diff_of_equal_clusters_is_empty() {
    let a = manifest::load_str(
        "a.yaml",
        &format!("{NS}---\n{}", pod("web", "web", "10.0.0.1")),
        &LoadOptions::default(),
    )
    .unwrap()
    .cluster;
    assert!(diff_clusters(&a, &a.clone()).is_empty());
    assert_eq!(diff_clusters(&Cluster::default(), &a).len(), 2);
    assert_eq!(
        kinds(&diff_clusters(&a, &Cluster::default())),
        vec!["-ep shop/web", "-ns shop"]
    );
}

/// A change to any field but `origin` is a change: the priority of an AdminNetworkPolicy,
/// the tier of a ClusterNetworkPolicy, a cluster-scoped subject, audit mode, default deny.
#[test]
fn every_policy_field_but_origin_is_compared() {
    let load = |yaml: &str| {
        manifest::load_str("a.yaml", yaml, &LoadOptions::default())
            .unwrap()
            .cluster
    };
    let anp = |prio: u32, ns: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: a}}\nspec: {{priority: {prio}, subject: {{namespaces: {{matchLabels: {{team: {ns}}}}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n"
        )
    };
    let cnp = |tier: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: c}}\nspec: {{tier: {tier}, priority: 3, subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n"
        )
    };
    let pnp = |mode: &str, default_deny: bool| {
        format!(
            "apiVersion: policy.palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{mode: {mode}, defaultDeny: {{ingress: {default_deny}}}, podSelector: {{}}, ingress: [{{from: [{{podSelector: {{}}}}]}}]}}\n"
        )
    };
    for (a, b) in [
        (anp(30, "blue"), anp(10, "blue")),
        (anp(30, "blue"), anp(30, "green")),
        (cnp("Admin"), cnp("Baseline")),
        (pnp("Enforce", true), pnp("Audit", true)),
        (pnp("Enforce", true), pnp("Enforce", false)),
    ] {
        let (ca, cb) = (load(&a), load(&b));
        assert_eq!(diff_clusters(&ca, &ca.clone()).len(), 0, "{a}");
        assert_eq!(
            diff_clusters(&ca, &cb)
                .iter()
                .filter(|c| matches!(c, Change::UpsertPolicy(_)))
                .count(),
            1,
            "{a} -> {b}"
        );
    }
}

#[test]
fn reload_diffs_policies_pods_and_namespaces() {
    let d = TempDir::new("diff");
    write(&d.0, "00-ns.yaml", NS);
    write(&d.0, "10-pods.yaml", &pod("web", "web", "10.0.0.1"));
    write(&d.0, "20-np.yaml", &deny("default-deny"));
    let src = DirSource::open(&d.0, Duration::from_millis(10)).unwrap();
    assert_eq!(src.initial().policies.len(), 1);
    assert!(src.reload().is_none(), "no change, no event");

    // Modify a policy, add one.
    write(
        &d.0,
        "20-np.yaml",
        &format!(
            "{}---\n{}",
            deny("default-deny").replace("[Ingress]", "[Ingress, Egress]"),
            deny("second")
        ),
    );
    assert_eq!(
        changes(src.reload()),
        vec!["+np shop/default-deny", "+np shop/second"]
    );
    // Remove one; `second` moves from document 2 to 1, which is no change.
    write(&d.0, "20-np.yaml", &deny("second"));
    assert_eq!(changes(src.reload()), vec!["-np shop/default-deny"]);

    // Pods: relabel one, add one, then delete the file.
    write(
        &d.0,
        "10-pods.yaml",
        &format!(
            "{}---\n{}",
            pod("web", "web2", "10.0.0.1"),
            pod("db", "db", "10.0.0.2")
        ),
    );
    assert_eq!(changes(src.reload()), vec!["+ep shop/db", "+ep shop/web"]);
    assert_eq!(
        src.pod_labels("shop", "web")
            .unwrap()
            .labels
            .get("app")
            .map(String::as_str),
        Some("web2")
    );
    let info = src.pod_info("shop", "db").unwrap();
    assert_eq!(info.named_ports[0].name, "http");
    assert_eq!(info.named_ports[0].port, 8080);
    assert!(src.pod_labels("shop", "nope").is_none());
    std::fs::remove_file(d.0.join("10-pods.yaml")).unwrap();
    assert_eq!(changes(src.reload()), vec!["-ep shop/db", "-ep shop/web"]);

    // Namespace labels change; then the namespace goes (the policy still implies it,
    // undeclared).
    write(&d.0, "00-ns.yaml", &NS.replace("team: a", "team: b"));
    assert_eq!(changes(src.reload()), vec!["+ns shop"]);
    std::fs::remove_file(d.0.join("00-ns.yaml")).unwrap();
    assert_eq!(changes(src.reload()), vec!["+ns shop"]);
    assert!(!src.snapshot().namespaces["shop"].declared);
    std::fs::remove_file(d.0.join("20-np.yaml")).unwrap();
    assert_eq!(changes(src.reload()), vec!["-np shop/second", "-ns shop"]);
}

#[test]
fn broken_manifest_keeps_previous_snapshot() {
    let d = TempDir::new("broken");
    write(&d.0, "np.yaml", &deny("default-deny"));
    let src = DirSource::open(&d.0, Duration::from_millis(10)).unwrap();
    let before = src.snapshot();

    write(
        &d.0,
        "np.yaml",
        "apiVersion: v1\nkind: [unclosed\n  foo: {\n",
    );
    match src.reload() {
        Some(SourceEvent::Error(e)) => {
            assert!(e.contains("np.yaml"), "{e}");
            assert!(
                e.contains(":2:") || e.contains(":3:") || e.contains(":4:"),
                "line in {e}"
            );
            assert!(e.contains("previous policy"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(*src.snapshot(), *before, "previous snapshot kept");

    // An invalid (well-formed) policy also keeps the snapshot.
    write(
        &d.0,
        "np.yaml",
        &deny("default-deny").replace("podSelector: {}", "podSelector: {}\n  bogus: 1"),
    );
    assert!(matches!(src.reload(), Some(SourceEvent::Error(e)) if e.contains("np.yaml")));
    assert_eq!(*src.snapshot(), *before);

    // A fixed file is diffed against the last good snapshot.
    write(
        &d.0,
        "np.yaml",
        &format!("{}---\n{}", deny("default-deny"), deny("other")),
    );
    assert_eq!(changes(src.reload()), vec!["+np shop/other"]);
}

#[test]
fn open_fails_on_bad_initial_input() {
    let d = TempDir::new("badinit");
    write(&d.0, "np.yaml", "kind: [\n");
    let err = DirSource::open(&d.0, Duration::from_millis(10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("np.yaml"), "{err}");
}

#[test]
fn watcher_delivers_debounced_changes_and_errors() {
    let d = TempDir::new("watch");
    std::fs::create_dir_all(d.0.join("sub")).unwrap();
    write(&d.0, "np.yaml", &deny("a"));
    let mut src = DirSource::open(&d.0, Duration::from_millis(100)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut rx = src.subscribe().unwrap();
    assert!(matches!(
        src.subscribe(),
        Err(SourceError::AlreadySubscribed { .. })
    ));

    let next = |rx: &mut mpsc::Receiver<SourceEvent>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("event within 10 s")
                .expect("channel open")
        })
    };

    // A save storm: several writes in quick succession, one batch.
    let start = Instant::now();
    for i in 0..5 {
        write(&d.0.join("sub"), "np2.yaml", &deny(&format!("b{i}")));
    }
    let ev = next(&mut rx);
    let got = match ev {
        SourceEvent::Changes(c) => kinds(&c),
        SourceEvent::Error(e) => panic!("{e}"),
    };
    // Depending on timing the first writes may land in their own batch; the final
    // state is what counts.
    assert!(
        got.contains(&"+np shop/b4".to_string())
            || src.snapshot().policies.contains_key(
                &policy_compiler::rules::PolicyRef::network_policy("shop", "b4")
            ),
        "{got:?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(100));
    // Drain until the snapshot has settled on b4.
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.snapshot().policies.len() != 2 && Instant::now() < deadline {
        let _ = next(&mut rx);
    }
    assert_eq!(src.snapshot().policies.len(), 2);
    while rx.try_recv().is_ok() {}

    write(&d.0, "np.yaml", "kind: [\n");
    match next(&mut rx) {
        SourceEvent::Error(e) => assert!(e.contains("np.yaml"), "{e}"),
        SourceEvent::Changes(c) => panic!("expected error, got {:?}", kinds(&c)),
    }
    assert_eq!(src.snapshot().policies.len(), 2);
    // The fix is diffed against the last good snapshot.
    write(&d.0, "np.yaml", &format!("{}---\n{}", deny("a"), deny("c")));
    match next(&mut rx) {
        SourceEvent::Changes(c) => assert_eq!(kinds(&c), vec!["+np shop/c"]),
        SourceEvent::Error(e) => panic!("{e}"),
    }
    // Editor scratch files alone do not reload (and would produce no diff anyway).
    write(&d.0, ".np.yaml.swp", "garbage");
    let quiet =
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(500), rx.recv()).await });
    assert!(quiet.is_err(), "no event expected, got {quiet:?}");
}

#[test]
fn unmodellable_documents_fail_the_reload_and_keep_the_last_good_policy() {
    let d = TempDir::new("strict");
    write(&d.0, "np.yaml", &deny("default-deny"));
    let src = DirSource::open(&d.0, Duration::from_millis(10)).unwrap();
    let before = src.snapshot();
    assert_eq!(before.policies.len(), 1);
    let cases = [
        (
            "Networkpolicy",
            deny("default-deny").replace("kind: NetworkPolicy", "kind: Networkpolicy"),
        ),
        (
            "no kind",
            deny("default-deny").replace("kind: NetworkPolicy\n", ""),
        ),
        (
            "extensions/v1beta1",
            deny("default-deny").replace("networking.k8s.io/v1", "extensions/v1beta1"),
        ),
    ];
    for (what, text) in cases {
        write(&d.0, "np.yaml", &text);
        match src.reload() {
            Some(SourceEvent::Error(e)) => {
                assert!(e.contains("np.yaml (document 1)"), "{what}: {e}");
                assert!(e.contains("previous policy"), "{what}: {e}");
            }
            other => panic!("{what}: the policy silently disappeared: {other:?}"),
        }
        assert_eq!(*src.snapshot(), *before, "{what}: last good policy kept");
        let notes = src.notes();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("reload failed") && n.contains("np.yaml")),
            "{what}: {notes:?}"
        );
    }
    // Fixed: the note goes.
    write(&d.0, "np.yaml", &deny("default-deny"));
    assert!(src.reload().is_none());
    assert!(src.notes().is_empty(), "{:?}", src.notes());
}

#[test]
fn no_policies_is_applied_but_noted() {
    let d = TempDir::new("nopolicies");
    write(&d.0, "np.yaml", &deny("default-deny"));
    let src = DirSource::open(&d.0, Duration::from_millis(10)).unwrap();
    assert!(src.notes().is_empty());
    std::fs::remove_file(d.0.join("np.yaml")).unwrap();
    assert_eq!(
        changes(src.reload()),
        vec!["-np shop/default-deny", "-ns shop"]
    );
    let notes = src.notes();
    assert!(
        notes.iter().any(|n| n.starts_with("no policies")),
        "{notes:?}"
    );
}

#[test]
fn a_file_or_nothing_is_not_a_manifest_directory() {
    let d = TempDir::new("notdir");
    write(&d.0, "np.yaml", &deny("default-deny"));
    for p in [d.0.join("np.yaml"), d.0.join("missing")] {
        let err = DirSource::open(&p, Duration::from_millis(10)).unwrap_err();
        assert!(
            matches!(err, SourceError::NotADirectory { .. }),
            "{}: {err}",
            p.display()
        );
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }
}

#[test]
fn a_fifo_or_dev_zero_in_the_directory_fails_the_reload_without_blocking() {
    let d = TempDir::new("fifo");
    write(&d.0, "np.yaml", &deny("default-deny"));
    let src = std::sync::Arc::new(DirSource::open(&d.0, Duration::from_millis(10)).unwrap());
    let before = src.snapshot();
    let st = std::process::Command::new("mkfifo")
        .arg(d.0.join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::symlink("/dev/zero", d.0.join("zero.yaml")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s = src.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s.reload());
    });
    match rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the reload blocked on a FIFO")
    {
        Some(SourceEvent::Error(e)) => {
            assert!(e.contains("not a regular file"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(*src.snapshot(), *before);
}
