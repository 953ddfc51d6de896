//! Palisade CNI plugin library: the enforcer API types, IPAM and the plugin verbs.
//!
//! The binary is a thin `main` around [`plugin::run`]; tests and fuzzers call `run` with
//! their own environment and stdin.

pub mod api;
pub mod config;
pub mod enforcer;
pub mod env;
pub mod error;
pub mod ipam;
pub mod link;
pub mod plugin;
pub mod result;
