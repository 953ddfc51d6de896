//! Incremental updates: applying random changes one batch at a time, and the diffs they
//! produce to a mirror of the engine's state, must end in exactly what a compile from
//! scratch produces (same identity numbers and rule ids), and both evaluators keep agreeing.
//! (The order in which the kernel maps are written is the update plan's, tested per
//! operation in tests/plan.rs and enforcer/tests/sync.rs; a `MapDiff` only says what
//! changed.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use std::collections::BTreeMap;

use common::generate::*;
use policy_compiler::engine::MapOp;
use policy_compiler::eval::{maps, spec};
use policy_compiler::{Engine, EngineConfig, MapDiff};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn apply_to_mirror(m: &mut Mirror, diff: &MapDiff) {
    for op in diff.ops() {
        match op {
            MapOp::CreatePolicy(id) => {
                m.0.entry(id).or_default();
            }
            MapOp::UpsertPolicyEntry(id, k, v) => {
                m.0.get_mut(&id)
                    .unwrap_or_else(|| panic!("upsert into missing map {id}"))
                    .insert(*k, *v);
            }
            MapOp::UpsertIpcache(c, id) => {
                m.1.insert(*c, id);
            }
            MapOp::UpsertEndpoint(e, id) => {
                assert!(
                    m.0.contains_key(&id),
                    "endpoint {e} points at missing policy map {id}"
                );
                m.2.insert(e.to_string(), id);
            }
            MapOp::DeleteEndpoint(e) => {
                m.2.remove(e);
            }
            MapOp::DeletePolicyEntry(id, k) => {
                if let Some(p) = m.0.get_mut(&id) {
                    assert!(p.remove(k).is_some(), "delete of a missing entry");
                }
            }
            MapOp::DeleteIpcache(c) => {
                assert!(m.1.remove(c).is_some(), "delete of a missing ipcache entry");
            }
            MapOp::RemovePolicy(id) => {
                m.0.remove(&id);
            }
        }
    }
}

fn engine_maps(e: &Engine) -> Mirror {
    let policies = e
        .compiled()
        .iter()
        .map(|(id, p)| (*id, p.entries.iter().copied().collect::<BTreeMap<_, _>>()))
        .collect();
    let endpoints = e
        .endpoint_identities()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    (policies, e.ipcache().clone(), endpoints)
}

#[test]
fn applying_diffs_equals_compiling_from_scratch() {
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        cluster(),
        prop::collection::vec((0usize..1000).prop_flat_map(change_seed), 1..8),
        flow_seeds(60),
    );
    let result = runner.run(&strategy, |(initial, changes, seeds)| {
        let config = EngineConfig::default();
        let (mut engine, first) = Engine::compile(&initial, config.clone())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut mirror: Mirror = Default::default();
        // The world entries exist before any diff.
        mirror.1 = Engine::new(config.clone()).ipcache().clone();
        apply_to_mirror(&mut mirror, &first);
        prop_assert_eq!(&mirror, &engine_maps(&engine));
        for seed in &changes {
            let Some(change) = resolve_change(engine.cluster(), seed) else {
                continue;
            };
            let diff = engine
                .apply(vec![change])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            apply_to_mirror(&mut mirror, &diff);
            prop_assert_eq!(
                &mirror,
                &engine_maps(&engine),
                "mirror diverged after {:?}",
                seed
            );
            for s in &seeds {
                let flow = seed_to_flow(engine.cluster(), s);
                let m = maps::evaluate(&engine, &flow);
                let sp = spec::evaluate(engine.cluster(), engine.rules(), &config, &flow);
                prop_assert_eq!(m, sp, "flow {:?} after {:?}", flow, seed);
            }
        }
        let scratch = engine
            .recompiled()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            engine_maps(&scratch),
            engine_maps(&engine),
            "incremental != scratch"
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_pod_added_to_an_existing_identity_touches_only_the_ipcache_and_endpoint() {
    use policy_compiler::Change;
    use policy_compiler::model::{Endpoint, WorkloadRef};
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns1, labels: {app: web}}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns1}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]\n";
    let mut e = common::engine(yaml);
    let mut pod = e
        .cluster()
        .endpoints
        .get("ns1/a")
        .cloned()
        .unwrap_or_else(|| panic!("pod a"));
    pod.key = Endpoint::pod_key("ns1", "b");
    pod.name = "b".into();
    pod.workload = WorkloadRef {
        kind: "Pod".into(),
        name: "b".into(),
    };
    pod.ips = vec!["10.0.0.2".parse().unwrap_or_else(|_| panic!())];
    let diff = e
        .apply(vec![Change::UpsertEndpoint(pod)])
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        diff.policy_upserts.is_empty() && diff.policy_deletes.is_empty(),
        "{diff:?}"
    );
    assert_eq!(diff.ipcache_upserts.len(), 1);
    assert_eq!(diff.endpoint_upserts.len(), 1);
    assert!(common::tcp(&e, "ns1/b", "ns1/a", 80));
}

#[test]
fn compiling_the_same_input_twice_gives_the_same_numbers_and_maps() {
    use policy_compiler::manifest::{LoadOptions, load_paths};
    let dir = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/manifests"
    ));
    let loaded = load_paths(&[dir], &LoadOptions::default()).unwrap();
    let (a, da) = Engine::compile(&loaded.cluster, EngineConfig::default()).unwrap();
    let (b, db) = Engine::compile(&loaded.cluster, EngineConfig::default()).unwrap();
    assert_eq!(da, db);
    assert_eq!(engine_maps(&a), engine_maps(&b));
    assert!(!da.policy_upserts.is_empty());
}
