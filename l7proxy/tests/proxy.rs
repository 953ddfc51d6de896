//! The proxy's connection loop over real sockets, between real curl and a real nginx, on
//! loopback: allow and deny (403), one verdict per pipelined request in order with nothing
//! after the first deny forwarded, a rule change reaching the next request of a kept-alive
//! connection, bodies by both framings, `Expect: 100-continue` only after allow, refused
//! protocol switches, the request-smuggling vectors answered and never forwarded, and a slow
//! head cut off. nginx's access log is the proof of what reached the backend.
//!
//! Needs `nginx` and `curl` (Debian `nginx-light`, `curl`); under `CI=true` a missing one fails
//! the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::process::Command;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::{Nginx, PythonBackend, have};

use palisade_l7proxy::proxy::{Outcome, ProxyConfig, RequestRecord, serve};
use palisade_l7proxy::{HttpRule, L7Action, RuleEntry, RuleSet};

fn rule(id: u32, action: L7Action, method: Option<&str>, path: Option<&str>) -> RuleEntry {
    RuleEntry {
        id,
        action,
        rule: HttpRule {
            method: method.map(str::to_string),
            path: path.map(str::to_string),
            ..HttpRule::default()
        },
    }
}

/// The example policy: `GET /api/.*` allowed (rule 1), `/api/admin.*` denied (rule 2).
fn example_rules() -> RuleSet {
    RuleSet::compile(vec![
        rule(1, L7Action::Allow, Some("GET|HEAD"), Some("/api/.*")),
        rule(3, L7Action::Allow, Some("POST"), Some("/api/upload")),
        rule(2, L7Action::Deny, None, Some("/api/admin(/.*)?")),
    ])
    .unwrap()
}

/// The proxy on a loopback port, in front of `upstream`, on its own runtime thread.
struct Proxy {
    addr: SocketAddr,
    rules: Arc<RwLock<Option<Arc<RuleSet>>>>,
    records: Arc<Mutex<Vec<RequestRecord>>>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    /// In front of `upstream`, a new upstream connection per client connection.
    fn start(upstream: SocketAddr, config: ProxyConfig) -> Proxy {
        Proxy::with_upstreams(
            Arc::new(KeptUpstreams {
                addr: Some(upstream),
                ..KeptUpstreams::default()
            }),
            config,
        )
    }

    /// Taking upstream connections from `upstreams`.
    fn with_upstreams(upstreams: Arc<KeptUpstreams>, config: ProxyConfig) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let rules = Arc::new(RwLock::new(Some(Arc::new(example_rules()))));
        let records = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (r, rec) = (rules.clone(), records.clone());
        let config = Arc::new(config);
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (r, rec, config, up) =
                    (r.clone(), rec.clone(), config.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let current = move || r.read().unwrap().clone();
                    let sink = move |record: RequestRecord| rec.lock().unwrap().push(record);
                    let _ = serve(client, &*up, &current, &sink, &config).await;
                });
            }
        });
        Proxy {
            addr,
            rules,
            records,
            _rt: rt,
        }
    }

    fn outcomes(&self) -> Vec<(String, Outcome)> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| (format!("{} {}", r.method, r.target), r.outcome.clone()))
            .collect()
    }

    fn set_rules(&self, rules: Option<RuleSet>) {
        *self.rules.write().unwrap() = rules.map(Arc::new);
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.to_string(), body.to_string())
}

/// Writes `raw` on one connection and reads until the proxy closes it (or 5 s pass).
fn exchange(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut s = StdStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a Content-Length body.
fn read_response(s: &mut StdStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "closed in a response head: {buf:?}"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn statuses(responses: &str) -> Vec<u16> {
    responses
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect()
}

#[test]
fn curl_through_the_proxy_allowed_denied_and_bodies() {
    if !have("nginx") || !have("curl") {
        return;
    }
    let nginx = Nginx::start();
    let proxy = Proxy::start(nginx.addr, ProxyConfig::default());
    let base = format!("http://{}", proxy.addr);

    let (code, body) = curl(&[&format!("{base}/api/v1/data")]);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "ok GET /api/v1/data\n")
    );
    let (code, body) = curl(&["-X", "POST", "-d", "x=1", &format!("{base}/api/v1/data")]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    let (code, _) = curl(&[&format!("{base}/api/admin/users")]);
    assert_eq!(code, "403", "the deny rule beats the GET /api/.* allow");
    let (code, _) = curl(&[&format!("{base}/other")]);
    assert_eq!(code, "403", "no rule matches: denied by default");
    // A dot segment is normalized before the rules see it: /api/v1/../admin is /api/admin.
    let (code, _) = curl(&["--path-as-is", &format!("{base}/api/v1/../admin")]);
    assert_eq!(code, "403");
    // %2F is refused (400) by default, never decoded into a different route.
    let (code, _) = curl(&[&format!("{base}/api/v1%2Fdata")]);
    assert_eq!(code, "400");
    // Bodies by both framings, and Expect: 100-continue answered after allow.
    let (code, body) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "hello",
        &format!("{base}/api/upload"),
    ]);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "ok POST /api/upload\n")
    );
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "chunky body",
        &format!("{base}/api/upload"),
    ]);
    assert_eq!(code, "200");
    let big = "b".repeat(100_000);
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &big,
        &format!("{base}/api/upload"),
    ]);
    assert_eq!(code, "200");

    // Only the allowed requests reached nginx, with their bodies.
    let served = nginx.served();
    // (method and target, Content-Length, Transfer-Encoding, Expect) as nginx logged them;
    // nginx logs the length of a chunked body it discarded as 0. The proxy answered the
    // client's `Expect: 100-continue` itself, so nginx never saw one.
    let want = [
        "GET /api/v1/data - - -",
        "POST /api/upload 5 - -",
        "POST /api/upload 0 chunked -",
        "POST /api/upload 100000 - -",
    ];
    assert_eq!(
        served, want,
        "only the allowed requests reached nginx, framed as sent"
    );
    // One record per request, denied ones with the rule that denied them.
    let outcomes = proxy.outcomes();
    assert_eq!(outcomes.len(), 9, "{outcomes:?}");
    assert!(matches!(
        outcomes[0].1,
        Outcome::Forwarded {
            rule: 1,
            status: 200
        }
    ));
    assert!(matches!(
        outcomes[2].1,
        Outcome::Denied {
            decision: palisade_l7proxy::Decision::Deny { rule: 2 },
            status: 403
        }
    ));
}

#[test]
fn pipelining_keep_alive_and_a_rule_change() {
    if !have("nginx") {
        return;
    }
    let nginx = Nginx::start();
    let proxy = Proxy::start(nginx.addr, ProxyConfig::default());

    // Three pipelined requests: the first two allowed, the third denied, a fourth never read.
    let raw = b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n\
                GET /api/b HTTP/1.1\r\nHost: h\r\n\r\n\
                DELETE /api/c HTTP/1.1\r\nHost: h\r\n\r\n\
                GET /api/d HTTP/1.1\r\nHost: h\r\n\r\n";
    let answer = exchange(proxy.addr, raw);
    assert_eq!(statuses(&answer), vec![200, 200, 403], "{answer}");
    assert!(answer.contains("ok GET /api/a\n") && answer.find("/api/a") < answer.find("/api/b"));
    assert!(answer.ends_with("Access denied\r\n"), "{answer}");
    let served = nginx.served();
    assert_eq!(
        served.len(),
        2,
        "nothing after the deny reached nginx: {served:?}"
    );

    // A kept-alive connection: the next request is judged by the rules now in force.
    let mut s = StdStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    proxy.set_rules(Some(
        RuleSet::compile(vec![rule(9, L7Action::Allow, Some("POST"), None)]).unwrap(),
    ));
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let second = read_response(&mut s);
    assert!(second.starts_with("HTTP/1.1 403"), "{second}");
    // No rules at all (the policy went away): denied, never allowed.
    proxy.set_rules(None);
    let answer = exchange(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(statuses(&answer), vec![403], "{answer}");
    assert_eq!(nginx.served().len(), 3);
}

#[test]
fn smuggling_vectors_and_protocol_switches_are_answered_and_never_forwarded() {
    if !have("nginx") {
        return;
    }
    let nginx = Nginx::start();
    let proxy = Proxy::start(nginx.addr, ProxyConfig::default());
    // (vector, the proxy's status)
    let vectors: &[(&[u8], u16)] = &[
        (b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"POST /api/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        (b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        (b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400),
        (b"POST /api/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /api/a HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n", 400),
        (b"GET /api/a HTTP/1.1\nHost: h\n\n", 400),
        (b"GET /api/a HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", 400),
        (b"GET /api/a HTTP/1.1\r\n\r\n", 400),
        (b"GET /api/a HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", 417),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"GET /api/a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n", 501),
        (b"GET /api/a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501),
        (b"POST /api/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nffffffffffffffffff\r\n", 400),
    ];
    for (raw, status) in vectors {
        let answer = exchange(proxy.addr, raw);
        assert_eq!(
            statuses(&answer).first(),
            Some(status),
            "{:?} answered {answer:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // The oversized chunk arrives after a valid first chunk was forwarded: nginx may have
    // seen that request start, but no vector's smuggled request reached it.
    let served = nginx.served();
    assert!(
        served
            .iter()
            .all(|l| !l.contains("smuggled") && !l.starts_with("GET")),
        "{served:?}"
    );
    assert!(served.len() <= 1, "{served:?}");
}

#[test]
fn a_slow_head_is_cut_off_and_others_are_served_meanwhile() {
    if !have("nginx") {
        return;
    }
    let nginx = Nginx::start();
    let proxy = Proxy::start(
        nginx.addr,
        ProxyConfig {
            head_timeout: Duration::from_millis(500),
            ..ProxyConfig::default()
        },
    );
    // Twenty slow clients that never finish their heads.
    let slow: Vec<StdStream> = (0..20)
        .map(|_| {
            let mut s = StdStream::connect(proxy.addr).unwrap();
            s.write_all(b"GET /api/a HTTP/1.1\r\nHost: h\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // A legitimate client is served while they wait.
    let answer = exchange(
        proxy.addr,
        b"GET /api/ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&answer), vec![200], "{answer}");
    // Each slow connection is closed by the proxy once the head deadline passed.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "the proxy answers a head that missed its deadline 408 and closes: {answer:?}"
        );
    }
    let timeouts = proxy
        .outcomes()
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Refused { status: 408, .. }))
        .count();
    assert_eq!(timeouts, 20, "each slow head is a refusal in the log");
    assert_eq!(nginx.served().len(), 1);
}

/// The reliability plan's path vectors (§4.5) through the proxy, with the rules
/// `allow GET /public/.*` and `deny /admin(/.*)?`, in front of two backends that route
/// differently: nginx (which normalizes again: `$uri`) and Python's `http.server` (which routes
/// on the raw path it receives). A request the proxy forwards must be routed to `/public/` by
/// both; one it refuses or denies must reach neither.
#[test]
fn the_path_the_rules_authorize_is_the_path_both_backends_route() {
    if !have("nginx") || !have("python3") {
        return;
    }
    let rules = || {
        RuleSet::compile(vec![
            rule(1, L7Action::Allow, Some("GET"), Some("/public/.*")),
            rule(2, L7Action::Deny, None, Some("/admin(/.*)?")),
        ])
        .unwrap()
    };
    let nginx = Nginx::start();
    let python = PythonBackend::start();
    let via_nginx = Proxy::start(nginx.addr, ProxyConfig::default());
    let via_python = Proxy::start(python.addr, ProxyConfig::default());
    via_nginx.set_rules(Some(rules()));
    via_python.set_rules(Some(rules()));
    let vectors: &[&[u8]] = &[
        b"/public/../admin",
        b"/public/%2e%2e/admin",
        b"/public/%2E%2E/admin",
        b"/public/.%2e/admin",
        b"/public/%252e%252e/admin",
        b"//admin",
        b"/public//../admin",
        b"/admin%2fsecret",
        b"/public%2f..%2fadmin",
        b"/public\\..\\admin",
        b"/admin%5csecret",
        b"/admin%00",
        b"/%61dmin",
        b"/%41DMIN",
        b"/admin;jsessionid=1",
        b"/public/..;/admin",
        b"/admin#frag",
        b"/public#/../admin",
        b"/public/x?p=/../admin",
        b"/public/x?/admin",
        b"/admin/./x",
        b"/./admin",
        b"/../admin",
        b"/a/b/../../../../admin",
        b"/public/./x",
        b"/public//x",
        b"/%70ublic/x",
        b"/public/a/../b",
        b"/%c0%af",
        b"/%2x",
        b"http://good/admin",
        b"http://good/public/y",
    ];
    let mut forwarded = 0;
    for target in vectors {
        let shown = String::from_utf8_lossy(target);
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(target);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: good\r\nConnection: close\r\n\r\n");
        let a = exchange(via_nginx.addr, &raw);
        let b = exchange(via_python.addr, &raw);
        let (sa, sb) = (statuses(&a), statuses(&b));
        assert_eq!(
            sa, sb,
            "{shown}: the proxy answered differently in front of each backend"
        );
        match sa.as_slice() {
            [200] => {
                forwarded += 1;
                let uri = a
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Uri: "))
                    .unwrap_or_default();
                assert!(
                    uri.starts_with("/public/"),
                    "{shown}: nginx routed {uri:?}\n{a}"
                );
                assert!(
                    b.contains("\r\n\r\npublic /public/"),
                    "{shown}: python routed\n{b}"
                );
            }
            [400] | [403] => {}
            other => panic!("{shown}: unexpected answer {other:?}\n{a}"),
        }
    }
    // The forwarded ones: P11 (twice), /public/./x, /public//x, /%70ublic/x, /public/a/../b
    // and the absolute form; everything else is refused or denied.
    assert_eq!(forwarded, 7, "forwarded vectors");
    let served_nginx = nginx.served();
    assert_eq!(served_nginx.len(), 7, "{served_nginx:?}");
    assert!(
        served_nginx.iter().all(|l| l.starts_with("GET /public/")),
        "nginx received only normalized /public/ targets: {served_nginx:?}"
    );
}

#[test]
fn limits_upstream_failure_head_and_idle_connections() {
    if !have("nginx") || !have("curl") {
        return;
    }
    let nginx = Nginx::start();
    let proxy = Proxy::start(
        nginx.addr,
        ProxyConfig {
            idle_timeout: Duration::from_millis(300),
            ..ProxyConfig::default()
        },
    );
    // 101 header fields, and one line over 8 KiB: 431, nothing forwarded.
    let mut many = b"GET /api/a HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(statuses(&exchange(proxy.addr, &many)), vec![431]);
    let long = format!(
        "GET /api/a HTTP/1.1\r\nHost: h\r\nX-Long: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(statuses(&exchange(proxy.addr, long.as_bytes())), vec![431]);
    // HEAD: the response has no body, and the connection stays usable.
    let (code, body) = curl(&["-I", &format!("http://{}/api/v1/data", proxy.addr)]);
    assert_eq!(code, "200");
    assert!(body.contains("Content-Length: "), "{body}");
    // An idle kept-alive connection is closed after the idle limit.
    let mut s = StdStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after idling");
    assert_eq!(nginx.served().len(), 2, "HEAD and the kept-alive GET");
    // The upstream is down: 503, the request is logged as refused, never allowed.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy_down = Proxy::start(down, ProxyConfig::default());
    assert_eq!(
        statuses(&exchange(
            proxy_down.addr,
            b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"
        )),
        vec![503]
    );
    assert!(matches!(
        proxy_down.outcomes().as_slice(),
        [(_, Outcome::Refused { status: 503, .. })]
    ));
}

/// An upstream that fails before answering (closes, or answers something that is not HTTP):
/// the client is answered 502 with the reason in the record, never a silent reset.
#[test]
fn an_upstream_that_fails_before_answering_is_a_502() {
    let broken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = broken.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, conn) in broken.incoming().enumerate() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            if i % 2 == 0 {
                let _ = c.write_all(b"SPDY/9 nonsense\r\n\r\n");
            }
            // Dropped: closed without (another) word.
        }
    });
    let proxy = Proxy::start(addr, ProxyConfig::default());
    for _ in 0..2 {
        let answer = exchange(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(statuses(&answer), vec![502], "{answer}");
    }
    let records = proxy.records.lock().unwrap().clone();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            r.outcome,
            Outcome::Forwarded {
                rule: 1,
                status: 502
            }
        );
        assert!(r.upstream_error.is_some(), "{r:?}");
    }
}

/// Upstream connections kept by the caller between client connections, as the agent keeps
/// them per client address: the log of what was opened and reused.
#[derive(Default)]
struct KeptUpstreams {
    addr: Option<SocketAddr>,
    /// Keep what is given back (else it is closed).
    keep: bool,
    idle: Mutex<Vec<tokio::net::TcpStream>>,
    opened: std::sync::atomic::AtomicUsize,
    reused: std::sync::atomic::AtomicUsize,
}

impl KeptUpstreams {
    /// Keeping what is given back, in front of `addr`.
    fn keeping(addr: SocketAddr) -> Arc<KeptUpstreams> {
        Arc::new(KeptUpstreams {
            addr: Some(addr),
            keep: true,
            ..KeptUpstreams::default()
        })
    }
}

impl palisade_l7proxy::proxy::Upstreams<tokio::net::TcpStream> for KeptUpstreams {
    async fn open(&self, fresh: bool) -> std::io::Result<(tokio::net::TcpStream, bool)> {
        use std::sync::atomic::Ordering::SeqCst;
        if !fresh && let Some(c) = self.idle.lock().unwrap().pop() {
            self.reused.fetch_add(1, SeqCst);
            return Ok((c, true));
        }
        self.opened.fetch_add(1, SeqCst);
        Ok((
            tokio::net::TcpStream::connect(self.addr.unwrap()).await?,
            false,
        ))
    }

    fn release(&self, conn: tokio::net::TcpStream) {
        if self.keep {
            self.idle.lock().unwrap().push(conn);
        }
    }
}

/// A backend answering every request with the serial number of the connection it came on
/// (`conn N`), keep-alive; with `close_after_answer` it closes each connection right after
/// its first answer without saying so (as a server whose keep-alive timeout ran out does).
fn counting_backend(close_after_answer: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + body_len {
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..end + 4 + body_len);
                    let body = format!("conn {n}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if c.write_all(answer.as_bytes()).is_err() || close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Waits until `kept` holds `n` idle connections (a client connection's upstream is given
/// back just after the proxy closed the client's side).
fn wait_idle(kept: &KeptUpstreams, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while kept.idle.lock().unwrap().len() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream was not given back"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client connection's upstream is given back when its last response ended cleanly and
/// carries the next client connection's request; a kept connection the server closed
/// meanwhile is tried again once on a new connection for a `GET`, never for a request with a
/// body (502); a denied request's connection gives back the upstream the earlier request used.
#[test]
fn kept_upstream_connections_carry_later_clients_and_a_closed_one_is_retried_only_when_safe() {
    use std::sync::atomic::Ordering::SeqCst;
    let get = b"GET /api/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";

    // A server that keeps its connections open: one upstream connection for three clients.
    let (backend, accepted) = counting_backend(false);
    let kept = KeptUpstreams::keeping(backend);
    let proxy = Proxy::with_upstreams(kept.clone(), ProxyConfig::default());
    let addr = proxy.addr;
    for i in 0..3 {
        let answer = exchange(addr, get);
        assert_eq!(statuses(&answer), vec![200], "{answer}");
        assert!(answer.ends_with("conn 1"), "client {i}: {answer}");
        // The client asked to close: told so, while the upstream connection stays open.
        assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
        wait_idle(&kept, 1);
    }
    // Allowed, then denied on one connection: the denial answers 403 and the upstream the
    // first request used is still given back.
    let answer = exchange(
        addr,
        b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\nGET /api/admin HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(statuses(&answer), vec![200, 403], "{answer}");
    wait_idle(&kept, 1);
    assert_eq!(accepted.load(SeqCst), 1);
    assert_eq!((kept.opened.load(SeqCst), kept.reused.load(SeqCst)), (1, 3));

    // A server that closes every connection after one answer without saying so.
    let (backend, accepted) = counting_backend(true);
    let kept = KeptUpstreams::keeping(backend);
    let proxy = Proxy::with_upstreams(kept.clone(), ProxyConfig::default());
    let addr = proxy.addr;
    let answer = exchange(addr, get);
    assert!(answer.ends_with("conn 1"), "{answer}");
    wait_idle(&kept, 1);
    // The kept connection is closed: the GET goes again on a new one.
    let answer = exchange(addr, get);
    assert_eq!(statuses(&answer), vec![200], "{answer}");
    assert!(answer.ends_with("conn 2"), "{answer}");
    assert_eq!(accepted.load(SeqCst), 2);
    wait_idle(&kept, 1);
    // A request with a body is not sent twice: answered 502, no new connection.
    let answer = exchange(
        addr,
        b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert_eq!(statuses(&answer), vec![502], "{answer}");
    assert_eq!(accepted.load(SeqCst), 2);
    let outcomes: Vec<Outcome> = proxy.outcomes().into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Forwarded {
                rule: 1,
                status: 200
            },
            Outcome::Forwarded {
                rule: 1,
                status: 200
            },
            Outcome::Forwarded {
                rule: 3,
                status: 502
            },
        ]
    );
}
