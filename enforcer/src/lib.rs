//! Palisade node agent.
pub mod api;
pub mod config;
pub mod flowlog;
pub mod source;
pub mod node;
pub mod datapath;
pub mod sync;
pub mod daemon;
pub mod demo;
pub mod harness;
