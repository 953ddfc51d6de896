//! HTTP/1.x request heads and framing, strictly (reliability plan §4.1–§4.4).
//!
//! `httparse` tokenizes the head; every framing decision is made here. The rules:
//! - the head ends at the first empty line; at most one empty line may precede the request
//!   line; a bare LF or bare CR anywhere in the head is refused (httparse accepts bare LF);
//! - HTTP/1.0 and HTTP/1.1 only (HTTP/2 prior knowledge is reported as such); head ≤ 64 KiB,
//!   ≤ 100 fields, each line ≤ 8 KiB (431 beyond);
//! - header names are tokens without `_`; values hold no control character but HTAB; the
//!   framing and routing headers (Content-Length, Transfer-Encoding, Host, Expect, Upgrade,
//!   Connection) hold no obs-text;
//! - framing comes from exactly one source: Content-Length (`1*DIGIT`, ≤ 19 digits; duplicates
//!   only if identical; no lists) or Transfer-Encoding exactly `chunked` (once, case-insensitive,
//!   HTTP/1.1 only); both → 400; another coding → 501;
//! - HTTP/1.1 needs exactly one Host; `Expect` may only be `100-continue` (417 otherwise).
//!
//! A parsed head is forwarded only through [`serialize_head`]: canonical casing, CRLF, one
//! framing header, hop-by-hop headers removed, never the raw bytes.

use std::fmt;

use crate::request::{NormalizedRequest, RequestHead};

/// Limits on a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_line_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_line_bytes: 8 * 1024,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHead {
    pub method: String,
    /// The request target as sent (normalized by [`crate::request::normalize`]).
    pub target: Vec<u8>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names as sent, values with surrounding whitespace removed, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub framing: Framing,
    /// Whether the client keeps the connection open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Protocols named by `Upgrade` (lower-cased), when the client asks to switch.
    pub upgrade: Vec<String>,
    /// Lower-cased tokens of `Connection`.
    pub connection: Vec<String>,
    /// Bytes of the input the head took (including a leading empty line).
    pub head_len: usize,
}

impl ParsedHead {
    /// The head as the matcher's input.
    pub fn with_request_head<R>(&self, f: impl FnOnce(&RequestHead<'_>) -> R) -> R {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        f(&RequestHead {
            method: &self.method,
            target: &self.target,
            headers: &headers,
        })
    }

    /// Whether the client asks for an `h2c` upgrade (HTTP/2 over cleartext).
    pub fn wants_h2c(&self) -> bool {
        self.upgrade.iter().any(|u| u == "h2c")
            || self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("http2-settings"))
    }
}

/// Why a head was refused; `status` is what the proxy answers before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub status: u16,
    pub reason: HeadProblem,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.status)
    }
}

impl std::error::Error for HeadError {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadProblem {
    #[error("the request head is over {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("a line of the request head is over {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("a bare LF at offset {offset} (lines end with CRLF)")]
    BareLf { offset: usize },
    #[error("a bare CR at offset {offset}")]
    BareCr { offset: usize },
    #[error("more than one empty line before the request line")]
    LeadingEmptyLines,
    #[error("HTTP/2 with prior knowledge is not supported on an L7-filtered port")]
    Http2PriorKnowledge,
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("the header name {name:?} contains '_', which backends may read as '-'")]
    UnderscoreInName { name: String },
    #[error("the value of {name} contains a control character")]
    ControlInValue { name: String },
    #[error("the value of {name} contains non-ASCII bytes")]
    ObsTextInValue { name: String },
    #[error("invalid Content-Length {value:?}")]
    BadContentLength { value: String },
    #[error("Content-Length headers disagree")]
    ConflictingContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("malformed Transfer-Encoding {value:?}")]
    BadTransferEncoding { value: String },
    #[error("unsupported transfer coding {value:?} (only chunked)")]
    UnsupportedTransferCoding { value: String },
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    ChunkedHttp10,
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("{count} Host headers")]
    DuplicateHost { count: usize },
    #[error("unsupported expectation {value:?}")]
    BadExpect { value: String },
    #[error("{count} {name} headers")]
    DuplicateHeader { name: String, count: usize },
}

fn refuse(status: u16, reason: HeadProblem) -> HeadError {
    HeadError { status, reason }
}

fn bad(reason: HeadProblem) -> HeadError {
    refuse(400, reason)
}

/// Headers whose value routes or frames the request: obs-text refused, at most one each
/// (Content-Length may repeat identically; Transfer-Encoding is checked as a list).
const SENSITIVE: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "expect",
    "upgrade",
    "connection",
];

/// Parse a request head from the start of `buf`. `Ok(None)`: not complete yet.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<ParsedHead>, HeadError> {
    // At most one empty line before the request line.
    let start = if buf.starts_with(b"\r\n") { 2 } else { 0 };
    if buf[start..].starts_with(b"\r\n") {
        return Err(bad(HeadProblem::LeadingEmptyLines));
    }
    if buf.len() < start + 2 && buf.get(start) == Some(&b'\r') {
        return Ok(None);
    }
    // A request line starts with a method token: anything else (a TLS ClientHello, a binary
    // protocol) is refused at its first byte instead of waiting for a head that never ends.
    let line = &buf[start..];
    let method_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if (method_end == 0 && !line.is_empty())
        || line[..method_end]
            .iter()
            .any(|&b| !crate::request::is_tchar(b))
    {
        return Err(bad(HeadProblem::Malformed(
            "the request line does not start with a method token (not HTTP/1.x; TLS?)".into(),
        )));
    }
    let Some(end) = scan_head(buf, start, limits)? else {
        return Ok(None);
    };
    let head = &buf[start..end];
    if head.starts_with(b"PRI * HTTP/2.0") {
        return Err(bad(HeadProblem::Http2PriorKnowledge));
    }
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(bad(HeadProblem::Malformed("incomplete head".into()))),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                431,
                HeadProblem::TooManyHeaders {
                    limit: limits.max_headers,
                },
            ));
        }
        Err(e) => return Err(bad(HeadProblem::Malformed(e.to_string()))),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad(HeadProblem::Malformed(
            "incomplete request line".into(),
        )));
    };
    let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        if h.name.contains('_') {
            return Err(bad(HeadProblem::UnderscoreInName {
                name: h.name.to_string(),
            }));
        }
        let value = trim_ows(h.value);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad(HeadProblem::ControlInValue {
                name: h.name.to_string(),
            }));
        }
        let lower = h.name.to_ascii_lowercase();
        if SENSITIVE.contains(&lower.as_str()) && value.iter().any(|&b| b >= 0x80) {
            return Err(bad(HeadProblem::ObsTextInValue {
                name: h.name.to_string(),
            }));
        }
        headers.push((h.name.to_string(), value.to_vec()));
    }
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    for name in ["expect", "upgrade", "connection"] {
        let count = values(name).len();
        if count > 1 {
            return Err(bad(HeadProblem::DuplicateHeader {
                name: name.to_string(),
                count,
            }));
        }
    }
    let hosts = values("host");
    if hosts.len() > 1 {
        return Err(bad(HeadProblem::DuplicateHost { count: hosts.len() }));
    }
    if hosts.is_empty() && version == 1 {
        return Err(bad(HeadProblem::MissingHost));
    }
    let framing = framing(
        &values("content-length"),
        &values("transfer-encoding"),
        version,
    )?;
    let connection: Vec<String> = values("connection")
        .first()
        .map(|v| tokens(v))
        .unwrap_or_default();
    let keep_alive = if version == 1 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    let expect_continue = match values("expect").first() {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"100-continue") && version == 1 => true,
        Some(v) => {
            return Err(refuse(
                417,
                HeadProblem::BadExpect {
                    value: String::from_utf8_lossy(v).into_owned(),
                },
            ));
        }
    };
    // Reported whether or not `Connection: upgrade` accompanies it: the proxy refuses an
    // upgrade it was not told to allow either way.
    let upgrade = values("upgrade")
        .first()
        .map(|v| tokens(v))
        .unwrap_or_default();
    Ok(Some(ParsedHead {
        method: method.to_string(),
        target: path.as_bytes().to_vec(),
        minor_version: version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        connection,
        head_len: end,
    }))
}

/// Find the end of the head (just past the empty line), checking line endings and sizes.
fn scan_head(buf: &[u8], start: usize, limits: &HeadLimits) -> Result<Option<usize>, HeadError> {
    let mut line_start = start;
    let mut i = start;
    while i < buf.len() {
        if i - start >= limits.max_head_bytes {
            return Err(refuse(
                431,
                HeadProblem::HeadTooLarge {
                    limit: limits.max_head_bytes,
                },
            ));
        }
        match buf[i] {
            b'\n' => return Err(bad(HeadProblem::BareLf { offset: i })),
            b'\r' => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => {
                    if i == line_start {
                        return Ok(Some(i + 2));
                    }
                    line_start = i + 2;
                    i += 2;
                    continue;
                }
                Some(_) => return Err(bad(HeadProblem::BareCr { offset: i })),
            },
            _ => {
                if i - line_start >= limits.max_line_bytes {
                    return Err(refuse(
                        431,
                        HeadProblem::LineTooLong {
                            limit: limits.max_line_bytes,
                        },
                    ));
                }
            }
        }
        i += 1;
    }
    if buf.len() - start >= limits.max_head_bytes {
        return Err(refuse(
            431,
            HeadProblem::HeadTooLarge {
                limit: limits.max_head_bytes,
            },
        ));
    }
    Ok(None)
}

fn framing(lengths: &[&[u8]], encodings: &[&[u8]], version: u8) -> Result<Framing, HeadError> {
    if !encodings.is_empty() {
        if !lengths.is_empty() {
            return Err(bad(HeadProblem::LengthAndChunked));
        }
        if version == 0 {
            return Err(bad(HeadProblem::ChunkedHttp10));
        }
        let joined = encodings
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let items: Vec<&str> = joined
            .split(',')
            .map(|t| t.trim_matches([' ', '\t']))
            .collect();
        if items
            .iter()
            .any(|t| t.is_empty() || !crate::request::is_token(t))
        {
            return Err(bad(HeadProblem::BadTransferEncoding { value: joined }));
        }
        if items.len() == 1 && items[0].eq_ignore_ascii_case("chunked") {
            return Ok(Framing::Chunked);
        }
        if items.iter().any(|t| t.eq_ignore_ascii_case("chunked")) {
            // chunked twice, or not the only (final) coding.
            return Err(bad(HeadProblem::BadTransferEncoding { value: joined }));
        }
        return Err(refuse(
            501,
            HeadProblem::UnsupportedTransferCoding { value: joined },
        ));
    }
    let mut length: Option<u64> = None;
    for v in lengths {
        let s = String::from_utf8_lossy(v).into_owned();
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return Err(bad(HeadProblem::BadContentLength { value: s }));
        }
        let n: u64 = s
            .parse()
            .map_err(|_| bad(HeadProblem::BadContentLength { value: s.clone() }))?;
        match length {
            Some(prev) if prev != n => return Err(bad(HeadProblem::ConflictingContentLength)),
            _ => length = Some(n),
        }
    }
    Ok(match length {
        Some(0) | None => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

fn tokens(v: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(v)
        .split(',')
        .map(|t| t.trim_matches([' ', '\t']).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Hop-by-hop headers, and the ones the proxy writes or answers itself (`Expect`: the proxy
/// answers `100 Continue` once it allowed the request).
const NOT_FORWARDED: &[&str] = &[
    "expect",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "content-length",
    "host",
];

/// `content-type` → `Content-Type`.
pub fn canonical_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper = c == '-';
    }
    out
}

/// The head the proxy forwards: request line with the normalized target, `Host`, the
/// end-to-end headers in order with canonical names, one framing header, CRLF endings.
pub fn serialize_head(head: &ParsedHead, req: &NormalizedRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.origin_form().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = &req.host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(h.name.as_bytes());
        if let Some(p) = h.port {
            out.extend_from_slice(format!(":{p}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str()) || head.connection.contains(&lower) {
            continue;
        }
        out.extend_from_slice(canonical_name(name).as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match head.framing {
        Framing::None => {}
        Framing::Length(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    // The client's `Connection` options are its own (hop-by-hop): the upstream connection
    // stays open whatever the client asked, so that it can carry later requests; the proxy
    // closes the client's connection itself.
    out.extend_from_slice(b"\r\n");
    out
}

/// Why a chunked body was refused (400 and close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line {line:?}")]
    BadSize { line: String },
    #[error("the chunk size overflows")]
    Overflow,
    #[error("a chunk is not followed by CRLF")]
    MissingCrlf,
    #[error("a bare CR or LF in the chunked framing")]
    BareLineEnding,
    #[error("a chunk size or trailer line is over {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("invalid trailer field {line:?}")]
    BadTrailer { line: String },
    #[error("the trailer section is over {limit} bytes")]
    TrailersTooLarge { limit: usize },
}

const CHUNK_LINE_LIMIT: usize = 4096;
const TRAILER_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// A streaming decoder for `Transfer-Encoding: chunked`. Feed it bytes; it returns the payload
/// bytes and how many input bytes it used, and says when the body ended. Trailer fields are
/// validated as header fields and dropped (the proxy re-encodes the body without them).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }

    /// Whether the last chunk and the trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decode from `input`, appending payload to `out`; returns the bytes of `input` used.
    /// After the body ends, the remaining input (a pipelined request) is not touched.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data(left) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(line) = self.take_line(input, &mut i)? else {
                        return Ok(i);
                    };
                    self.on_line(&line)?;
                }
            }
        }
        Ok(i)
    }

    /// Collect one CRLF-terminated line; `None` when `input` ends first.
    fn take_line(&mut self, input: &[u8], i: &mut usize) -> Result<Option<Vec<u8>>, ChunkError> {
        while *i < input.len() {
            let b = input[*i];
            *i += 1;
            if b == b'\n' {
                if self.line.last() != Some(&b'\r') {
                    return Err(ChunkError::BareLineEnding);
                }
                self.line.pop();
                if self.line.contains(&b'\r') {
                    return Err(ChunkError::BareLineEnding);
                }
                return Ok(Some(std::mem::take(&mut self.line)));
            }
            if self.line.last() == Some(&b'\r') {
                return Err(ChunkError::BareLineEnding);
            }
            self.line.push(b);
            if self.line.len() > CHUNK_LINE_LIMIT {
                return Err(ChunkError::LineTooLong {
                    limit: CHUNK_LINE_LIMIT,
                });
            }
        }
        Ok(None)
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), ChunkError> {
        match self.state {
            ChunkState::DataEnd => {
                if !line.is_empty() {
                    return Err(ChunkError::MissingCrlf);
                }
                self.state = ChunkState::Size;
            }
            ChunkState::Size => {
                let size = chunk_size(line)?;
                self.state = if size == 0 {
                    ChunkState::Trailer
                } else {
                    ChunkState::Data(size)
                };
            }
            ChunkState::Trailer => {
                if line.is_empty() {
                    self.state = ChunkState::Done;
                    return Ok(());
                }
                self.trailer_bytes += line.len() + 2;
                if self.trailer_bytes > TRAILER_LIMIT {
                    return Err(ChunkError::TrailersTooLarge {
                        limit: TRAILER_LIMIT,
                    });
                }
                let ok = match line.iter().position(|&b| b == b':') {
                    Some(c) => {
                        let name = String::from_utf8_lossy(&line[..c]);
                        crate::request::is_token(&name)
                            && !name.contains('_')
                            && line[c + 1..]
                                .iter()
                                .all(|&b| b >= 0x20 && b != 0x7f || b == b'\t')
                    }
                    None => false,
                };
                if !ok {
                    return Err(ChunkError::BadTrailer {
                        line: String::from_utf8_lossy(line).into_owned(),
                    });
                }
            }
            ChunkState::Data(_) | ChunkState::Done => {}
        }
        Ok(())
    }
}

/// `chunk-size [ BWS ] [ ; chunk-ext ]`: 1–16 hex digits, then optional spaces or tabs, then an
/// extension without control characters.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let bad = || ChunkError::BadSize {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad());
    }
    if digits > 16 {
        return Err(ChunkError::Overflow);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or_else(bad)?;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ChunkError::Overflow)?;
    }
    let rest = &line[digits..];
    let after_ws = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(rest.len());
    let ext = &rest[after_ws..];
    if ext.is_empty() {
        return Ok(size);
    }
    if ext[0] != b';' || ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad());
    }
    Ok(size)
}
