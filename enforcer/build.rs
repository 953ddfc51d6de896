//! Compiles the C datapath (../ebpf) with clang-19 and leaves the object in OUT_DIR, where
//! `src/datapath/mod.rs` embeds it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for dir in [
        ebpf.clone(),
        ebpf.join("lib"),
        ebpf.join("include"),
        ebpf.join("tests"),
    ] {
        rerun_for(&dir)?;
    }
    let clang = std::env::var("PALISADE_CLANG").unwrap_or_else(|_| "clang-19".into());
    compile(
        &clang,
        &ebpf,
        &ebpf.join("tc_endpoint.c"),
        &out.join("tc_endpoint.o"),
    )?;
    // Test and bench-only programs (checksum helpers, a stand-in for an older agent, the
    // datapath benchmark's one-lookup floor); never embedded in the agent.
    compile(
        &clang,
        &ebpf,
        &ebpf.join("tests/test_progs.c"),
        &out.join("test_progs.o"),
    )?;
    Ok(())
}

fn compile(clang: &str, ebpf: &Path, src: &Path, obj: &Path) -> anyhow::Result<()> {
    let status = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-I{}", ebpf.join("include").display()))
        .args(["-Wall", "-Werror", "-c"])
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {clang}: {e}. The eBPF datapath is built with clang 19: \
                 install the Debian packages clang-19 and libbpf-dev (./palisade test does)"
            )
        })?;
    anyhow::ensure!(
        status.success(),
        "{clang} failed to compile {} ({status})",
        src.display()
    );
    Ok(())
}

fn rerun_for(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-env-changed=PALISADE_CLANG");
    Ok(())
}
