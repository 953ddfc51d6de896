//! Real HTTP parts for the proxy's tests and benchmark: nginx on a loopback port in a private
//! directory, and the CI rule for missing tools.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts connections (10 s at most); `why` explains a failure.
pub fn wait_listening(addr: SocketAddr, why: impl Fn() -> String) {
    let start = Instant::now();
    while StdStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{addr} never listened: {}",
            why()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// Whether `tool` can run; under CI its absence fails the test.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            !in_ci(),
            "{tool} is not installed (Debian: nginx-light, curl); CI=true"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    ok
}

/// nginx on a free loopback port, in a private directory; killed and removed on drop. It
/// answers `ok <method> <target as received>`, and names the normalized path it routes on
/// (`$uri`) in `X-Uri`.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Nginx {
    pub fn start() -> Nginx {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "palisade-l7proxy-nginx-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               log_format l '$request_method $request_uri $content_length $http_transfer_encoding $http_expect';\n\
               access_log {d}/access.log l;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{ default_type text/plain; add_header X-Uri $uri always;\n\
                   return 200 \"ok $request_method $request_uri\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-e", &format!("{d}/error.log")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, || {
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        });
        Nginx { child, dir, addr }
    }

    /// The requests nginx served so far, one `METHOD URI CONTENT_LENGTH TRANSFER_ENCODING
    /// EXPECT` line each (`-` for an absent header).
    pub fn served(&self) -> Vec<String> {
        // nginx writes its access log line after the response; give it a moment.
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Python `http.server` backend on a free loopback port that routes on the raw path it
/// receives (no normalization of its own) and answers `<route> <path>`; killed on drop.
pub struct PythonBackend {
    child: Child,
    pub addr: SocketAddr,
}

const PYTHON_BACKEND: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        route = "admin" if path == "/admin" or path.startswith("/admin/") else (
            "public" if path.startswith("/public/") else "other")
        body = (route + " " + self.path + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

impl PythonBackend {
    pub fn start() -> PythonBackend {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", PYTHON_BACKEND, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, || "the Python backend did not start".into());
        PythonBackend { child, addr }
    }
}

impl Drop for PythonBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
