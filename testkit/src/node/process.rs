//! External programs inside pod namespaces: traffic generators, nginx, curl.
//!
//! These go through `ip netns exec`, which is fine for them (they do not need the host's
//! bpffs); code of this process uses [`super::run_in_netns`] instead.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::link::command_line;
use super::{NodeError, Pod, Result, run_in_netns};

/// How often a waiting loop polls a child.
const POLL: Duration = Duration::from_millis(10);

/// How long nginx gets to start accepting connections.
const NGINX_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished process output.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// A process in a namespace, SIGKILLed and reaped when dropped; its stdout and stderr go to
/// files in a private temporary directory (no pipe to fill up and block a long-running server).
#[derive(Debug)]
pub struct ProcessGuard {
    child: Child,
    command: String,
    dir: TempDir,
}

/// What `curl` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutcome {
    /// HTTP status; 0 when no response arrived (see `curl_exit`).
    pub status: u16,
    /// The response body.
    pub body: String,
    /// curl's exit code: 0 on a response, 7 refused, 28 timed out (see `man curl`).
    pub curl_exit: i32,
}

impl HttpOutcome {
    /// curl gave up at `--max-time`.
    pub fn timed_out(&self) -> bool {
        self.curl_exit == 28
    }

    /// The connection was refused.
    pub fn refused(&self) -> bool {
        self.curl_exit == 7
    }
}

/// nginx serving a fixed body in a pod; stopped (and its directory removed) on drop.
#[derive(Debug)]
pub struct NginxGuard {
    process: ProcessGuard,
    port: u16,
}

/// A private directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(label: &str) -> Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("palisade-{label}-{}-{n}", std::process::id()));
        // Stale from a crashed run with the same pid: ours now.
        if path.exists() {
            drop(std::fs::remove_dir_all(&path));
        }
        std::fs::create_dir(&path).map_err(|source| NodeError::TempFile {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir { path })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn create(&self, name: &str) -> Result<File> {
        let path = self.file(name);
        File::create(&path).map_err(|source| NodeError::TempFile { path, source })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("palisade node cleanup: remove {}: {e}", self.path.display());
        }
    }
}

impl ProcessGuard {
    /// The process id (of the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Standard output so far.
    pub fn stdout(&self) -> String {
        self.read_log("stdout")
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        self.read_log("stderr")
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().map_err(|source| NodeError::Process {
            op: "wait for",
            command: self.command.clone(),
            source,
        })
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills it now and returns its output.
    pub fn kill(mut self) -> CommandOutput {
        let status = self.terminate();
        CommandOutput {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        if let Err(e) = self.child.kill() {
            eprintln!("palisade node cleanup: kill `{}`: {e}", self.command);
        }
        match self.child.wait() {
            Ok(status) => status,
            Err(e) => {
                eprintln!("palisade node cleanup: wait for `{}`: {e}", self.command);
                std::os::unix::process::ExitStatusExt::from_raw(-1)
            }
        }
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read(self.dir.file(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Starts `argv` in namespace `netns` with `ip netns exec`; see [`ProcessGuard`].
pub fn spawn_in_netns(netns: &str, argv: &[&str]) -> Result<ProcessGuard> {
    spawn_with_dir(netns, argv, TempDir::new("proc")?)
}

fn spawn_with_dir(netns: &str, argv: &[&str], dir: TempDir) -> Result<ProcessGuard> {
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(argv);
    let command = command_line("ip", &args);
    let stdout = dir.create("stdout")?;
    let stderr = dir.create("stderr")?;
    let child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|source| NodeError::Spawn {
            command: command.clone(),
            source,
        })?;
    Ok(ProcessGuard {
        child,
        command,
        dir,
    })
}

/// Runs `argv` in namespace `netns` to completion, killing it after `timeout`. The exit status
/// is part of the result, not an error.
pub fn run_command_in_netns(
    netns: &str,
    argv: &[&str],
    timeout: Duration,
) -> Result<CommandOutput> {
    let mut process = spawn_in_netns(netns, argv)?;
    match process.wait_timeout(timeout)? {
        Some(status) => Ok(CommandOutput {
            status,
            stdout: process.stdout(),
            stderr: process.stderr(),
        }),
        None => Err(NodeError::CommandTimedOut {
            command: process.command.clone(),
            timeout,
        }),
    }
}

/// `curl` from namespace `netns`: never through a proxy from the environment, `--max-time`
/// set from `timeout`. IPv6 literals in brackets work (`-g`).
pub fn curl_in_netns(netns: &str, url: &str, timeout: Duration) -> Result<HttpOutcome> {
    if timeout.is_zero() {
        return Err(NodeError::ZeroTimeout);
    }
    let max_time = format!("{:.3}", timeout.as_secs_f64());
    let argv = [
        "curl",
        "-s",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        &max_time,
        "-w",
        "\n%{http_code}",
        url,
    ];
    // curl enforces the limit itself; the margin only catches a hung curl.
    let output = run_command_in_netns(netns, &argv, timeout + Duration::from_secs(5))?;
    let Some((body, code)) = output.stdout.rsplit_once('\n') else {
        return Err(NodeError::UnexpectedOutput {
            command: command_line("curl", &argv),
            output: output.stdout,
        });
    };
    let status = code
        .trim()
        .parse::<u16>()
        .map_err(|_| NodeError::UnexpectedOutput {
            command: command_line("curl", &argv),
            output: output.stdout.clone(),
        })?;
    let curl_exit = output.status.code().unwrap_or(-1);
    Ok(HttpOutcome {
        status,
        body: body.to_owned(),
        curl_exit,
    })
}

impl NginxGuard {
    /// Writes a minimal configuration into a private directory (pid file and logs there too),
    /// starts nginx in the pod and waits until it accepts connections on the pod's address.
    ///
    /// `master_process off`: a single process, so killing the guard's pid stops everything
    /// (a master killed with SIGKILL would leave its workers serving).
    pub(super) fn start(pod: &Pod, port: u16) -> Result<NginxGuard> {
        let dir = TempDir::new("nginx")?;
        let d = dir.path.display().to_string();
        let body = pod.identity();
        let listen_v6 = if pod.ipv6.is_some() {
            format!("        listen [::]:{port} ipv6only=on;\n")
        } else {
            String::new()
        };
        let config = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20   access_log {d}/access.log;\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   server {{\n\
             \x20       listen 0.0.0.0:{port};\n\
             {listen_v6}\
             \x20       location / {{\n\
             \x20           default_type text/plain;\n\
             \x20           return 200 \"{body}\\n\";\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        let conf_path = dir.file("nginx.conf");
        std::fs::write(&conf_path, config).map_err(|source| NodeError::TempFile {
            path: conf_path.clone(),
            source,
        })?;
        let conf = conf_path.display().to_string();
        let error_log = dir.file("error.log").display().to_string();
        // -e: nginx opens its error log before reading the configuration.
        let argv = [
            "nginx",
            "-p",
            d.as_str(),
            "-c",
            conf.as_str(),
            "-e",
            error_log.as_str(),
        ];
        let mut process = spawn_with_dir(&pod.netns, &argv, dir)?;

        let target = SocketAddr::new(IpAddr::V4(pod.ipv4), port);
        let deadline = Instant::now() + NGINX_READY_TIMEOUT;
        loop {
            let ready = run_in_netns(&pod.netns_path, || {
                TcpStream::connect_timeout(&target, POLL * 10).is_ok()
            })?;
            if ready {
                return Ok(NginxGuard { process, port });
            }
            let exited = process.try_wait()?.is_some();
            if exited || Instant::now() >= deadline {
                let log = [
                    process.stderr(),
                    std::fs::read_to_string(&error_log).unwrap_or_default(),
                ]
                .concat();
                return Err(NodeError::NginxNotReady {
                    netns: pod.netns.clone(),
                    port,
                    timeout: NGINX_READY_TIMEOUT,
                    log: tail(&log, 2000),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The port nginx listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The nginx process.
    pub fn process(&self) -> &ProcessGuard {
        &self.process
    }

    /// The directory holding the configuration and logs (`access.log`, `error.log`).
    pub fn dir(&self) -> &Path {
        &self.process.dir.path
    }
}

/// Removes temporary directories this module made in runs whose process is gone (a test
/// killed before its guards dropped). Best effort: errors are logged.
pub(super) fn sweep_stale_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("palisade-proc-")
            .or_else(|| name.strip_prefix("palisade-nginx-"))
        else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            eprintln!(
                "palisade node sweep: remove {}: {e}",
                entry.path().display()
            );
        }
    }
}

fn tail(s: &str, max: usize) -> String {
    let start = s.len().saturating_sub(max);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].trim().to_owned()
}
