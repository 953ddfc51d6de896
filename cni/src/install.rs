//! `palisade-cni install --from SRC --to DIR`: puts the plugin binary into the node's CNI
//! bin directory without a shell in the image (the DaemonSet's init container runs it).
//!
//! The copy goes to a hidden temporary file in DIR (same file system), is made 0755 and
//! synced, then renamed over `DIR/<name>`: a runtime that executes the plugin while the
//! copy runs finds the old binary or the new one, never a partial file. The directory is
//! synced after the rename so the new name survives a node crash.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of the installed binary: runtimes execute it as root; others may read it.
pub const MODE: u32 = 0o755;

/// Exit status for a usage error (unknown or missing argument).
pub const EXIT_USAGE: i32 = 2;

pub const USAGE: &str = "usage: palisade-cni install --from SRC --to DIR [--name NAME]\n\
    Copies SRC to DIR/NAME (default: SRC's file name) through a temporary file and a rename,\n\
    mode 0755. Without arguments palisade-cni is the CNI plugin (CNI_COMMAND and stdin).";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what}")]
    Usage { what: String },
    #[error("--from {}: {source}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--from {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("--to {}: {step}: {source}", dir.display())]
    Target {
        dir: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What `install` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallArgs {
    pub from: PathBuf,
    pub to: PathBuf,
    pub name: OsString,
}

impl InstallArgs {
    /// Parses the arguments after `install`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<InstallArgs, InstallError> {
        let usage = |what: String| InstallError::Usage { what };
        let (mut from, mut to, mut name) = (None, None, None);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let slot = match flag.to_str() {
                Some("--from") => &mut from,
                Some("--to") => &mut to,
                Some("--name") => &mut name,
                _ => return Err(usage(format!("unknown argument {flag:?}"))),
            };
            let value = it
                .next()
                .ok_or_else(|| usage(format!("{} needs a value", flag.to_string_lossy())))?;
            if value.is_empty() {
                return Err(usage(format!("{} is empty", flag.to_string_lossy())));
            }
            *slot = Some(value);
        }
        let from = PathBuf::from(from.ok_or_else(|| usage("--from is required".into()))?);
        let to = PathBuf::from(to.ok_or_else(|| usage("--to is required".into()))?);
        let name = match name {
            Some(n) => n,
            None => from
                .file_name()
                .map(OsString::from)
                .ok_or_else(|| usage(format!("--from {} names no file", from.display())))?,
        };
        let n = Path::new(&name);
        if n.components().count() != 1 || n.file_name() != Some(name.as_os_str()) {
            return Err(usage(format!("--name {name:?} must be a plain file name")));
        }
        Ok(InstallArgs { from, to, name })
    }
}

/// Copies `args.from` to `args.to/args.name` atomically (temp file + rename, mode 0755).
/// Returns the installed path. On failure the temporary file is removed and the target
/// name is untouched.
pub fn install(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    let source_err = |source| InstallError::Source {
        path: args.from.clone(),
        source,
    };
    let target_err = |step, source| InstallError::Target {
        dir: args.to.clone(),
        step,
        source,
    };
    let mut src = File::open(&args.from).map_err(source_err)?;
    if !src.metadata().map_err(source_err)?.is_file() {
        return Err(InstallError::NotAFile {
            path: args.from.clone(),
        });
    }
    let dest = args.to.join(&args.name);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(&args.name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = args.to.join(tmp_name);
    // A leftover of a killed install with our pid (pid reuse) is replaced.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(&tmp)
            .map_err(|e| target_err("creating the temporary file", e))?;
        io::copy(&mut src, &mut out).map_err(|e| target_err("copying", e))?;
        // The umask may have cleared bits of the create mode.
        out.set_permissions(Permissions::from_mode(MODE))
            .map_err(|e| target_err("setting mode 0755", e))?;
        out.sync_all().map_err(|e| target_err("syncing", e))?;
        drop(out);
        std::fs::rename(&tmp, &dest).map_err(|e| target_err("renaming into place", e))?;
        File::open(&args.to)
            .and_then(|d| d.sync_all())
            .map_err(|e| target_err("syncing the directory", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}

/// The `install` subcommand: prints the installed path, or the error; the exit status is
/// 0, 1 (the copy failed) or [`EXIT_USAGE`].
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let parsed = match InstallArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("palisade-cni install: {e}\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    match install(&parsed) {
        Ok(dest) => {
            println!("installed {}", dest.display());
            0
        }
        Err(e) => {
            eprintln!("palisade-cni install: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<InstallArgs, InstallError> {
        InstallArgs::parse(s.iter().map(OsString::from))
    }

    #[test]
    fn arguments() {
        let a = args(&[
            "--from",
            "/usr/bin/palisade-cni",
            "--to",
            "/host/opt/cni/bin",
        ])
        .unwrap();
        assert_eq!(a.name, OsString::from("palisade-cni"));
        let a = args(&["--to", "/d", "--from", "/s/x", "--name", "y"]).unwrap();
        assert_eq!(
            (a.from, a.to, a.name),
            ("/s/x".into(), "/d".into(), "y".into())
        );
        for bad in [
            &["--from", "/s/x"][..],
            &["--to", "/d"],
            &["--from", "/s/x", "--to"],
            &["--from", "", "--to", "/d"],
            &["--from", "/s/x", "--to", "/d", "--bogus", "1"],
            &["--from", "/s/x", "--to", "/d", "--name", "../x"],
            &["--from", "/s/x", "--to", "/d", "--name", "a/b"],
            &["--from", "/", "--to", "/d"],
        ] {
            assert!(
                matches!(args(bad), Err(InstallError::Usage { .. })),
                "{bad:?}"
            );
        }
    }
}
