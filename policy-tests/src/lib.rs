//! `policy-test`: evaluate traffic scenarios, reachability matrices, connection lists,
//! explanations and diffs against Palisade policies offline.
//!
//! Every answer comes from the policy core's map-level evaluator
//! ([`policy_compiler::eval::maps`]): the same lookups the datapath performs on the same
//! compiled maps, so what this tool says is what the kernel would do.

pub mod analysis;
pub mod capacity;
pub mod connections;
pub mod corpus;
pub mod diff;
pub mod error;
pub mod explain;
pub mod l7;
pub mod matrix;
pub mod output;
mod par;
pub mod portset;
pub mod scenario;
pub mod suggest;

pub use analysis::{Analysis, Options, Workload};
pub use error::{EndpointError, InputError};
