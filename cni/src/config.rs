//! The network configuration on stdin, CNI versions, and the plugin's own settings.
//!
//! Unknown keys are ignored (CNI convention: runtimes add `runtimeConfig`, `capabilities`,
//! `args`, `prevResult`, and conflists carry keys for other plugins); the known ones are
//! validated and a bad value is code 7 naming the key.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::env::valid_name;
use crate::error::Error;

/// Versions this plugin reads configuration in and writes results in.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest supported version; VERSION answers in it when stdin names none.
pub const LATEST_VERSION: &str = "1.1.0";

pub const DEFAULT_DATA_DIR: &str = "/var/lib/palisade/ipam";
/// Registration waits until the enforcer has programmed the pod's policy.
pub const DEFAULT_ENFORCER_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

/// Only the version, for VERSION (whose stdin is `{"cniVersion": ...}`).
#[derive(Debug, Deserialize)]
pub struct VersionOnly {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawNetConf {
    #[serde(default)]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type", default)]
    pub plugin_type: Option<String>,
    #[serde(default)]
    pub ipam: Option<RawIpam>,
    #[serde(default)]
    pub enforcer_socket: Option<PathBuf>,
    #[serde(default)]
    pub enforcer_timeout_ms: Option<u64>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawIpam {
    #[serde(rename = "type", default)]
    pub ipam_type: Option<String>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub range_start: Option<Ipv4Addr>,
    #[serde(default)]
    pub range_end: Option<Ipv4Addr>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub ipam: IpamConf,
    pub enforcer_socket: PathBuf,
    pub enforcer_timeout: Duration,
    pub mtu: Option<u32>,
    pub valid_attachments: Option<Vec<Attachment>>,
    pub prev_result: Option<serde_json::Value>,
}

/// The node-local pool: an IPv4 subnet, the usable range inside it, and where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    pub data_dir: PathBuf,
}

impl IpamConf {
    pub fn subnet_string(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix_len)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// Checks `cniVersion` against the supported list.
pub fn check_version(v: Option<&str>) -> Result<(String, Version), Error> {
    let Some(v) = v else {
        return Err(invalid("cniVersion", "missing"));
    };
    match Version::parse(v) {
        Some(parsed) if SUPPORTED_VERSIONS.contains(&v) => Ok((v.to_owned(), parsed)),
        _ => Err(Error::IncompatibleVersion {
            version: v.to_owned(),
            reason: format!("supported versions are {}", SUPPORTED_VERSIONS.join(", ")),
        }),
    }
}

fn has_path_chars(s: &str) -> bool {
    s.contains('/') || s.contains('\\') || s == "." || s == ".."
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, Error> {
        let value: serde_json::Value =
            serde_json::from_slice(stdin).map_err(|source| Error::Decode { source })?;
        if !value.is_object() {
            return Err(Error::Decode {
                source: serde::de::Error::custom("network configuration is not a JSON object"),
            });
        }
        let raw: RawNetConf =
            serde_json::from_value(value).map_err(|source| Error::Decode { source })?;
        NetConf::validate(raw)
    }

    pub fn validate(raw: RawNetConf) -> Result<NetConf, Error> {
        let (cni_version, version) = check_version(raw.cni_version.as_deref())?;
        let name = raw.name.ok_or_else(|| invalid("name", "missing"))?;
        if !valid_name(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            ));
        }
        let plugin_type = raw.plugin_type.ok_or_else(|| invalid("type", "missing"))?;
        if plugin_type.is_empty() || has_path_chars(&plugin_type) {
            return Err(invalid(
                "type",
                format!("{plugin_type:?} must be a plain binary name"),
            ));
        }
        let ipam = raw.ipam.ok_or_else(|| invalid("ipam", "missing"))?;
        let ipam = IpamConf::validate(ipam)?;
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid("mtu", format!("{mtu} is outside 68..=65535")));
        }
        Ok(NetConf {
            cni_version,
            version,
            name,
            ipam,
            enforcer_socket: raw
                .enforcer_socket
                .unwrap_or_else(|| PathBuf::from(palisade_api::DEFAULT_SOCKET)),
            enforcer_timeout: raw
                .enforcer_timeout_ms
                .map_or(DEFAULT_ENFORCER_TIMEOUT, Duration::from_millis),
            mtu: raw.mtu,
            valid_attachments: raw.valid_attachments,
            prev_result: raw.prev_result,
        })
    }
}

impl IpamConf {
    fn validate(raw: RawIpam) -> Result<IpamConf, Error> {
        let ipam_type = raw
            .ipam_type
            .ok_or_else(|| invalid("ipam.type", "missing"))?;
        if has_path_chars(&ipam_type) {
            return Err(invalid(
                "ipam.type",
                format!("{ipam_type:?} must be a plain binary name"),
            ));
        }
        if ipam_type != "palisade" {
            return Err(invalid(
                "ipam.type",
                format!(
                    "{ipam_type:?} is not supported: the plugin has built-in IPAM \"palisade\""
                ),
            ));
        }
        let subnet = raw
            .subnet
            .ok_or_else(|| invalid("ipam.subnet", "missing"))?;
        let (addr, len) = subnet
            .split_once('/')
            .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
            .filter(|(_, l)| *l <= 32)
            .ok_or_else(|| invalid("ipam.subnet", format!("{subnet:?} is not an IPv4 CIDR")))?;
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        let base = u32::from(addr) & mask;
        if base != u32::from(addr) {
            return Err(invalid(
                "ipam.subnet",
                format!("{subnet:?} has host bits set"),
            ));
        }
        if len < 8 {
            return Err(invalid(
                "ipam.subnet",
                format!("{subnet:?}: prefix shorter than /8"),
            ));
        }
        let last = base | !mask;
        // Network and broadcast addresses are skipped where the subnet has them.
        let (first_usable, last_usable) = if len >= 31 {
            (base, last)
        } else {
            (base + 1, last - 1)
        };
        let start = raw.range_start.map_or(first_usable, u32::from);
        let end = raw.range_end.map_or(last_usable, u32::from);
        if !(first_usable..=last_usable).contains(&start) {
            return Err(invalid(
                "ipam.rangeStart",
                format!(
                    "{} is not a usable address of {subnet}",
                    Ipv4Addr::from(start)
                ),
            ));
        }
        if !(first_usable..=last_usable).contains(&end) || end < start {
            return Err(invalid(
                "ipam.rangeEnd",
                format!(
                    "{} is not a usable address of {subnet} at or after rangeStart",
                    Ipv4Addr::from(end)
                ),
            ));
        }
        if let Some(d) = &raw.data_dir
            && !d.is_absolute()
        {
            // A relative directory would follow the runtime's working directory: two
            // invocations could keep two allocation stores and hand out one address twice.
            return Err(invalid(
                "ipam.dataDir",
                format!("{:?} must be an absolute path", d.display().to_string()),
            ));
        }
        Ok(IpamConf {
            subnet: Ipv4Addr::from(base),
            prefix_len: len,
            range_start: Ipv4Addr::from(start),
            range_end: Ipv4Addr::from(end),
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn parse(s: &str) -> Result<NetConf, Error> {
        NetConf::parse(s.as_bytes())
    }

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"palisade","type":"palisade-cni",
        "ipam":{"type":"palisade","subnet":"10.244.1.0/24"},"somethingElse":{"x":1}}"#;

    #[test]
    fn defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.ipam.range_start, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.ipam.range_end, Ipv4Addr::new(10, 244, 1, 254));
        assert_eq!(
            c.enforcer_socket,
            PathBuf::from("/run/palisade/enforcer.sock")
        );
        assert_eq!(c.ipam.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn decode_errors_are_code_6() {
        for bad in ["", "{", "{} x", "[]", "42", "\"s\"", r#"{"name": 3}"#] {
            assert_eq!(
                parse(bad).unwrap_err().code(),
                code::DECODE_FAILURE,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn config_errors() {
        let cases = [
            (
                GOOD.replace("\"palisade\",\"type\"", "\"my net\",\"type\""),
                code::INVALID_CONFIG,
            ),
            (
                GOOD.replace("\"name\":\"palisade\",", ""),
                code::INVALID_CONFIG,
            ),
            (
                GOOD.replace("palisade-cni", "../../bin/sh"),
                code::INVALID_CONFIG,
            ),
            (
                GOOD.replace("\"type\":\"palisade\"", "\"type\":\"/x\""),
                code::INVALID_CONFIG,
            ),
            (
                GOOD.replace("10.244.1.0/24", "10.244.1.1/24"),
                code::INVALID_CONFIG,
            ),
            (
                GOOD.replace("10.244.1.0/24", "fd00::/64"),
                code::INVALID_CONFIG,
            ),
            (GOOD.replace("1.1.0", "9.9.9"), code::INCOMPATIBLE_VERSION),
            (GOOD.replace("1.1.0", "1.1"), code::INCOMPATIBLE_VERSION),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(&input).unwrap_err().code(), expected, "{input}");
        }
    }

    #[test]
    fn ranges() {
        let c = parse(&GOOD.replace(
            "\"subnet\":\"10.244.1.0/24\"",
            "\"subnet\":\"10.244.1.0/24\",\"rangeStart\":\"10.244.1.10\",\"rangeEnd\":\"10.244.1.20\"",
        ))
        .unwrap();
        assert_eq!(c.ipam.range_start, Ipv4Addr::new(10, 244, 1, 10));
        assert!(
            parse(&GOOD.replace(
                "\"subnet\":\"10.244.1.0/24\"",
                "\"subnet\":\"10.244.1.0/24\",\"rangeStart\":\"10.244.2.10\""
            ))
            .is_err()
        );
        let c = parse(&GOOD.replace("10.244.1.0/24", "10.244.1.4/31")).unwrap();
        assert_eq!(
            (c.ipam.range_start, c.ipam.range_end),
            (Ipv4Addr::new(10, 244, 1, 4), Ipv4Addr::new(10, 244, 1, 5))
        );
    }
}
