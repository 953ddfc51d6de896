//! The real `hubble` CLI (v1.19.4, `../shared/realclients/hubble.xz`) for the verdict-log
//! interop tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The unpacked hubble binary (version 1.19), or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    let path = palisade_testkit::realclients::binary("hubble")?;
    let v = Command::new(&path)
        .arg("version")
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let v = String::from_utf8_lossy(&v.stdout).to_string();
    if !v.contains("1.19") {
        return Err(format!("unexpected hubble version {v:?}"));
    }
    Ok(path)
}

/// `hubble observe --input-file log --all <args> -o jsonpb`: the uuids of the flows it
/// printed, the number of loss lines, and stderr.
pub fn observe(hubble: &Path, log: &Path, args: &[&str]) -> (BTreeSet<String>, usize, String) {
    let out = Command::new(hubble)
        .args(["observe", "--input-file"])
        .arg(log)
        .args(["--all", "-o", "jsonpb"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "hubble {args:?}: {out:?}");
    let mut uuids = BTreeSet::new();
    let mut lost = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(u) = v["flow"]["uuid"].as_str() {
            uuids.insert(u.to_string());
        } else if v.get("lost_events").is_some() {
            lost += 1;
        } else {
            panic!("unexpected hubble output {line}");
        }
    }
    (
        uuids,
        lost,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
