//! `palisade-cni install`: the init container's copy of the plugin into the CNI bin
//! directory. The final name only ever holds the old binary or the whole new one (never a
//! partial file), with mode 0755; failures leave the target untouched; usage errors exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const PLUGIN: &str = env!("CARGO_BIN_EXE_palisade-cni");

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-cni-install-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn install(args: &[&Path]) -> std::process::Output {
    let mut c = Command::new(PLUGIN);
    c.arg("install");
    for (flag, v) in ["--from", "--to", "--name"].iter().zip(args) {
        c.arg(flag).arg(v);
    }
    c.output().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A reader polling the target while a 48 MiB binary replaces a 4 KiB one sees only those
/// two sizes, each complete; afterwards the content is the source's and the mode 0755.
#[test]
fn the_target_name_never_holds_a_partial_file() {
    let dir = tempdir("atomic");
    let (src_dir, bin) = (dir.join("src"), dir.join("bin"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let src = src_dir.join("palisade-cni");
    let new: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &new).unwrap();
    let old = vec![7u8; 4096];
    let dest = bin.join("palisade-cni");
    std::fs::write(&dest, &old).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, dest) = (done.clone(), dest.clone());
        let new_len = new.len() as u64;
        std::thread::spawn(move || {
            let (mut saw_old, mut saw_new) = (0u32, 0u32);
            loop {
                let finished = done.load(Ordering::Acquire);
                let m = std::fs::metadata(&dest).expect("the target name must always exist");
                assert_eq!(m.permissions().mode() & 0o777, 0o755, "mode of the target");
                match m.len() {
                    4096 => saw_old += 1,
                    n if n == new_len => saw_new += 1,
                    n => panic!("the target held a partial file of {n} bytes"),
                }
                if finished {
                    return (saw_old, saw_new);
                }
            }
        })
    };
    let out = install(&[&src, &bin]);
    done.store(true, Ordering::Release);
    let (saw_old, saw_new) = watcher.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&dest.display().to_string()),
        "{out:?}"
    );
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
    assert!(
        std::fs::read(&dest).unwrap() == new,
        "content differs from the source"
    );
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // No temporary file is left behind.
    assert_eq!(entries(&bin), ["palisade-cni"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary can install itself (what the init container does) under another name.
#[test]
fn installs_itself_under_a_given_name() {
    let dir = tempdir("self");
    let out = install(&[Path::new(PLUGIN), &dir, Path::new("other-name")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(entries(&dir), ["other-name"]);
    assert!(std::fs::read(dir.join("other-name")).unwrap() == std::fs::read(PLUGIN).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A missing source or target directory is exit 1 naming it, with the old binary intact and
/// nothing else left; usage errors are exit 2.
#[test]
fn failures_leave_the_target_untouched() {
    let dir = tempdir("fail");
    let dest = dir.join("palisade-cni");
    std::fs::write(&dest, b"old").unwrap();
    let out = install(&[&dir.join("missing/palisade-cni"), &dir]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--from") && err.contains("missing"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    assert_eq!(entries(&dir), ["palisade-cni"]);

    let out = install(&[Path::new(PLUGIN), &dir.join("no-such-dir")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-dir"),
        "{out:?}"
    );

    // A directory as the source is refused before anything is created.
    let out = install(&[&dir, &dir]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(entries(&dir), ["palisade-cni"]);

    for args in [&["install"][..], &["install", "--from", "x"], &["bogus"]] {
        let out = Command::new(PLUGIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{out:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
