//! Palisade node agent.
pub mod api;
pub mod config;
pub mod flowlog;
pub mod source;
