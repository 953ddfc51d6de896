//! Palisade's L7 policy, pure part: HTTP request normalization and rule matching.
//!
//! `policy-test` and the in-process proxy use exactly this code, so the offline answer is the
//! live answer. The pieces, in the order a request meets them:
//! - [`request::normalize`]: method, host and the request target in one normalized form
//!   ([`path`] has the path rules);
//! - [`matcher::RuleSet::decide`]: deny rules first, then allow rules, else denied by default;
//! - [`pattern`]: the limits every untrusted regular expression passes before it is compiled;
//! - `proxy` (feature `proxy`, tokio): the connection loop that reads requests with
//!   [`http1`], judges each with the rules in force, forwards the allowed ones and relays the
//!   responses.

pub mod http1;
pub mod matcher;
pub mod path;
pub mod pattern;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod request;
pub mod rules;

pub use matcher::{Decision, Mismatch, RuleError, RuleProblem, RuleSet, RuleTrace};
pub use path::{NormalizeOptions, NormalizedTarget, PathError, SemicolonMode, normalize_target};
pub use pattern::PatternError;
pub use request::{Host, NormalizedRequest, RequestError, RequestHead, normalize};
pub use rules::{HeaderMatch, HttpRule, L7Action, RuleEntry};
