//! The shipped examples (examples/manifests) load, and enforce what their comments claim.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use common::check;
use policy_compiler::manifest::{LoadOptions, load_paths};
use policy_compiler::{Decision, Engine, EngineConfig, Protocol};

#[test]
fn examples_enforce_default_deny_with_explicit_allows() {
    let dir = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/manifests"
    ));
    let loaded = load_paths(&[dir], &LoadOptions::default()).unwrap();
    assert_eq!(loaded.report.unsupported_total(), 0);
    let (e, _) = Engine::compile(&loaded.cluster, EngineConfig::default()).unwrap();
    let fe = "shop/Deployment/frontend";
    let be = "shop/Deployment/backend";
    let db = "data/StatefulSet/db";
    assert!(check(&e, "ip:203.0.113.7", fe, Protocol::TCP, 80).allowed());
    assert!(check(&e, fe, be, Protocol::TCP, 8080).allowed());
    assert!(check(&e, be, db, Protocol::TCP, 5432).allowed());
    let v = check(&e, fe, db, Protocol::TCP, 5432);
    assert!(!v.allowed());
    assert!(
        matches!(v.egress, Some(Decision::DefaultDeny { .. })),
        "{v:?}"
    );
    assert!(!check(&e, "ip:203.0.113.7", be, Protocol::TCP, 8080).allowed());
    assert!(!check(&e, db, "ip:198.51.100.1", Protocol::TCP, 443).allowed());
    assert!(!check(&e, fe, be, Protocol::UDP, 8080).allowed());
}
