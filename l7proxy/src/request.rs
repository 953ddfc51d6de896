//! The request as the matcher sees it: method, normalized target, host and headers.

use crate::path::{NormalizeOptions, NormalizedTarget, PathError, normalize_target};

/// A parsed request head, borrowed from the parser's buffers.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// A request host: lower-cased name and optional explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: Option<u16>,
}

impl Host {
    /// `name` or `name:port`, as a rule's host pattern may be written.
    pub fn with_port(&self) -> Option<String> {
        self.port.map(|p| format!("{}:{p}", self.name))
    }
}

/// A request ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedRequest {
    /// The method, exact case (methods are case-sensitive).
    pub method: String,
    pub target: NormalizedTarget,
    /// From the absolute-form authority or the one Host header.
    pub host: Option<Host>,
    /// Header names lower-cased, values as sent, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl NormalizedRequest {
    /// The values of a header (name compared case-insensitively).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a request cannot be matched (the proxy answers 400, or 414 for a long target).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request target: {0}")]
    Path(#[from] PathError),
    #[error("the method {method:?} is not an HTTP token")]
    BadMethod { method: String },
    #[error("the target '*' is only valid with OPTIONS")]
    Asterisk,
    #[error("the Host header {value:?} is not a valid host[:port]")]
    BadHost { value: String },
    #[error("the request carries {count} Host headers")]
    DuplicateHost { count: usize },
    #[error("the target's authority {authority:?} differs from the Host header {host:?}")]
    HostMismatch { authority: String, host: String },
    #[error("the header name {name:?} is not an HTTP token")]
    BadHeaderName { name: String },
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Path(p) => p.status(),
            _ => 400,
        }
    }
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Whether `s` is an HTTP token (methods, header names).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Parse `host[:port]` (IPv6 literals in brackets), lower-casing the name.
pub fn parse_host(value: &[u8]) -> Option<Host> {
    let s = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let name = &s[..close + 2];
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        if !rest[..close]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (name, port)
    } else {
        match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = name.starts_with('[')
        || (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !host_ok {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some(Host {
        name: name.to_ascii_lowercase(),
        port,
    })
}

/// Normalize a request head for matching.
pub fn normalize(
    head: &RequestHead<'_>,
    opts: NormalizeOptions,
) -> Result<NormalizedRequest, RequestError> {
    if !is_token(head.method) {
        return Err(RequestError::BadMethod {
            method: head.method.to_string(),
        });
    }
    let target = if head.target == b"*" {
        if head.method != "OPTIONS" {
            return Err(RequestError::Asterisk);
        }
        NormalizedTarget {
            path: "*".to_string(),
            query: None,
            authority: None,
        }
    } else {
        normalize_target(head.target, opts)?
    };
    let mut headers = Vec::with_capacity(head.headers.len());
    for (name, value) in head.headers {
        if !is_token(name) {
            return Err(RequestError::BadHeaderName {
                name: (*name).to_string(),
            });
        }
        headers.push((name.to_ascii_lowercase(), value.to_vec()));
    }
    let hosts: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| n == "host")
        .map(|(_, v)| v.as_slice())
        .collect();
    if hosts.len() > 1 {
        return Err(RequestError::DuplicateHost { count: hosts.len() });
    }
    let header_host = match hosts.first() {
        Some(v) => Some(parse_host(v).ok_or_else(|| RequestError::BadHost {
            value: String::from_utf8_lossy(v).into_owned(),
        })?),
        None => None,
    };
    let host = match (&target.authority, header_host) {
        (Some(auth), header) => {
            let auth_host = parse_host(auth.as_bytes()).ok_or_else(|| RequestError::BadHost {
                value: auth.clone(),
            })?;
            if let Some(h) = header
                && h != auth_host
            {
                return Err(RequestError::HostMismatch {
                    authority: auth.clone(),
                    host: match h.port {
                        Some(p) => format!("{}:{p}", h.name),
                        None => h.name,
                    },
                });
            }
            Some(auth_host)
        }
        (None, header) => header,
    };
    Ok(NormalizedRequest {
        method: head.method.to_string(),
        target,
        host,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let h = parse_host(b"Api.Example.com:8080").unwrap();
        assert_eq!((h.name.as_str(), h.port), ("api.example.com", Some(8080)));
        assert_eq!(parse_host(b"[::1]:80").unwrap().port, Some(80));
        assert_eq!(parse_host(b"[::1]").unwrap().name, "[::1]");
        assert!(parse_host(b"a:99999").is_none());
        assert!(parse_host(b"a b").is_none());
        assert!(parse_host(b"a:").is_none());
        assert!(parse_host(b"").is_none());
        assert!(parse_host(b"user@host").is_none());
    }
}
