//! Pod interfaces: the veth pair, addresses, routes and sysctls (Calico-style routing, no
//! bridge).
//!
//! Pod side (`CNI_IFNAME` in `CNI_NETNS`): `IP/32`, `169.254.1.1 dev eth0 scope link`,
//! `default via 169.254.1.1`. Host side (`lxc<11 hex>`): up, `proxy_arp=1` (answers the
//! pod's ARP for 169.254.1.1 with its own MAC), `proxy_delay=0` (answer at once, not after
//! up to 0.8 s), and a `/32` route to the pod. The same layout as `testkit/src/node.rs`.
//!
//! Links, addresses and routes are set with iproute2 in batch mode: one `ip -batch -` in the
//! host namespace and one in the pod's, two short execs per ADD (measured in
//! docs/performance.md). The pod's namespace is entered with `setns` on a dedicated thread
//! that then spawns `ip`; the child inherits that thread's namespace. Sysctls are written
//! through `/proc/sys/net`, which resolves to the namespace of the thread that opens it.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use crate::error::Error;

/// The pod's next hop: link-local, answered by proxy ARP on the host side.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Host-side interface names start with this; `ip link` alias marks Palisade's own.
pub const HOST_PREFIX: &str = "lxc";
pub const ALIAS_PREFIX: &str = "palisade:";

/// FNV-1a, 64 bit: small, stable across builds and languages.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Host-side name: `lxc` + the first 11 hex digits of FNV-1a-64 of the container id
/// (14 bytes, under the 15-byte limit).
pub fn host_ifname(container_id: &str) -> String {
    let hex = format!("{:016x}", fnv1a(container_id.as_bytes()));
    format!("{HOST_PREFIX}{}", &hex[..11])
}

/// Locally administered unicast MACs derived from the container id, so the result can name
/// them without reading them back.
pub fn macs(container_id: &str, ifname: &str) -> (String, String) {
    let h = fnv1a(format!("{container_id}/{ifname}").as_bytes()).to_be_bytes();
    let fmt = |first: u8| {
        format!(
            "{first:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            h[0], h[1], h[2], h[3], h[4]
        )
    };
    (fmt(0xee), fmt(0x02))
}

/// What ADD sets up.
#[derive(Debug, Clone)]
pub struct PodLink<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub ip: Ipv4Addr,
    pub mtu: Option<u32>,
}

/// Runs `f` on a new thread that has joined the network namespace at `path`.
pub fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let ns = File::open(path).map_err(|source| Error::Netns {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                path: path.to_owned(),
                source: e.into(),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Netns {
                path: path.to_owned(),
                source: std::io::Error::other("namespace thread panicked"),
            })
        })
    })
}

/// Whether an interface exists in the calling thread's namespace.
pub fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Runs `ip -batch -` with `lines` in the calling thread's namespace.
pub fn ip_batch(lines: &[String]) -> Result<(), Error> {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::IpSpawn { source })?;
    let script = lines.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| Error::IpSpawn { source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| Error::IpSpawn { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::IpCommand {
            args: format!("-batch [{}]", lines.join("; ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip ARGS` and returns stdout.
pub fn ip_output(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::IpSpawn { source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::IpCommand {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn sysctl_path(family: &str, kind: &str, ifname: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/{family}/{kind}/{ifname}/{key}"))
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|source| Error::Sysctl {
        path: path.to_owned(),
        source,
    })
}

pub fn read_sysctl(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| Error::Sysctl {
            path: path.to_owned(),
            source,
        })
}

pub fn proxy_arp_path(host_ifname: &str) -> PathBuf {
    sysctl_path("ipv4", "conf", host_ifname, "proxy_arp")
}

impl PodLink<'_> {
    /// Fails with [`Error::InterfaceExists`] when `ifname` is already in the pod namespace.
    pub fn check_absent(&self) -> Result<(), Error> {
        let ifname = self.ifname;
        let exists = in_netns(self.netns, || Ok(link_exists(ifname)))?;
        if exists {
            return Err(Error::InterfaceExists {
                ifname: ifname.to_owned(),
                netns: self.netns.to_owned(),
            });
        }
        Ok(())
    }

    /// Creates the veth pair (pod end moved into the pod namespace at creation), brings up
    /// the host end and routes the pod address to it. Called in the host namespace.
    pub fn create_host_side(&self) -> Result<(), Error> {
        let (host_mac, pod_mac) = macs(self.container_id, self.ifname);
        let mtu = self.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        let h = self.host_ifname;
        ip_batch(&[
            format!(
                "link add name {h}{mtu} address {host_mac} type veth peer name {}{mtu} address {pod_mac} netns {}",
                self.ifname,
                self.netns.display()
            ),
            format!(
                "link set dev {h} alias {}",
                alias(self.network, self.container_id)
            ),
            format!("link set dev {h} up"),
            format!("route replace {}/32 dev {h} scope link", self.ip),
        ])?;
        write_sysctl(&proxy_arp_path(h), "1")?;
        write_sysctl(&sysctl_path("ipv4", "neigh", h, "proxy_delay"), "0")?;
        Ok(())
    }

    /// Address and routes inside the pod.
    pub fn configure_pod_side(&self) -> Result<(), Error> {
        let i = self.ifname;
        let lines = [
            format!("link set dev {i} up"),
            format!("addr add {}/32 dev {i}", self.ip),
            format!("route add {GATEWAY}/32 dev {i} scope link"),
            format!("route add default via {GATEWAY} dev {i}"),
        ];
        in_netns(self.netns, || ip_batch(&lines))
    }
}

/// Deletes a host-side link (and with it the pod end and the /32 route). Missing is fine.
pub fn delete_host_link(host_ifname: &str) -> Result<(), Error> {
    if !link_exists(host_ifname) {
        return Ok(());
    }
    match ip_batch(&[format!("link del dev {host_ifname}")]) {
        Err(_) if !link_exists(host_ifname) => Ok(()),
        other => other,
    }
}

/// The host-side link's alias, `palisade:<network>/<container id>`: lets GC find links of
/// this network that no allocation accounts for.
pub fn alias(network: &str, container_id: &str) -> String {
    format!("{ALIAS_PREFIX}{network}/{container_id}")
}

/// Host-side veths carrying this network's alias: (ifname, container id).
pub fn palisade_host_links(network: &str) -> Result<Vec<(String, String)>, Error> {
    let out = ip_output(&["-j", "link", "show", "type", "veth"])?;
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&out).map_err(|e| Error::IpCommand {
            args: "-j link show type veth".into(),
            stderr: format!("unreadable output: {e}"),
        })?;
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l.get("ifname")?.as_str()?;
            let (net, cid) = l
                .get("ifalias")?
                .as_str()?
                .strip_prefix(ALIAS_PREFIX)?
                .split_once('/')?;
            if net != network {
                return None;
            }
            Some((name.to_owned(), cid.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_short() {
        let n = host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(n.len(), 14);
        assert!(n.starts_with("lxc"));
        assert_eq!(
            n,
            host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_ne!(host_ifname("a"), host_ifname("b"));
        // Pinned: testkit/src/node.rs derives the same name.
        assert_eq!(host_ifname("a"), "lxcaf63dc4c860");
    }

    #[test]
    fn macs_are_local_unicast() {
        let (h, p) = macs("c", "eth0");
        assert!(h.starts_with("ee:") && p.starts_with("02:"));
        assert_eq!(h[2..], p[2..]);
    }
}
