//! Palisade's policy core.
//!
//! Manifests ([`manifest`]) become a cluster model ([`model`]); endpoints get numeric
//! security identities ([`identity`]); policy selectors resolve to identity sets
//! ([`selector`]); the [`engine`] compiles every endpoint's policy into the entries of its
//! BPF policy map (layout in [`abi`], mirrored from `ebpf/include/palisade_abi.h`) and
//! turns changes into map diffs. Two evaluators answer "is this flow allowed, and by which
//! rule?": [`eval::spec`] interprets the policies directly, [`eval::maps`] performs the
//! datapath's lookups on the compiled maps. They must always agree.

/// The datapath ABI mirror, re-exported so `policy_compiler::abi` keeps working.
pub use palisade_abi as abi;
mod abi_serde;
pub mod cidr;
pub mod engine;
pub mod eval;
pub mod hash;
pub mod identity;
pub mod k8s;
pub mod labels;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod rules;
pub mod selector;
pub mod services;
pub mod validate;

pub use engine::{Change, CompiledPolicy, Engine, EngineConfig, EntryKey, MapDiff};
pub use eval::{Decision, Flow, FlowPeer, Verdict};
pub use model::{Cluster, Direction, Protocol};
