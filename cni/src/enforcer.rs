//! Client of the enforcer's endpoint API ([`crate::api`]): one request, one answer line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::{Request, Response};
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: &Path, timeout: Duration) -> Client {
        Client {
            socket: socket.to_owned(),
            timeout,
        }
    }

    fn unreachable(&self, source: std::io::Error) -> Error {
        Error::EnforcerUnreachable {
            socket: self.socket.clone(),
            source,
        }
    }

    fn protocol(&self, reason: String) -> Error {
        Error::EnforcerProtocol {
            socket: self.socket.clone(),
            reason,
        }
    }

    /// Sends one request and reads one answer. A timeout or a closed connection is
    /// "unreachable" (CNI code 11).
    pub fn call(&self, request: &Request) -> Result<Response, Error> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| self.unreachable(e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| self.unreachable(e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| self.unreachable(e))?;
        let mut line = serde_json::to_vec(request).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(|e| self.unreachable(e))?;
        let mut answer = String::new();
        let n = BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(|e| self.unreachable(e))?;
        if n == 0 {
            return Err(self.unreachable(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(answer.trim_end())
            .map_err(|e| self.protocol(format!("{e}: {answer:?}")))
    }
}
