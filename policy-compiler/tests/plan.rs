//! The update plan (`policy_compiler::plan`), executed one operation at a time on an
//! in-memory map state: after every single operation, every hook decision of every probe
//! flow is the old or the new one, and the final state is exactly what a fresh compile
//! says (no leaked slot, entry or transit). At least 10,000 operations are checked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use std::collections::BTreeMap;

use common::generate::*;
use common::plan_check::{Expect, Ifindexes, local_endpoints, without_revisions};
use policy_compiler::plan::{self, MapState, PlanOptions, Target};
use policy_compiler::{Engine, EngineConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const MIN_OPS: usize = 10_000;

#[test]
fn every_operation_of_every_plan_keeps_each_decision_old_or_new() {
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("PALISADE_PLAN_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
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
    let ops = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |(initial, batches)| {
        let (mut engine, _) = Engine::compile(&initial, EngineConfig::default()).unwrap();
        let mut ifs = Ifindexes::default();
        let mut state = MapState::default();
        let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
        let mut old_t = Target::default();
        let mut revision = 0;
        // The first plan fills empty maps; every later one is one batch of changes.
        for step in 0..=batches.len() {
            if step > 0 {
                let changes: Vec<_> = batches[step - 1]
                    .iter()
                    .filter_map(|s| resolve_change(engine.cluster(), s))
                    .collect();
                engine.apply(changes).unwrap();
            }
            revision += 1;
            let local = local_endpoints(engine.cluster(), &mut ifs);
            let target = Target::from_engine(
                &engine,
                local.iter().map(|(k, i)| (k.as_str(), *i)),
                revision,
            );
            let p = plan::plan(&state, &slots, &target, PlanOptions::default());
            let mut fin = state.clone();
            for op in &p.ops {
                fin.apply(op);
            }
            let expect = Expect::new(&state, &fin, &old_t, &target);
            for (i, op) in p.ops.iter().enumerate() {
                state.apply(op);
                expect.check(&state, &|| format!("after op {i} ({op}) of {:#?}", p.ops));
            }
            ops.set(ops.get() + p.ops.len());
            // The final state is exactly the target, and equals a fresh compile's.
            expect.check_revisions(&state, revision);
            prop_assert_eq!(
                without_revisions(&state),
                without_revisions(&target.state(&p.slots))
            );
            let fresh = engine.recompiled().unwrap();
            let fresh_t = Target::from_engine(
                &fresh,
                local.iter().map(|(k, i)| (k.as_str(), *i)),
                revision,
            );
            prop_assert_eq!(
                without_revisions(&state),
                without_revisions(&fresh_t.state(&p.slots))
            );
            slots = p.slots;
            old_t = target;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("plan: {} map operations checked", ops.get());
    assert!(
        ops.get() >= MIN_OPS,
        "only {} operations checked",
        ops.get()
    );
}
