//! The one synchronous client of the endpoint protocol, used by the CNI plugin, the
//! enforcer's `register`/`deregister`/`status` commands and the test harness.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Request, Response, encode_request};

/// Default time a [`Client`] waits for a connection, a write or an answer. Registration
/// waits for the pod's policy to be written, so it is generous.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: cannot connect to the enforcer: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the enforcer closed the connection without answering", path.display())]
    Closed { path: PathBuf },
    #[error("{}: cannot encode the request: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: unreadable response {line:?}: {source}", path.display())]
    Decode {
        path: PathBuf,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// True when no answer came (no socket, refused, timed out, closed): the enforcer may
    /// be starting or busy, so the caller may retry. False when an answer came but could
    /// not be read, or the request could not be written.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. }
        )
    }
}

/// A blocking client of the endpoint API. Several requests may share one connection.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects with [`DEFAULT_CLIENT_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Client::connect_with_timeout(path, DEFAULT_CLIENT_TIMEOUT)
    }

    /// Connects; `timeout` bounds the connection's every read and write.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_err)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    /// One request on a fresh connection.
    pub fn call(path: &Path, timeout: Duration, req: &Request) -> Result<Response, ClientError> {
        Client::connect_with_timeout(path, timeout)?.request(req)
    }

    /// Sends one request and waits for its answer.
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        let line = encode_request(req).map_err(|source| ClientError::Encode {
            path: self.path.clone(),
            source,
        })?;
        self.send_raw(&line)
    }

    /// Sends raw bytes (one or more lines) and reads one response line. For tests of the
    /// server's input handling and of other protocol versions.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<Response, ClientError> {
        let io = |op| {
            let path = self.path.clone();
            move |source| ClientError::Io { path, op, source }
        };
        self.reader
            .get_mut()
            .write_all(bytes)
            .and_then(|()| self.reader.get_mut().flush())
            .map_err(io("write"))?;
        let mut resp = String::new();
        let n = self.reader.read_line(&mut resp).map_err(io("read"))?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(resp.trim_end()).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            line: resp.trim_end().to_string(),
            source,
        })
    }
}
