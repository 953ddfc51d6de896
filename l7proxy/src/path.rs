//! Request-target normalization: the one form of a path that rules match and that the proxy
//! forwards, so what was authorized is what the backend routes.
//!
//! The rules, in order (docs/l7.md, "Path normalization"):
//! 1. The target is origin-form (`/…`), absolute-form (`http://authority/…`, the authority is
//!    returned for the Host check) or, for `OPTIONS` only, `*` (handled by the request layer).
//! 2. Raw bytes outside RFC 3986 `pchar` / `/` / `?` / `\` are rejected: controls, space, DEL,
//!    raw non-ASCII, `"<>[]^`{|}` and `#` (a fragment never reaches a server).
//! 3. The query (after the first `?`) is split off; it is validated, kept as sent and never
//!    matched as a path.
//! 4. Percent-decoding happens once. Unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded;
//!    an encoded `/`, `\`, `%` (double encoding), NUL or control is rejected; other encoded bytes
//!    stay encoded in canonical upper-case hex, and encoded non-ASCII must be valid UTF-8.
//! 5. A raw `\` is folded to `/`.
//! 6. `;` is rejected by default ([`SemicolonMode::Reject`]); [`SemicolonMode::StripParams`]
//!    removes `;…` up to the end of each segment instead, so `..;x` is `..`.
//! 7. Empty segments are removed (`//` collapses), `.` segments are dropped and `..` removes the
//!    previous segment (never above the root).
//! 8. A trailing `/` is kept when the path ended with a literal `/`; it is significant.
//!
//! The result is idempotent: normalizing a normalized path returns it unchanged.

use std::fmt;

/// The longest request target accepted (the request line limit of the proxy); longer is 414.
pub const MAX_TARGET_BYTES: usize = 8192;

/// What to do with `;` path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SemicolonMode {
    /// Reject any raw `;` in the path (400). Backends disagree on what `;` means.
    #[default]
    Reject,
    /// Strip `;…` to the end of each segment before dot-segment resolution.
    StripParams,
}

/// Normalization settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NormalizeOptions {
    pub semicolons: SemicolonMode,
}

/// A normalized request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget {
    /// The normalized path, always starting with `/`.
    pub path: String,
    /// The query without its `?`, as sent (validated, never decoded).
    pub query: Option<String>,
    /// The authority of an absolute-form target, lower-cased.
    pub authority: Option<String>,
}

impl NormalizedTarget {
    /// Path and query as the origin-form target the proxy forwards.
    pub fn origin_form(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is empty")]
    Empty,
    #[error("the request target is {len} bytes, over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("the path must begin with '/'")]
    NotOriginForm,
    #[error("byte {} at offset {offset} is not allowed in a request target", ByteName(*byte))]
    ForbiddenByte { byte: u8, offset: usize },
    #[error("a fragment ('#', offset {offset}) is never part of a request target")]
    Fragment { offset: usize },
    #[error("malformed percent-encoding at offset {offset} (expected '%' and two hex digits)")]
    BadPercent { offset: usize },
    #[error("an encoded {what} (%{hex:02X}, offset {offset}) is ambiguous and rejected")]
    EncodedForbidden {
        what: &'static str,
        hex: u8,
        offset: usize,
    },
    #[error("the percent-encoded bytes at offset {offset} are not valid UTF-8")]
    BadUtf8 { offset: usize },
    #[error("a ';' path parameter (offset {offset}) is rejected (semicolon mode: reject)")]
    Semicolon { offset: usize },
    #[error("the absolute-form target has no valid http authority")]
    BadAbsolute,
}

impl PathError {
    /// The HTTP status the proxy answers with.
    pub fn status(&self) -> u16 {
        match self {
            PathError::TooLong { .. } => 414,
            _ => 400,
        }
    }
}

struct ByteName(u8);

impl fmt::Display for ByteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Raw bytes allowed in the path: RFC 3986 pchar plus `/`, `%` (checked separately) and `\`
/// (folded to `/`).
fn is_path_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'%'
                | b'\\'
        )
}

/// Raw bytes allowed in the query: pchar, `/`, `?` and `%`.
fn is_query_byte(b: u8) -> bool {
    is_path_byte(b) && b != b'\\' || b == b'?'
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalize a request target (the second token of the request line).
pub fn normalize_target(raw: &[u8], opts: NormalizeOptions) -> Result<NormalizedTarget, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_TARGET_BYTES {
        return Err(PathError::TooLong {
            len: raw.len(),
            limit: MAX_TARGET_BYTES,
        });
    }
    let (authority, start) = split_absolute(raw)?;
    // `http://host` and `http://host?q` have the path "/" (RFC 9112 §3.2.2).
    let with_root;
    let rest: &[u8] = if authority.is_some() && raw.get(start) != Some(&b'/') {
        with_root = [b"/", &raw[start..]].concat();
        &with_root
    } else {
        &raw[start..]
    };
    if rest.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let query_at = rest.iter().position(|&b| b == b'?');
    let (path_bytes, query_bytes) = match query_at {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    let query = match query_bytes {
        Some(q) => Some(check_query(q, start + path_bytes.len() + 1)?),
        None => None,
    };
    let decoded = decode_path(path_bytes, start, opts)?;
    Ok(NormalizedTarget {
        path: resolve_segments(&decoded),
        query,
        authority,
    })
}

/// For an absolute-form target, the lower-cased authority and where the path starts.
fn split_absolute(raw: &[u8]) -> Result<(Option<String>, usize), PathError> {
    let lower: Vec<u8> = raw.iter().take(8).map(u8::to_ascii_lowercase).collect();
    let scheme_len = if lower.starts_with(b"http://") {
        7
    } else if lower.starts_with(b"https://") {
        8
    } else {
        return Ok((None, 0));
    };
    let after = &raw[scheme_len..];
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = &after[..end];
    let valid = !authority.is_empty()
        && authority
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'));
    if !valid {
        return Err(PathError::BadAbsolute);
    }
    let authority = String::from_utf8_lossy(authority).to_ascii_lowercase();
    Ok((Some(authority), scheme_len + end))
}

fn check_query(q: &[u8], base: usize) -> Result<String, PathError> {
    let mut i = 0;
    while i < q.len() {
        let b = q[i];
        if b == b'#' {
            return Err(PathError::Fragment { offset: base + i });
        }
        if !is_query_byte(b) {
            return Err(PathError::ForbiddenByte {
                byte: b,
                offset: base + i,
            });
        }
        if b == b'%' {
            let ok =
                q.len() > i + 2 && hex_value(q[i + 1]).is_some() && hex_value(q[i + 2]).is_some();
            if !ok {
                return Err(PathError::BadPercent { offset: base + i });
            }
            i += 3;
            continue;
        }
        i += 1;
    }
    // Only ASCII bytes passed the checks above.
    Ok(String::from_utf8_lossy(q).into_owned())
}

/// Decode the path once; the result holds only ASCII and canonical `%XX` escapes.
fn decode_path(p: &[u8], base: usize, opts: NormalizeOptions) -> Result<String, PathError> {
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    let mut in_params = false;
    while i < p.len() {
        let b = p[i];
        let offset = base + i;
        if b == b'#' {
            return Err(PathError::Fragment { offset });
        }
        if !is_path_byte(b) {
            return Err(PathError::ForbiddenByte { byte: b, offset });
        }
        match b {
            b'/' | b'\\' => {
                in_params = false;
                out.push('/');
                i += 1;
            }
            b';' => match opts.semicolons {
                SemicolonMode::Reject => return Err(PathError::Semicolon { offset }),
                SemicolonMode::StripParams => {
                    in_params = true;
                    i += 1;
                }
            },
            b'%' => {
                let v = percent_at(p, i, base)?;
                match v {
                    0x00 => return Err(forbidden("NUL", v, offset)),
                    b'/' => return Err(forbidden("slash", v, offset)),
                    b'\\' => return Err(forbidden("backslash", v, offset)),
                    b'%' => return Err(forbidden("percent sign (double encoding)", v, offset)),
                    0x01..=0x1f | 0x7f => return Err(forbidden("control character", v, offset)),
                    _ => {}
                }
                if v >= 0x80 {
                    // A run of encoded non-ASCII bytes must be valid UTF-8; it stays encoded.
                    let mut run = Vec::new();
                    let mut j = i;
                    while j < p.len() && p[j] == b'%' {
                        let w = percent_at(p, j, base)?;
                        if w < 0x80 {
                            break;
                        }
                        run.push(w);
                        j += 3;
                    }
                    if std::str::from_utf8(&run).is_err() {
                        return Err(PathError::BadUtf8 { offset });
                    }
                    if !in_params {
                        for w in run {
                            push_escape(&mut out, w);
                        }
                    }
                    i = j;
                    continue;
                }
                if !in_params {
                    if is_unreserved(v) {
                        out.push(v as char);
                    } else {
                        push_escape(&mut out, v);
                    }
                }
                i += 3;
            }
            _ => {
                if !in_params {
                    out.push(b as char);
                }
                i += 1;
            }
        }
    }
    Ok(out)
}

fn forbidden(what: &'static str, hex: u8, offset: usize) -> PathError {
    PathError::EncodedForbidden { what, hex, offset }
}

fn percent_at(p: &[u8], i: usize, base: usize) -> Result<u8, PathError> {
    let hi = p.get(i + 1).copied().and_then(hex_value);
    let lo = p.get(i + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(PathError::BadPercent { offset: base + i }),
    }
}

fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(v >> 4)] as char);
    out.push(HEX[usize::from(v & 0xf)] as char);
}

/// Collapse empty segments and resolve `.` and `..`.
fn resolve_segments(decoded: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let last = decoded.rsplit('/').next().unwrap_or("");
    let trailing = decoded.ends_with('/') && last.is_empty() && !segments.is_empty();
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, PathError> {
        normalize_target(s.as_bytes(), NormalizeOptions::default()).map(|t| t.path)
    }

    #[test]
    fn trailing_slash_after_dot_segments_is_dropped() {
        assert_eq!(norm("/admin/.").as_deref(), Ok("/admin"));
        assert_eq!(norm("/admin/..").as_deref(), Ok("/"));
        assert_eq!(norm("/admin/").as_deref(), Ok("/admin/"));
        assert_eq!(norm("/").as_deref(), Ok("/"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
    }
}
