//! Links, addresses, routes and sysctls inside named namespaces.
//!
//! Every function takes the name of a namespace created with `ip netns add`: nothing here
//! can configure the root namespace, which keeps tests off the host's own networking.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::{NodeError, Result, netns_path, run_in_netns};

/// Linux `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// Runs `ip ARGS...`, returning its stdout; a failure names the command and its stderr.
pub(crate) fn run_ip(args: &[&str]) -> Result<String> {
    run_checked("ip", args)
}

/// Runs a program to completion, checking its exit status.
pub(crate) fn run_checked(program: &str, args: &[&str]) -> Result<String> {
    let command = command_line(program, args);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NodeError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(NodeError::CommandFailed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A command line for messages.
pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks an interface name the way the kernel does (`dev_valid_name`), plus no `.`: dots
/// would make the name ambiguous in dotted sysctl keys.
pub fn validate_ifname(ifname: &str) -> Result<()> {
    let valid = !ifname.is_empty()
        && ifname.len() <= MAX_IFNAME_LEN
        && ifname != "."
        && ifname != ".."
        && !ifname
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'.' || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NodeError::InvalidIfname {
            ifname: ifname.to_owned(),
        })
    }
}

/// Creates a veth pair with `ifname` in `netns` and `peer_ifname` in `peer_netns`.
///
/// Both ends are created directly in their namespaces: the pair never appears in the root
/// namespace, so it cannot clash with the host's interface names or wake its network manager.
pub fn create_veth(netns: &str, ifname: &str, peer_netns: &str, peer_ifname: &str) -> Result<()> {
    validate_ifname(ifname)?;
    validate_ifname(peer_ifname)?;
    run_ip(&[
        "-n",
        netns,
        "link",
        "add",
        ifname,
        "type",
        "veth",
        "peer",
        "name",
        peer_ifname,
        "netns",
        peer_netns,
    ])
    .map(drop)
}

/// Deletes a link (for a veth, both ends). A link or namespace that is already gone is not an
/// error, so cleanup can run more than once.
pub fn delete_link(netns: &str, ifname: &str) -> Result<()> {
    if !super::netns_exists(netns) {
        return Ok(());
    }
    match run_ip(&["-n", netns, "link", "del", ifname]) {
        Err(NodeError::CommandFailed { stderr, .. }) if stderr.contains("Cannot find device") => {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Sets a link up.
pub fn set_link_up(netns: &str, ifname: &str) -> Result<()> {
    run_ip(&["-n", netns, "link", "set", ifname, "up"]).map(drop)
}

/// Adds `addr/prefix_len` to a link. IPv6 addresses get `nodad`: usable at once, no
/// duplicate-address-detection delay.
pub fn add_address(netns: &str, ifname: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
    let cidr = format!("{addr}/{prefix_len}");
    let mut args = vec!["-n", netns, "addr", "add", &cidr, "dev", ifname];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    run_ip(&args).map(drop)
}

/// Routes a single address (`/32` or `/128`) to a link, without a gateway (scope link).
pub fn add_host_route(netns: &str, dst: IpAddr, ifname: &str) -> Result<()> {
    let cidr = match dst {
        IpAddr::V4(_) => format!("{dst}/32"),
        IpAddr::V6(_) => format!("{dst}/128"),
    };
    let family = family_flag(dst);
    run_ip(&["-n", netns, family, "route", "add", &cidr, "dev", ifname]).map(drop)
}

/// Adds a default route via `gateway` on a link.
pub fn add_default_route(netns: &str, gateway: IpAddr, ifname: &str) -> Result<()> {
    let via = gateway.to_string();
    let family = family_flag(gateway);
    run_ip(&[
        "-n", netns, family, "route", "add", "default", "via", &via, "dev", ifname,
    ])
    .map(drop)
}

/// Names of the links in a namespace.
pub fn list_links(netns: &str) -> Result<Vec<String>> {
    let out = run_ip(&["-n", netns, "-o", "link", "show"])?;
    // Lines look like `7: lxc0123@if2: <BROADCAST,...> ...`.
    Ok(out
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect())
}

/// The ifindex of a link, as seen inside its namespace.
pub fn link_ifindex(netns: &str, ifname: &str) -> Result<u32> {
    let name = ifname.to_owned();
    run_in_netns(&netns_path(netns), move || {
        nix::net::if_::if_nametoindex(name.as_str())
    })?
    .map_err(|source| NodeError::NoSuchInterface {
        netns: netns.to_owned(),
        ifname: ifname.to_owned(),
        source,
    })
}

/// Writes a sysctl inside a namespace. `key` is dotted (`net.ipv4.ip_forward`) or a path
/// below `/proc/sys`.
///
/// Writes `/proc/sys` from a thread inside the namespace: `net.*` entries resolve to the
/// namespace of the task that opens them, so this needs no `ip netns exec sysctl` process and
/// never touches the root namespace's values.
pub fn set_sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key);
    let value = format!("{value}\n");
    run_in_netns(&netns_path(netns), || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut file| file.write_all(value.as_bytes()))
    })?
    .map_err(|source| NodeError::Sysctl {
        op: "write",
        netns: netns.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Reads a sysctl inside a namespace (trimmed); `key` as for [`set_sysctl`].
pub fn read_sysctl(netns: &str, key: &str) -> Result<String> {
    let path = sysctl_path(key);
    run_in_netns(&netns_path(netns), || std::fs::read_to_string(&path))?
        .map(|value| value.trim().to_owned())
        .map_err(|source| NodeError::Sysctl {
            op: "read",
            netns: netns.to_owned(),
            key: key.to_owned(),
            source,
        })
}

fn sysctl_path(key: &str) -> String {
    if key.contains('/') {
        format!(
            "/proc/sys/{}",
            key.trim_start_matches("/proc/sys/").trim_start_matches('/')
        )
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }
}

fn family_flag(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "-4" } else { "-6" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_follow_the_kernel_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("lxc0123456789ab").is_ok());
        assert!(validate_ifname("lxc0123456789abc").is_err());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a.b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sysctl_keys_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/lxc1/proxy_arp"),
            "/proc/sys/net/ipv4/conf/lxc1/proxy_arp"
        );
        assert_eq!(
            sysctl_path("/proc/sys/net/ipv4/ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }
}
