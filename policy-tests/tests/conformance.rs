//! netpol-analyzer conformance: `connections` must reproduce netpol-analyzer's `list` txt
//! output on every qualifying case of the corpus in `shared/conformance/netpol-analyzer`.
//!
//! Qualifying: suite `connlist`, format `txt`, no focus/exposure/explain/multiple-networks
//! flags, and input dirs holding only kinds Palisade models (plus ignorable ones). The
//! comparison strips every `\n` and `\r`, as upstream's does. The run uses
//! `--ipblocks-select-pods=false` (netpol-analyzer's reading of ipBlocks); the default
//! setting is run too and reported. The number of identical cases may only go up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use policy_compiler::manifest::{LoadOptions, load_paths};
use policy_tests::output::Progress;
use policy_tests::{Analysis, Options, connections};
use serde_json::Value;

/// Identical cases with `ipblocks_select_pods = false`. Raise it when you fix a case.
const BASELINE_IDENTICAL: usize = 37;

/// Kinds the policy core models.
const SUPPORTED_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "Service",
    "NetworkPolicy",
    "List",
    "PodList",
    "NamespaceList",
    "NetworkPolicyList",
];

/// Kinds that cannot change connectivity and may be present.
const IGNORABLE_KINDS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRoleBinding",
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/netpol-analyzer")
}

fn strip(s: &str) -> String {
    s.chars().filter(|c| *c != '\n' && *c != '\r').collect()
}

fn flag_reason(c: &Value) -> Option<&'static str> {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
    let b = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    let nonempty = |k: &str| match c.get(k) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(x)) => !x.is_empty(),
        _ => false,
    };
    if s("suite") != "connlist" {
        return Some("suite is not connlist");
    }
    if s("format") != "txt" {
        return Some("format is not txt");
    }
    if [
        "focus_workloads",
        "focus_workload_peers",
        "focus_direction",
        "focus_conn",
    ]
    .iter()
    .any(|k| nonempty(k))
    {
        return Some("focus options");
    }
    if b("exposure") {
        return Some("exposure analysis");
    }
    if b("explain") {
        return Some("explain");
    }
    if b("multiple_networks") {
        return Some("multiple networks");
    }
    None
}

struct Outcome {
    name: String,
    identical: [bool; 2],
    first_diff: [Option<String>; 2],
}

fn first_difference(got: &str, want: &str) -> String {
    let g: Vec<&str> = got.lines().collect();
    let w: Vec<&str> = want.lines().filter(|l| !l.trim().is_empty()).collect();
    for i in 0..g.len().max(w.len()) {
        if g.get(i) != w.get(i) {
            return format!(
                "line {}: got {:?}, want {:?} ({} vs {} lines)",
                i + 1,
                g.get(i),
                w.get(i),
                g.len(),
                w.len()
            );
        }
    }
    "only in line breaks".into()
}

#[test]
fn netpol_analyzer_connlist_txt() {
    let base = corpus();
    assert!(
        base.join("cases.json").is_file(),
        "conformance corpus missing at {} (expected next to the workspace, in shared/)",
        base.display()
    );
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(base.join("cases.json")).unwrap()).unwrap();
    let dirs: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("dirs.json")).unwrap()).unwrap();
    let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for c in &cases {
        let expected = c["expected"].as_str().unwrap_or("?").to_string();
        let name = Path::new(&expected)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or(expected.clone());
        if let Some(r) = flag_reason(c) {
            skipped.entry(r.to_string()).or_default().push(name);
            continue;
        }
        let inputs: Vec<&str> = c["input_dirs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        // The corpus index lists each dir's kinds; the loader's report is checked below too.
        let unsupported: Option<String> = inputs.iter().find_map(|d| {
            let key = d.strip_prefix("tests/").unwrap_or(d);
            dirs[key]["kinds"].as_array().and_then(|ks| {
                ks.iter()
                    .filter_map(Value::as_str)
                    .find(|k| !SUPPORTED_KINDS.contains(k) && !IGNORABLE_KINDS.contains(k))
                    .map(str::to_string)
            })
        });
        if let Some(k) = unsupported {
            skipped
                .entry(format!("unsupported kind {k}"))
                .or_default()
                .push(name);
            continue;
        }
        let dirs: Vec<PathBuf> = inputs.iter().map(|d| base.join(d)).collect();
        let loaded = match load_paths(&dirs, &LoadOptions::default()) {
            Ok(l) => l,
            Err(e) => {
                outcomes.push(Outcome {
                    name,
                    identical: [false, false],
                    first_diff: [
                        Some(format!("rejected as invalid: {e}")),
                        Some(format!("rejected as invalid: {e}")),
                    ],
                });
                continue;
            }
        };
        let unsupported: Vec<&String> = loaded
            .report
            .unsupported_kinds
            .keys()
            .filter(|k| !IGNORABLE_KINDS.contains(&k.as_str()))
            .collect();
        if let Some(k) = unsupported.first() {
            skipped
                .entry(format!("unsupported kind {k}"))
                .or_default()
                .push(name);
            continue;
        }
        let want = std::fs::read_to_string(base.join(&expected)).unwrap();
        let mut o = Outcome {
            name,
            identical: [false, false],
            first_diff: [None, None],
        };
        for (i, select_pods) in [false, true].into_iter().enumerate() {
            let opts = Options {
                ipblocks_select_pods: select_pods,
            };
            let a = Analysis::from_cluster(&loaded.cluster, loaded.report.clone(), &opts).unwrap();
            let got = connections::to_text(&connections::compute(&a, &Progress::hidden()));
            o.identical[i] = strip(&got) == strip(&want);
            if !o.identical[i] {
                o.first_diff[i] = Some(first_difference(&got, &want));
            }
        }
        outcomes.push(o);
    }

    let run = outcomes.len();
    let ident = |i: usize| outcomes.iter().filter(|o| o.identical[i]).count();
    println!("netpol-analyzer conformance (connlist, txt)");
    println!("cases run: {run}");
    println!("identical (--ipblocks-select-pods=false): {}", ident(0));
    println!("identical (--ipblocks-select-pods=true):  {}", ident(1));
    for (i, setting) in ["false", "true"].iter().enumerate() {
        let diffs: Vec<&Outcome> = outcomes.iter().filter(|o| !o.identical[i]).collect();
        println!(
            "differing with --ipblocks-select-pods={setting}: {}",
            diffs.len()
        );
        for o in diffs {
            println!("  {}: {}", o.name, o.first_diff[i].as_deref().unwrap_or(""));
        }
    }
    let total_skipped: usize = skipped.values().map(Vec::len).sum();
    println!("skipped: {total_skipped}");
    for (reason, names) in &skipped {
        if reason.starts_with("unsupported kind") {
            println!("  {reason}: {} ({})", names.len(), names.join(", "));
        } else {
            println!("  {reason}: {}", names.len());
        }
    }
    assert!(
        ident(0) >= BASELINE_IDENTICAL,
        "conformance regressed: {} identical cases, baseline {BASELINE_IDENTICAL}",
        ident(0)
    );
}
