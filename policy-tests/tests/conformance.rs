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
const BASELINE_IDENTICAL: usize = 37;

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
    assert!(
        identical(0) >= BASELINE_IDENTICAL,
        "conformance regressed: {} identical cases, baseline {BASELINE_IDENTICAL}",
        identical(0)
    );
}
