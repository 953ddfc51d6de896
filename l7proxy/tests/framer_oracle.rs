//! Differential test of the request framer against an independent HTTP/1 parser: hyper's
//! server connection is the oracle. Random requests (methods, targets, versions, framing
//! headers in valid and hostile forms, chunked and sized bodies, pipelining), most of them
//! then mutated byte by byte (whitespace, bare CR/LF, NUL, commas, obs-text, deletions),
//! go through both:
//! - the framer as the proxy uses it: `parse_head`, `normalize`, then the body by the head's framing
//!   (`ChunkedDecoder` for chunked), request after request until an error, an incomplete
//!   request, a request that ends the connection, or an `Upgrade`/`CONNECT`;
//! - hyper's HTTP/1 server on an in-memory connection, recording each request it hands to
//!   its service (method, target, body).
//!
//! The property is what makes smuggling impossible: **every request the framer accepts is the
//! request hyper sees at the same position** — same method, target and body, so both agree
//! where each request ends. The framer may refuse what hyper accepts (it is stricter by
//! design: bare LF, obs-fold, `_` in names, …); a request the framer accepts and hyper
//! refuses, reads differently or frames differently is a disagreement, and one fails the test.
//! `PALISADE_ORACLE_CASES` sets the number of inputs (default 12,000; the benchmark-style run
//! of docs/l7.md uses 1,000,000 in release).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use palisade_l7proxy::http1::{ChunkedDecoder, Framing, HeadLimits, parse_head};
use palisade_l7proxy::{NormalizeOptions, normalize};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as a parser delimited it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// The requests the framer accepts from `input`, in order, as the proxy would forward them.
fn framer(input: &[u8]) -> Vec<Seen> {
    let limits = HeadLimits::default();
    let mut rest = input;
    let mut out = Vec::new();
    loop {
        let head = match parse_head(rest, &limits) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return out,
        };
        rest = &rest[head.head_len..];
        // The proxy normalizes the request for the matcher; what it cannot normalize is
        // answered 400 and the connection closed.
        if head
            .with_request_head(|h| normalize(h, NormalizeOptions::default()))
            .is_err()
        {
            return out;
        }
        let body = match head.framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => {
                let Ok(n) = usize::try_from(n) else {
                    return out;
                };
                if rest.len() < n {
                    return out;
                }
                let b = rest[..n].to_vec();
                rest = &rest[n..];
                b
            }
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                let mut b = Vec::new();
                let Ok(used) = d.feed(rest, &mut b) else {
                    return out;
                };
                if !d.is_done() {
                    return out;
                }
                rest = &rest[used..];
                b
            }
        };
        out.push(Seen {
            method: head.method.clone(),
            target: String::from_utf8_lossy(&head.target).into_owned(),
            body,
        });
        if !head.keep_alive || !head.upgrade.is_empty() || head.method == "CONNECT" {
            return out;
        }
    }
}

/// The requests hyper's HTTP/1 server hands to its service for `input` on one connection.
async fn oracle(input: Vec<u8>) -> Vec<Seen> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes().to_vec();
            record.lock().unwrap().push(Seen {
                method: parts.method.as_str().to_string(),
                target: parts.uri.to_string(),
                body,
            });
            Ok::<_, hyper::Error>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let client_side = async move {
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    };
    // A request hyper waits on (an incomplete body) ends with the time limit.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        tokio::join!(conn, client_side)
    })
    .await;
    seen.lock().unwrap().clone()
}

/// One of `usual` most of the time, else one of `odd`: most requests are valid, so that
/// pipelines of several accepted requests are common.
fn mostly(
    usual: &'static [&'static str],
    odd: &'static [&'static str],
) -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![
        9 => prop::sample::select(usual),
        1 => prop::sample::select(odd),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "GET", "GET", "POST", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "get", "PATCH",
        ][..],
    )
}

fn target() -> impl Strategy<Value = &'static str> {
    mostly(
        &["/", "/api/v1/data", "/a/b?c=d&e", "/%2e%2e/admin", "//x"],
        &["/a%2Fb", "*", "http://shop.example/api", "/a#frag", "/ü"],
    )
}

fn version() -> impl Strategy<Value = &'static str> {
    mostly(
        &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"],
        &["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 "],
    )
}

/// A framing choice and the body bytes sent after the head.
#[derive(Debug, Clone)]
enum Body {
    None,
    Length(&'static str, Vec<u8>),
    Chunked(&'static str, Vec<u8>),
    Both(&'static str, &'static str, Vec<u8>),
}

fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..12),
                prop::sample::select(&["", ";ext=1", ";x", " ", "0"][..]),
                prop::sample::select(&["{:x}", "{:X}", "0{:x}"][..]),
            ),
            0..3,
        ),
        prop::sample::select(&["", "Trailer-A: 1\r\n", "X: y\r\n"][..]),
    )
        .prop_map(|(chunks, trailer)| {
            let mut b = Vec::new();
            for (data, ext, form) in chunks {
                if data.is_empty() {
                    continue;
                }
                let size = match form {
                    "{:X}" => format!("{:X}", data.len()),
                    "0{:x}" => format!("0{:x}", data.len()),
                    _ => format!("{:x}", data.len()),
                };
                b.extend_from_slice(size.as_bytes());
                b.extend_from_slice(ext.as_bytes());
                b.extend_from_slice(b"\r\n");
                b.extend_from_slice(&data);
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n");
            b.extend_from_slice(trailer.as_bytes());
            b.extend_from_slice(b"\r\n");
            b
        })
}

fn body() -> impl Strategy<Value = Body> {
    let data = prop::collection::vec(any::<u8>(), 0..24);
    let cl = mostly(
        &["{n}", "{n} ", " {n}"],
        &["0{n}", "+{n}", "{n}, {n}", "{m}", "-1", "0x10", "{n} {n}"],
    );
    let te = mostly(
        &["chunked", "Chunked", " chunked"],
        &[
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "chunked, chunked",
            "\"chunked\"",
            "chunk",
        ],
    );
    prop_oneof![
        3 => Just(Body::None),
        4 => (cl.clone(), data.clone()).prop_map(|(c, d)| Body::Length(c, d)),
        4 => (te.clone(), chunked_body()).prop_map(|(t, d)| Body::Chunked(t, d)),
        1 => (cl, te, chunked_body()).prop_map(|(c, t, d)| Body::Both(c, t, d)),
    ]
}

fn extra_header() -> impl Strategy<Value = &'static str> {
    mostly(
        &[
            "Connection: keep-alive",
            "X-Tenant: a",
            "X-Empty:",
            "Accept: */*",
            "Expect: 100-continue",
            "Connection: close",
        ],
        &[
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Upgrade: h2c",
            "Expect: nonsense",
            "X_Tenant: a",
            "Host: second.example",
            " X-Folded: a",
            "X-Obs: caf\u{e9}",
        ],
    )
}

/// One request, serialized.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        target(),
        version(),
        mostly(
            &["Host: shop.example", "host: a"],
            &["Host:", "", "Host: a b"],
        ),
        prop::collection::vec(extra_header(), 0..3),
        body(),
        mostly(&["\r\n"], &["\n"]),
    )
        .prop_map(|(m, t, v, host, extra, body, eol)| {
            let mut lines = vec![format!("{m} {t} {v}")];
            if !host.is_empty() {
                lines.push(host.to_string());
            }
            lines.extend(extra.iter().map(|h| h.to_string()));
            let sized = |form: &str, n: usize| {
                form.replace("{n}", &n.to_string())
                    .replace("{m}", &(n + 1).to_string())
            };
            let payload = match &body {
                Body::None => Vec::new(),
                Body::Length(form, d) => {
                    lines.push(format!("Content-Length: {}", sized(form, d.len())));
                    d.clone()
                }
                Body::Chunked(te, d) => {
                    lines.push(format!("Transfer-Encoding: {te}"));
                    d.clone()
                }
                Body::Both(form, te, d) => {
                    lines.push(format!("Content-Length: {}", sized(form, d.len())));
                    lines.push(format!("Transfer-Encoding: {te}"));
                    d.clone()
                }
            };
            let mut out = Vec::new();
            for l in lines {
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(&payload);
            out
        })
}

/// A byte-level mutation: insert one of the bytes parsers disagree on, delete or replace.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, &'static [u8]),
    Delete(usize),
    Replace(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes: &'static [&'static [u8]] = &[
        b" ", b"\t", b"\r", b"\n", b"\r\n", b"\0", b",", b":", b"\x0b", b"\x0c", b"\x7f", b"\xff",
        b"\r\n ", b"0", b";",
    ];
    prop_oneof![
        3 => (any::<usize>(), prop::sample::select(bytes)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => (any::<usize>(), prop::sample::select(&b" \t\r\n\0,:;0a\x7f\x80"[..]))
            .prop_map(|(i, b)| Mutation::Replace(i, b)),
    ]
}

fn apply(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if input.is_empty() {
            break;
        }
        match m {
            Mutation::Insert(i, b) => {
                let at = i % (input.len() + 1);
                input.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i) => {
                let at = i % input.len();
                input.remove(at);
            }
            Mutation::Replace(i, b) => {
                let at = i % input.len();
                input[at] = *b;
            }
        }
    }
    input
}

/// Pipelined requests, then (usually) mutations of the whole stream.
fn input() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(request(), 1..4),
        prop_oneof![
            1 => Just(Vec::new()),
            1 => prop::collection::vec(mutation(), 1..4),
        ],
    )
        .prop_map(|(reqs, muts)| apply(reqs.concat(), &muts))
}

fn cases() -> u32 {
    std::env::var("PALISADE_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000)
}

#[test]
fn every_request_the_framer_accepts_is_the_request_hyper_reads() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // inputs, requests the framer accepted, inputs with at least one accepted, inputs where
    // hyper read more requests than the framer accepted (the framer stricter)
    let stats = std::cell::RefCell::new([0usize; 4]);
    let result = runner.run(&input(), |input| {
        let ours = framer(&input);
        let theirs = rt.block_on(oracle(input.clone()));
        let mut s = stats.borrow_mut();
        s[0] += 1;
        s[1] += ours.len();
        s[2] += usize::from(!ours.is_empty());
        s[3] += usize::from(theirs.len() > ours.len());
        for (i, r) in ours.iter().enumerate() {
            if theirs.get(i) != Some(r) {
                return Err(TestCaseError::fail(format!(
                    "request {i} of {:?}: the framer read {r:?}, hyper {:?}",
                    String::from_utf8_lossy(&input),
                    theirs.get(i)
                )));
            }
        }
        Ok(())
    });
    let s = stats.into_inner();
    println!(
        "framer oracle: {} inputs, {} requests accepted by the framer (in {} inputs), \
         every one read alike by hyper; hyper read more than the framer in {} inputs",
        s[0], s[1], s[2], s[3]
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(s[0] >= cases as usize, "only {} inputs ran", s[0]);
    // Both outcomes must be common, or the comparison proves little.
    assert!(
        s[2] > s[0] / 10,
        "the framer accepted too few inputs: {s:?}"
    );
    assert!(
        s[2] < s[0] - s[0] / 10,
        "the framer refused too few inputs: {s:?}"
    );
}
