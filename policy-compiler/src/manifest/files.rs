//! Which files are read, and how: manifest names, directories walked, regular files only,
//! each read through a size cap.

use super::*;

pub(super) fn file_type_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Reads a regular file (symlinks followed) through a size cap. The file is opened
/// non-blocking, so a FIFO swapped in after the type check cannot block the open, and its
/// type is checked again on the open descriptor.
pub(super) fn read_capped(path: &Path, max: u64) -> Result<String, LoadError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegular {
            path: path.to_path_buf(),
            file_type: file_type_name(&meta.file_type()),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegular {
            path: path.to_path_buf(),
            file_type: file_type_name(&meta.file_type()),
        });
    }
    if meta.len() > max {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            limit: max,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > max {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            limit: max,
        });
    }
    String::from_utf8(buf).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

pub(super) fn collect_files(
    path: &Path,
    explicit: bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            LoadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| LoadError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, false, out)?;
        }
    } else if explicit || is_manifest_name(path) {
        // A manifest-named FIFO, device or socket is an error (read_capped names it), not
        // a silent skip: the operator meant it to be read.
        out.push(path.to_path_buf());
    }
    Ok(())
}

pub(super) fn is_manifest_name(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml") | Some("json")
    )
}
