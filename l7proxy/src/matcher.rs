//! A compiled rule set for one (endpoint, direction, port, peer): the decision for a request.
//!
//! Deny beats allow: when any deny rule matches, the first deny rule (in rule order) decides;
//! otherwise the first matching allow rule allows; otherwise nothing allows the request and it is
//! denied (403) by default. A request carrying a header that some rule of the set refers to more
//! than once is ambiguous (which value would a backend read?) and is refused (400).
//!
//! Methods, paths and hosts of all rules are each searched in one pass of a multi-pattern
//! automaton, so the cost grows with the request, not with the number of rules; header
//! conditions are checked only on the rules that survived those three.

use std::collections::HashMap;

use crate::pattern::{self, Pattern, PatternError, PatternSetMatcher};
use crate::request::{NormalizedRequest, is_token};
use crate::rules::{HttpRule, L7Action, RuleEntry};

/// Why a rule set could not be compiled; names the rule (index in the set) and its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {problem}", rule.map(|r| format!("rule {r}: ")).unwrap_or_default())]
pub struct RuleError {
    /// Index of the rule in the set; `None` for a limit of the whole set.
    pub rule: Option<usize>,
    /// `method`, `path`, `host`, `headers[2].regex`, …
    pub field: String,
    pub problem: RuleProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("{name:?} is not a valid header name")]
    HeaderName { name: String },
    #[error("give either value or regex, not both")]
    ValueAndRegex,
    #[error("{count} rules in one set, over the limit of {limit}")]
    TooManyRules { count: usize, limit: usize },
}

/// Most rules in one set (one endpoint, direction, port and peer).
pub const MAX_RULES: usize = 4096;

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An allow rule matched and no deny rule did.
    Allow { rule: u32 },
    /// A deny rule matched (403).
    Deny { rule: u32 },
    /// No rule matched: denied by default (403).
    NoMatch,
    /// The request is ambiguous for this rule set (400): a header a rule refers to is repeated.
    Ambiguous,
    /// The matcher could not search a field of this request: denied (403), never allowed.
    MatchFailed,
}

/// A field could not be searched (see [`PatternSetMatcher::matches`]).
#[derive(Debug, Clone, Copy)]
struct MatchFailed;

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The HTTP status the proxy answers with when it does not forward.
    pub fn status(&self) -> Option<u16> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { .. } | Decision::NoMatch | Decision::MatchFailed => Some(403),
            Decision::Ambiguous => Some(400),
        }
    }
}

/// Why one rule did or did not match, for `policy-test explain` and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    pub id: u32,
    pub action: L7Action,
    /// `None` when the rule matched; else the first field that did not.
    pub mismatch: Option<Mismatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `method`, `path`, `host` or `headers[i]`.
    pub field: String,
    /// The condition, e.g. the regex source.
    pub wanted: String,
    /// What the normalized request had (`<absent>` when the field was missing).
    pub saw: String,
}

#[derive(Debug, Clone)]
enum HeaderCond {
    Present,
    Exact(Vec<u8>),
    Regex(Pattern),
}

#[derive(Debug, Clone)]
struct CompiledHeader {
    name: String,
    cond: HeaderCond,
}

/// One field (method, path or host) of every rule, searched in one pass.
#[derive(Debug, Clone)]
struct Field {
    set: PatternSetMatcher,
    /// For each pattern, the rules that use it.
    pattern_rules: Vec<Vec<usize>>,
    /// Rules without a condition on this field.
    unconstrained: Vec<u64>,
}

impl Field {
    fn build(
        name: &str,
        rules: &[RuleEntry],
        words: usize,
        get: impl Fn(&HttpRule) -> Option<&String>,
    ) -> Result<Field, RuleError> {
        let mut forms: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut pattern_rules: Vec<Vec<usize>> = Vec::new();
        let mut unconstrained = vec![0u64; words];
        for (i, entry) in rules.iter().enumerate() {
            match get(&entry.rule) {
                None => set_bit(&mut unconstrained, i),
                Some(src) => {
                    let form = pattern::check(src).map_err(|p| RuleError {
                        rule: Some(i),
                        field: name.to_string(),
                        problem: p.into(),
                    })?;
                    let at = *index.entry(form.clone()).or_insert_with(|| {
                        forms.push(form);
                        pattern_rules.push(Vec::new());
                        forms.len() - 1
                    });
                    pattern_rules[at].push(i);
                }
            }
        }
        let set = PatternSetMatcher::new(&forms).map_err(|p| RuleError {
            rule: None,
            field: name.to_string(),
            problem: p.into(),
        })?;
        Ok(Field {
            set,
            pattern_rules,
            unconstrained,
        })
    }

    /// Rules whose condition on this field holds for any of `values`; `Err` when the
    /// automaton could not search one of them (the caller denies).
    fn matching(&self, values: &[&[u8]], out: &mut [u64]) -> Result<(), MatchFailed> {
        out.copy_from_slice(&self.unconstrained);
        for v in values {
            self.set
                .matches(v, |p| {
                    for &r in &self.pattern_rules[p] {
                        set_bit(out, r);
                    }
                })
                .map_err(|_| MatchFailed)?;
        }
        Ok(())
    }
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn has_bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// A compiled, ordered set of HTTP rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    entries: Vec<RuleEntry>,
    words: usize,
    deny: Vec<u64>,
    method: Field,
    path: Field,
    host: Field,
    headers: Vec<Vec<CompiledHeader>>,
    /// Lower-cased names of every header some rule refers to.
    referenced: Vec<String>,
}

impl RuleSet {
    /// A set without rules: every request is denied by default ([`Decision::NoMatch`]).
    pub fn empty() -> RuleSet {
        let field = || Field {
            set: PatternSetMatcher::empty(),
            pattern_rules: Vec::new(),
            unconstrained: vec![0],
        };
        RuleSet {
            entries: Vec::new(),
            words: 1,
            deny: vec![0],
            method: field(),
            path: field(),
            host: field(),
            headers: Vec::new(),
            referenced: Vec::new(),
        }
    }

    /// Compile rules in order. Every pattern is checked against the limits of
    /// [`crate::pattern`]; the first problem is returned with the rule and field it is in.
    pub fn compile(entries: Vec<RuleEntry>) -> Result<RuleSet, RuleError> {
        if entries.len() > MAX_RULES {
            return Err(RuleError {
                rule: None,
                field: "rules".to_string(),
                problem: RuleProblem::TooManyRules {
                    count: entries.len(),
                    limit: MAX_RULES,
                },
            });
        }
        let words = entries.len().div_ceil(64).max(1);
        let mut deny = vec![0u64; words];
        let mut headers = Vec::with_capacity(entries.len());
        let mut referenced: Vec<String> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.action == L7Action::Deny {
                set_bit(&mut deny, i);
            }
            let mut compiled = Vec::with_capacity(e.rule.headers.len());
            for (h, m) in e.rule.headers.iter().enumerate() {
                let err = |field: &str, problem: RuleProblem| RuleError {
                    rule: Some(i),
                    field: format!("headers[{h}].{field}"),
                    problem,
                };
                if !is_token(&m.name) {
                    return Err(err(
                        "name",
                        RuleProblem::HeaderName {
                            name: m.name.clone(),
                        },
                    ));
                }
                let cond = match (&m.value, &m.regex) {
                    (Some(_), Some(_)) => return Err(err("regex", RuleProblem::ValueAndRegex)),
                    (Some(v), None) => HeaderCond::Exact(v.trim().as_bytes().to_vec()),
                    (None, Some(r)) => {
                        HeaderCond::Regex(Pattern::new(r).map_err(|p| err("regex", p.into()))?)
                    }
                    (None, None) => HeaderCond::Present,
                };
                let name = m.name.to_ascii_lowercase();
                if !referenced.contains(&name) {
                    referenced.push(name.clone());
                }
                compiled.push(CompiledHeader { name, cond });
            }
            headers.push(compiled);
        }
        let method = Field::build("method", &entries, words, |r| r.method.as_ref())?;
        let path = Field::build("path", &entries, words, |r| r.path.as_ref())?;
        let host = Field::build("host", &entries, words, |r| r.host.as_ref())?;
        Ok(RuleSet {
            entries,
            words,
            deny,
            method,
            path,
            host,
            headers,
            referenced,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[RuleEntry] {
        &self.entries
    }

    /// The decision for a normalized request.
    pub fn decide(&self, req: &NormalizedRequest) -> Decision {
        if self.is_ambiguous(req) {
            return Decision::Ambiguous;
        }
        let cand = match self.candidates(req) {
            Ok(Some(c)) => c,
            Ok(None) => return Decision::NoMatch,
            Err(MatchFailed) => return Decision::MatchFailed,
        };
        let pick = |mask: &dyn Fn(usize) -> u64| -> Option<u32> {
            for w in 0..self.words {
                let mut bits = mask(w);
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if self.headers_hold(i, req).is_none() {
                        return Some(self.entries[i].id);
                    }
                }
            }
            None
        };
        if let Some(rule) = pick(&|w| cand[w] & self.deny[w]) {
            return Decision::Deny { rule };
        }
        if let Some(rule) = pick(&|w| cand[w] & !self.deny[w]) {
            return Decision::Allow { rule };
        }
        Decision::NoMatch
    }

    /// Each rule's outcome, in rule order, with the first field that failed.
    pub fn explain(&self, req: &NormalizedRequest) -> Vec<RuleTrace> {
        let mut m = vec![0u64; self.words];
        let mut p = vec![0u64; self.words];
        let mut h = vec![0u64; self.words];
        // A field that cannot be searched leaves its bits clear: every rule is reported as not
        // matching on it, as `decide` denies.
        let _ = self.method.matching(&[req.method.as_bytes()], &mut m);
        let _ = self.path.matching(&[req.target.path.as_bytes()], &mut p);
        let host_values = host_values(req);
        let host_refs: Vec<&[u8]> = host_values.iter().map(|s| s.as_bytes()).collect();
        let _ = self.host.matching(&host_refs, &mut h);
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mismatch = if !has_bit(&m, i) {
                    Some(field_mismatch(
                        "method",
                        e.rule.method.as_ref(),
                        &req.method,
                    ))
                } else if !has_bit(&p, i) {
                    Some(field_mismatch(
                        "path",
                        e.rule.path.as_ref(),
                        &req.target.path,
                    ))
                } else if !has_bit(&h, i) {
                    let saw = host_values
                        .last()
                        .cloned()
                        .unwrap_or_else(|| "<absent>".to_string());
                    Some(field_mismatch("host", e.rule.host.as_ref(), &saw))
                } else {
                    self.headers_hold(i, req)
                };
                RuleTrace {
                    id: e.id,
                    action: e.action,
                    mismatch,
                }
            })
            .collect()
    }

    /// The repeated header that makes a request ambiguous for this set, if any.
    pub fn ambiguous_header(&self, req: &NormalizedRequest) -> Option<&str> {
        self.referenced
            .iter()
            .find(|name| req.header_values(name).nth(1).is_some())
            .map(String::as_str)
    }

    fn is_ambiguous(&self, req: &NormalizedRequest) -> bool {
        self.ambiguous_header(req).is_some()
    }

    /// Rules whose method, path and host hold; `None` when there are none.
    fn candidates(&self, req: &NormalizedRequest) -> Result<Option<Vec<u64>>, MatchFailed> {
        let mut cand = vec![0u64; self.words];
        let mut tmp = vec![0u64; self.words];
        self.method.matching(&[req.method.as_bytes()], &mut cand)?;
        if is_zero(&cand) {
            return Ok(None);
        }
        self.path
            .matching(&[req.target.path.as_bytes()], &mut tmp)?;
        if !and_into(&mut cand, &tmp) {
            return Ok(None);
        }
        match &req.host {
            None => {
                tmp.copy_from_slice(&self.host.unconstrained);
            }
            Some(h) => match h.with_port() {
                Some(with_port) => self
                    .host
                    .matching(&[h.name.as_bytes(), with_port.as_bytes()], &mut tmp)?,
                None => self.host.matching(&[h.name.as_bytes()], &mut tmp)?,
            },
        }
        if !and_into(&mut cand, &tmp) {
            return Ok(None);
        }
        Ok(Some(cand))
    }

    /// `None` when every header condition of rule `i` holds, else the first that does not.
    fn headers_hold(&self, i: usize, req: &NormalizedRequest) -> Option<Mismatch> {
        for (k, h) in self.headers[i].iter().enumerate() {
            let value = req.header_values(&h.name).next();
            let (ok, wanted) = match (&h.cond, value) {
                (HeaderCond::Present, v) => (v.is_some(), "present".to_string()),
                (HeaderCond::Exact(want), v) => (
                    v.is_some_and(|v| trim_ows(v) == want.as_slice()),
                    format!("= {}", String::from_utf8_lossy(want)),
                ),
                (HeaderCond::Regex(p), v) => (
                    v.is_some_and(|v| p.is_match(trim_ows(v))),
                    format!("~ {}", p.source()),
                ),
            };
            if !ok {
                return Some(Mismatch {
                    field: format!("headers[{k}] ({})", h.name),
                    wanted,
                    saw: value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_else(|| "<absent>".to_string()),
                });
            }
        }
        None
    }
}

fn host_values(req: &NormalizedRequest) -> Vec<String> {
    match &req.host {
        Some(h) => {
            let mut v = vec![h.name.clone()];
            if let Some(with_port) = h.with_port() {
                v.push(with_port);
            }
            v
        }
        None => Vec::new(),
    }
}

fn field_mismatch(field: &str, pattern: Option<&String>, saw: &str) -> Mismatch {
    Mismatch {
        field: field.to_string(),
        wanted: pattern.cloned().unwrap_or_default(),
        saw: saw.to_string(),
    }
}

/// `a &= b`; whether any bit is left.
fn and_into(a: &mut [u64], b: &[u64]) -> bool {
    let mut any = 0;
    for (x, y) in a.iter_mut().zip(b) {
        *x &= *y;
        any |= *x;
    }
    any != 0
}

fn is_zero(a: &[u64]) -> bool {
    a.iter().all(|w| *w == 0)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}
