//! The HTTP matcher: decisions, precedence, explanations, the limits on untrusted patterns
//! (vector M-L7-REGEX) and a differential property test against an independent oracle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_l7proxy::pattern::{MAX_PATTERN_BYTES, MAX_REPEAT_EXPANSION};
use palisade_l7proxy::{
    Decision, HeaderMatch, HttpRule, L7Action, NormalizeOptions, NormalizedRequest, PatternError,
    RequestHead, RuleEntry, RuleProblem, RuleSet, normalize,
};
use proptest::prelude::*;

fn rule(id: u32, action: L7Action, method: Option<&str>, path: Option<&str>) -> RuleEntry {
    RuleEntry {
        id,
        action,
        rule: HttpRule {
            method: method.map(str::to_string),
            path: path.map(str::to_string),
            ..HttpRule::default()
        },
    }
}

fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> NormalizedRequest {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    normalize(
        &RequestHead {
            method,
            target: target.as_bytes(),
            headers: &headers,
        },
        NormalizeOptions::default(),
    )
    .unwrap()
}

#[test]
fn the_cilium_guide_example() {
    let set = RuleSet::compile(vec![rule(
        7,
        L7Action::Allow,
        Some("GET"),
        Some("/api/v1/data"),
    )])
    .unwrap();
    let host = [("Host", "backend:8080")];
    assert_eq!(
        set.decide(&req("GET", "/api/v1/data", &host)),
        Decision::Allow { rule: 7 }
    );
    assert_eq!(
        set.decide(&req("POST", "/api/v1/data", &host)),
        Decision::NoMatch
    );
    assert_eq!(
        set.decide(&req("GET", "/api/v1/data/x", &host)),
        Decision::NoMatch
    );
    assert_eq!(
        set.decide(&req("get", "/api/v1/data", &host)),
        Decision::NoMatch,
        "methods are case-sensitive"
    );
    // The query is not part of the path, and dot segments cannot reach around the rule.
    assert_eq!(
        set.decide(&req("GET", "/api/v1/data?x=1", &host)),
        Decision::Allow { rule: 7 }
    );
    assert_eq!(
        set.decide(&req("GET", "/api/v2/../v1/data", &host)),
        Decision::Allow { rule: 7 }
    );
    assert_eq!(Decision::NoMatch.status(), Some(403));
}

#[test]
fn deny_beats_allow_and_the_first_deny_in_order_is_named() {
    let set = RuleSet::compile(vec![
        rule(1, L7Action::Allow, None, None),
        rule(2, L7Action::Deny, Some("DELETE"), Some("/admin/.*")),
        rule(3, L7Action::Deny, None, Some("/admin/.*")),
    ])
    .unwrap();
    assert_eq!(
        set.decide(&req("DELETE", "/admin/users", &[])),
        Decision::Deny { rule: 2 }
    );
    assert_eq!(
        set.decide(&req("GET", "/admin/users", &[])),
        Decision::Deny { rule: 3 }
    );
    assert_eq!(
        set.decide(&req("GET", "/public", &[])),
        Decision::Allow { rule: 1 }
    );
    assert_eq!(
        set.decide(&req("DELETE", "/public/../admin/x", &[])),
        Decision::Deny { rule: 2 }
    );
}

#[test]
fn host_matches_with_any_port_unless_the_pattern_names_one() {
    let mut any_port = rule(1, L7Action::Allow, None, None);
    any_port.rule.host = Some(r"api\.example\.com".into());
    let mut port_8080 = rule(2, L7Action::Allow, None, None);
    port_8080.rule.host = Some(r"admin\.example\.com:8080".into());
    let set = RuleSet::compile(vec![any_port, port_8080]).unwrap();
    let d = |h: &str| set.decide(&req("GET", "/", &[("Host", h)]));
    assert_eq!(d("API.example.com"), Decision::Allow { rule: 1 });
    assert_eq!(d("api.example.com:9999"), Decision::Allow { rule: 1 });
    assert_eq!(d("admin.example.com:8080"), Decision::Allow { rule: 2 });
    assert_eq!(d("admin.example.com"), Decision::NoMatch);
    assert_eq!(d("admin.example.com:8081"), Decision::NoMatch);
    assert_eq!(
        set.decide(&req("GET", "/", &[])),
        Decision::NoMatch,
        "no host, no host rule matches"
    );
}

#[test]
fn header_presence_exact_and_regex() {
    let mut r = rule(1, L7Action::Allow, None, None);
    r.rule.headers = vec![
        HeaderMatch {
            name: "X-Tenant".into(),
            ..HeaderMatch::default()
        },
        HeaderMatch {
            name: "x-env".into(),
            value: Some("prod".into()),
            regex: None,
        },
        HeaderMatch {
            name: "Authorization".into(),
            value: None,
            regex: Some("Bearer [A-Za-z0-9._-]+".into()),
        },
    ];
    let set = RuleSet::compile(vec![r]).unwrap();
    let good = [
        ("x-tenant", ""),
        ("X-Env", " prod "),
        ("authorization", "Bearer abc.def"),
    ];
    assert_eq!(
        set.decide(&req("GET", "/", &good)),
        Decision::Allow { rule: 1 }
    );
    let bad_env = [
        ("x-tenant", "a"),
        ("X-Env", "production"),
        ("authorization", "Bearer abc"),
    ];
    assert_eq!(set.decide(&req("GET", "/", &bad_env)), Decision::NoMatch);
    let trace = set.explain(&req("GET", "/", &bad_env));
    let m = trace[0].mismatch.as_ref().unwrap();
    assert_eq!(
        (m.field.as_str(), m.saw.as_str()),
        ("headers[1] (x-env)", "production")
    );
    let missing = [("X-Env", "prod"), ("authorization", "Bearer abc")];
    assert_eq!(set.decide(&req("GET", "/", &missing)), Decision::NoMatch);
}

#[test]
fn a_repeated_header_that_a_rule_reads_is_ambiguous() {
    let mut r = rule(1, L7Action::Deny, None, None);
    r.rule.headers = vec![HeaderMatch {
        name: "x-debug".into(),
        ..HeaderMatch::default()
    }];
    let set = RuleSet::compile(vec![r, rule(2, L7Action::Allow, None, None)]).unwrap();
    let twice = [("X-Debug", "1"), ("x-debug", "2")];
    assert_eq!(set.decide(&req("GET", "/", &twice)), Decision::Ambiguous);
    assert_eq!(Decision::Ambiguous.status(), Some(400));
    let other_twice = [("x-other", "1"), ("x-other", "2")];
    assert_eq!(
        set.decide(&req("GET", "/", &other_twice)),
        Decision::Allow { rule: 2 }
    );
}

#[test]
fn explain_names_the_field_and_the_normalized_value() {
    let set = RuleSet::compile(vec![
        rule(1, L7Action::Allow, Some("GET"), Some("/api/v1/data")),
        rule(2, L7Action::Allow, Some("POST"), None),
    ])
    .unwrap();
    let trace = set.explain(&req("GET", "/api/v1/%64ata/", &[]));
    let m = trace[0].mismatch.as_ref().unwrap();
    assert_eq!(
        (m.field.as_str(), m.wanted.as_str(), m.saw.as_str()),
        ("path", "/api/v1/data", "/api/v1/data/")
    );
    assert_eq!(trace[1].mismatch.as_ref().unwrap().field, "method");
}

fn path_error(pattern: &str) -> palisade_l7proxy::RuleError {
    RuleSet::compile(vec![
        rule(1, L7Action::Allow, Some("GET"), None),
        rule(2, L7Action::Allow, None, Some(pattern)),
    ])
    .unwrap_err()
}

#[test]
fn m_l7_regex_nested_counted_repeats_are_rejected_with_the_field() {
    let e = path_error("a{1000}{1000}");
    assert_eq!((e.rule, e.field.as_str()), (Some(1), "path"));
    assert_eq!(
        e.problem,
        RuleProblem::Pattern(PatternError::RepeatExpansion {
            expansion: 1_000_000,
            limit: MAX_REPEAT_EXPANSION
        })
    );
    assert!(
        e.to_string()
            .starts_with("rule 1: path: nested counted repetitions expand to 1000000"),
        "{e}"
    );
    assert!(matches!(
        path_error("a{5}{5}{5}{5}{5}{5}").problem,
        RuleProblem::Pattern(PatternError::RepeatExpansion {
            expansion: 15625,
            ..
        })
    ));
    // At the limit is fine.
    RuleSet::compile(vec![rule(
        1,
        L7Action::Allow,
        None,
        Some("/a{10}(b{10}){10}"),
    )])
    .unwrap();
}

#[test]
fn m_l7_regex_long_lookaround_invalid_and_oversized_patterns_are_rejected() {
    let alternation = (0..2000)
        .map(|i| format!("/p{i}"))
        .collect::<Vec<_>>()
        .join("|");
    assert!(alternation.len() > 10 * 1024);
    assert_eq!(
        path_error(&alternation).problem,
        RuleProblem::Pattern(PatternError::TooLong {
            len: alternation.len(),
            limit: MAX_PATTERN_BYTES
        })
    );
    for bad in ["(?<=x)", "(?=x)", "(?!x)", "[", "(a", r"\1", "a{2,1}"] {
        assert!(
            matches!(
                path_error(bad).problem,
                RuleProblem::Pattern(PatternError::Syntax { .. })
            ),
            "{bad}"
        );
    }
    // Within the length and repetition limits, but its program is over the size limit.
    assert!(matches!(
        path_error(r"(\w{100}){9}").problem,
        RuleProblem::Pattern(PatternError::TooBig { .. })
    ));
}

#[test]
fn header_rule_errors_name_the_header() {
    let mut r = rule(1, L7Action::Allow, None, None);
    r.rule.headers = vec![
        HeaderMatch {
            name: "ok".into(),
            ..HeaderMatch::default()
        },
        HeaderMatch {
            name: "x".into(),
            value: Some("a".into()),
            regex: Some("a".into()),
        },
    ];
    let e = RuleSet::compile(vec![r.clone()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rule 0: headers[1].regex: give either value or regex, not both"
    );
    r.rule.headers[1] = HeaderMatch {
        name: "bad name".into(),
        ..HeaderMatch::default()
    };
    assert_eq!(
        RuleSet::compile(vec![r]).unwrap_err().field,
        "headers[1].name"
    );
}

/// Patterns from a small grammar whose meaning the oracle computes without regular expressions.
#[derive(Debug, Clone)]
enum Pat {
    Exact(String),
    Prefix(String),
    Either(String, String),
}

impl Pat {
    fn source(&self) -> String {
        let esc = |s: &str| regex_escape(s);
        match self {
            Pat::Exact(s) => esc(s),
            Pat::Prefix(s) => format!("{}.*", esc(s)),
            Pat::Either(a, b) => format!("{}|{}", esc(a), esc(b)),
        }
    }

    fn holds(&self, v: &str) -> bool {
        match self {
            Pat::Exact(s) => v == s,
            Pat::Prefix(s) => v.starts_with(s.as_str()),
            Pat::Either(a, b) => v == a || v == b,
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn word(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(options).prop_map(str::to_string)
}

fn pat(options: &'static [&'static str]) -> impl Strategy<Value = Pat> {
    prop_oneof![
        word(options).prop_map(Pat::Exact),
        word(options).prop_map(Pat::Prefix),
        (word(options), word(options)).prop_map(|(a, b)| Pat::Either(a, b)),
    ]
}

const METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT", "G"];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/v1",
    "/api/v1/data",
    "/admin",
    "/admin/x",
    "/a.b",
];
const HOSTS: &[&str] = &["a.example", "b.example", "a.example:80", "b"];

#[derive(Debug, Clone)]
struct GenRule {
    deny: bool,
    method: Option<Pat>,
    path: Option<Pat>,
    host: Option<Pat>,
    header: Option<(String, Option<String>)>,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        prop::bool::weighted(0.3),
        prop::option::of(pat(METHODS)),
        prop::option::of(pat(PATHS)),
        prop::option::weighted(0.3, pat(HOSTS)),
        prop::option::weighted(
            0.3,
            (word(&["x-a", "x-b"]), prop::option::of(word(&["1", "2"]))),
        ),
    )
        .prop_map(|(deny, method, path, host, header)| GenRule {
            deny,
            method,
            path,
            host,
            header,
        })
}

fn oracle(
    rules: &[GenRule],
    method: &str,
    path: &str,
    host: Option<(&str, Option<u16>)>,
    headers: &[(String, String)],
) -> Decision {
    let referenced: Vec<&String> = rules
        .iter()
        .filter_map(|r| r.header.as_ref().map(|h| &h.0))
        .collect();
    for name in referenced {
        if headers.iter().filter(|(n, _)| n == name).count() > 1 {
            return Decision::Ambiguous;
        }
    }
    let hit = |r: &GenRule| {
        r.method.as_ref().is_none_or(|p| p.holds(method))
            && r.path.as_ref().is_none_or(|p| p.holds(path))
            && r.host.as_ref().is_none_or(|p| match host {
                None => false,
                Some((name, port)) => {
                    p.holds(name) || port.is_some_and(|port| p.holds(&format!("{name}:{port}")))
                }
            })
            && r.header.as_ref().is_none_or(|(name, value)| {
                match headers.iter().find(|(n, _)| n == name) {
                    None => false,
                    Some((_, v)) => value.as_ref().is_none_or(|want| want == v),
                }
            })
    };
    if let Some(i) = rules.iter().position(|r| r.deny && hit(r)) {
        return Decision::Deny { rule: i as u32 };
    }
    if let Some(i) = rules.iter().position(|r| !r.deny && hit(r)) {
        return Decision::Allow { rule: i as u32 };
    }
    Decision::NoMatch
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// The multi-pattern matcher decides exactly as a rule-by-rule oracle that uses no regular
    /// expressions.
    #[test]
    fn matcher_agrees_with_the_oracle(
        rules in prop::collection::vec(gen_rule(), 0..24),
        method in word(METHODS),
        path in word(PATHS),
        host in prop::option::of((word(&["a.example", "b.example", "b"]), prop::option::of(prop::sample::select(&[80u16, 8080][..])))),
        headers in prop::collection::vec((word(&["x-a", "x-b", "x-c"]), word(&["1", "2"])), 0..3),
    ) {
        let entries: Vec<RuleEntry> = rules.iter().enumerate().map(|(i, r)| RuleEntry {
            id: i as u32,
            action: if r.deny { L7Action::Deny } else { L7Action::Allow },
            rule: HttpRule {
                method: r.method.as_ref().map(Pat::source),
                path: r.path.as_ref().map(Pat::source),
                host: r.host.as_ref().map(Pat::source),
                headers: r.header.iter().map(|(name, value)| HeaderMatch {
                    name: name.clone(),
                    value: value.clone(),
                    regex: None,
                }).collect(),
            },
        }).collect();
        let set = RuleSet::compile(entries).unwrap();
        let host_header = host.as_ref().map(|(n, p)| match p {
            Some(p) => format!("{n}:{p}"),
            None => n.clone(),
        });
        let mut hs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if let Some(h) = &host_header {
            hs.push(("Host", h.as_str()));
        }
        let request = req(&method, &path, &hs);
        let want = oracle(&rules, &method, &path, host.as_ref().map(|(n, p)| (n.as_str(), *p)), &headers);
        prop_assert_eq!(set.decide(&request), want);
        // explain agrees with decide on which rules match.
        let trace = set.explain(&request);
        if let Decision::Allow { rule } | Decision::Deny { rule } = want {
            prop_assert!(trace[rule as usize].mismatch.is_none());
        }
        if want == Decision::NoMatch {
            prop_assert!(trace.iter().all(|t| t.mismatch.is_some()));
        }
    }
}
