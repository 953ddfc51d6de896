//! What `status` answers ([`Health`]) and the reconcile backoff ([`Backoff`]).

use super::*;
use policy_compiler::plan::capacity::{Capacity, Usage};

/// What `status` reports, kept apart from [`State`] so answering never waits for a
/// registration or a map write in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Registered endpoints.
    pub endpoints: u32,
    /// A map update failed partway and the maps have not been reconciled since: every
    /// flow is decided by the old or the new policy, but which one is not known per flow.
    pub dirty: bool,
    /// Map updates (plans or reconciles) that failed since the start.
    pub failed_updates: u64,
    /// Successful reconciles after a failure since the start.
    pub reconciles: u64,
    /// The last failure, while dirty.
    pub last_error: Option<String>,
    /// The last update refused because it would not fit the maps (nothing written, the
    /// last good policy enforced); cleared by the next update that is applied.
    pub rejected: Option<String>,
    /// Why the CNI network configuration is not written (no pod can start on the node),
    /// while it is not; `None` once written or when the agent writes none.
    pub cni: Option<String>,
    /// Why the L7 proxy does not take redirected connections (every flow an HTTP rule
    /// redirects is dropped), while it does not; `None` when it runs or none is configured.
    pub l7_proxy: Option<String>,
    /// Entries the maps hold (the sync layer's mirror) and their capacities.
    pub usage: Usage,
    pub capacity: Capacity,
}

impl Health {
    /// Ready unless the maps are dirty.
    pub fn ready(&self) -> bool {
        !self.dirty
    }

    /// Standing problems for `status` warnings: a refused update, the CNI network
    /// configuration not written.
    pub fn warnings(&self) -> Vec<String> {
        self.rejected
            .iter()
            .map(|e| format!("update refused, still enforcing the last good policy: {e}"))
            .chain(self.cni.iter().map(|e| {
                format!("CNI network configuration not written, no pod can start on this node: {e}")
            }))
            .chain(self.l7_proxy.iter().map(|e| {
                format!("L7 proxy not running, flows HTTP rules redirect are dropped: {e}")
            }))
            .collect()
    }

    /// Entries / capacity per map, for `status`.
    pub fn pressure(&self) -> Vec<String> {
        let line = |name: &str, n: usize, cap: usize| {
            format!(
                "{name} {n}/{cap} ({:.1}%)",
                100.0 * n as f64 / cap.max(1) as f64
            )
        };
        vec![
            line(
                abi::map_name::POLICY,
                self.usage.policy,
                self.capacity.policy,
            ),
            line(
                abi::map_name::IPCACHE,
                self.usage.ipcache,
                self.capacity.ipcache,
            ),
            line(
                abi::map_name::ENDPOINTS,
                self.usage.endpoints,
                self.capacity.endpoints,
            ),
        ]
    }

    /// Why the agent is not ready, for `status`.
    pub fn reason(&self) -> Option<String> {
        self.dirty.then(|| {
            format!(
                "a map update failed and the maps are not reconciled yet ({} failed updates \
                 so far; reconcile retrying with backoff): {}",
                self.failed_updates,
                self.last_error.as_deref().unwrap_or("unknown error")
            )
        })
    }
}

/// Delays between reconcile attempts after a failed map update: doubling from `first`
/// up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// First and longest wait between reconcile attempts.
pub(super) const RECONCILE_FIRST: Duration = Duration::from_millis(100);
pub(super) const RECONCILE_MAX: Duration = Duration::from_secs(30);

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn health_is_not_ready_with_the_reason_while_dirty() {
        let mut h = Health {
            endpoints: 3,
            ..Health::default()
        };
        assert!(h.ready());
        assert_eq!(h.reason(), None);
        h.dirty = true;
        h.failed_updates = 2;
        h.last_error = Some("map operation 4 of 9 failed (write pal_policy): ENOSPC".into());
        assert!(!h.ready());
        let reason = h.reason().unwrap();
        assert!(
            reason.contains("2 failed updates")
                && reason.contains("map operation 4 of 9 failed")
                && reason.contains("reconcile retrying"),
            "{reason}"
        );
    }

    /// A refused update leaves the agent ready with a warning; pressure reads the mirror's
    /// counts against the capacities.
    #[test]
    fn a_refused_update_is_a_warning_and_pressure_is_entries_over_capacity() {
        let mut h = Health {
            usage: Usage {
                policy: 3,
                ipcache: 0,
                endpoints: 1,
                ..Usage::default()
            },
            capacity: Capacity {
                policy: 4,
                ipcache: 8,
                endpoints: 2,
                ..Capacity::default()
            },
            ..Health::default()
        };
        assert!(h.warnings().is_empty());
        h.rejected = Some("the policy set does not fit the pal_policy map".into());
        assert!(h.ready());
        assert_eq!(
            h.warnings(),
            [
                "update refused, still enforcing the last good policy: the policy set does not \
              fit the pal_policy map"
            ]
        );
        h.cni = Some("ipam.subnet: \"10.0.0.0/7\": prefix shorter than /8".into());
        assert_eq!(
            h.warnings()[1],
            "CNI network configuration not written, no pod can start on this node: \
             ipam.subnet: \"10.0.0.0/7\": prefix shorter than /8"
        );
        assert_eq!(
            h.pressure(),
            [
                "pal_policy 3/4 (75.0%)",
                "pal_ipcache 0/8 (0.0%)",
                "pal_endpoints 1/2 (50.0%)"
            ]
        );
    }
}
