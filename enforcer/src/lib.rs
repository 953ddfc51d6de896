//! Palisade node agent.
pub mod api;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod flowlog;
pub mod harness;
pub mod node;
pub mod source;
pub mod sync;
