//! Label selectors as the compiler evaluates them, and the identity label filter.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::k8s::{LabelSelector, Labels};

/// A validated label selector. `matchLabels` and `matchExpressions` are ANDed; an empty
/// selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    /// Sorted, without duplicates. A vector, not a set: most requirements hold one value,
    /// and a one-element tree costs a few hundred bytes per selector (large policy sets
    /// hold hundreds of thousands of selectors).
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Converts an API selector that has already passed validation. Requirements are sorted
    /// so equal selectors written differently share one selector-cache entry.
    pub fn from_api(sel: &LabelSelector) -> Selector {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: k.clone(),
                op: Operator::In,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let op = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                _ => Operator::DoesNotExist,
            };
            requirements.push(Requirement {
                key: e.key.clone(),
                op,
                values: {
                    let mut v: Vec<String> = e.values.iter().flatten().cloned().collect();
                    v.sort();
                    v.dedup();
                    v
                },
            });
        }
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Label keys this selector looks at.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|r| r.key.as_str())
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Operator::In => {
                v.is_some_and(|v| self.values.binary_search_by(|x| x.as_str().cmp(v)).is_ok())
            }
            Operator::NotIn => {
                v.is_none_or(|v| self.values.binary_search_by(|x| x.as_str().cmp(v)).is_err())
            }
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

impl std::fmt::Display for Selector {
    /// kubectl-style: `app=web,tier in (a,b),!debug`; `{}` for the empty selector.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let vals = r.values.join(",");
                match r.op {
                    Operator::In if r.values.len() == 1 => format!("{}={}", r.key, vals),
                    Operator::In => format!("{} in ({})", r.key, vals),
                    Operator::NotIn => format!("{} notin ({})", r.key, vals),
                    Operator::Exists => r.key.clone(),
                    Operator::DoesNotExist => format!("!{}", r.key),
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Which pod labels carry security meaning. Labels that change on every rollout
/// (`pod-template-hash`, `controller-revision-hash`, ...) would split one workload into
/// several identities and churn the maps, so they are excluded from identities; a selector
/// on an excluded key therefore never matches (policy-test warns about it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelFilter {
    /// Exact keys dropped from identities.
    pub excluded_keys: BTreeSet<String>,
}

pub const DEFAULT_EXCLUDED_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
];

impl Default for LabelFilter {
    fn default() -> Self {
        LabelFilter {
            excluded_keys: DEFAULT_EXCLUDED_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl LabelFilter {
    pub fn none() -> Self {
        LabelFilter {
            excluded_keys: BTreeSet::new(),
        }
    }

    pub fn apply(&self, labels: &Labels) -> Labels {
        labels
            .iter()
            .filter(|(k, _)| !self.excluded_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn excludes(&self, key: &str) -> bool {
        self.excluded_keys.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|s| s.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(Selector::from_api(&expr("app", "In", &["web", "db"])).matches(&l));
        assert!(!Selector::from_api(&expr("app", "In", &["db"])).matches(&l));
        assert!(!Selector::from_api(&expr("app", "NotIn", &["web"])).matches(&l));
        // NotIn matches when the key is absent.
        assert!(Selector::from_api(&expr("zone", "NotIn", &["a"])).matches(&l));
        assert!(Selector::from_api(&expr("tier", "Exists", &[])).matches(&l));
        assert!(!Selector::from_api(&expr("zone", "Exists", &[])).matches(&l));
        assert!(Selector::from_api(&expr("zone", "DoesNotExist", &[])).matches(&l));
        assert!(!Selector::from_api(&expr("app", "DoesNotExist", &[])).matches(&l));
    }

    #[test]
    fn empty_selector_matches_everything_and_equal_selectors_are_equal() {
        assert!(Selector::everything().matches(&Labels::new()));
        let a = LabelSelector {
            match_labels: Some(labels(&[("a", "1")])),
            match_expressions: None,
        };
        let b = expr("a", "In", &["1"]);
        assert_eq!(Selector::from_api(&a), Selector::from_api(&b));
        assert_eq!(Selector::from_api(&a).to_string(), "a=1");
    }

    #[test]
    fn filter_drops_rollout_labels_only() {
        let f = LabelFilter::default();
        let l = f.apply(&labels(&[("app", "web"), ("pod-template-hash", "abc")]));
        assert_eq!(l, labels(&[("app", "web")]));
    }
}
