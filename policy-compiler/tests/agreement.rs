//! Property test: the spec-level and the map-level evaluators agree on verdict and
//! attribution for random clusters, policies and flows. CI runs at least 100,000 flows
//! (PROPTEST_CASES x FLOWS_PER_CASE); set PALISADE_PROPTEST_CASES to run more.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use common::generate::*;
use policy_compiler::eval::{maps, spec};
use policy_compiler::{Engine, EngineConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const FLOWS_PER_CASE: usize = 400;

fn cases() -> u32 {
    std::env::var("PALISADE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[test]
fn spec_and_map_evaluators_agree() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let flows = std::cell::Cell::new(0usize);
    let allowed = std::cell::Cell::new(0usize);
    let result = runner.run(
        &(
            cluster(),
            flow_seeds(FLOWS_PER_CASE),
            any::<bool>(),
            prop::collection::btree_set(0..IPS.len(), 0..3),
        ),
        |(c, seeds, pods_in_blocks, host)| {
            // Some of the generator's addresses are the node's (host identity), sometimes
            // also a pod's (a host-network pod has its node's address).
            let config = EngineConfig {
                ipblocks_select_pods: pods_in_blocks,
                host_addresses: host.iter().map(|i| IPS[*i].parse().unwrap()).collect(),
                ..EngineConfig::default()
            };
            let (engine, _) = Engine::compile(&c, config.clone())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for s in &seeds {
                let flow = seed_to_flow(&c, s);
                let m = maps::evaluate(&engine, &flow);
                let sp = spec::evaluate(engine.cluster(), engine.rules(), &config, &flow);
                prop_assert_eq!(&m, &sp, "flow {:?}", flow);
                flows.set(flows.get() + 1);
                if m.allowed() {
                    allowed.set(allowed.get() + 1);
                }
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let (flows, allowed) = (flows.get(), allowed.get());
    println!(
        "agreement: {flows} flows, {allowed} allowed, {} denied",
        flows - allowed
    );
    assert!(flows >= 100_000 || cases() < 256, "ran only {flows} flows");
    // Both outcomes must be well represented, or the property proves little.
    assert!(
        allowed > flows / 20 && allowed < flows - flows / 20,
        "degenerate mix: {allowed}/{flows} allowed"
    );
}
