//! Request heads and framing against the reliability plan's request-smuggling corpus (§4.4):
//! every vector is refused with its status, or accepted with exactly one framing and forwarded
//! only in canonical form. Chunked bodies are decoded strictly; pipelined requests keep their
//! boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_l7proxy::http1::{
    ChunkError, ChunkedDecoder, Framing, HeadLimits, ParsedHead, parse_head, serialize_head,
};
use palisade_l7proxy::{NormalizeOptions, normalize};
use proptest::prelude::*;

fn parse(raw: &[u8]) -> Result<Option<ParsedHead>, u16> {
    parse_head(raw, &HeadLimits::default()).map_err(|e| e.status)
}

#[track_caller]
fn refused(id: &str, raw: &[u8], status: u16) {
    match parse(raw) {
        Err(s) => assert_eq!(s, status, "{id}: {:?}", String::from_utf8_lossy(raw)),
        Ok(h) => panic!("{id}: accepted {:?} as {h:?}", String::from_utf8_lossy(raw)),
    }
}

#[track_caller]
fn head(id: &str, raw: &[u8]) -> ParsedHead {
    match parse(raw) {
        Ok(Some(h)) => h,
        other => panic!("{id}: {other:?} for {:?}", String::from_utf8_lossy(raw)),
    }
}

fn post(headers: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
}

#[test]
fn cl_te_conflicts_and_content_length_forms() {
    refused("H-CLTE-1", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    refused("H-CLTE-2", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400);
    refused(
        "H-CL-DUP-DIFF",
        &post("Content-Length: 1\r\nContent-Length: 0\r\n"),
        400,
    );
    let h = head(
        "H-CL-DUP-SAME",
        &post("Content-Length: 10\r\nContent-Length: 10\r\n"),
    );
    assert_eq!(h.framing, Framing::Length(10));
    for v in [
        "10, 10",
        "+10",
        "-48",
        "+1_0",
        "0x10",
        "",
        "1Z",
        "99999999999999999999",
        "1 0",
    ] {
        refused(
            &format!("H-CL {v:?}"),
            &post(&format!("Content-Length: {v}\r\n")),
            400,
        );
    }
    refused(
        "H-CL-EMPTY+",
        &post("Content-Length: \r\nContent-Length: 43\r\n"),
        400,
    );
    // `010` is decimal ten, never octal.
    assert_eq!(
        head("H-CL-HEX 010", &post("Content-Length: 010\r\n")).framing,
        Framing::Length(10)
    );
    assert_eq!(
        head("CL 0", &post("Content-Length: 0\r\n")).framing,
        Framing::None
    );
}

#[test]
fn transfer_encoding_must_be_exactly_chunked() {
    refused(
        "H-TE-DUP",
        &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        400,
    );
    refused("H-TE-COMMA", &post("Transfer-Encoding: ,chunked\r\n"), 400);
    for v in ["gzip", "blegh"] {
        refused(
            &format!("H-TE-UNKNOWN {v}"),
            &post(&format!("Transfer-Encoding: {v}\r\n")),
            501,
        );
    }
    for v in [
        "chunked, gzip",
        "gzip, chunked",
        "cow, chunked",
        "chunked, cow",
        "\"chunked\"",
        "'chunked'",
    ] {
        let raw = post(&format!("Transfer-Encoding: {v}\r\n"));
        let s = parse(&raw).unwrap_err();
        assert!(s == 400 || s == 501, "{v}: {s}");
    }
    refused(
        "H-TE-UNKNOWN afterlol",
        &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: afterlol\r\n"),
        400,
    );
    refused(
        "H-TE-HTTP10",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
    refused("H-TE-OBF-1", &post("Transfer-Encoding : chunked\r\n"), 400);
    assert_eq!(
        head(
            "H-TE-OBF-2 tab after colon",
            &post("Transfer-Encoding:\tchunked\r\n")
        )
        .framing,
        Framing::Chunked
    );
    refused(
        "H-TE-OBF-2 tab before colon",
        &post("Transfer-Encoding\t:\tchunked\r\n"),
        400,
    );
    refused(
        "H-TE-OBF-3",
        b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n",
        400,
    );
    for v in [
        &b"\x0bchunked"[..],
        b"\x0cchunked",
        b"\xa0chunked\xa0",
        b"\x85chunked",
        b"\xffchunked\xff",
    ] {
        let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ".to_vec();
        raw.extend_from_slice(v);
        raw.extend_from_slice(b"\r\n\r\n");
        refused("H-TE-OBF-4", &raw, 400);
    }
    refused("H-TE-OBF-5", &post("Transfer-Encoding: chunk\r\n"), 501);
    refused("H-TE-OBF-6", &post("Transfer_Encoding: chunked\r\n"), 400);
    assert_eq!(
        head("H-TE-OBF-7", &post("TrAnSFer-EnCODinG: cHuNkeD\r\n")).framing,
        Framing::Chunked
    );
    refused(
        "H-TE-OBF-8",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\r\n\r\n",
        400,
    );
    refused(
        "H-TE-OBF-9a",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer\r-Encoding: chunked\r\n\r\n",
        400,
    );
    refused(
        "H-TE-OBF-9b",
        b"POST / HTTP/1.1\r\nHost: a\r\nX: X\rTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
    refused(
        "H-TE-OBF-10",
        b"POST / HTTP/1.1\r\nHost: a\r\nX: X\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
}

#[test]
fn byte_insertions_around_transfer_encoding() {
    // H-TE-BYTES: a byte before/after the name, around the colon, or around the value is
    // refused, except OWS (SP, HTAB) after the colon or after the value.
    for b in [
        0x01u8, 0x04, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1f, 0x20, 0x7f, 0xa0, 0xff,
    ] {
        let ows = b == b' ' || b == b'\t';
        for (at, accept) in [
            ("before-name", false),
            ("after-name", false),
            ("after-colon", ows),
            ("after-value", ows),
        ] {
            let mut line = Vec::new();
            match at {
                "before-name" => {
                    line.push(b);
                    line.extend_from_slice(b"Transfer-Encoding: chunked");
                }
                "after-name" => {
                    line.extend_from_slice(b"Transfer-Encoding");
                    line.push(b);
                    line.extend_from_slice(b": chunked");
                }
                "after-colon" => {
                    line.extend_from_slice(b"Transfer-Encoding:");
                    line.push(b);
                    line.extend_from_slice(b"chunked");
                }
                _ => {
                    line.extend_from_slice(b"Transfer-Encoding: chunked");
                    line.push(b);
                }
            }
            let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            raw.extend_from_slice(&line);
            raw.extend_from_slice(b"\r\n\r\n");
            match parse(&raw) {
                Ok(Some(h)) => {
                    assert!(accept, "byte {b:#04x} {at} was accepted");
                    assert_eq!(h.framing, Framing::Chunked);
                }
                Ok(None) => panic!("byte {b:#04x} {at}: incomplete"),
                Err(s) => assert!(!accept && s >= 400, "byte {b:#04x} {at}: {s}"),
            }
        }
    }
}

#[test]
fn folding_line_endings_nul_and_names() {
    refused(
        "H-FOLD-1",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        400,
    );
    refused(
        "H-FOLD-2",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\n chunked\r\n\r\n",
        400,
    );
    refused(
        "H-FOLD-3",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-\r\nEncoding: chunked\r\n\r\n",
        400,
    );
    refused("H-LF-ONLY", b"GET / HTTP/1.1\nHost: a\n\n", 400);
    refused(
        "H-CRLF-CRX",
        b"GET / HTTP/1.1\r\nHost: a\r\n\rZGET /evil HTTP/1.1\r\n\r\n",
        400,
    );
    refused(
        "H-NUL-1a",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: v\x00\ralue\r\n\r\n",
        400,
    );
    refused(
        "H-NUL-1b",
        b"GET / HTTP/1.1\r\nHost: google.com\x00.kallus.org\r\n\r\n",
        400,
    );
    refused(
        "H-NUL-1c",
        b"GET / HTTP/1.1\r\nHost: a\r\nEvil: evil\x00\r\n\r\n",
        400,
    );
    for name in [
        &b"\x00\x01"[..],
        b"\"(),/;<=>?@[]{}",
        b"\xefoo",
        b"Header\x85",
        b"",
        b" ",
    ] {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        raw.extend_from_slice(name);
        raw.extend_from_slice(b": x\r\n\r\n");
        refused("H-NAME-BAD", &raw, 400);
    }
    refused("H-NOCOLON-1", &post("Content-Length 10\r\n"), 400);
    refused(
        "H-NOCOLON-2",
        b"GET / HTTP/1.1\r\nHost: a\r\nTe\nst: test\r\n\r\n",
        400,
    );
    refused(
        "H-UNDERSCORE",
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Tenant: admin\r\n\r\n",
        400,
    );
}

#[test]
fn hosts_versions_methods_and_request_lines() {
    refused("H-HOST-MISS", b"GET / HTTP/1.1\r\n\r\n", 400);
    refused(
        "H-HOST-DUP",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
    );
    // An HTTP/1.0 request may omit Host.
    assert_eq!(
        head("1.0 no host", b"GET / HTTP/1.0\r\n\r\n").minor_version,
        0
    );
    for raw in [
        &b"GET / HTTP/1.32\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/\r\r1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/4294967295.255\r\nHost: a\r\n\r\n",
    ] {
        refused("H-VER", raw, 400);
    }
    refused(
        "H-METHOD-1",
        b"G=\":<>(e),[T];?\" /get HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    );
    refused("H-METHOD-2", b"\x00 / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    for raw in [
        &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /\nHTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        refused("H-REQLINE-WS", raw, 400);
    }
    refused(
        "H2 prior knowledge",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        400,
    );
    // `get` parses but never matches an upper-case rule (the matcher's test).
    assert_eq!(
        head("lowercase", b"get /admin HTTP/1.1\r\nHost: a\r\n\r\n").method,
        "get"
    );
}

#[test]
fn expect_upgrade_connection_and_leading_lines() {
    let h = head(
        "expect",
        &post("Expect: 100-continue\r\nContent-Length: 5\r\n"),
    );
    assert!(h.expect_continue);
    refused("H-EXPECT-OTHER-1", &post("Expect: 100-continueX\r\n"), 417);
    refused("H-EXPECT-OTHER-2", &post("Expect: foo\r\n"), 417);
    let h = head("H-UPG-H2C", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n");
    assert!(h.wants_h2c());
    let h = head(
        "H-UPG-WS",
        b"GET /api HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    assert_eq!(h.upgrade, vec!["websocket".to_string()]);
    refused(
        "two Connection",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
        400,
    );
    assert!(
        !head(
            "close",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .keep_alive
    );
    assert!(head("1.1 default", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    assert!(!head("1.0 default", b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(
        head(
            "1.0 keep-alive",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )
        .keep_alive
    );
    let h = head("H-LEAD-CRLF one", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.head_len, 29);
    refused(
        "H-LEAD-CRLF many",
        b"\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    );
}

#[test]
fn limits_answer_431() {
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    refused(
        "H-HDR-BIG fields",
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
        431,
    );
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(8 * 1024)
    );
    refused("H-HDR-BIG line", long.as_bytes(), 431);
    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    while huge.len() < 70 * 1024 {
        huge.extend_from_slice(b"X-Filler: abcdefghijklmnopqrstuvwxyz\r\n");
    }
    refused("H-HDR-BIG head", &huge, 431);
    // Without the end of the head and under the limits: incomplete, not an error.
    assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), Ok(None));
}

#[test]
fn pipelined_heads_keep_their_boundaries() {
    // H-PIPE-CL0: three requests, three heads, the bodies skipped by their framing.
    let stream = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 28\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\nGET /d HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut at = 0;
    let mut targets = Vec::new();
    while at < stream.len() {
        let h = head("pipe", &stream[at..]);
        at += h.head_len;
        targets.push(String::from_utf8(h.target.clone()).unwrap());
        if let Framing::Length(n) = h.framing {
            at += n as usize;
        }
    }
    // The 28-byte body of /b is exactly `GET /c HTTP/1.1\r\nHost: a\r\n\r\n`: it is a body,
    // never a request.
    assert_eq!(targets, ["/a", "/b", "/d"]);
}

fn decode_all(body: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let used = d.feed(body, &mut out)?;
    assert!(
        d.is_done(),
        "body not finished: {:?}",
        String::from_utf8_lossy(body)
    );
    Ok((out, used))
}

#[test]
fn chunked_bodies() {
    let stream = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: ok\r\n\r\nGET / HTTP/1.1";
    let (data, used) = decode_all(stream).unwrap();
    assert_eq!(data, b"hello world");
    assert_eq!(
        used,
        stream.len() - b"GET / HTTP/1.1".len(),
        "stops at the end of the body"
    );
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    assert_eq!(d.feed(b"Ff   \r\n", &mut out), Ok(7));
    assert!(
        !d.is_done() && out.is_empty(),
        "a size line alone is an incomplete body"
    );
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    d.feed(b"1 \r\na\r\n0\r\n\r\n", &mut out).unwrap();
    assert!(d.is_done() && out == b"a", "BWS after the size is allowed");
    let bad: &[(&str, &[u8])] = &[
        ("H-CHK-EMPTY", b"\r\n\r\n\r\n"),
        ("H-CHK-PREFIX 0_2e", b"0_2e\r\n\r\n"),
        (
            "H-CHK-PREFIX words",
            b"1these-bytes-never-get-validated\r\n",
        ),
        ("H-CHK-PREFIX 0x1", b"0x1\r\nZ\r\n0\r\n\r\n"),
        ("H-CHK-PREFIX -0x0", b"-0x0\r\n\r\n"),
        ("H-CHK-PREFIX +1", b"+1\r\nZ\r\n0\r\n\r\n"),
        ("H-CHK-PREFIX spaces", b"           0\r\n\r\n"),
        ("H-CHK-CR 1", b"5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n"),
        ("H-CHK-CR 2", b"2\r\r;a\r\n02\r\nE\r\n0\r\n\r\n"),
        ("H-CHK-LF 1", b"a\r\n0123456789\n0\r\n\r\n"),
        ("H-CHK-LF 2", b"1;reject\nnewlines\r\nZ\r\n0\r\n\r\n"),
        ("H-CHK-TERM", b"10\r\n0123456789abcdef\r\n0\r\nbad\r\r\n"),
        ("H-CHK-OVF 1", b"f0000000000000003\r\nabc\r\n0\r\n\r\n"),
        ("H-CHK-OVF 2", b"1ffffffffffffffff\r\n"),
        (
            "H-CHK-INVALID-NEXT",
            b"INVALID!!!\r\nGET / HTTP/1.1\r\n\r\n",
        ),
        ("missing CRLF after data", b"3\r\nabcX\r\n0\r\n\r\n"),
        ("bad trailer", b"0\r\nno colon here\r\n\r\n"),
        ("ctl in extension", b"1;a\x01b\r\nZ\r\n0\r\n\r\n"),
    ];
    for (id, body) in bad {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert!(
            d.feed(body, &mut out).is_err(),
            "{id} accepted: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    // A valid trailer that looks like a request line is only a trailer (dropped).
    let (data, _) = decode_all(b"0\r\nX:POST / HTTP/1.1\r\n\r\n").unwrap();
    assert!(data.is_empty());
}

#[test]
fn canonical_serialization() {
    let raw = b"POST http://Shop.example:8080/api/./v1//items?x=1 HTTP/1.1\r\nhost: shop.example:8080\r\ncontent-type:  application/json \r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n";
    let h = head("canon", raw);
    let req = h
        .with_request_head(|r| normalize(r, NormalizeOptions::default()))
        .unwrap();
    let out = serialize_head(&h, &req);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /api/v1/items?x=1 HTTP/1.1\r\nHost: shop.example:8080\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,12}".prop_filter("not a framing or hop-by-hop header", |n| {
        !matches!(
            n.to_ascii_lowercase().as_str(),
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "expect"
                | "upgrade"
                | "te"
                | "trailer"
                | "keep-alive"
                | "proxy-connection"
                | "http2-settings"
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A canonical head parses back to the same request: the forwarded form is stable, holds
    /// one framing header, and carries only CRLF line endings.
    #[test]
    fn serialization_is_a_fixed_point(
        method in prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH"][..]),
        path in "(/[a-z0-9._~-]{0,6}){1,4}",
        headers in prop::collection::vec((token(), "[ -~]{0,20}"), 0..6),
        framing in prop::option::of(prop_oneof![Just(None), (0u64..100000).prop_map(Some)]),
    ) {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: svc.ns:80\r\n");
        for (n, v) in &headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        match framing {
            Some(None) => raw.push_str("Transfer-Encoding: chunked\r\n"),
            Some(Some(n)) => raw.push_str(&format!("Content-Length: {n}\r\n")),
            None => {}
        }
        raw.push_str("\r\n");
        let h = head("generated", raw.as_bytes());
        let req = h.with_request_head(|r| normalize(r, NormalizeOptions::default())).unwrap();
        let once = serialize_head(&h, &req);
        let h2 = head("canonical", &once);
        let req2 = h2.with_request_head(|r| normalize(r, NormalizeOptions::default())).unwrap();
        let twice = serialize_head(&h2, &req2);
        prop_assert_eq!(&once, &twice);
        prop_assert_eq!(h2.framing, h.framing);
        let text = String::from_utf8_lossy(&once);
        let framing_headers = text.lines().filter(|l| l.starts_with("Content-Length:") || l.starts_with("Transfer-Encoding:")).count();
        prop_assert!(framing_headers <= 1);
        prop_assert!(!once.windows(2).enumerate().any(|(i, w)| w[1] == b'\n' && w[0] != b'\r' && i > 0));
    }

    /// Arbitrary bytes never panic the head parser or the chunked decoder.
    #[test]
    fn arbitrary_input_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_head(&bytes, &HeadLimits::default());
        let mut prefixed = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = parse_head(&prefixed, &HeadLimits::default());
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let _ = d.feed(&bytes, &mut out);
    }

    /// A chunked body split at any point decodes to the same payload.
    #[test]
    fn chunked_decoding_is_split_invariant(
        chunks in prop::collection::vec("[a-z]{1,20}", 0..6),
        split in 0usize..200,
    ) {
        let mut body = Vec::new();
        for c in &chunks {
            body.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let split = split.min(body.len());
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let a = d.feed(&body[..split], &mut out).unwrap();
        prop_assert_eq!(a, split);
        let b = d.feed(&body[split..], &mut out).unwrap();
        prop_assert_eq!(a + b, body.len());
        prop_assert!(d.is_done());
        prop_assert_eq!(out, chunks.concat().into_bytes());
    }
}

/// A request line starts with a method token: a TLS ClientHello or other binary bytes are
/// refused at once, not after the head deadline; a partial but valid request line waits.
#[test]
fn bytes_that_cannot_start_a_request_line_are_refused_at_once() {
    refused("tls client hello", b"\x16\x03\x01\x00\x2f\x01", 400);
    refused("leading space", b" GET / HTTP/1.1\r\n", 400);
    refused("control byte in the method", b"GE\x01T", 400);
    assert_eq!(parse(b"GE"), Ok(None), "a method still arriving");
    assert_eq!(parse(b"GET /api"), Ok(None), "a target still arriving");
}
