//! The node's verdict-log signing key (Ed25519): read from `verdict_log_key`, generated
//! there (mode 0600, in a 0700 directory it creates) when absent. A key file that others
//! can read is refused: whoever reads it can forge checkpoints.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use palisade_observe::chain;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: verdict log key: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: verdict log key: mode {mode:o} lets others read it; chmod 600 it", path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: verdict log key: not 64 hex digits", path.display())]
    Format { path: PathBuf },
}

/// Reads the key at `path`, or generates and writes one when there is none.
pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let text = std::fs::read_to_string(path).map_err(io)?;
            let seed = chain::unhex::<32>(text.trim()).ok_or_else(|| KeyError::Format {
                path: path.to_path_buf(),
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(path),
        Err(e) => Err(io(e)),
    }
}

fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io)?;
    // create_new: two agents racing for the same path never overwrite each other's key.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(format!("{}\n", chain::hex(&seed)).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io)?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_generate(path),
        Err(e) => Err(io(e)),
    }
}
