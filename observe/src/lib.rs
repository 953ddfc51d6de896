//! The verdict log as a record format: its schema ([`schema`], shared with the enforcer's
//! renderer), its hash chain and signed checkpoints ([`chain`]), the files of a rotated log
//! ([`files`]), and verification ([`verify`]). The `palisade-observe` binary (`palisade
//! observe`) queries, summarizes and verifies logs with these.

pub mod chain;
pub mod files;
pub mod output;
pub mod query;
pub mod schema;
pub mod summary;
pub mod time;
pub mod verify;
