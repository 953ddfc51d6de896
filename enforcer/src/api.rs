//! The server side of the local endpoint protocol (`palisade_api`): newline-delimited JSON
//! over a unix stream socket, one response line per request line.
//!
//! The server only frames, parses and dispatches; the decisions belong to an
//! [`EndpointRegistry`] (the sync loop). Bad input never ends the server or the connection:
//! a line that is not a valid request gets `{"result":"error","code":"bad_request",…}` and
//! the next line is read. Lines are capped in length and connections in number, so a
//! misbehaving client cannot exhaust memory or starve the CNI plugin.
//!
//! The client is `palisade_api::Client`.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use palisade_api::{ErrorCode, Registration, Request, Response};

use crate::config::Config;

/// What the API serves. Implemented by the sync loop; tests use a fake.
///
/// Methods return `Send` futures so each connection runs on its own task; implementations
/// write `async fn`.
pub trait EndpointRegistry: Send + Sync + 'static {
    fn register(&self, registration: Registration) -> impl Future<Output = Response> + Send;
    fn deregister(&self, container_id: String) -> impl Future<Output = Response> + Send;
    fn status(&self) -> impl Future<Output = Response> + Send;
}

/// Limits of the server; defaults from [`crate::config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_request_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits::from_config(&Config::default())
    }
}

impl ServerLimits {
    pub fn from_config(cfg: &Config) -> ServerLimits {
        ServerLimits {
            max_request_bytes: cfg.api_max_request_bytes,
            max_connections: cfg.api_max_connections,
            idle_timeout: cfg.api_idle_timeout(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}: cannot create the socket directory: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: another enforcer is serving this socket", path.display())]
    InUse { path: PathBuf },
    #[error("{}: exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{}: cannot remove the stale socket: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot bind: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot accept: {source}", path.display())]
    Accept {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bound endpoint API socket, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    limits: ServerLimits,
}

impl Server {
    /// Binds `path` with mode 0600. The parent directory is created (0755) when missing; a
    /// stale socket from an earlier run is removed, but a socket someone still answers on
    /// is not (two enforcers must not share a node). The socket is bound under a temporary
    /// name, restricted, then renamed into place, so it is never reachable with looser
    /// permissions. Must run inside a tokio runtime.
    pub fn bind(path: &Path, limits: ServerLimits) -> Result<Server, ApiError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| ApiError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if StdUnixStream::connect(path).is_ok() {
                    return Err(ApiError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Ok(_) => {
                return Err(ApiError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(_) => {}
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let bind_err = |source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(source) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(bind_err(source));
        }
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            limits,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then removes the socket file. Connections in
    /// progress finish on their own tasks.
    pub async fn serve<R, S>(self, registry: Arc<R>, shutdown: S) -> Result<(), ApiError>
    where
        R: EndpointRegistry,
        S: Future<Output = ()>,
    {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::pin!(shutdown);
        let result = loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break Ok(()),
                a = self.listener.accept() => a,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                // Out of descriptors or a connection reset before accept: transient.
                Err(e) if is_transient(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(source) => {
                    break Err(ApiError::Accept {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            let limits = self.limits;
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, &*registry, limits).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let resp = Response::error(
                            ErrorCode::Busy,
                            format!(
                                "too many connections (limit {}); retry",
                                limits.max_connections
                            ),
                        );
                        let _ = write_response(&mut stream, &resp).await;
                    });
                }
            }
        };
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// One line read from a connection.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Data(Vec<u8>),
    /// The line was longer than the limit; it has been consumed and discarded.
    TooLong,
    Eof,
}

/// Reads up to a newline, keeping at most `max` bytes; the rest of an oversize line is
/// read and dropped so the next request starts cleanly.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Data(buf)
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            let content = if done { take - 1 } else { take };
            if buf.len() + content > max {
                too_long = true;
                buf = Vec::new();
            } else {
                buf.extend_from_slice(&chunk[..content]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Data(buf)
            });
        }
    }
}

async fn serve_connection<R: EndpointRegistry>(
    stream: UnixStream,
    registry: &R,
    limits: ServerLimits,
) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = AsyncBufReader::new(rd);
    loop {
        let line = match tokio::time::timeout(
            limits.idle_timeout,
            read_line_limited(&mut rd, limits.max_request_bytes),
        )
        .await
        {
            Ok(Ok(l)) => l,
            // Idle, or the peer went away mid-line.
            Ok(Err(_)) | Err(_) => return,
        };
        let resp = match line {
            Line::Eof => return,
            Line::TooLong => Response::error(
                ErrorCode::BadRequest,
                format!(
                    "request line longer than {} bytes",
                    limits.max_request_bytes
                ),
            ),
            Line::Data(bytes) => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match palisade_api::decode_request(&bytes) {
                    Ok(req) => dispatch(registry, req).await,
                    Err(refusal) => refusal,
                }
            }
        };
        if write_response(&mut wr, &resp).await.is_err() {
            return;
        }
    }
}

async fn dispatch<R: EndpointRegistry>(registry: &R, req: Request) -> Response {
    match req {
        Request::Register(reg) => registry.register(reg).await,
        Request::Deregister { container_id } => registry.deregister(container_id).await,
        Request::Status => registry.status().await,
    }
}

async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
) -> std::io::Result<()> {
    let line = palisade_api::encode_line(resp).map_err(std::io::Error::other)?;
    w.write_all(&line).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use palisade_api::{Client, PROTOCOL_VERSION};

    use super::*;

    #[derive(Default)]
    struct FakeRegistry {
        registered: Mutex<BTreeMap<String, Registration>>,
    }

    impl EndpointRegistry for FakeRegistry {
        async fn register(&self, r: Registration) -> Response {
            let endpoint = format!("{}/{}", r.namespace, r.pod);
            self.registered
                .lock()
                .unwrap()
                .insert(r.container_id.clone(), r);
            Response::Registered {
                endpoint,
                identity: 256,
                ifindex: 7,
            }
        }

        async fn deregister(&self, container_id: String) -> Response {
            let existed = self
                .registered
                .lock()
                .unwrap()
                .remove(&container_id)
                .is_some();
            Response::Deregistered { existed }
        }

        async fn status(&self) -> Response {
            Response::Status {
                api_version: PROTOCOL_VERSION,
                endpoints: self.registered.lock().unwrap().len() as u32,
                ready: true,
                reason: None,
                warnings: Vec::new(),
                maps: Vec::new(),
                verdict_log: None,
            }
        }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "palisade-api-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs a server on its own runtime thread; dropping the handle stops it.
    struct Running {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<Result<(), ApiError>>>,
        registry: Arc<FakeRegistry>,
    }

    impl Running {
        fn stop(mut self) -> Result<(), ApiError> {
            let _ = self.stop.take().unwrap().send(());
            self.thread.take().unwrap().join().unwrap()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn start(path: &Path, limits: ServerLimits) -> Running {
        let registry = Arc::new(FakeRegistry::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        let reg = registry.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = match Server::bind(&path, limits) {
                    Ok(s) => s,
                    Err(e) => {
                        ready_tx.send(Err(e.to_string())).unwrap();
                        return Ok(());
                    }
                };
                ready_tx.send(Ok(())).unwrap();
                server
                    .serve(reg, async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        ready_rx.recv().unwrap().unwrap();
        Running {
            stop: Some(stop_tx),
            thread: Some(thread),
            registry,
        }
    }

    fn registration(id: &str) -> Registration {
        Registration {
            container_id: id.into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            host_ifname: "lxc123".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            labels: None,
            named_ports: Vec::new(),
        }
    }

    #[test]
    fn register_deregister_status_round_trip() {
        let d = TempDir::new("rt");
        let sock = d.0.join("run/enforcer.sock");
        let server = start(&sock, ServerLimits::default());
        let meta = std::fs::metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let mut c = Client::connect(&sock).unwrap();
        assert_eq!(
            c.request(&Request::Register(registration("c1"))).unwrap(),
            Response::Registered {
                endpoint: "shop/web-1".into(),
                identity: 256,
                ifindex: 7
            }
        );
        // Same connection, next request.
        assert_eq!(
            c.request(&Request::Status).unwrap(),
            Response::Status {
                api_version: PROTOCOL_VERSION,
                endpoints: 1,
                ready: true,
                reason: None,
                warnings: Vec::new(),
                maps: Vec::new(),
                verdict_log: None,
            }
        );
        assert_eq!(
            Client::connect(&sock)
                .unwrap()
                .request(&Request::Deregister {
                    container_id: "c1".into()
                })
                .unwrap(),
            Response::Deregistered { existed: true }
        );
        assert_eq!(
            c.request(&Request::Deregister {
                container_id: "c1".into()
            })
            .unwrap(),
            Response::Deregistered { existed: false }
        );
        assert!(server.registry.registered.lock().unwrap().is_empty());
        server.stop().unwrap();
        assert!(!sock.exists(), "socket removed at shutdown");
    }

    #[test]
    fn bad_input_is_answered_and_connection_survives() {
        let d = TempDir::new("bad");
        let sock = d.0.join("e.sock");
        let limits = ServerLimits {
            max_request_bytes: 1024,
            ..ServerLimits::default()
        };
        let _server = start(&sock, limits);
        let mut c = Client::connect(&sock).unwrap();

        let bad = |r: Response| match r {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadRequest);
                message
            }
            other => panic!("expected an error, got {other:?}"),
        };
        let m = bad(c.send_raw(b"{not json\n").unwrap());
        assert!(m.contains("invalid request"), "{m}");
        let m = bad(c.send_raw(b"{\"op\":\"launch\"}\n").unwrap());
        assert!(m.contains("launch"), "{m}");
        // A newer client's extra field is ignored, not refused.
        assert_eq!(
            c.send_raw(b"{\"op\":\"deregister\",\"container_id\":\"x\",\"extra\":1}\n")
                .unwrap(),
            Response::Deregistered { existed: false }
        );
        // A request that needs a newer protocol is refused with its own code.
        let line = format!(
            "{{\"op\":\"status\",\"min_version\":{}}}\n",
            PROTOCOL_VERSION + 1
        );
        match c.send_raw(line.as_bytes()).unwrap() {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::UnsupportedVersion);
                assert!(message.contains("upgrade the enforcer"), "{message}");
            }
            other => panic!("expected unsupported_version, got {other:?}"),
        }
        let m = bad(c
            .send_raw(b"{\"op\":\"register\",\"container_id\":\"x\"}\n")
            .unwrap());
        assert!(m.contains("missing field"), "{m}");
        // Oversize line: answered, discarded, and the connection still works.
        let mut big = vec![b'x'; 100_000];
        big.push(b'\n');
        let m = bad(c.send_raw(&big).unwrap());
        assert!(m.contains("longer than 1024"), "{m}");
        // Blank lines are skipped without an answer.
        assert!(matches!(
            c.send_raw(b"\n\n{\"op\":\"status\"}\n").unwrap(),
            Response::Status { .. }
        ));
    }

    #[test]
    fn connection_limit_answers_busy() {
        let d = TempDir::new("busy");
        let sock = d.0.join("e.sock");
        let limits = ServerLimits {
            max_connections: 1,
            ..ServerLimits::default()
        };
        let _server = start(&sock, limits);
        let mut first = Client::connect(&sock).unwrap();
        assert!(matches!(
            first.request(&Request::Status).unwrap(),
            Response::Status { .. }
        ));
        let mut second = Client::connect(&sock).unwrap();
        match second.request(&Request::Status) {
            Ok(Response::Error { code, .. }) => assert_eq!(code, ErrorCode::Busy),
            other => panic!("expected busy, got {other:?}"),
        }
        drop(first);
        // The slot frees once the first connection's task sees EOF.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = Client::connect(&sock).unwrap().request(&Request::Status);
            if matches!(r, Ok(Response::Status { .. })) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slot never freed: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn bind_replaces_stale_socket_but_not_live_one_or_files() {
        let d = TempDir::new("stale");
        std::fs::create_dir_all(&d.0).unwrap();
        let sock = d.0.join("e.sock");
        // A stale socket: bound, then its listener dropped.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let server = start(&sock, ServerLimits::default());
        assert!(matches!(
            Client::connect(&sock)
                .unwrap()
                .request(&Request::Status)
                .unwrap(),
            Response::Status { .. }
        ));

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async { Server::bind(&sock, ServerLimits::default()) })
            .unwrap_err();
        assert!(matches!(err, ApiError::InUse { .. }), "{err}");
        drop(server);

        let file = d.0.join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = rt
            .block_on(async { Server::bind(&file, ServerLimits::default()) })
            .unwrap_err();
        assert!(matches!(err, ApiError::NotASocket { .. }), "{err}");
        assert!(file.exists());
    }

    #[test]
    fn line_reader_limits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let data: &[u8] = b"abc\n0123456789\nxy";
            let mut r = AsyncBufReader::with_capacity(4, data);
            assert_eq!(
                read_line_limited(&mut r, 5).await.unwrap(),
                Line::Data(b"abc".to_vec())
            );
            assert_eq!(read_line_limited(&mut r, 5).await.unwrap(), Line::TooLong);
            assert_eq!(
                read_line_limited(&mut r, 5).await.unwrap(),
                Line::Data(b"xy".to_vec())
            );
            assert_eq!(read_line_limited(&mut r, 5).await.unwrap(), Line::Eof);
        });
    }
}
