//! The verdict log file: appended lines, rotated by size without losing an accepted line.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::Config;

use super::FlowLogError;

/// Appends lines to a file and rotates it by size: `log` -> `log.1` -> … -> `log.N`, the
/// oldest dropped. A line is accepted when `write_line` returns `Ok`; an accepted line is
/// flushed before any rotation, so rotation never loses one. Between rotations lines sit
/// in a buffer until [`RotatingWriter::flush`] (call it after each batch of events).
#[derive(Debug)]
pub struct RotatingWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    fsync: bool,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl RotatingWriter {
    /// Opens (appending) or creates `path`, creating its parent directories.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: u32,
        fsync: bool,
    ) -> Result<RotatingWriter, FlowLogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| FlowLogError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut w = RotatingWriter {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            fsync,
            file: None,
            size: 0,
        };
        w.reopen()?;
        Ok(w)
    }

    pub fn from_config(cfg: &Config) -> Result<RotatingWriter, FlowLogError> {
        RotatingWriter::open(
            &cfg.verdict_log,
            cfg.verdict_log_max_bytes,
            cfg.verdict_log_keep,
            cfg.verdict_log_fsync,
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the current file, buffered lines included.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path of rotated file `n` (1 = newest).
    pub fn rotated_path(&self, n: u32) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Cuts the current file to `len` bytes (a line a crash left incomplete); the next
    /// line is appended there.
    pub fn truncate_to(&mut self, len: u64) -> Result<(), FlowLogError> {
        self.flush()?;
        if let Some(f) = self.file.as_mut() {
            f.get_ref()
                .set_len(len)
                .map_err(|source| FlowLogError::Write {
                    path: self.path.clone(),
                    source,
                })?;
        }
        self.size = len;
        Ok(())
    }

    /// Whether a line of `len` bytes (newline included) would rotate the file first.
    pub fn would_rotate(&self, len: u64) -> bool {
        self.size > 0 && self.size + len > self.max_bytes
    }

    /// The files of this log, oldest first (rotations, then the current file).
    pub fn files(&self) -> Vec<PathBuf> {
        palisade_observe::files::log_files(&self.path)
    }

    /// Appends `line` and a newline, rotating first when the line would take a non-empty
    /// file past the size limit (a line longer than the limit gets a file of its own).
    /// `Err` means the line was not accepted.
    pub fn write_line(&mut self, line: &str) -> Result<(), FlowLogError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let path = &self.path;
        let f = self.file.as_mut().ok_or_else(|| FlowLogError::Open {
            path: path.clone(),
            source: std::io::Error::other("log file not open"),
        })?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .map_err(|source| FlowLogError::Write {
                path: path.clone(),
                source,
            })?;
        self.size += len;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), FlowLogError> {
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(|source| FlowLogError::Write {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), FlowLogError> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
            .map_err(|source| FlowLogError::Open {
                path: self.path.clone(),
                source,
            })?;
        self.size = f
            .metadata()
            .map_err(|source| FlowLogError::Open {
                path: self.path.clone(),
                source,
            })?
            .len();
        self.file = Some(BufWriter::with_capacity(64 * 1024, f));
        Ok(())
    }

    /// Flushes, renames the file away (`log` -> `log.1` -> …) and opens a new one.
    pub fn rotate(&mut self) -> Result<(), FlowLogError> {
        // Everything accepted reaches the file before it is renamed away.
        self.flush()?;
        if let Some(f) = self.file.as_mut()
            && self.fsync
        {
            f.get_ref()
                .sync_all()
                .map_err(|source| FlowLogError::Write {
                    path: self.path.clone(),
                    source,
                })?;
        }
        let oldest = self.rotated_path(self.keep);
        match std::fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FlowLogError::Rotate {
                    from: oldest.clone(),
                    to: oldest,
                    source,
                });
            }
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated_path(n);
            let to = self.rotated_path(n + 1);
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(FlowLogError::Rotate { from, to, source }),
            }
        }
        let to = self.rotated_path(1);
        std::fs::rename(&self.path, &to).map_err(|source| FlowLogError::Rotate {
            from: self.path.clone(),
            to,
            source,
        })?;
        self.file = None;
        self.size = 0;
        self.reopen()
    }
}
