//! Untrusted regular expressions from policies: parsed, bounded and compiled once.
//!
//! A pattern is refused, with the rule it broke, when its source is longer than
//! [`MAX_PATTERN_BYTES`], when it does not parse (look-around and backreferences are not
//! supported by the engine and are syntax errors), when nested counted repetitions expand to more
//! than [`MAX_REPEAT_EXPANSION`] copies (`a{1000}{1000}`), or when its compiled program is larger
//! than [`MAX_COMPILED_BYTES`]. The size bounds are what bound compile time and memory; they are
//! deterministic, so `policy-test` and the agent accept exactly the same patterns on any machine.
//! Matching is always full-match: a pattern describes the whole field (`/api` does not match
//! `/api/v1`).

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::Arc;

use regex_automata::hybrid::dfa::{Cache, DFA, OverlappingState};
use regex_automata::nfa::thompson;
use regex_automata::util::pool::Pool;
use regex_automata::{Anchored, Input, MatchError, MatchKind};
use regex_syntax::hir::{Hir, HirKind};

/// Longest accepted pattern source.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Largest compiled program of one pattern.
pub const MAX_COMPILED_BYTES: usize = 1 << 20;
/// Largest compiled program of all the patterns of one field of one rule set.
pub const MAX_SET_COMPILED_BYTES: usize = 32 << 20;
/// Most copies nested counted repetitions may expand to.
pub const MAX_REPEAT_EXPANSION: u64 = 1000;
/// Deepest nesting of groups and repetitions.
pub const MAX_NESTING: u32 = 64;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is {len} bytes, over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("invalid regular expression: {message}")]
    Syntax { message: String },
    #[error(
        "nested counted repetitions expand to {expansion} copies, over the limit of {limit} (write the repetition once)"
    )]
    RepeatExpansion { expansion: u64, limit: u64 },
    #[error("the compiled pattern is over the limit of {limit} bytes")]
    TooBig { limit: usize },
}

/// Syntax settings shared by every pattern: Unicode on, no multi-line, `.` does not match `\n`.
fn syntax_config() -> syntax::Config {
    syntax::Config::new().nest_limit(MAX_NESTING)
}

fn meta_config(kind: MatchKind, size: usize) -> meta::Config {
    meta::Config::new()
        .match_kind(kind)
        .nfa_size_limit(Some(size))
        .onepass_size_limit(Some(size))
        .dfa_size_limit(Some(size))
        .hybrid_cache_capacity(size.clamp(1 << 16, 16 << 20))
}

/// Check a pattern against every limit and return its full-match form.
pub fn check(source: &str) -> Result<String, PatternError> {
    if source.len() > MAX_PATTERN_BYTES {
        return Err(PatternError::TooLong {
            len: source.len(),
            limit: MAX_PATTERN_BYTES,
        });
    }
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(MAX_NESTING)
        .build()
        .parse(source)
        .map_err(|e| PatternError::Syntax {
            message: one_line(&e.to_string()),
        })?;
    let expansion = repeat_expansion(&hir);
    if expansion > MAX_REPEAT_EXPANSION {
        return Err(PatternError::RepeatExpansion {
            expansion,
            limit: MAX_REPEAT_EXPANSION,
        });
    }
    let anchored = full_match(source);
    // Compile alone once so an oversized pattern is named, not only its rule set.
    Regex::builder()
        .syntax(syntax_config())
        .configure(meta_config(MatchKind::LeftmostFirst, MAX_COMPILED_BYTES))
        .build(&anchored)
        .map_err(|e| build_error(&e, MAX_COMPILED_BYTES))?;
    Ok(anchored)
}

/// `(?:p)\z`: searched with an anchored start, this is a full match.
fn full_match(source: &str) -> String {
    format!("(?:{source})\\z")
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn build_error(e: &meta::BuildError, limit: usize) -> PatternError {
    if e.size_limit().is_some() {
        PatternError::TooBig { limit }
    } else {
        PatternError::Syntax {
            message: one_line(&e.to_string()),
        }
    }
}

/// The most copies any sub-expression is expanded to by nested counted repetitions.
fn repeat_expansion(hir: &Hir) -> u64 {
    match hir.kind() {
        HirKind::Repetition(rep) => {
            let count = u64::from(rep.max.unwrap_or(rep.min).max(1));
            count.saturating_mul(repeat_expansion(&rep.sub))
        }
        HirKind::Capture(cap) => repeat_expansion(&cap.sub),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().map(repeat_expansion).max().unwrap_or(1)
        }
        _ => 1,
    }
}

/// One compiled full-match pattern, for the fields checked one rule at a time (headers).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        let anchored = check(source)?;
        let regex = Regex::builder()
            .syntax(syntax_config())
            .configure(meta_config(MatchKind::LeftmostFirst, MAX_COMPILED_BYTES))
            .build(&anchored)
            .map_err(|e| build_error(&e, MAX_COMPILED_BYTES))?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, haystack: &[u8]) -> bool {
        self.regex
            .is_match(Input::new(haystack).anchored(Anchored::Yes))
    }
}

/// Many full-match patterns searched in one pass of a lazy DFA: which of them match a field.
///
/// The caches the search needs are pooled, so a rule set is shared by every connection thread.
#[derive(Debug, Clone)]
pub struct PatternSetMatcher {
    inner: Option<Arc<SetInner>>,
    len: usize,
}

type CacheFn = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

struct SetInner {
    dfa: Arc<DFA>,
    pool: Pool<Cache, CacheFn>,
}

impl std::fmt::Debug for SetInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetInner")
            .field("patterns", &self.dfa.pattern_len())
            .finish_non_exhaustive()
    }
}

impl PatternSetMatcher {
    /// Compile already-checked full-match forms (from [`check`]).
    pub fn new(anchored: &[String]) -> Result<PatternSetMatcher, PatternError> {
        if anchored.is_empty() {
            return Ok(PatternSetMatcher {
                inner: None,
                len: 0,
            });
        }
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .unicode_word_boundary(true)
                    .cache_capacity(16 << 20),
            )
            .syntax(syntax_config())
            .thompson(thompson::Config::new().nfa_size_limit(Some(MAX_SET_COMPILED_BYTES)))
            .build_many(anchored)
            .map_err(|e| {
                if e.to_string().contains("size limit") || e.to_string().contains("cache capacity")
                {
                    PatternError::TooBig {
                        limit: MAX_SET_COMPILED_BYTES,
                    }
                } else {
                    PatternError::Syntax {
                        message: one_line(&e.to_string()),
                    }
                }
            })?;
        let dfa = Arc::new(dfa);
        let for_pool = Arc::clone(&dfa);
        let create: CacheFn = Box::new(move || for_pool.create_cache());
        Ok(PatternSetMatcher {
            inner: Some(Arc::new(SetInner {
                dfa,
                pool: Pool::new(create),
            })),
            len: anchored.len(),
        })
    }

    /// A set without patterns: matches nothing.
    pub fn empty() -> PatternSetMatcher {
        PatternSetMatcher {
            inner: None,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Call `hit` with the index of every pattern that matches the whole of `haystack`.
    ///
    /// Fails only when the automaton cannot search this haystack (a Unicode word boundary on
    /// non-ASCII input); callers treat that as "cannot decide" and deny.
    pub fn matches(&self, haystack: &[u8], mut hit: impl FnMut(usize)) -> Result<(), MatchError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut cache = inner.pool.get();
        let input = Input::new(haystack).anchored(Anchored::Yes);
        let mut state = OverlappingState::start();
        loop {
            inner
                .dfa
                .try_search_overlapping_fwd(&mut cache, &input, &mut state)?;
            match state.get_match() {
                Some(m) => hit(m.pattern().as_usize()),
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_match_semantics() {
        let p = Pattern::new("/api/v1/.*").unwrap();
        assert!(p.is_match(b"/api/v1/data"));
        assert!(!p.is_match(b"/x/api/v1/data"));
        let q = Pattern::new("/api").unwrap();
        assert!(!q.is_match(b"/api/v1"));
        let alt = Pattern::new("GET|HEAD").unwrap();
        assert!(alt.is_match(b"HEAD"));
        assert!(!alt.is_match(b"GETX"));
    }

    #[test]
    fn set_reports_every_matching_pattern() {
        let forms: Vec<String> = ["/a/.*", "/a/b", "/c", ".*"]
            .iter()
            .map(|s| check(s).unwrap())
            .collect();
        let m = PatternSetMatcher::new(&forms).unwrap();
        let mut hits = Vec::new();
        m.matches(b"/a/b", |p| hits.push(p)).unwrap();
        hits.sort();
        assert_eq!(hits, vec![0, 1, 3]);
        hits.clear();
        m.matches(b"/a/b/", |p| hits.push(p)).unwrap();
        hits.sort();
        assert_eq!(hits, vec![0, 3]);
    }

    #[test]
    fn a_set_that_cannot_search_its_input_says_so() {
        let m = PatternSetMatcher::new(&[check(r"\bé\b").unwrap()]).unwrap();
        assert!(m.matches("é".as_bytes(), |_| {}).is_err());
        assert!(m.matches(b"e", |_| {}).is_ok());
    }
}
