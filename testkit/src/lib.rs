//! Palisade's test and demo kit: everything a test, a benchmark or the demo needs around the
//! production crates, and nothing a production binary may depend on.
//!
//! - [`node`]: a local node of network namespaces wired Calico-style, with process and
//!   traffic helpers;
//! - [`cni`]: the bundled CNI plugin invoked as a container runtime does;
//! - [`harness`]: a real `palisade-enforcer run` process on such a node, driven through the
//!   endpoint protocol (`palisade-api`);
//! - [`packet`]: crafted frames for BPF_PROG_TEST_RUN;
//! - [`privileged`]: the one privileged-test gate every crate's tests use;
//! - [`realclients`]: the real kube-apiserver + etcd and hubble of `../shared/realclients`;
//! - the `palisade-demo` binary (`./palisade demo`).
pub mod cni;
pub mod harness;
pub mod node;
pub mod packet;
pub mod privileged;
pub mod realclients;
pub mod wrk;

pub use privileged::{
    ci_requires_privileged, privileged_unavailable_reason, require_privileged, skip_or_fail,
};
