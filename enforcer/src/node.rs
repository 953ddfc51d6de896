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

/// Every address of the current network namespace except loopback, unspecified and
/// multicast ones, sorted, without repeats. Link-local addresses count: the local node
/// harness (like Calico) gives the node 169.254.1.1 and fe80::1 towards its pods, and a
/// link-local source can only be this node.
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
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unspecified_and_multicast_are_not_node_addresses() {
        for (s, node) in [
            ("127.0.0.1", false),
            ("::1", false),
            ("0.0.0.0", false),
            ("ff02::1", false),
            ("224.0.0.1", false),
            ("169.254.1.1", true),
            ("fe80::1", true),
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
