//! Services: what a connection to a service address reaches. Pure (no kernel, no I/O): the
//! datapath's service maps and `policy-test`'s predictions are both built from here.
//!
//! - [`jhash`]: the kernel's lookup3 hash, which the datapath uses for flow hashing;
//! - [`maglev`]: Maglev lookup tables (backend selection with minimal disruption);
//! - [`backends`]: a service's frontends and backends, derived from its selector and pods.

pub mod backends;
pub mod jhash;
pub mod maglev;
