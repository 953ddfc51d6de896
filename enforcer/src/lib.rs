//! Palisade node agent.
pub mod api;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod flowlog;
pub mod source;
pub mod sync;
