//! The proxy's sockets and the node's routing for the redirect (docs/l7.md, "Redirect").
//!
//! - **Listener**: one dual-stack `[::]:port` socket, transparent (the SYN-ACK leaves from
//!   the server's address, which is not local), `SO_MARK` 0x0a00 (inherited by accepted
//!   sockets, so their packets never match the local-delivery rule).
//! - **Upstream**: a transparent socket bound to the client pod's address (port chosen at
//!   `connect`), `SO_MARK` 0x0b00: the server's `to_pod` sees the client's identity (from
//!   the address) and the proxy mark (so the REDIRECT entry admits the leg the proxy judged),
//!   and tracks the flow so its replies are delivered back here.
//! - **Routing**: `ip rule fwmark 0x200/0xf00 lookup <table>` and `local default dev lo` in
//!   that table, for IPv4 and IPv6; `net.ipv4.ip_early_demux=0` so that a TIME_WAIT socket
//!   of a proxied connection never captures a later unproxied flow on the same 4-tuple.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
    sockopt,
};

use policy_compiler::abi;

/// The routing table of the local-delivery route.
pub const ROUTE_TABLE: u32 = 2004;
/// The preference of the fwmark rule (before the main table's 32766).
pub const RULE_PREF: u32 = 100;

fn sock_err(what: &str) -> impl FnOnce(nix::Error) -> io::Error + '_ {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

fn stream_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sock_err("socket"))
}

/// The transparent dual-stack listener on `[::]:port`. `IP_TRANSPARENT` sets the socket's
/// transparent bit, which IPv6 shares (`IPV6_TRANSPARENT` is the same flag).
pub fn listener(port: u16) -> io::Result<std::net::TcpListener> {
    let fd = stream_socket(AddressFamily::Inet6)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false).map_err(sock_err("IPV6_V6ONLY"))?;
    setsockopt(&fd, sockopt::IpTransparent, &true).map_err(sock_err("IP_TRANSPARENT"))?;
    setsockopt(&fd, sockopt::Mark, &abi::PROXY_MARK_LISTENER).map_err(sock_err("SO_MARK"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(sock_err("SO_REUSEADDR"))?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    bind(fd.as_raw_fd(), &addr).map_err(sock_err("bind"))?;
    listen(&fd, Backlog::new(4096).map_err(sock_err("backlog"))?).map_err(sock_err("listen"))?;
    Ok(std::net::TcpListener::from(fd))
}

/// A v4-mapped IPv6 address as the IPv4 address it maps.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Connects to `server` from `client`'s address (transparently) with the upstream mark.
pub async fn connect_upstream(
    client: IpAddr,
    server: SocketAddr,
) -> io::Result<tokio::net::TcpStream> {
    let family = match server {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = stream_socket(family)?;
    setsockopt(&fd, sockopt::IpTransparent, &true).map_err(sock_err("IP_TRANSPARENT"))?;
    setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)
        .map_err(sock_err("IP_BIND_ADDRESS_NO_PORT"))?;
    setsockopt(&fd, sockopt::Mark, &abi::PROXY_MARK_UPSTREAM).map_err(sock_err("SO_MARK"))?;
    let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    sock.bind(SocketAddr::new(client, 0))?;
    sock.set_nodelay(true)?;
    sock.connect(server).await
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        format!(
            "cannot run `ip {}`: {e} (iproute2 is required)",
            args.join(" ")
        )
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Installs the local-delivery rule and route for both families (idempotent) and turns
/// early demux off. An error names the command that failed; the proxy is then not made
/// ready, so redirected flows keep dropping (fail closed).
pub fn install_routing() -> Result<(), String> {
    let table = ROUTE_TABLE.to_string();
    let pref = RULE_PREF.to_string();
    let fwmark = format!("{:#x}/{:#x}", abi::PROXY_MARK_LOCAL, abi::PROXY_MARK_MASK);
    for family in ["-4", "-6"] {
        let rules = ip(&[family, "rule", "show", "pref", &pref])?;
        if !rules.contains(&format!("lookup {table}")) {
            ip(&[
                family, "rule", "add", "fwmark", &fwmark, "lookup", &table, "pref", &pref,
            ])?;
        }
        let default = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
        ip(&[
            family, "route", "replace", "local", default, "dev", "lo", "table", &table,
        ])?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_early_demux", "0")
        .map_err(|e| format!("cannot turn net.ipv4.ip_early_demux off: {e}"))?;
    // With src_valid_mark the IPv4 reverse-path check routes by the mark and drops every
    // redirected packet as martian.
    for dev in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/src_valid_mark");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
            std::fs::write(&path, "0").map_err(|e| format!("cannot clear {path}: {e}"))?;
        }
    }
    Ok(())
}
