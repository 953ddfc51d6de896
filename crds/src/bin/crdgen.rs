//! Writes Palisade's CRD manifests to `deploy/crds/` (or the directory given), or with `--check`
//! compares them with what is there and fails on any difference (CI runs the check).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: crdgen [--check] [DIR]

Writes the CRDs of PalisadeNetworkPolicy and PalisadeClusterNetworkPolicy, generated from the
Rust types in crds/src/lib.rs, to DIR (default: deploy/crds of the repository).
  --check   write nothing; exit 1 if a file in DIR differs from what would be written";

fn main() -> ExitCode {
    let mut check = false;
    let mut dir: Option<PathBuf> = None;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => {
                eprintln!("error: unknown flag {s}\n{USAGE}");
                return ExitCode::from(2);
            }
            s => dir = Some(PathBuf::from(s)),
        }
    }
    let dir =
        dir.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds"));
    let manifests = match palisade_crds::crd_manifests() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: rendering the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for (name, yaml) in manifests {
        let path = dir.join(&name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, yaml))
        {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "error: the committed CRDs differ from the Rust types: {}\nrun `cargo run -p palisade-crds --features kube --bin crdgen` and commit the result",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
