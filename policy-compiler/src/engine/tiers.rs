//! The tier model: how the rules that match one (peer, direction, protocol, port) resolve
//! into the one value the datapath finds.
//!
//! Tiers are evaluated in order, and the first that decides is the answer:
//!
//! 1. **admin** (AdminNetworkPolicy, ClusterNetworkPolicy `tier: Admin`): rules by ascending
//!    `order` (the policy's rank by priority, name and kind among those selecting the
//!    endpoint, then the rule's position). The first match decides with its action; `Pass`
//!    skips the rest of the admin tier.
//! 2. **NetworkPolicy** (NetworkPolicy, Palisade's and Cilium's policy kinds): the first
//!    matching rule by `order` decides, and the order puts actions in bands: enforced L3/L4
//!    denies, then audit denies, then rules with HTTP rules on the port (redirect to the L7
//!    proxy, whose rule set holds every matching HTTP rule, allow or deny, plus an allow-all
//!    when an L3/L4 allow also matches), then allows; inside a band the lowest rule id is
//!    named. If none matches and a policy isolates the endpoint in this direction, **default
//!    deny** (`DENY`, rule [`abi::RULE_ID_NONE`]).
//! 3. **baseline** (BaselineAdminNetworkPolicy, ClusterNetworkPolicy `tier: Baseline`): first
//!    match in the same order; `Pass` skips the rest of the tier.
//! 4. **default**: allow, rule [`abi::RULE_ID_NOT_ISOLATED`].
//!
//! Because every partition of the policy map carries this resolution for each of its
//! prefixes, plus a catch-all at the shortest prefix, the datapath's first hit is final:
//! no combine step runs in the kernel. `precedence` in the value only says which tier
//! decided (for reporting); the kernel does not compare it.

use crate::abi::{self, PolicyValue};

/// Tiers in evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    NetworkPolicy,
    Baseline,
}

impl Tier {
    /// The precedence recorded in values this tier decides.
    pub fn precedence(self) -> u16 {
        match self {
            Tier::Admin => abi::PRECEDENCE_ADMIN_MIN,
            Tier::NetworkPolicy => abi::PRECEDENCE_NETWORK_POLICY,
            Tier::Baseline => abi::PRECEDENCE_BASELINE,
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    /// Skip the rest of this tier; the next tier decides.
    Pass,
    /// Allow through the L7 proxy listening on this port (host order).
    Redirect(u16),
    /// An HTTP deny rule: send to the proxy on this port what the other rules admit (it never
    /// admits a connection by itself).
    RedirectDeny(u16),
}

/// One rule as the tier resolution sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierRule {
    pub tier: Tier,
    /// Position inside the tier: lower is evaluated first.
    pub order: u64,
    pub action: Action,
    /// A deny that is only logged (forwarded, reported as AUDIT).
    pub audit: bool,
    pub rule_id: u32,
    /// Precedence recorded when this rule decides (admin: its priority).
    pub precedence: u16,
    /// For a redirect: which port of the rule (index + 1) carries the HTTP rules; 0 otherwise.
    pub http_port: u16,
}

/// Order bands of the NetworkPolicy tier (see the module comment).
const BAND_DENY: u64 = 0;
const BAND_AUDIT_DENY: u64 = 1 << 32;
const BAND_REDIRECT: u64 = 2 << 32;
const BAND_ALLOW: u64 = 3 << 32;

impl TierRule {
    /// A NetworkPolicy allow rule.
    pub fn network_policy_allow(rule_id: u32) -> TierRule {
        TierRule {
            tier: Tier::NetworkPolicy,
            order: BAND_ALLOW | rule_id as u64,
            action: Action::Allow,
            audit: false,
            rule_id,
            precedence: Tier::NetworkPolicy.precedence(),
            http_port: 0,
        }
    }

    /// An L3/L4 deny rule of the NetworkPolicy tier; `audit` only logs it.
    pub fn network_policy_deny(rule_id: u32, audit: bool) -> TierRule {
        TierRule {
            tier: Tier::NetworkPolicy,
            order: if audit { BAND_AUDIT_DENY } else { BAND_DENY } | rule_id as u64,
            action: Action::Deny,
            audit,
            rule_id,
            precedence: Tier::NetworkPolicy.precedence(),
            http_port: 0,
        }
    }

    /// A rule with HTTP rules on one port: an allow rule sends the connection to the proxy; a
    /// deny rule (`deny`) sends what other rules admit.
    pub fn network_policy_redirect(
        rule_id: u32,
        proxy_port: u16,
        http_port: u16,
        deny: bool,
    ) -> TierRule {
        TierRule {
            tier: Tier::NetworkPolicy,
            order: BAND_REDIRECT | rule_id as u64,
            action: if deny {
                Action::RedirectDeny(proxy_port)
            } else {
                Action::Redirect(proxy_port)
            },
            audit: false,
            rule_id,
            precedence: Tier::NetworkPolicy.precedence(),
            http_port,
        }
    }

    /// The HTTP rules of an audit-mode policy on one port: like an HTTP deny rule, they send
    /// to the proxy what the other rules admit (never admitting by themselves); the proxy
    /// only reports what they would refuse.
    pub fn network_policy_audit_redirect(
        rule_id: u32,
        proxy_port: u16,
        http_port: u16,
    ) -> TierRule {
        TierRule {
            audit: true,
            ..TierRule::network_policy_redirect(rule_id, proxy_port, http_port, true)
        }
    }

    /// A rule of a policy in the admin or baseline tier: `rank` is the policy's place among the
    /// tiered policies selecting the endpoint (by priority, then name), `index` the rule's
    /// place in its direction.
    pub fn tiered(
        tier: crate::model::PolicyTier,
        rank: u64,
        index: usize,
        action: crate::model::RuleAction,
        rule_id: u32,
    ) -> TierRule {
        use crate::model::{PolicyTier, RuleAction};
        let (tier, precedence) = match tier {
            // The value records the tier, not the priority: the rule id names the policy (and
            // so its priority), and a priority change that changes no decision then writes
            // no map entry.
            PolicyTier::Admin(_) => (Tier::Admin, abi::PRECEDENCE_ADMIN_MIN),
            PolicyTier::Baseline(_) => (Tier::Baseline, abi::PRECEDENCE_BASELINE),
            PolicyTier::NetworkPolicy => (Tier::NetworkPolicy, abi::PRECEDENCE_NETWORK_POLICY),
        };
        TierRule {
            tier,
            order: (rank << 32) | index as u64,
            action: match action {
                RuleAction::Allow => Action::Allow,
                RuleAction::Deny => Action::Deny,
                RuleAction::Pass => Action::Pass,
            },
            audit: false,
            rule_id,
            precedence,
            http_port: 0,
        }
    }

    fn value(&self) -> PolicyValue {
        let (verdict, proxy_port) = match self.action {
            Action::Allow | Action::Pass => (abi::POLICY_VERDICT_ALLOW, 0),
            Action::Deny => (abi::POLICY_VERDICT_DENY, 0),
            Action::Redirect(p) | Action::RedirectDeny(p) => (abi::POLICY_VERDICT_REDIRECT, p),
        };
        PolicyValue {
            rule_id: self.rule_id,
            proxy_port_be: proxy_port.to_be(),
            precedence: self.precedence,
            verdict,
            flags: if self.audit { abi::POLICY_F_AUDIT } else { 0 },
            pad: 0,
        }
    }
}

/// The terminal value of a direction a NetworkPolicy isolates and no rule opens.
pub fn default_deny() -> PolicyValue {
    PolicyValue {
        rule_id: abi::RULE_ID_NONE,
        proxy_port_be: 0,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        verdict: abi::POLICY_VERDICT_DENY,
        flags: 0,
        pad: 0,
    }
}

/// The terminal value when no tier decides.
pub fn not_isolated() -> PolicyValue {
    PolicyValue {
        rule_id: abi::RULE_ID_NOT_ISOLATED,
        proxy_port_be: 0,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        verdict: abi::POLICY_VERDICT_ALLOW,
        flags: 0,
        pad: 0,
    }
}

/// Whether a value is the default-deny terminal (reported as `DROP_POLICY_DENIED`).
pub fn is_default_deny(v: &PolicyValue) -> bool {
    v.verdict == abi::POLICY_VERDICT_DENY && v.rule_id == abi::RULE_ID_NONE
}

/// Resolves the rules that match one flow, **sorted** by (tier, order), into the value the
/// datapath must find. `np_isolated`: a NetworkPolicy isolates this direction.
pub fn resolve<'a>(
    matching: impl IntoIterator<Item = &'a TierRule>,
    np_isolated: bool,
) -> PolicyValue {
    resolve_with_l7(matching, np_isolated).0
}

/// [`resolve`], and for a redirect that an HTTP deny rule caused, the rule that admits every
/// request of the connection at L3/L4 (the L7 set's allow-all).
///
/// HTTP deny rules never admit a connection: the value is resolved without them, and if that
/// allows (in the NetworkPolicy tier or after it: an admin-tier allow is final), the
/// connection goes to the proxy instead, so the deny rules see every request.
pub fn resolve_with_l7<'a>(
    matching: impl IntoIterator<Item = &'a TierRule>,
    np_isolated: bool,
) -> (PolicyValue, Option<u32>) {
    let mut l7_deny: Option<&TierRule> = None;
    let mut l7_audit: Option<&TierRule> = None;
    let base = resolve_base(
        matching.into_iter().filter(|r| {
            if matches!(r.action, Action::RedirectDeny(_)) {
                if r.audit {
                    l7_audit.get_or_insert(r);
                } else {
                    l7_deny.get_or_insert(r);
                }
                false
            } else {
                true
            }
        }),
        np_isolated,
    );
    // An enforced HTTP deny rule names the redirect; audit-mode HTTP rules only when nothing
    // enforced does (the value then carries POLICY_F_AUDIT: an audit-only redirect).
    let Some(d) = l7_deny.or(l7_audit) else {
        return (base, None);
    };
    if base.precedence < abi::PRECEDENCE_NETWORK_POLICY {
        return (base, None);
    }
    match base.verdict {
        abi::POLICY_VERDICT_ALLOW => (d.value(), Some(base.rule_id)),
        abi::POLICY_VERDICT_REDIRECT if d.audit => (base, None),
        abi::POLICY_VERDICT_REDIRECT => (
            PolicyValue {
                rule_id: base.rule_id.min(d.rule_id),
                ..base
            },
            None,
        ),
        _ => (base, None),
    }
}

fn resolve_base<'a>(
    matching: impl IntoIterator<Item = &'a TierRule>,
    np_isolated: bool,
) -> PolicyValue {
    let mut passed: Option<Tier> = None;
    for r in matching {
        if passed == Some(r.tier) {
            continue;
        }
        // Reaching a later tier: an isolating NetworkPolicy that matched nothing decides.
        if r.tier > Tier::NetworkPolicy && np_isolated {
            return default_deny();
        }
        match r.action {
            Action::Pass => passed = Some(r.tier),
            _ => return r.value(),
        }
    }
    if np_isolated {
        default_deny()
    } else {
        not_isolated()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn rule(tier: Tier, order: u64, action: Action, id: u32) -> TierRule {
        TierRule {
            tier,
            order,
            action,
            audit: false,
            rule_id: id,
            precedence: tier.precedence(),
            http_port: 0,
        }
    }

    #[test]
    fn tiers_decide_in_order() {
        let admin_deny = rule(Tier::Admin, 1, Action::Deny, 40);
        let admin_pass = rule(Tier::Admin, 0, Action::Pass, 41);
        let np_allow = TierRule::network_policy_allow(16);
        let base_deny = rule(Tier::Baseline, 0, Action::Deny, 50);
        // Admin deny beats a NetworkPolicy allow.
        let v = resolve([&admin_deny, &np_allow], true);
        assert_eq!((v.verdict, v.rule_id), (abi::POLICY_VERDICT_DENY, 40));
        // Pass skips the rest of the admin tier: the NetworkPolicy decides.
        let v = resolve([&admin_pass, &admin_deny, &np_allow], true);
        assert_eq!((v.verdict, v.rule_id), (abi::POLICY_VERDICT_ALLOW, 16));
        // Isolated, no NetworkPolicy rule: default deny even with a baseline allow.
        let base_allow = rule(Tier::Baseline, 0, Action::Allow, 51);
        assert!(is_default_deny(&resolve([&base_allow], true)));
        // Not isolated: baseline decides; nothing at all: not isolated.
        let v = resolve([&base_deny], false);
        assert_eq!((v.verdict, v.rule_id), (abi::POLICY_VERDICT_DENY, 50));
        assert_eq!(resolve([], false), not_isolated());
        assert!(is_default_deny(&resolve([], true)));
    }
}
