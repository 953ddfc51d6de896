//! HTTP matcher benchmark: one request against 1,000 rules on one port.
//!
//! `cargo bench -p palisade-l7proxy --bench matcher`
//!
//! Prints the time per decision (normalization excluded, reported apart) for the multi-pattern
//! rule set and, measured in the same run, for the baseline a naive matcher would be: every
//! rule's patterns tried one by one. The goal is ≤ 2 µs per decision at 1,000 rules.

use std::hint::black_box;
use std::time::{Duration, Instant};

use palisade_l7proxy::pattern::Pattern;
use palisade_l7proxy::{
    Decision, HttpRule, L7Action, NormalizeOptions, NormalizedRequest, RequestHead, RuleEntry,
    RuleSet, normalize,
};

const RULES: usize = 1000;
const ROUNDS: usize = 7;

fn rules() -> Vec<RuleEntry> {
    (0..RULES)
        .map(|i| RuleEntry {
            id: i as u32,
            action: if i % 10 == 9 {
                L7Action::Deny
            } else {
                L7Action::Allow
            },
            rule: HttpRule {
                method: Some(if i % 2 == 0 { "GET" } else { "GET|POST" }.to_string()),
                path: Some(format!("/api/v{i}/items/[0-9]+")),
                host: (i % 3 == 0).then(|| r"shop\.example".to_string()),
                headers: Vec::new(),
            },
        })
        .collect()
}

fn request(method: &str, target: &str) -> NormalizedRequest {
    let headers: [(&str, &[u8]); 2] = [("Host", b"shop.example:8080"), ("User-Agent", b"bench")];
    match normalize(
        &RequestHead {
            method,
            target: target.as_bytes(),
            headers: &headers,
        },
        NormalizeOptions::default(),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bad bench request: {e}");
            std::process::exit(1);
        }
    }
}

/// One rule tried alone: action, id, method, path, host.
type NaiveRule = (
    L7Action,
    u32,
    Option<Pattern>,
    Option<Pattern>,
    Option<Pattern>,
);

struct Naive {
    rules: Vec<NaiveRule>,
}

impl Naive {
    fn new(entries: &[RuleEntry]) -> Naive {
        let p = |s: &Option<String>| s.as_ref().and_then(|s| Pattern::new(s).ok());
        Naive {
            rules: entries
                .iter()
                .map(|e| {
                    (
                        e.action,
                        e.id,
                        p(&e.rule.method),
                        p(&e.rule.path),
                        p(&e.rule.host),
                    )
                })
                .collect(),
        }
    }

    fn decide(&self, r: &NormalizedRequest) -> Decision {
        let host = r.host.as_ref();
        let hit = |m: &Option<Pattern>, p: &Option<Pattern>, h: &Option<Pattern>| {
            m.as_ref().is_none_or(|m| m.is_match(r.method.as_bytes()))
                && p.as_ref()
                    .is_none_or(|p| p.is_match(r.target.path.as_bytes()))
                && h.as_ref().is_none_or(|h| {
                    host.is_some_and(|host| {
                        h.is_match(host.name.as_bytes())
                            || host.with_port().is_some_and(|wp| h.is_match(wp.as_bytes()))
                    })
                })
        };
        let mut allow = None;
        for (action, id, m, p, h) in &self.rules {
            if hit(m, p, h) {
                match action {
                    L7Action::Deny => return Decision::Deny { rule: *id },
                    L7Action::Allow if allow.is_none() => allow = Some(*id),
                    L7Action::Allow => {}
                }
            }
        }
        allow.map_or(Decision::NoMatch, |rule| Decision::Allow { rule })
    }
}

fn time_per_op(iters: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let entries = rules();
    let t = Instant::now();
    let set = match RuleSet::compile(entries.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("compile: {e}");
            std::process::exit(1);
        }
    };
    let compile = t.elapsed();
    let naive = Naive::new(&entries);
    let cases = [
        ("allow (rule 998)", request("POST", "/api/v997/items/42")),
        ("deny (rule 999)", request("GET", "/api/v999/items/7")),
        ("no rule matches", request("DELETE", "/api/v5/items/1")),
    ];
    for (name, r) in &cases {
        if set.decide(r) != naive.decide(r) {
            eprintln!("{name}: the matcher and the naive baseline disagree");
            std::process::exit(1);
        }
    }
    println!("HTTP matcher: {RULES} rules on one port (compiled in {compile:.2?})");
    println!(
        "{:<20} {:>12} {:>14} {:>8}",
        "request", "rule set", "naive (base)", "speedup"
    );
    for (name, r) in &cases {
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for _ in 0..ROUNDS {
            fast.push(time_per_op(20_000, || {
                black_box(set.decide(black_box(r)));
            }));
            slow.push(time_per_op(200, || {
                black_box(naive.decide(black_box(r)));
            }));
        }
        let (f, s) = (median(fast), median(slow));
        println!(
            "{name:<20} {:>10.2?} {:>14.0?} {:>7.0}x",
            f,
            s,
            s.as_secs_f64() / f.as_secs_f64()
        );
    }
    let raw: &[(&str, &[u8])] = &[("Host", b"shop.example:8080")];
    let norm = median(
        (0..ROUNDS)
            .map(|_| {
                time_per_op(50_000, || {
                    black_box(normalize(
                        &RequestHead {
                            method: "GET",
                            target: black_box(b"/api/v12/../v13/items/%34%32?x=1"),
                            headers: raw,
                        },
                        NormalizeOptions::default(),
                    ))
                    .ok();
                })
            })
            .collect(),
    );
    println!("normalize one request head: {norm:.0?}");
}
