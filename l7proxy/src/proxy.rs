//! The proxy's HTTP/1.x connection loop (feature `proxy`): one client connection, read request
//! by request with the strict framer, each request judged by the rules in force when its head
//! is complete, allowed requests forwarded in canonical form to one upstream connection,
//! responses relayed in order.
//!
//! - **One verdict per request, in order.** Pipelined requests are read one at a time; the
//!   next head is not looked at before the previous response was relayed.
//! - **The first refusal ends the connection.** A denied request is answered `403` (a refused
//!   one with its framer or normalization status) with `Connection: close`; nothing after it
//!   is forwarded. The connection is then closed gracefully (write side first, the client's
//!   unread bytes drained for a moment) so that the answer is not lost to a reset.
//! - **Rules per request.** [`Rules::decide`] is asked for every request, so a policy change
//!   reaches the next request of a kept-alive connection. No rules (`None`) is a deny.
//! - **Bodies** are forwarded by the framing the framer chose: `Content-Length` bytes
//!   exactly, or chunked decoded and re-encoded (extensions and trailers dropped). `Expect:
//!   100-continue` is answered by the proxy only after the request was allowed.
//! - `Upgrade` (including `h2c`) and `CONNECT` are refused (`501`) and logged as unsupported.
//! - **Limits**: a head must be complete within `head_timeout` of its first byte, a kept-alive
//!   connection may idle `idle_timeout`, the upstream must answer within `upstream_timeout`.
//! - **Upstream connections** come from the caller's [`Upstreams`]: opened on the first
//!   allowed request, and given back when the client leaves if their last response ended
//!   cleanly (complete, kept alive, nothing unread), so that the caller may keep them for the
//!   next connection of the same client. A request that finds a kept connection closed by the
//!   server before any byte of its response (the race every connection pool has) is sent
//!   once more on a new connection, but only a `GET`, `HEAD` or `OPTIONS` without a body.
//!
//! The caller owns the sockets: it accepts the client, decides which rules apply to the
//! connection, and says how to reach the upstream (transparently, from the client's address,
//! in the datapath). Every request is reported to the [`Sink`].

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::http1::{ChunkedDecoder, Framing, HeadLimits, ParsedHead, parse_head, serialize_head};
use crate::matcher::{Decision, RuleSet};
use crate::path::NormalizeOptions;
use crate::request::{NormalizedRequest, normalize};

/// The proxy's limits and options.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub head: HeadLimits,
    pub normalize: NormalizeOptions,
    /// From a head's first byte to its end.
    pub head_timeout: Duration,
    /// A kept-alive connection waiting for its next request.
    pub idle_timeout: Duration,
    /// Connecting upstream, and each wait for upstream bytes.
    pub upstream_timeout: Duration,
    /// How long the client's unread bytes are drained after a refusal before closing.
    pub linger: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            head: HeadLimits::default(),
            normalize: NormalizeOptions::default(),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(500),
        }
    }
}

/// The HTTP rules in force for a connection, asked once per request.
pub trait Rules: Send + Sync {
    /// The decision for one normalized request; `Err(reason)`: no rules may judge it on
    /// this connection (refused 403 with the reason in the record).
    fn decide(&self, req: &NormalizedRequest) -> Result<Decision, String>;
}

/// A closure giving the rule set in force: the set decides.
impl<F> Rules for F
where
    F: Fn() -> Option<Arc<RuleSet>> + Send + Sync,
{
    fn decide(&self, req: &NormalizedRequest) -> Result<Decision, String> {
        self()
            .map(|set| set.decide(req))
            .ok_or_else(|| "no HTTP rules are known for this connection".into())
    }
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed by `rule` and forwarded; the upstream answered `status` (0 when it gave no
    /// complete response).
    Forwarded { rule: u32, status: u16 },
    /// Denied by the rules (`decision` says how); answered `status`.
    Denied { decision: Decision, status: u16 },
    /// Refused before the rules were asked: the framer, normalization, an unsupported
    /// protocol switch, or no rules for the connection.
    Refused { status: u16, reason: String },
}

/// One request as the verdict log records it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// The request target as sent (lossy UTF-8).
    pub target: String,
    /// The normalized path the rules saw, when normalization succeeded.
    pub path: Option<String>,
    pub host: Option<String>,
    pub version: &'static str,
    pub outcome: Outcome,
    /// From the head's end to the response head's end (or the refusal).
    pub latency: Duration,
    /// Why an allowed request got no response from the upstream (answered 502).
    pub upstream_error: Option<String>,
}

impl RequestRecord {
    /// The record of a request refused before its head was read (no method or target).
    fn refused_head(status: u16, reason: String) -> RequestRecord {
        RequestRecord {
            method: String::new(),
            target: String::new(),
            path: None,
            host: None,
            version: "HTTP/1.1",
            outcome: Outcome::Refused { status, reason },
            latency: Duration::ZERO,
            upstream_error: None,
        }
    }
}

/// Where a client connection's upstream connections come from.
pub trait Upstreams<U> {
    /// A connection for the next request: one kept from an earlier client connection
    /// (`true`: the server may have closed it since) unless `fresh`, else a new one.
    fn open(&self, fresh: bool) -> impl Future<Output = io::Result<(U, bool)>>;

    /// A connection whose last response ended cleanly, no longer needed by its client.
    fn release(&self, conn: U) {
        drop(conn);
    }
}

/// A closure opening a new connection: nothing is kept.
impl<U, F, Fut> Upstreams<U> for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = io::Result<U>>,
{
    async fn open(&self, _fresh: bool) -> io::Result<(U, bool)> {
        Ok((self().await?, false))
    }
}

/// Where every request's record goes.
pub trait Sink: Send + Sync {
    fn request(&self, record: RequestRecord);
}

impl<F> Sink for F
where
    F: Fn(RequestRecord) + Send + Sync,
{
    fn request(&self, record: RequestRecord) {
        self(record)
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// Bytes read from one side and not yet consumed.
struct Side<S> {
    io: S,
    buf: Vec<u8>,
    eof: bool,
    /// An upstream whose last exchange ended cleanly (may serve another client).
    clean: bool,
    /// An upstream kept from an earlier client connection, not yet proven by a response.
    reused: bool,
}

impl<S: AsyncRead + Unpin> Side<S> {
    fn new(io: S) -> Side<S> {
        Side {
            io,
            buf: Vec::with_capacity(READ_CHUNK),
            eof: false,
            clean: false,
            reused: false,
        }
    }

    /// Reads more bytes within `limit` (into spare capacity, never zero-filled); `Ok(false)`
    /// at end of stream.
    async fn fill(&mut self, limit: Duration) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.buf.reserve(READ_CHUNK);
        let n = match timeout(limit, self.io.read_buf(&mut self.buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
        };
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// Moves exactly `n` bytes (buffered first, then read within `limit` per read) to `to`;
    /// `Ok(false)` when the stream ends first. A failed write is `Err(Copy::Write)`.
    async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        n: u64,
        to: &mut W,
        limit: Duration,
    ) -> Result<bool, Copy> {
        let mut left = n;
        while left > 0 {
            if self.buf.is_empty() && !self.fill(limit).await.map_err(Copy::Read)? {
                return Ok(false);
            }
            let take = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            to.write_all(&self.buf[..take]).await.map_err(Copy::Write)?;
            self.buf.drain(..take);
            left -= take as u64;
        }
        Ok(true)
    }
}

/// Which side of a copy failed.
enum Copy {
    Read(io::Error),
    Write(io::Error),
}

impl From<Copy> for io::Error {
    fn from(c: Copy) -> io::Error {
        match c {
            Copy::Read(e) | Copy::Write(e) => e,
        }
    }
}

/// Serves one client connection until it ends. `upstreams` gives the upstream connection
/// (on the first allowed request; again after the upstream closed) and takes it back at the
/// end if its last exchange ended cleanly.
pub async fn serve<C, U, P>(
    client: C,
    upstreams: &P,
    rules: &dyn Rules,
    sink: &dyn Sink,
    config: &ProxyConfig,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    P: Upstreams<U>,
{
    let mut upstream: Option<Side<U>> = None;
    let served = serve_client(client, &mut upstream, upstreams, rules, sink, config).await;
    if let Some(up) = upstream
        && up.clean
        && !up.eof
        && up.buf.is_empty()
    {
        upstreams.release(up.io);
    }
    served
}

/// A request that may be sent again on a new connection when a kept one turns out closed:
/// no body, and a method that asks for nothing to change.
fn retryable(head: &ParsedHead) -> bool {
    matches!(head.framing, Framing::None)
        && !head.expect_continue
        && matches!(head.method.as_str(), "GET" | "HEAD" | "OPTIONS")
}

async fn serve_client<C, U, P>(
    client: C,
    upstream: &mut Option<Side<U>>,
    upstreams: &P,
    rules: &dyn Rules,
    sink: &dyn Sink,
    config: &ProxyConfig,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    P: Upstreams<U>,
{
    let mut client = Side::new(client);
    loop {
        // The next head: the idle limit until its first byte, then the head limit.
        let mut started: Option<Instant> = (!client.buf.is_empty()).then(Instant::now);
        let head = loop {
            match parse_head(&client.buf, &config.head) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let record = RequestRecord::refused_head(e.status, e.to_string());
                    return refuse(&mut client, e.status, record, sink, config).await;
                }
            }
            let limit = match started {
                None => config.idle_timeout,
                Some(t) => config.head_timeout.saturating_sub(t.elapsed()),
            };
            match client.fill(limit).await {
                Ok(true) => {
                    started.get_or_insert_with(Instant::now);
                }
                // A partial head that missed its deadline: answered 408, never forwarded.
                Err(e) if e.kind() == io::ErrorKind::TimedOut && started.is_some() => {
                    let record = RequestRecord::refused_head(
                        408,
                        format!(
                            "the request head was not complete within {:?}",
                            config.head_timeout
                        ),
                    );
                    return refuse(&mut client, 408, record, sink, config).await;
                }
                // End of stream, or idle between requests: the connection is over.
                Ok(false) | Err(_) => return Ok(()),
            }
        };
        client.buf.drain(..head.head_len);
        let t0 = Instant::now();
        let mut record = RequestRecord {
            method: head.method.clone(),
            target: String::from_utf8_lossy(&head.target).into_owned(),
            path: None,
            host: None,
            version: if head.minor_version == 0 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            },
            outcome: Outcome::Refused {
                status: 0,
                reason: String::new(),
            },
            latency: Duration::ZERO,
            upstream_error: None,
        };
        if head.method == "CONNECT" || !head.upgrade.is_empty() {
            record.outcome = Outcome::Refused {
                status: 501,
                reason: if head.wants_h2c() {
                    "unsupported: HTTP/2 (h2c upgrade)".into()
                } else {
                    "unsupported: protocol switch (Upgrade or CONNECT)".into()
                },
            };
            return refuse(&mut client, 501, record, sink, config).await;
        }
        let req = match head.with_request_head(|h| normalize(h, config.normalize)) {
            Ok(r) => r,
            Err(e) => {
                let status = e.status();
                record.outcome = Outcome::Refused {
                    status,
                    reason: e.to_string(),
                };
                return refuse(&mut client, status, record, sink, config).await;
            }
        };
        record.path = Some(req.target.path.clone());
        record.host = req.host.as_ref().map(|h| h.name.clone());
        let decision = match rules.decide(&req) {
            Ok(d) => d,
            Err(reason) => {
                record.outcome = Outcome::Refused {
                    status: 403,
                    reason,
                };
                return refuse(&mut client, 403, record, sink, config).await;
            }
        };
        let Decision::Allow { rule } = decision else {
            let status = decision.status().unwrap_or(403);
            record.outcome = Outcome::Denied { decision, status };
            record.latency = t0.elapsed();
            return refuse(&mut client, status, record, sink, config).await;
        };
        if head.expect_continue {
            client
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let mut relayed = None;
        // At most two tries: the second only on a new connection, after a kept one failed
        // before any byte of a response.
        for fresh in [false, true] {
            if upstream.is_none() {
                let conn = match timeout(config.upstream_timeout, upstreams.open(fresh)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(_)) | Err(_) => {
                        record.outcome = Outcome::Refused {
                            status: 503,
                            reason: "the upstream could not be reached".into(),
                        };
                        return refuse(&mut client, 503, record, sink, config).await;
                    }
                };
                let mut side = Side::new(conn.0);
                side.reused = conn.1;
                *upstream = Some(side);
            }
            let Some(up) = upstream.as_mut() else {
                unreachable!("an upstream was set above")
            };
            let reused = up.reused;
            up.clean = false;
            let r = forward(&mut client, up, &head, &req, config).await;
            if let Ok((_, keep)) = &r {
                up.clean = *keep;
                up.reused = false;
            }
            if matches!(r, Err(Failure::Upstream(_))) && reused && !fresh && retryable(&head) {
                drop(upstream.take());
                continue;
            }
            relayed = Some(r);
            break;
        }
        let Some(relayed) = relayed else {
            unreachable!("the second try always ends the loop")
        };
        let (status, keep) = match relayed {
            Ok(r) => r,
            Err(Failure::RequestBody(reason)) => {
                // The upstream holds a partial request: that connection is dropped, and the
                // client is answered before anything of a response was relayed.
                drop(upstream.take());
                record.outcome = Outcome::Refused {
                    status: 400,
                    reason,
                };
                record.latency = t0.elapsed();
                return refuse(&mut client, 400, record, sink, config).await;
            }
            Err(Failure::Upstream(reason)) => {
                // Nothing of a response reached the client: it is answered 502, and the
                // upstream connection, in an unknown state, is dropped.
                drop(upstream.take());
                record.outcome = Outcome::Forwarded { rule, status: 502 };
                record.latency = t0.elapsed();
                record.upstream_error = Some(reason);
                return refuse(&mut client, 502, record, sink, config).await;
            }
            Err(Failure::Io(e)) => {
                record.outcome = Outcome::Forwarded { rule, status: 0 };
                record.latency = t0.elapsed();
                sink.request(record);
                return Err(e);
            }
        };
        record.outcome = Outcome::Forwarded { rule, status };
        record.latency = t0.elapsed();
        sink.request(record);
        if !keep || !head.keep_alive {
            let _ = client.io.shutdown().await;
            return Ok(());
        }
        if upstream.as_ref().is_some_and(|u| u.eof) {
            *upstream = None;
        }
    }
}

/// Why forwarding a request stopped.
enum Failure {
    /// The client's body broke its framing (before any response was relayed).
    RequestBody(String),
    /// The upstream failed before any byte of a response was relayed: closed, timed out,
    /// or sent a head that is not HTTP.
    Upstream(String),
    /// A socket failed, a deadline passed, or the upstream's response was unusable.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// A response relayed partway: the client already has bytes of it.
impl From<Copy> for Failure {
    fn from(c: Copy) -> Self {
        Failure::Io(c.into())
    }
}

/// Sends the request's head and body upstream, then relays the response. Returns the final
/// status and whether both sides may continue.
async fn forward<C, U>(
    client: &mut Side<C>,
    up: &mut Side<U>,
    head: &ParsedHead,
    req: &NormalizedRequest,
    config: &ProxyConfig,
) -> Result<(u16, bool), Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Nothing reached the client yet: a failed write of the head is the upstream's failure
    // (answered 502), as a closed connection found on the first read is.
    up.io
        .write_all(&serialize_head(head, req))
        .await
        .map_err(|e| Failure::Upstream(e.to_string()))?;
    match head.framing {
        Framing::None => {}
        Framing::Length(n) => {
            // The upstream failing while it is sent the body: nothing reached the client yet.
            let copied = client
                .copy_exact(n, &mut up.io, config.head_timeout)
                .await
                .map_err(|e| match e {
                    Copy::Write(e) => Failure::Upstream(e.to_string()),
                    Copy::Read(e) => Failure::Io(e),
                })?;
            if !copied {
                return Err(Failure::RequestBody(
                    "the request body ended before its Content-Length".into(),
                ));
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut payload = Vec::new();
            loop {
                let used = decoder
                    .feed(&client.buf, &mut payload)
                    .map_err(|e| Failure::RequestBody(format!("chunked request body: {e}")))?;
                client.buf.drain(..used);
                if !payload.is_empty() {
                    let mut chunk = format!("{:x}\r\n", payload.len()).into_bytes();
                    chunk.append(&mut payload);
                    chunk.extend_from_slice(b"\r\n");
                    up.io
                        .write_all(&chunk)
                        .await
                        .map_err(|e| Failure::Upstream(e.to_string()))?;
                }
                if decoder.is_done() {
                    up.io
                        .write_all(b"0\r\n\r\n")
                        .await
                        .map_err(|e| Failure::Upstream(e.to_string()))?;
                    break;
                }
                if !client.fill(config.head_timeout).await? {
                    return Err(Failure::RequestBody(
                        "the chunked request body ended early".into(),
                    ));
                }
            }
        }
    }
    up.io
        .flush()
        .await
        .map_err(|e| Failure::Upstream(e.to_string()))?;
    relay_response(client, up, head.method == "HEAD", !head.keep_alive, config).await
}

/// How a response body is delimited.
enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Relays 1xx responses and the final response (head as received, body by its framing).
/// When the client's connection ends with this response (`client_close`), the final head is
/// written again without the upstream's connection options and with `Connection: close`.
async fn relay_response<C, U>(
    client: &mut Side<C>,
    up: &mut Side<U>,
    head_request: bool,
    client_close: bool,
    config: &ProxyConfig,
) -> Result<(u16, bool), Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Until the first response head is relayed, an upstream failure can still be answered.
    let mut relayed = false;
    loop {
        let failed = |relayed: bool, e: io::Error| {
            if relayed {
                Failure::Io(e)
            } else {
                Failure::Upstream(e.to_string())
            }
        };
        let (len, status, body, keep, closing_head) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&up.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let (body, keep) = response_framing(&resp, status, head_request)
                        .map_err(|e| failed(relayed, e))?;
                    let closing_head = (client_close && !(100..200).contains(&status))
                        .then(|| closing_response_head(&resp, status));
                    break (len, status, body, keep, closing_head);
                }
                Ok(httparse::Status::Partial) => {
                    if up.buf.len() > config.head.max_head_bytes {
                        return Err(failed(relayed, invalid("the response head is too large")));
                    }
                    let more = up
                        .fill(config.upstream_timeout)
                        .await
                        .map_err(|e| failed(relayed, e))?;
                    if !more {
                        return Err(failed(
                            relayed,
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the upstream closed before a complete response head",
                            ),
                        ));
                    }
                }
                Err(e) => {
                    return Err(failed(
                        relayed,
                        invalid(&format!("invalid response head: {e}")),
                    ));
                }
            }
        };
        relayed = true;
        // The head, and as much of a sized body as already arrived, in one write.
        let with_body = match body {
            ResponseBody::Length(n) => {
                len + usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(up.buf.len() - len)
            }
            _ => len,
        };
        match closing_head {
            None => client.io.write_all(&up.buf[..with_body]).await?,
            Some(mut head) => {
                head.extend_from_slice(&up.buf[len..with_body]);
                client.io.write_all(&head).await?;
            }
        }
        up.buf.drain(..with_body);
        let body = match body {
            ResponseBody::Length(n) => ResponseBody::Length(n - (with_body - len) as u64),
            other => other,
        };
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(Failure::Io(invalid("the upstream switched protocols")));
            }
            continue;
        }
        match body {
            ResponseBody::None => {}
            ResponseBody::Length(n) => {
                if !up
                    .copy_exact(n, &mut client.io, config.upstream_timeout)
                    .await?
                {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the response body ended early",
                    )));
                }
            }
            ResponseBody::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut sink = Vec::new();
                loop {
                    let used = decoder
                        .feed(&up.buf, &mut sink)
                        .map_err(|e| Failure::Io(invalid(&e.to_string())))?;
                    sink.clear();
                    client.io.write_all(&up.buf[..used]).await?;
                    up.buf.drain(..used);
                    if decoder.is_done() {
                        break;
                    }
                    if !up.fill(config.upstream_timeout).await? {
                        return Err(Failure::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the chunked response ended early",
                        )));
                    }
                }
            }
            ResponseBody::UntilClose => {
                loop {
                    client.io.write_all(&up.buf).await?;
                    up.buf.clear();
                    if !up.fill(config.upstream_timeout).await? {
                        break;
                    }
                }
                client.io.flush().await?;
                return Ok((status, false));
            }
        }
        client.io.flush().await?;
        return Ok((status, keep && !up.eof));
    }
}

/// A response head for a client whose connection closes after it: status line and fields
/// as received, less the connection options (and the fields they name), plus
/// `Connection: close`.
fn closing_response_head(resp: &httparse::Response<'_, '_>, status: u16) -> Vec<u8> {
    let named: Vec<String> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        // The framing fields stay whatever a connection option names: the body follows.
        let framing = matches!(lower.as_str(), "content-length" | "transfer-encoding");
        if matches!(
            lower.as_str(),
            "connection" | "keep-alive" | "proxy-connection"
        ) || (named.contains(&lower) && !framing)
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// The response's body framing (RFC 9112 §6.3) and whether the upstream keeps the connection.
fn response_framing(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    head_request: bool,
) -> io::Result<(ResponseBody, bool)> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| invalid("invalid Content-Length in the response"))?;
            if length.is_some_and(|l| l != v) {
                return Err(invalid("conflicting Content-Length in the response"));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            chunked = v.trim().ends_with("chunked");
            if !chunked {
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            }
            if resp.version == Some(0) && v.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        ResponseBody::None
    } else if chunked {
        ResponseBody::Chunked
    } else if let Some(n) = length {
        ResponseBody::Length(n)
    } else if close || resp.version == Some(0) {
        ResponseBody::UntilClose
    } else {
        // HTTP/1.1 with neither framing header: the body runs to the close.
        ResponseBody::UntilClose
    };
    Ok((body, !close))
}

/// Answers a refusal with `Connection: close`, reports it, and closes gracefully.
async fn refuse<C>(
    client: &mut Side<C>,
    status: u16,
    record: RequestRecord,
    sink: &dyn Sink,
    config: &ProxyConfig,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    sink.request(record);
    let body = match status {
        403 => "Access denied\r\n",
        408 => "Request timeout\r\n",
        501 => "Not implemented\r\n",
        502 => "Bad gateway\r\n",
        503 => "Upstream unavailable\r\n",
        _ => "Bad request\r\n",
    };
    let answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    );
    client.io.write_all(answer.as_bytes()).await?;
    client.io.flush().await?;
    let _ = client.io.shutdown().await;
    // Drain what the client still sends for a moment, so that closing with unread bytes
    // does not reset the connection before the answer was read.
    let deadline = Instant::now() + config.linger;
    loop {
        client.buf.clear();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.fill(left).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    Ok(())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        502 => "Bad Gateway",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn a_closing_head_drops_the_upstreams_connection_options_and_keeps_the_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop, Content-Length\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-End: e\r\n\r\nok";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        let head = closing_response_head(&resp, 200);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-End: e\r\nConnection: close\r\n\r\n"
        );
    }
}
