//! Results on stdout, written in the version of the incoming configuration.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use crate::config::{SUPPORTED_VERSIONS, Version};
use crate::link::GATEWAY;

/// VERSION's answer.
pub fn version_info(cni_version: &str) -> Value {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[derive(Debug, Clone)]
pub struct AddResult<'a> {
    pub host_ifname: &'a str,
    pub host_mac: &'a str,
    pub ifname: &'a str,
    pub pod_mac: &'a str,
    pub mtu: Option<u32>,
    pub netns: &'a Path,
    pub ip: Ipv4Addr,
}

impl AddResult<'_> {
    /// The ADD result. Before 1.0.0 every `ips[]` entry carries `"version": "4"`.
    pub fn to_json(&self, cni_version: &str, version: Version) -> Value {
        let mut host = json!({ "name": self.host_ifname, "mac": self.host_mac });
        let mut pod = json!({
            "name": self.ifname,
            "mac": self.pod_mac,
            "sandbox": self.netns.to_string_lossy(),
        });
        if let Some(mtu) = self.mtu
            && version >= Version(1, 0, 0)
        {
            host["mtu"] = json!(mtu);
            pod["mtu"] = json!(mtu);
        }
        let mut ip = json!({
            "address": format!("{}/32", self.ip),
            "gateway": GATEWAY.to_string(),
            "interface": 1,
        });
        if version < Version(1, 0, 0) {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": cni_version,
            "interfaces": [host, pod],
            "ips": [ip],
            "routes": [{ "dst": "0.0.0.0/0", "gw": GATEWAY.to_string() }],
            "dns": {},
        })
    }
}
