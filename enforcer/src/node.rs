//! The node the agent runs on: its own addresses, which the policy core maps to identity
//! host (docs/datapath.md §2.2).

use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot list the node's addresses: {source}")]
    Addresses {
        #[source]
        source: nix::Error,
    },
}

/// Every address of the current network namespace except loopback, unspecified,
/// multicast and IPv6 link-local ones, sorted, without repeats. IPv6 link-local addresses
/// are per interface (every pod's host veth gets one, and they come and go with pods), and
/// a node reaches a pod's IPv6 address from a global one. IPv4 link-local addresses count:
/// they are configured, not per interface (the local node harness, like Calico, gives the
/// node 169.254.1.1 towards its pods, which is the source of its probes).
pub fn own_addresses() -> Result<Vec<IpAddr>, NodeError> {
    let ifaddrs = nix::ifaddrs::getifaddrs().map_err(|source| NodeError::Addresses { source })?;
    let mut out: Vec<IpAddr> = ifaddrs
        .filter_map(|i| {
            let a = i.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(is_node_address)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn is_node_address(ip: &IpAddr) -> bool {
    let v6_link_local = matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || v6_link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unspecified_multicast_and_v6_link_local_are_not_node_addresses() {
        for (s, node) in [
            ("127.0.0.1", false),
            ("::1", false),
            ("0.0.0.0", false),
            ("ff02::1", false),
            ("224.0.0.1", false),
            ("169.254.1.1", true),
            ("fe80::1", false),
            ("fe80::945c:5aff:fe0a:6b77", false),
            ("192.168.1.10", true),
            ("2001:db8::1", true),
        ] {
            let ip: IpAddr = s
                .parse()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            assert_eq!(is_node_address(&ip), node, "{s}");
        }
    }
}
