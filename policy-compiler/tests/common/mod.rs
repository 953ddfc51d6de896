//! Shared helpers: load manifests, evaluate a flow with both evaluators and insist they
//! agree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]
#![allow(dead_code)]

use policy_compiler::eval::{maps, spec};
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::{Decision, Engine, EngineConfig, Flow, FlowPeer, Protocol, Verdict};

pub fn engine(yaml: &str) -> Engine {
    engine_with(yaml, EngineConfig::default())
}

pub fn engine_with(yaml: &str, config: EngineConfig) -> Engine {
    let loaded = match load_str("test.yaml", yaml, &LoadOptions::default()) {
        Ok(l) => l,
        Err(e) => panic!("manifests failed to load: {e}"),
    };
    match Engine::compile(&loaded.cluster, config) {
        Ok((e, _)) => e,
        Err(e) => panic!("compile failed: {e}"),
    }
}

pub fn peer(s: &str) -> FlowPeer {
    match s.strip_prefix("ip:") {
        Some(ip) => FlowPeer::Ip(ip.parse().unwrap_or_else(|_| panic!("bad ip {ip}"))),
        None => FlowPeer::Endpoint(s.to_string()),
    }
}

/// Evaluates with both evaluators and returns the (common) verdict.
pub fn check(e: &Engine, from: &str, to: &str, proto: Protocol, port: u16) -> Verdict {
    let flow = Flow {
        src: peer(from),
        dst: peer(to),
        protocol: proto,
        port,
    };
    let m = maps::evaluate(e, &flow);
    let s = spec::evaluate(e.cluster(), e.rules(), e.config(), &flow);
    assert_eq!(m, s, "evaluators disagree on {flow:?}");
    m
}

pub fn allowed(e: &Engine, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    check(e, from, to, proto, port).allowed()
}

pub fn tcp(e: &Engine, from: &str, to: &str, port: u16) -> bool {
    allowed(e, from, to, Protocol::TCP, port)
}

/// The rule that decided `dir`, as `ns/name direction[index]`.
pub fn rule_of(e: &Engine, d: &Decision) -> Option<String> {
    match d {
        Decision::Allowed { rule } => e.rules().resolve(*rule).map(|r| r.to_string()),
        _ => None,
    }
}

pub mod generate;
pub mod generate_l7;
pub mod plan_check;
