//! Palisade CNI plugin library: IPAM and the plugin verbs. The enforcer protocol is the
//! `palisade-api` crate.
//!
//! The binary is a thin `main` around [`plugin::run`]; tests and fuzzers call `run` with
//! their own environment and stdin.

pub mod config;
pub mod env;
pub mod error;
pub mod install;
pub mod ipam;
pub mod link;
pub mod plugin;
pub mod result;
