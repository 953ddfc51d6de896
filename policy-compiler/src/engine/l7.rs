//! The L7 rule table: for every policy-map entry that redirects to the proxy, the HTTP rules
//! that decide a request on it.
//!
//! The entry is found exactly as the datapath finds it (exact peer, else any peer; longest port
//! prefix), so the proxy and `policy-test` look the rules up by that entry's key. The set holds,
//! in rule-id order, every matching rule of the NetworkPolicy tier that has HTTP rules on the
//! port (allow and deny rules alike) and, when an L3/L4 allow rule also matches the peer and
//! port, an allow-all rule for that peer (union semantics: the L4 rule allows every request
//! of that peer; deny rules still apply). A rule with HTTP rules for peers A and B plus an
//! allow-all rule for A therefore keeps HTTP rules enforced for B, and an L3/L4 allow of a
//! port range keeps the HTTP rules of one port in it enforced (both are tested).

use palisade_l7proxy::{Decision as L7Decision, HttpRule, L7Action, RuleEntry, RuleSet};
use serde::Serialize;

use super::tiers::{Action, Tier, TierRule};
use super::*;
use crate::model::RuleAction;
use crate::rules::RuleRef;

/// One rule's HTTP rules on one of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct L7Ref {
    pub rule_id: u32,
    /// Index + 1 of the rule's port that carries the HTTP rules.
    pub http_port: u16,
}

/// The HTTP rules of one redirecting policy-map entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct L7Set {
    pub rules: Vec<L7Ref>,
    /// The L3/L4 allow rule that lets every request of this peer through (deny rules still
    /// apply), if one matches.
    pub allow_all: Option<u32>,
    /// HTTP rules of audit-mode policies: judged on their own, what they would refuse is
    /// reported and forwarded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<L7Ref>,
}

impl L7Set {
    /// The set of an entry from the rules that matched it, sorted by (tier, order);
    /// `allow_all`: the rule that admitted the connection when only HTTP deny rules redirect it.
    pub(super) fn from_matching(matching: &[&TierRule], allow_all: Option<u32>) -> L7Set {
        let mut set = L7Set {
            rules: Vec::new(),
            allow_all,
            audit: Vec::new(),
        };
        for r in matching.iter().filter(|r| r.tier == Tier::NetworkPolicy) {
            match r.action {
                Action::RedirectDeny(_) if r.audit => set.audit.push(L7Ref {
                    rule_id: r.rule_id,
                    http_port: r.http_port,
                }),
                Action::Redirect(_) | Action::RedirectDeny(_) => set.rules.push(L7Ref {
                    rule_id: r.rule_id,
                    http_port: r.http_port,
                }),
                Action::Allow if set.allow_all.is_none() => set.allow_all = Some(r.rule_id),
                _ => {}
            }
        }
        set.rules.sort_unstable();
        set.rules.dedup();
        set.audit.sort_unstable();
        set.audit.dedup();
        set
    }
}

/// Who decided a request: the policy rule and, for an HTTP rule, its index in the port's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct L7Origin {
    pub rule_id: u32,
    /// `None` for the allow-all of an L3/L4 allow rule.
    pub http_index: Option<usize>,
}

/// An L7 set compiled for matching, with the origin of each entry.
#[derive(Debug, Clone)]
pub struct CompiledL7 {
    pub rules: RuleSet,
    /// Indexed by the id of each [`RuleEntry`].
    pub origins: Vec<L7Origin>,
    /// The audit-mode policies' HTTP rules, when the set has any.
    pub audit: Option<AuditL7>,
}

/// Audit-mode HTTP rules compiled for matching: judged as if enforced, on their own.
#[derive(Debug, Clone)]
pub struct AuditL7 {
    pub rules: RuleSet,
    pub origins: Vec<L7Origin>,
    /// The first allow rule's policy rule, when any of them is an allow rule (then a request
    /// none allows would be refused, and this names the policy whose allow list it is outside;
    /// deny rules alone refuse only what they match).
    pub allows: Option<u32>,
}

impl CompiledL7 {
    /// The decision for a normalized request and the rule that made it.
    pub fn decide(
        &self,
        req: &palisade_l7proxy::NormalizedRequest,
    ) -> (L7Decision, Option<L7Origin>) {
        let d = self.rules.decide(req);
        let origin = match d {
            L7Decision::Allow { rule } | L7Decision::Deny { rule } => {
                self.origins.get(rule as usize).copied()
            }
            _ => None,
        };
        (d, origin)
    }

    /// What the audit-mode rules would do to a request the enforced rules forward: `Some`
    /// with their refusal and the rule that made it (for "no allow rule matches", the first
    /// audit rule with allow rules, without an HTTP rule index).
    pub fn audit_refusal(
        &self,
        req: &palisade_l7proxy::NormalizedRequest,
    ) -> Option<(L7Decision, Option<L7Origin>)> {
        let a = self.audit.as_ref()?;
        let d = a.rules.decide(req);
        let origin = match d {
            L7Decision::Allow { .. } => return None,
            L7Decision::NoMatch => Some(L7Origin {
                rule_id: a.allows?,
                http_index: None,
            }),
            L7Decision::Deny { rule } => a.origins.get(rule as usize).copied(),
            _ => None,
        };
        Some((d, origin))
    }
}

impl Engine {
    /// One line for an L7 set: `GET /api/v1/data; deny DELETE /admin/.*; any request`.
    pub fn l7_summary(&self, set: &L7Set) -> String {
        let mut parts = Vec::new();
        for r in &set.rules {
            match self.http_rules_of(r.rule_id, r.http_port) {
                Some((action, rules)) => {
                    for h in rules {
                        parts.push(match action {
                            RuleAction::Allow => h.summary(),
                            RuleAction::Deny => format!("deny {}", h.summary()),
                            // Tiered kinds carry no HTTP rules; a Pass rule never reaches here.
                            RuleAction::Pass => format!("pass {}", h.summary()),
                        });
                    }
                }
                None => parts.push(format!("rule #{} (gone)", r.rule_id)),
            }
        }
        if set.allow_all.is_some() {
            parts.push("any other request".to_string());
        }
        parts.join("; ")
    }

    /// The HTTP rules of one rule's port, with the rule's action.
    pub fn http_rules_of(&self, rule_id: u32, http_port: u16) -> Option<(RuleAction, &[HttpRule])> {
        let RuleRef {
            policy,
            direction,
            index,
        } = self.rules.resolve(rule_id)?;
        let st = self.policies.get(policy)?;
        let rule = st.policy.rules(*direction)?.get(*index)?;
        let port = rule.ports.get(usize::from(http_port).checked_sub(1)?)?;
        Some((rule.action, port.http.as_deref()?))
    }

    /// Compiles an entry's L7 set for matching. A rule that can no longer be resolved, or rules
    /// that do not compile, give a set that denies every request (fail closed).
    pub fn compile_l7(&self, set: &L7Set) -> CompiledL7 {
        compile_l7_with(set, |id, port| self.http_rules_of(id, port))
    }
}

/// [`Engine::compile_l7`] with the HTTP rules looked up by `resolve` (rule id, port index + 1).
pub fn compile_l7_with<'a>(
    set: &L7Set,
    resolve: impl Fn(u32, u16) -> Option<(RuleAction, &'a [HttpRule])>,
) -> CompiledL7 {
    let (mut entries, mut origins, broken) = entries_of(&set.rules, &resolve);
    let audit = (!set.audit.is_empty()).then(|| {
        let (entries, origins, broken) = entries_of(&set.audit, &resolve);
        let allows = entries
            .iter()
            .zip(&origins)
            .find(|(e, _)| e.action == L7Action::Allow)
            .map(|(_, o)| o.rule_id);
        match (broken, RuleSet::compile(entries)) {
            (false, Ok(rules)) => AuditL7 {
                rules,
                origins,
                allows,
            },
            // Rules that cannot be read or compiled: every request would be refused.
            _ => AuditL7 {
                rules: RuleSet::empty(),
                origins: Vec::new(),
                allows: set.audit.first().map(|r| r.rule_id),
            },
        }
    });
    if let Some(rule_id) = set.allow_all {
        entries.push(RuleEntry {
            id: origins.len() as u32,
            action: L7Action::Allow,
            rule: HttpRule::any(),
        });
        origins.push(L7Origin {
            rule_id,
            http_index: None,
        });
    }
    let rules = if broken {
        None
    } else {
        RuleSet::compile(entries).ok()
    };
    match rules {
        Some(rules) => CompiledL7 {
            rules,
            origins,
            audit,
        },
        None => CompiledL7 {
            rules: RuleSet::empty(),
            origins: Vec::new(),
            audit,
        },
    }
}

/// The matcher entries of some rules' HTTP rules (ids in order), their origins, and whether
/// a rule could not be resolved.
fn entries_of<'a>(
    refs: &[L7Ref],
    resolve: &impl Fn(u32, u16) -> Option<(RuleAction, &'a [HttpRule])>,
) -> (Vec<RuleEntry>, Vec<L7Origin>, bool) {
    let mut entries = Vec::new();
    let mut origins = Vec::new();
    let mut broken = false;
    for r in refs {
        match resolve(r.rule_id, r.http_port) {
            Some((action, rules)) => {
                let action = match action {
                    RuleAction::Allow => L7Action::Allow,
                    // No kind puts HTTP rules on a Pass rule; deny if one ever did (fail closed).
                    RuleAction::Deny | RuleAction::Pass => L7Action::Deny,
                };
                for (i, rule) in rules.iter().enumerate() {
                    entries.push(RuleEntry {
                        id: origins.len() as u32,
                        action,
                        rule: rule.clone(),
                    });
                    origins.push(L7Origin {
                        rule_id: r.rule_id,
                        http_index: Some(i),
                    });
                }
            }
            None => broken = true,
        }
    }
    (entries, origins, broken)
}
