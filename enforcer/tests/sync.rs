//! The sync layer on fake maps: random clusters and random batches of policy, pod and
//! namespace changes, applied through `sync::Synced` exactly as the daemon does.
//!
//! - After **every single map operation**, every hook decision (endpoint lookup, source
//!   check, ipcache, policy lookup, both hooks; `plan::model::decide`) of every probe flow
//!   is the old or the new one, and the final maps equal a fresh compile. At least 10,000
//!   operations are checked per run.
//! - Write failures injected at random operations: the plan stops with an error naming the
//!   operation, the maps are still old-or-new for every flow, and `reconcile` (against a
//!   dump) converges to the fresh compile, again old-or-new after every operation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

#[path = "../../policy-compiler/tests/common/generate.rs"]
mod generate;
#[path = "../../policy-compiler/tests/common/plan_check.rs"]
mod plan_check;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use generate::*;
use palisade_enforcer::maps::{FakeMaps, Maps};
use palisade_enforcer::sync::{SyncError, Synced};
use plan_check::{Expect, Ifindexes, local_endpoints, without_revisions};
use policy_compiler::plan::{self, MapState, PlanOptions, Target};
use policy_compiler::{Engine, EngineConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const MIN_OPS: usize = 10_000;

fn target_of(engine: &Engine, ifs: &mut Ifindexes, revision: u32) -> Target {
    let local = local_endpoints(engine.cluster(), ifs);
    Target::from_engine(
        engine,
        local.iter().map(|(k, i)| (k.as_str(), *i)),
        revision,
    )
}

/// The maps after a plan from `from` to `t` (what "new" means for the probes).
fn planned(from: &MapState, synced: &Synced, t: &Target) -> MapState {
    let p = plan::plan(from, synced.slots(), t, PlanOptions::default());
    let mut s = from.clone();
    for op in &p.ops {
        s.apply(op);
    }
    s
}

/// Installs the per-operation check of one update on the fake maps.
fn watch(fake: &mut FakeMaps, expect: Expect, count: Arc<AtomicUsize>, context: String) {
    fake.observer = Some(Box::new(move |state, op| {
        count.fetch_add(1, Ordering::Relaxed);
        expect.check(state, &|| format!("after {op} in {context}"));
    }));
}

/// The fresh compile's maps, through the slots the sync layer chose.
fn assert_converged(fake: &FakeMaps, synced: &Synced, engine: &Engine, t: &Target) {
    let fresh = engine.recompiled().unwrap();
    let mut fresh_t = Target {
        policies: Default::default(),
        ipcache: fresh.ipcache().clone(),
        endpoints: t.endpoints.clone(),
        revision: t.revision,
        lb: t.lb.clone(),
        lb_changed: None,
    };
    for e in t.endpoints.values() {
        fresh_t.policies.insert(
            e.identity,
            fresh.policy_for_identity(e.identity).unwrap().clone(),
        );
    }
    assert_eq!(
        without_revisions(&fake.state),
        without_revisions(&fresh_t.state(synced.slots())),
        "maps differ from a fresh compile"
    );
    assert!(!synced.is_dirty());
}

#[test]
fn every_map_operation_keeps_each_decision_old_or_new() {
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        cluster(),
        prop::collection::vec(
            prop::collection::vec((0usize..1000).prop_flat_map(change_seed), 1..3),
            1..12,
        ),
    );
    let count = Arc::new(AtomicUsize::new(0));
    let result = runner.run(&strategy, |(initial, batches)| {
        let (mut engine, _) = Engine::compile(&initial, EngineConfig::default()).unwrap();
        let mut ifs = Ifindexes::default();
        let mut fake = FakeMaps::default();
        let mut synced = Synced::default();
        let mut old_t = Target::default();
        for step in 0..=batches.len() {
            if step > 0 {
                let changes: Vec<_> = batches[step - 1]
                    .iter()
                    .filter_map(|s| resolve_change(engine.cluster(), s))
                    .collect();
                engine.apply(changes).unwrap();
            }
            let t = target_of(&engine, &mut ifs, step as u32 + 1);
            let new = planned(&fake.state, &synced, &t);
            let next = synced.next_plan(&mut fake, &t).unwrap();
            let expect = Expect::new(&fake.state, &new, &old_t, &t);
            let context = format!("step {step} from {:?}: {:#?}", fake.state, next.ops);
            watch(&mut fake, expect, count.clone(), context);
            let revisions = Expect::new(&fake.state, &new, &old_t, &t);
            synced.apply(&mut fake, &t).unwrap();
            revisions.check_revisions(&fake.state, t.revision);
            assert_converged(&fake, &synced, &engine, &t);
            old_t = t;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let n = count.load(Ordering::Relaxed);
    println!("sync: {n} map operations checked");
    assert!(n >= MIN_OPS, "only {n} map operations checked");
}

#[test]
fn a_failed_write_leaves_old_or_new_and_reconcile_converges() {
    let mut runner = TestRunner::new(Config {
        cases: 250,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        cluster(),
        prop::collection::vec(
            (
                prop::collection::vec((0usize..1000).prop_flat_map(change_seed), 1..3),
                any::<prop::sample::Index>(),
                any::<bool>(),
            ),
            1..8,
        ),
    );
    let failures = AtomicUsize::new(0);
    let count = Arc::new(AtomicUsize::new(0));
    let result = runner.run(&strategy, |(initial, batches)| {
        let (mut engine, _) = Engine::compile(&initial, EngineConfig::default()).unwrap();
        let mut ifs = Ifindexes::default();
        let mut fake = FakeMaps::default();
        let mut synced = Synced::default();
        let t = target_of(&engine, &mut ifs, 1);
        synced.apply(&mut fake, &t).unwrap();
        let mut old_t = t;
        for (step, (batch, at, fail_again)) in batches.iter().enumerate() {
            let changes: Vec<_> = batch
                .iter()
                .filter_map(|s| resolve_change(engine.cluster(), s))
                .collect();
            engine.apply(changes).unwrap();
            let t = target_of(&engine, &mut ifs, step as u32 + 2);
            let p = plan::plan(&fake.state, synced.slots(), &t, PlanOptions::default());
            if p.ops.is_empty() {
                continue;
            }
            let new = planned(&fake.state, &synced, &t);
            let expect = Expect::new(&fake.state, &new, &old_t, &t);
            watch(&mut fake, expect, count.clone(), format!("step {step}"));
            // Fail one operation of this plan.
            let k = at.index(p.ops.len());
            fake.fail_at.insert(fake.attempts + k);
            let before = fake.state.clone();
            let (before_all, new_all) = (before.clone(), planned(&before, &synced, &t));
            match synced.apply(&mut fake, &t) {
                Err(SyncError::PlanFailed {
                    index, total, op, ..
                }) => {
                    assert_eq!((index, total), (k, p.ops.len()));
                    assert_eq!(*op, p.ops[k]);
                    // Exactly the prefix before the failed operation is in the maps.
                    let mut prefix = before;
                    for o in &p.ops[..k] {
                        prefix.apply(o);
                    }
                    assert_eq!(fake.state, prefix);
                }
                other => panic!("expected a failed plan, got {other:?}"),
            }
            failures.fetch_add(1, Ordering::Relaxed);
            assert!(synced.is_dirty());
            // Optionally the first reconcile fails too (its dump).
            if *fail_again {
                fake.fail_dump = true;
                assert!(matches!(
                    synced.apply(&mut fake, &t),
                    Err(SyncError::Dump { .. })
                ));
                assert!(synced.is_dirty());
            }
            // The next apply reconciles against a dump; the observer still requires every
            // decision to be the old or the new one.
            let expect = Expect::new(&before_all, &new_all, &old_t, &t);
            watch(
                &mut fake,
                expect,
                count.clone(),
                format!("reconcile of step {step}"),
            );
            synced.apply(&mut fake, &t).unwrap();
            assert_converged(&fake, &synced, &engine, &t);
            old_t = t;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let f = failures.load(Ordering::Relaxed);
    println!("sync: {f} injected write failures reconciled");
    assert!(f >= 300, "only {f} failures injected");
}

#[test]
fn adopting_maps_a_previous_run_wrote_rewrites_nothing() {
    let mut runner = TestRunner::new(Config {
        cases: 100,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&cluster(), |c| {
        let (engine, _) = Engine::compile(&c, EngineConfig::default()).unwrap();
        let mut ifs = Ifindexes::default();
        let mut fake = FakeMaps::default();
        let t = target_of(&engine, &mut ifs, 1);
        Synced::default().apply(&mut fake, &t).unwrap();
        // A restart: a new process adopts the pinned maps and reconciles.
        let mut adopted = Synced::adopt(&mut fake).unwrap();
        let before = fake.attempts;
        let stats = adopted
            .reconcile(&mut fake, &t, PlanOptions::default())
            .unwrap();
        prop_assert_eq!(fake.attempts, before, "{:?}", stats);
        let _ = fake.dump().unwrap();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A reload that would overflow the policy map at its peak (a slot flip or in-place
/// change holds old and new entries at once) is refused before any write: the fake maps,
/// the mirror and the dirty flag stay as they were, so an allow the reload revokes is
/// still there exactly as the last good policy says (the whole reload is refused).
#[test]
fn a_reload_over_capacity_is_refused_with_zero_writes() {
    use palisade_enforcer::sync::SyncError;
    use policy_compiler::abi;
    use policy_compiler::engine::{CompiledPolicy, EntryKey};
    use policy_compiler::plan::TargetEndpoint;
    use policy_compiler::plan::capacity::Capacity;

    let entry = |port: u16| {
        (
            EntryKey {
                identity: 300,
                direction: abi::DIRECTION_INGRESS,
                protocol: 6,
                port,
                prefixlen: abi::POLICY_PREFIX_FULL as u8,
            },
            abi::PolicyValue {
                rule_id: u32::from(port),
                verdict: abi::POLICY_VERDICT_ALLOW,
                ..abi::PolicyValue::default()
            },
        )
    };
    let target = |ports: &[u16], revision: u32| Target {
        lb: Default::default(),
        lb_changed: None,
        policies: [(
            100,
            std::sync::Arc::new(CompiledPolicy {
                l7: Vec::new(),
                entries: ports.iter().map(|p| entry(*p)).collect(),
                ingress_isolated_by: Vec::new(),
                egress_isolated_by: Vec::new(),
            }),
        )]
        .into(),
        ipcache: Default::default(),
        endpoints: [(
            7,
            TargetEndpoint {
                identity: 100,
                ips: vec!["10.0.0.7".parse().unwrap()],
            },
        )]
        .into(),
        revision,
    };
    let cap = Capacity {
        policy: 4,
        ipcache: 16,
        endpoints: 4,
        ..Capacity::default()
    };
    let mut fake = FakeMaps::default();
    let mut synced = Synced::adopt(&mut fake).unwrap().with_capacity(cap);
    synced.apply(&mut fake, &target(&[80, 443], 1)).unwrap();
    assert_eq!(synced.usage().policy, 2);
    let before = fake.state.clone();
    let attempts = fake.attempts;

    // Revoke 443, allow 81..=83: 4 entries at the end (fits), more at the peak.
    let err = synced
        .apply(&mut fake, &target(&[80, 81, 82, 83], 2))
        .unwrap_err();
    match &err {
        SyncError::CapacityExceeded(e) => {
            assert_eq!(e.map, abi::map_name::POLICY);
            assert_eq!(e.capacity, 4);
            assert!(e.needed > 4, "{e}");
            assert_eq!(e.largest, Some((100, 4)));
        }
        other => panic!("expected CapacityExceeded, got {other}"),
    }
    assert!(err.to_string().contains("identity 100"), "{err}");
    assert_eq!(fake.attempts, attempts, "a refused reload writes nothing");
    assert_eq!(fake.state, before, "the maps keep the last good policy");
    assert_eq!(
        synced.state(),
        &before,
        "the mirror keeps the last good policy"
    );
    assert!(!synced.is_dirty());
    let slot = synced.slot_of(100).unwrap();
    assert!(
        fake.state.policy[&slot].contains_key(&entry(443).0),
        "the allow the refused reload revokes is still enforced"
    );
    // A single policy larger than the map alone is refused the same way.
    assert!(matches!(
        synced.apply(&mut fake, &target(&[1, 2, 3, 4, 5], 2)),
        Err(SyncError::CapacityExceeded(_))
    ));
    assert_eq!(fake.state, before);

    // A reload that fits goes through from the same state.
    synced.apply(&mut fake, &target(&[80], 3)).unwrap();
    assert_eq!(synced.usage().policy, 1);
    assert!(!fake.state.policy[&synced.slot_of(100).unwrap()].contains_key(&entry(443).0));
}

/// The services-only path (`Synced::apply_services`) is refused whole when the service maps
/// cannot hold the result at any operation: nothing written, the mirror unchanged, not
/// dirty; the change that fits goes through from the same state.
#[test]
fn a_service_change_that_does_not_fit_is_refused_before_any_write() {
    use policy_compiler::Change;
    use policy_compiler::manifest::{LoadOptions, load_str};
    use policy_compiler::plan::capacity::Capacity;
    use policy_compiler::plan::lb::LbTarget;
    let pods = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: shop, labels: {{app: web}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIPs: [{{ip: 10.0.1.{} }}]}}\n",
                    i + 10
                )
            })
            .collect()
    };
    let svc = |name: &str, vip: &str| -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  clusterIPs: [{vip}]\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        )
    };
    let cluster = load_str(
        "c.yaml",
        &(pods(3) + &svc("web", "10.96.0.10")),
        &LoadOptions::default(),
    )
    .unwrap()
    .cluster;
    let (mut engine, _) = Engine::compile_owned(cluster, EngineConfig::default()).unwrap();
    engine.take_services_touched();
    let mut lb = LbTarget::from_cluster(engine.cluster(), None);
    let cap = Capacity {
        lb_frontends: 2,
        lb_backends: 4,
        ..Capacity::default()
    };
    let mut fake = FakeMaps::default();
    let mut synced = Synced::adopt(&mut fake).unwrap().with_capacity(cap);
    let mut t = Target::from_engine(&engine, std::iter::empty(), 1);
    t.lb = lb.clone();
    synced.apply(&mut fake, &t).unwrap();
    assert_eq!(synced.usage().lb_backends, 3);
    let before = fake.state.clone();
    let attempts = fake.attempts;

    // A second service of the same three pods: 6 backends, over the 4 the maps hold.
    let other = load_str(
        "o.yaml",
        &svc("other", "10.96.0.11"),
        &LoadOptions::default(),
    )
    .unwrap()
    .cluster;
    let change: Vec<Change> = other
        .services
        .into_values()
        .map(Change::UpsertService)
        .collect();
    let undo = engine
        .undo_for(&change)
        .expect("a service-only batch has an undo");
    engine.apply(change).unwrap();
    let touched = engine.take_services_touched();
    let keys = lb.update(engine.cluster(), &touched);
    assert_eq!(keys.len(), 1, "one new frontend");
    let err = synced.apply_services(&mut fake, &lb, &keys).unwrap_err();
    match &err {
        SyncError::CapacityExceeded(e) => {
            assert_eq!(e.map, policy_compiler::abi::map_name::LB_BACKENDS);
            assert_eq!((e.needed, e.capacity), (6, 4));
        }
        other => panic!("expected CapacityExceeded, got {other}"),
    }
    assert_eq!(
        fake.attempts, attempts,
        "a refused service change writes nothing"
    );
    assert_eq!(fake.state, before, "the maps keep the last good services");
    assert_eq!(synced.state(), &before, "the mirror too");
    assert!(!synced.is_dirty());

    // The agent's way back: the undo, then the target updated to the model again.
    engine.apply(undo).unwrap();
    let touched = engine.take_services_touched();
    let keys = lb.update(engine.cluster(), &touched);
    let stats = synced.apply_services(&mut fake, &lb, &keys).unwrap();
    assert_eq!(stats.ops, 0, "the target is what the maps hold again");
    assert_eq!(fake.state, before);
}
