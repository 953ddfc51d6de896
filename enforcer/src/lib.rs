//! Palisade node agent.
pub mod api;
pub mod cniconf;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod lock;
pub mod logging;
pub mod maps;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod source;
pub mod sync;
