//! The netpol-analyzer conformance corpus (`shared/conformance/netpol-analyzer`): which of
//! its cases `connections` answers, and how outputs are compared. Used by the conformance
//! test and the benchmark.
//!
//! A case qualifies when it is a `connlist` case in `txt` format without focus, exposure,
//! explain or multiple-network options, and its input dirs hold only kinds Palisade models
//! (plus kinds that cannot change connectivity). Outputs are compared with every `\n` and
//! `\r` removed, as upstream compares them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::analysis::{Analysis, Options};
use crate::connections;
use crate::error::InputError;
use crate::output::Progress;

/// Kinds that may be present because they cannot change connectivity.
pub const IGNORABLE_KINDS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRoleBinding",
];

/// A qualifying case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The expected file's name, e.g. `ipblockstest_connlist_output.txt`.
    pub name: String,
    pub input_dirs: Vec<PathBuf>,
    pub expected: PathBuf,
}

/// Every case of the corpus, run or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Run(Case),
    Skip { name: String, reason: String },
}

/// `CARGO_MANIFEST_DIR/../../shared/conformance/netpol-analyzer` for this crate.
pub fn default_location() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/netpol-analyzer")
}

fn read_json(p: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn flag_reason(c: &Value) -> Option<&'static str> {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
    let b = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    let set = |k: &str| match c.get(k) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(x)) => !x.is_empty(),
        _ => false,
    };
    if s("suite") != "connlist" {
        Some("suite is not connlist")
    } else if s("format") != "txt" {
        Some("format is not txt")
    } else if [
        "focus_workloads",
        "focus_workload_peers",
        "focus_direction",
        "focus_conn",
    ]
    .iter()
    .any(|k| set(k))
    {
        Some("focus options")
    } else if b("exposure") {
        Some("exposure analysis")
    } else if b("explain") {
        Some("explain")
    } else if b("multiple_networks") {
        Some("multiple networks")
    } else {
        None
    }
}

/// Reads `cases.json` and `dirs.json` and classifies every case.
pub fn select(corpus: &Path) -> Result<Vec<Selection>, String> {
    let cases = read_json(&corpus.join("cases.json"))?;
    let dirs = read_json(&corpus.join("dirs.json"))?;
    let cases = cases.as_array().ok_or("cases.json: not an array")?;
    let mut out = Vec::with_capacity(cases.len());
    for c in cases {
        let expected = c.get("expected").and_then(Value::as_str).unwrap_or("");
        let name = Path::new(expected)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| expected.to_string());
        if let Some(r) = flag_reason(c) {
            out.push(Selection::Skip {
                name,
                reason: r.to_string(),
            });
            continue;
        }
        let inputs: Vec<&str> = c
            .get("input_dirs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let unsupported = inputs.iter().find_map(|d| {
            let key = d.strip_prefix("tests/").unwrap_or(d);
            dirs.get(key)
                .and_then(|e| e.get("kinds"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find(|k| {
                    !policy_compiler::manifest::is_modelled_kind(k) && !IGNORABLE_KINDS.contains(k)
                })
                .map(str::to_string)
        });
        match unsupported {
            Some(k) => out.push(Selection::Skip {
                name,
                reason: format!("unsupported kind {k}"),
            }),
            None => out.push(Selection::Run(Case {
                name,
                input_dirs: inputs.iter().map(|d| corpus.join(d)).collect(),
                expected: corpus.join(expected),
            })),
        }
    }
    Ok(out)
}

/// The comparison upstream makes: every `\n` and `\r` removed.
pub fn normalize(s: &str) -> String {
    s.chars().filter(|c| *c != '\n' && *c != '\r').collect()
}

/// Runs `connections` (txt) on a case's inputs.
pub fn run_case(case: &Case, options: &Options) -> Result<String, InputError> {
    let a = Analysis::load(&case.input_dirs, options)?;
    Ok(connections::to_text(&connections::compute(
        &a,
        &Progress::hidden(),
    )))
}
