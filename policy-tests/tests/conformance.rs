//! netpol-analyzer conformance: `connections` must reproduce netpol-analyzer's `list` txt
//! output on every qualifying case of the corpus in `shared/conformance/netpol-analyzer`
//! (selection and comparison: `policy_tests::corpus`).
//!
//! The ratchet runs with `--ipblocks-select-pods=false` (netpol-analyzer's reading of pod
//! addresses); the default setting is run too and reported. The number of identical cases
//! may only go up: raise `BASELINE_IDENTICAL` when a case is fixed. Every remaining
//! difference is a deliberate choice documented in docs/policy-test.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use policy_compiler::manifest::{LoadOptions, load_paths};
use policy_tests::corpus::{self, Selection};
use policy_tests::output::Progress;
use policy_tests::{Analysis, Options, connections};

/// Identical cases with `ipblocks_select_pods = false`.
const BASELINE_IDENTICAL: usize = 88;

/// Cases whose difference is deliberate (docs/policy-test.md#conformance), and what exactly it
/// must be: the test fails if such a case differs in any other way.
const DOCUMENTED: &[(&str, Documented)] = &[
    // netpol-analyzer drops IPv6 `networks` with a warning; Palisade enforces them.
    (
        "anp_and_banp_using_networks_with_ipv6_test_connlist_output.txt",
        Documented::Ipv6Enforced,
    ),
    (
        "anp_banp_test_multiple_warnings_connlist_output.txt",
        Documented::Ipv6Enforced,
    ),
    // The CRD's CEL rule refuses named ports in a rule with networks or nodes peers; the API
    // server would not store this object, so Palisade refuses it too.
    (
        "anp_test_named_ports_multiple_peers_connlist_output.txt",
        Documented::ApiServerRefuses("networks/nodes peers cannot be set with named ports"),
    ),
];

#[derive(Debug, Clone, Copy)]
enum Documented {
    /// Identical once the lines with an IPv6 external range are left out.
    Ipv6Enforced,
    /// Rejected as invalid with this text.
    ApiServerRefuses(&'static str),
}

/// Whether `got` is `want` plus lines naming IPv6 external ranges.
fn identical_but_ipv6(got: &str, want: &str) -> bool {
    let kept: String = got
        .lines()
        .filter(|l| {
            !l.split(" => ").any(|side| {
                side.split_once("[External]")
                    .is_some_and(|(range, _)| range.contains(':'))
            })
        })
        .collect::<Vec<_>>()
        .join("\n");
    kept != got.trim_end() && corpus::normalize(&kept) == corpus::normalize(want)
}

struct Outcome {
    name: String,
    /// Per setting (false, true): `None` when identical, else what differs.
    differs: [Option<String>; 2],
}

fn first_difference(got: &str, want: &str) -> String {
    let g: Vec<&str> = got.lines().collect();
    let w: Vec<&str> = want.lines().filter(|l| !l.trim().is_empty()).collect();
    for i in 0..g.len().max(w.len()) {
        if g.get(i) != w.get(i) {
            return format!(
                "line {}: got {:?}, want {:?} ({} vs {} lines)",
                i + 1,
                g.get(i).unwrap_or(&"<none>"),
                w.get(i).unwrap_or(&"<none>"),
                g.len(),
                w.len()
            );
        }
    }
    "only in line breaks".into()
}

#[test]
fn netpol_analyzer_connlist_txt() {
    let base = corpus::default_location();
    assert!(
        base.join("cases.json").is_file(),
        "conformance corpus missing at {} (expected in shared/ next to the workspace)",
        base.display()
    );
    let selection = corpus::select(&base).unwrap();
    let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for s in selection {
        let case = match s {
            Selection::Skip { name, reason } => {
                skipped.entry(reason).or_default().push(name);
                continue;
            }
            Selection::Run(c) => c,
        };
        let want = std::fs::read_to_string(&case.expected).unwrap();
        let mut o = Outcome {
            name: case.name.clone(),
            differs: [None, None],
        };
        match load_paths(&case.input_dirs, &LoadOptions::default()) {
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or("").to_string();
                if let Some((_, Documented::ApiServerRefuses(why))) =
                    DOCUMENTED.iter().find(|d| d.0 == case.name)
                {
                    assert!(
                        first.contains(why),
                        "{}: documented as refused for {why:?}, but: {first}",
                        case.name
                    );
                }
                o.differs = [
                    Some(format!("rejected as invalid: {first}")),
                    Some(format!("rejected as invalid: {first}")),
                ];
            }
            Ok(loaded) => {
                for (i, select_pods) in [false, true].into_iter().enumerate() {
                    let opts = Options {
                        ipblocks_select_pods: select_pods,
                        ..Options::default()
                    };
                    let a = Analysis::from_cluster(&loaded.cluster, loaded.report.clone(), &opts)
                        .unwrap();
                    let got = connections::to_text(&connections::compute(&a, &Progress::hidden()));
                    if corpus::normalize(&got) != corpus::normalize(&want) {
                        o.differs[i] = Some(first_difference(&got, &want));
                    }
                    if let Some((_, Documented::Ipv6Enforced)) =
                        DOCUMENTED.iter().find(|d| d.0 == case.name)
                    {
                        assert!(
                            identical_but_ipv6(&got, &want),
                            "{}: documented as differing only in IPv6 ranges, but got:\n{got}",
                            case.name
                        );
                    }
                }
            }
        }
        outcomes.push(o);
    }

    let identical = |i: usize| outcomes.iter().filter(|o| o.differs[i].is_none()).count();
    println!("netpol-analyzer conformance (connlist, txt)");
    println!("cases run: {}", outcomes.len());
    for (i, setting) in ["false", "true"].iter().enumerate() {
        let diffs: Vec<&Outcome> = outcomes.iter().filter(|o| o.differs[i].is_some()).collect();
        println!(
            "--ipblocks-select-pods={setting}: identical {}, differing {}",
            identical(i),
            diffs.len()
        );
        for o in diffs {
            println!("  {}: {}", o.name, o.differs[i].as_deref().unwrap_or(""));
        }
    }
    println!("skipped: {}", skipped.values().map(Vec::len).sum::<usize>());
    for (reason, names) in &skipped {
        if reason.starts_with("unsupported kind") {
            println!("  {reason}: {} ({})", names.len(), names.join(", "));
        } else {
            println!("  {reason}: {}", names.len());
        }
    }
    // Every documented difference is still a difference (else it belongs in the baseline).
    for (name, d) in DOCUMENTED {
        let o = outcomes
            .iter()
            .find(|o| o.name == *name)
            .unwrap_or_else(|| panic!("documented case {name} not run"));
        assert!(
            o.differs[0].is_some(),
            "{name} ({d:?}) is now identical: raise the baseline"
        );
        if let Documented::ApiServerRefuses(_) = d {
            assert!(
                o.differs[0]
                    .as_deref()
                    .is_some_and(|x| x.starts_with("rejected as invalid")),
                "{name}: documented as refused"
            );
        }
    }
    println!("documented differences: {}", DOCUMENTED.len());
    assert!(
        identical(0) >= BASELINE_IDENTICAL,
        "conformance regressed: {} identical cases, baseline {BASELINE_IDENTICAL}",
        identical(0)
    );
}
