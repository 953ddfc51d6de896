//! Servers and clients inside namespaces, in pure Rust.
//!
//! Sockets are created on a thread inside the namespace ([`run_in_netns`]) and keep that
//! namespace for life, so accept loops, echo handlers and test code then use them from ordinary
//! threads.

use std::io::{self, Read as _, Write as _};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener,
    TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, bind, listen, recvfrom, sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike as _};

use super::{NodeError, Result, run_in_netns};

/// How often blocked server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Largest datagram the UDP helpers handle.
const MAX_DATAGRAM: usize = 65_536;

/// What a TCP connection attempt ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpOutcome {
    /// The handshake completed. `banner` is the first line the server sent (without `\n`), or
    /// what arrived before the timeout; empty for servers that send nothing first (nginx).
    Connected {
        /// The server's first line.
        banner: String,
    },
    /// A RST answered the SYN: nothing listens, or something rejected the connection.
    Refused,
    /// No answer in time: what a dropped SYN looks like.
    TimedOut,
    /// An ICMP error (host or network unreachable) answered.
    Unreachable {
        /// The error the kernel reported.
        reason: String,
    },
}

impl TcpOutcome {
    /// Whether the handshake completed.
    pub fn is_connected(&self) -> bool {
        matches!(self, TcpOutcome::Connected { .. })
    }

    /// The banner, when connected.
    pub fn banner(&self) -> Option<&str> {
        match self {
            TcpOutcome::Connected { banner } => Some(banner),
            _ => None,
        }
    }
}

/// What one [`TcpSession::echo`] ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoOutcome {
    /// The payload came back unchanged.
    Echoed,
    /// Something else came back (late bytes of an earlier timed-out echo, or not an echo server).
    Mismatch {
        /// What was read.
        received: Vec<u8>,
    },
    /// Not all of the payload came back in time (the flow is being dropped).
    TimedOut {
        /// What did arrive.
        received: Vec<u8>,
    },
    /// The peer closed the connection.
    Closed,
    /// The connection was reset.
    Reset,
}

/// A server thread in a namespace; dropping the handle stops it and its connections.
#[derive(Debug)]
pub struct ServerHandle {
    port: u16,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// A duplicate of a TCP listener's descriptor: `shutdown(2)` on it wakes the blocked
    /// `accept`, so accepting needs no polling (no added latency per connection).
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The port it listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted (TCP) or datagrams received (UDP) so far: lets a test tell "the
    /// datapath dropped it" from "the server never saw it".
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Stops the server and waits for its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(fd) = self.wake.take()
            && let Err(e) =
                nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        {
            eprintln!(
                "palisade node: waking the server on port {}: {e}",
                self.port
            );
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!(
                "palisade node: server thread on port {} panicked",
                self.port
            );
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An open TCP connection from a pod, for tests that span a policy change.
///
/// The socket was created inside the pod namespace; it is used from the calling thread.
#[derive(Debug)]
pub struct TcpSession {
    stream: TcpStream,
    banner: String,
    peer: SocketAddr,
}

impl TcpSession {
    /// The server's banner line.
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// The address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The local (pod-side) address: source address and port of the flow.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The stream, for anything the helpers do not cover.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `payload` and waits up to `timeout` for the same bytes to come back.
    ///
    /// After [`EchoOutcome::TimedOut`] the missing bytes may still arrive later (TCP
    /// retransmits once the flow is allowed again) and show up as a [`EchoOutcome::Mismatch`]
    /// of the next echo; use a fresh session for clean results.
    pub fn echo(&mut self, payload: &[u8], timeout: Duration) -> Result<EchoOutcome> {
        if timeout.is_zero() {
            return Err(NodeError::ZeroTimeout);
        }
        if let Err(e) = self.stream.write_all(payload) {
            return match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    Ok(EchoOutcome::Reset)
                }
                _ => Err(self.error("write", e)),
            };
        }
        let deadline = Instant::now() + timeout;
        let mut received = Vec::with_capacity(payload.len());
        let mut buf = vec![0; payload.len().max(1)];
        while received.len() < payload.len() {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                return Ok(EchoOutcome::TimedOut { received });
            };
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.error("set read timeout", e))?;
            let want = payload.len() - received.len();
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => return Ok(EchoOutcome::Closed),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => return Ok(EchoOutcome::TimedOut { received }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(EchoOutcome::Reset);
                }
                Err(e) => return Err(self.error("read", e)),
            }
        }
        if received == payload {
            Ok(EchoOutcome::Echoed)
        } else {
            Ok(EchoOutcome::Mismatch { received })
        }
    }

    /// Half-closes the sending side (the echo server then closes too).
    pub fn shutdown_write(&self) -> Result<()> {
        self.stream
            .shutdown(Shutdown::Write)
            .map_err(|e| self.error("shutdown", e))
    }

    fn error(&self, op: &'static str, source: io::Error) -> NodeError {
        NodeError::Socket {
            op,
            netns: format!("session to {}", self.peer).into(),
            source,
        }
    }
}

/// Starts a TCP server in a namespace: for each connection, the line `identity\n`, then an echo
/// of everything read until EOF. Listens on IPv6 and IPv4 (one dual-stack socket).
pub fn serve_tcp_in_netns(netns: &Path, port: u16, identity: &str) -> Result<ServerHandle> {
    let listener =
        run_in_netns(netns, || listen_tcp(port))?.map_err(|source| NodeError::Socket {
            op: "listen on TCP",
            netns: netns.to_owned(),
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let wake = listener
        .try_clone()
        .map(OwnedFd::from)
        .map_err(|source| NodeError::Socket {
            op: "duplicate TCP listener",
            netns: netns.to_owned(),
            source,
        })?;
    let banner = format!("{identity}\n").into_bytes();
    let (stop, served) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let thread = {
        let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
        std::thread::Builder::new()
            .name(format!("tcp-server:{port}"))
            .spawn(move || accept_loop(&listener, &banner, &stop, &served))
            .map_err(|source| NodeError::Thread {
                path: netns.to_owned(),
                source,
            })?
    };
    Ok(ServerHandle {
        port,
        served,
        stop,
        wake: Some(wake),
        thread: Some(thread),
    })
}

/// Starts a UDP server in a namespace answering each datagram with `identity\n` + datagram.
pub fn serve_udp_in_netns(netns: &Path, port: u16, identity: &str) -> Result<ServerHandle> {
    let socket = run_in_netns(netns, || bind_udp(port))?.map_err(|source| NodeError::Socket {
        op: "bind UDP",
        netns: netns.to_owned(),
        source,
    })?;
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(port);
    socket
        .set_read_timeout(Some(POLL))
        .map_err(|source| NodeError::Socket {
            op: "configure UDP socket",
            netns: netns.to_owned(),
            source,
        })?;
    let prefix = format!("{identity}\n").into_bytes();
    let (stop, served) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let thread = {
        let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
        std::thread::Builder::new()
            .name(format!("udp-server:{port}"))
            .spawn(move || udp_loop(&socket, &prefix, &stop, &served))
            .map_err(|source| NodeError::Thread {
                path: netns.to_owned(),
                source,
            })?
    };
    Ok(ServerHandle {
        port,
        served,
        stop,
        wake: None,
        thread: Some(thread),
    })
}

/// Connects from a namespace and reads the banner line; see [`TcpOutcome`]. `timeout` bounds
/// the connect and the banner read together.
pub fn tcp_connect_in_netns(
    netns: &Path,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpOutcome> {
    if timeout.is_zero() {
        return Err(NodeError::ZeroTimeout);
    }
    let deadline = Instant::now() + timeout;
    let stream = match run_in_netns(netns, || TcpStream::connect_timeout(&dst, timeout))? {
        Ok(stream) => stream,
        Err(e) => {
            return match e.kind() {
                io::ErrorKind::ConnectionRefused => Ok(TcpOutcome::Refused),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Ok(TcpOutcome::TimedOut),
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    Ok(TcpOutcome::Unreachable {
                        reason: e.to_string(),
                    })
                }
                _ => Err(NodeError::Socket {
                    op: "connect",
                    netns: netns.to_owned(),
                    source: e,
                }),
            };
        }
    };
    let banner = read_line(&stream, deadline).map_err(|source| NodeError::Socket {
        op: "read banner",
        netns: netns.to_owned(),
        source,
    })?;
    Ok(TcpOutcome::Connected { banner })
}

/// Opens a [`TcpSession`] from a namespace; any outcome but a completed handshake is an error.
pub fn tcp_session_in_netns(
    netns: &Path,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpSession> {
    if timeout.is_zero() {
        return Err(NodeError::ZeroTimeout);
    }
    let deadline = Instant::now() + timeout;
    let stream =
        run_in_netns(netns, || TcpStream::connect_timeout(&dst, timeout))?.map_err(|source| {
            NodeError::Socket {
                op: "connect",
                netns: netns.to_owned(),
                source,
            }
        })?;
    let banner = read_line(&stream, deadline).map_err(|source| NodeError::Socket {
        op: "read banner",
        netns: netns.to_owned(),
        source,
    })?;
    Ok(TcpSession {
        stream,
        banner,
        peer: dst,
    })
}

/// Sends one datagram from a namespace and waits for one reply from `dst`. `None` when nothing
/// came back in time, or an ICMP port-unreachable came back instead.
pub fn udp_roundtrip_in_netns(
    netns: &Path,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Option<Vec<u8>>> {
    Ok(match udp_probe_in_netns(netns, dst, payload, timeout)? {
        UdpOutcome::Reply(r) => Some(r),
        UdpOutcome::Refused | UdpOutcome::TimedOut => None,
    })
}

/// What one datagram got back ([`udp_probe_in_netns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpOutcome {
    /// A datagram from `dst`.
    Reply(Vec<u8>),
    /// An ICMP port unreachable (the socket's ECONNREFUSED).
    Refused,
    /// Nothing in time.
    TimedOut,
}

/// Sends one datagram from a namespace and says what came back from `dst`.
pub fn udp_probe_in_netns(
    netns: &Path,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<UdpOutcome> {
    if timeout.is_zero() {
        return Err(NodeError::ZeroTimeout);
    }
    let socket = run_in_netns(netns, || {
        let local: SocketAddr = match dst {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        // Connected: replies from anyone else are ignored, and ICMP errors are reported.
        socket.connect(dst)?;
        Ok::<_, io::Error>(socket)
    })?
    .map_err(|source| NodeError::Socket {
        op: "open UDP socket",
        netns: netns.to_owned(),
        source,
    })?;
    let err = |op, source| NodeError::Socket {
        op,
        netns: netns.to_owned(),
        source,
    };
    socket.send(payload).map_err(|e| err("send", e))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| err("set read timeout", e))?;
    let mut buf = vec![0; MAX_DATAGRAM];
    let deadline = Instant::now() + timeout;
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(UdpOutcome::Reply(buf[..n].to_vec())),
            Err(e) if is_timeout(&e) => return Ok(UdpOutcome::TimedOut),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok(UdpOutcome::Refused);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(err("receive", e)),
        }
    }
}

/// One ICMP echo (ICMPv6 for IPv6 destinations) from a namespace, through a raw socket, so no
/// `ping` binary is needed. `true` when a matching echo reply from `dst` arrived in time.
pub fn ping_in_netns(netns: &Path, dst: IpAddr, timeout: Duration) -> Result<bool> {
    if timeout.is_zero() {
        return Err(NodeError::ZeroTimeout);
    }
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    // Raw sockets see every echo reply in the namespace; id and seq pick out ours.
    let id = (std::process::id() as u16) ^ 0x5a5a;
    run_in_netns(netns, || ping_here(dst, id, seq, timeout))?.map_err(|source| NodeError::Socket {
        op: "ping",
        netns: netns.to_owned(),
        source,
    })
}

fn ping_here(dst: IpAddr, id: u16, seq: u16, timeout: Duration) -> io::Result<bool> {
    let (family, protocol, request_type, reply_type) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128, 129),
    };
    let fd: OwnedFd = socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)?;
    let mut packet = vec![request_type, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(b"palisade-ping-00");
    match dst {
        IpAddr::V4(ip) => {
            let sum = internet_checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
            sendto(
                fd.as_raw_fd(),
                &packet,
                &SockaddrIn::from(SocketAddrV4::new(ip, 0)),
                MsgFlags::empty(),
            )?;
        }
        // The kernel fills in the ICMPv6 checksum (it covers a pseudo-header).
        IpAddr::V6(ip) => {
            sendto(
                fd.as_raw_fd(),
                &packet,
                &SockaddrIn6::from(SocketAddrV6::new(ip, 0, 0, 0)),
                MsgFlags::empty(),
            )?;
        }
    }
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 1500];
    loop {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(false);
        };
        let micros = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::microseconds(micros))?;
        let (n, from) = match recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf) {
            Ok(got) => got,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let from_ip = from.and_then(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
        let icmp = match dst {
            IpAddr::V4(_) => {
                let header_len = usize::from(buf.first().copied().unwrap_or(0) & 0x0f) * 4;
                buf.get(header_len..n).unwrap_or_default()
            }
            IpAddr::V6(_) => buf.get(..n).unwrap_or_default(),
        };
        let matches = icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
            && from_ip == Some(dst);
        if matches {
            return Ok(true);
        }
    }
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A listening socket for both families when the kernel has IPv6, else IPv4 only.
fn listen_tcp(port: u16) -> io::Result<TcpListener> {
    let fd = match dual_stack_socket(SockType::Stream, port) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            return TcpListener::bind((Ipv4Addr::UNSPECIFIED, port));
        }
        Err(e) => return Err(e),
    };
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    match dual_stack_socket(SockType::Datagram, port) {
        Ok(fd) => Ok(UdpSocket::from(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        }
        Err(e) => Err(e),
    }
}

/// An IPv6 socket bound to `[::]:port` with `IPV6_V6ONLY` off: it also receives IPv4 (as
/// v4-mapped addresses), whatever the namespace's `net.ipv6.bindv6only` says.
fn dual_stack_socket(ty: SockType, port: u16) -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
    )?;
    Ok(fd)
}

fn accept_loop(
    listener: &TcpListener,
    banner: &[u8],
    stop: &Arc<AtomicBool>,
    served: &AtomicUsize,
) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                served.fetch_add(1, Ordering::SeqCst);
                let banner = banner.to_vec();
                let stop = Arc::clone(stop);
                match std::thread::Builder::new()
                    .name("tcp-echo".into())
                    .spawn(move || echo(stream, &banner, &stop))
                {
                    Ok(handle) => handlers.push(handle),
                    Err(e) => eprintln!("palisade node: cannot spawn a connection thread: {e}"),
                }
                handlers.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EINVAL after `shutdown` from the handle: the loop condition ends it.
            Err(_) if stop.load(Ordering::SeqCst) => {}
            // ECONNABORTED and friends: that connection is gone, the listener is fine. The
            // pause only keeps a persistent error from spinning.
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for handle in handlers {
        drop(handle.join());
    }
}

fn echo(mut stream: TcpStream, banner: &[u8], stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    if stream.write_all(banner).is_err() {
        return;
    }
    let mut buf = vec![0; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(stream.shutdown(Shutdown::Both));
}

fn udp_loop(socket: &UdpSocket, prefix: &[u8], stop: &AtomicBool, served: &AtomicUsize) {
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut reply = Vec::with_capacity(MAX_DATAGRAM + prefix.len());
    while !stop.load(Ordering::SeqCst) {
        // Errors are the read timeout (time to look at the stop flag) or ICMP errors from
        // earlier replies: neither ends the server.
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            served.fetch_add(1, Ordering::SeqCst);
            reply.clear();
            reply.extend_from_slice(prefix);
            reply.extend_from_slice(&buf[..n]);
            if let Err(e) = socket.send_to(&reply, from) {
                eprintln!("palisade node: UDP reply to {from}: {e}");
            }
        }
    }
}

/// Reads up to and including `\n` (returned without it), or what arrived by `deadline`.
/// Reads byte by byte so nothing after the line is consumed.
fn read_line(mut stream: &TcpStream, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.set_read_timeout(None)?;
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Socket timeouts surface as `WouldBlock` (EAGAIN) on Linux, `TimedOut` elsewhere.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3 example bytes; the one's-complement sum is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        // A packet carrying its own checksum sums to zero.
        let mut packet = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'x'];
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(internet_checksum(&packet), 0);
    }
}
