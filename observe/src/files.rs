//! The files of one verdict log: `verdicts.jsonl` and its rotations `verdicts.jsonl.1` …
//! `.N` (enforcer/src/events/rotate.rs), read oldest first.

use std::path::{Path, PathBuf};

/// The existing files of the log at `path`, oldest first: `.N`, …, `.1`, then `path`.
/// Numbering stops at the first missing rotation.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let rotated = |n: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    };
    let mut out: Vec<PathBuf> = (1..=10_000)
        .map(rotated)
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// The files to read for each path given: a path that is a rotated file itself (or any
/// file when `rotated` is false) is read alone; a base path brings its rotations.
pub fn expand(paths: &[PathBuf], rotated: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if rotated {
            out.extend(log_files(p));
        } else if p.exists() {
            out.push(p.clone());
        }
    }
    out
}
