//! The CNI network configuration the agent writes once it is ready.
//!
//! A runtime (containerd, CRI-O) sets up no pod network until a conflist exists in its conf
//! directory, and the kubelet keeps the node `NotReady` meanwhile. Writing the conflist only
//! when the agent is ready (datapath loaded, first compile in the maps, endpoint API
//! listening) therefore means no pod on the node starts before its policy can be enforced.
//!
//! The file is written atomically (temporary file in the same directory, synced, renamed,
//! mode 0644): a runtime reloading the directory reads the old file or the new one. It is
//! not removed when the agent stops: pods keep their network across an agent restart, and
//! an ADD while the agent is down fails closed in the plugin (no socket: CNI error 11, "try
//! again later"). Uninstall removes it (docs/deploy.md).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Default file name: sorts before most other networks, so runtimes that take the first
/// file of the directory pick Palisade's.
pub const DEFAULT_CONFLIST_NAME: &str = "10-palisade.conflist";
/// Default network name (also the IPAM state subdirectory).
pub const DEFAULT_NETWORK_NAME: &str = "palisade";
/// The plugin binary the conflist names.
pub const PLUGIN_TYPE: &str = "palisade-cni";
/// Mode of the written file: the runtime reads it; only root writes it.
pub const MODE: u32 = 0o644;

/// `cni:` in the agent's settings. Absent: the agent writes no CNI configuration (the
/// default, for nodes where something else manages it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniConfig {
    /// The runtime's CNI conf directory as the agent sees it (in the DaemonSet,
    /// `/host/etc/cni/net.d`, the node's `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// File name in `conf_dir` (default [`DEFAULT_CONFLIST_NAME`]); must end in
    /// `.conflist`, the extension runtimes read as a plugin list.
    #[serde(default = "default_conflist_name")]
    pub conflist_name: String,
    /// The CNI network name (default [`DEFAULT_NETWORK_NAME`]).
    #[serde(default = "default_network_name")]
    pub network_name: String,
    /// The node's IPv4 pod CIDR, the plugin's `ipam.subnet`.
    pub subnet: String,
    /// The plugin's `ipam.dataDir` (default: the plugin's, `/var/lib/palisade/ipam`).
    #[serde(default)]
    pub ipam_data_dir: Option<PathBuf>,
    /// The plugin's `mtu` (default: the kernel's).
    #[serde(default)]
    pub mtu: Option<u32>,
}

fn default_conflist_name() -> String {
    DEFAULT_CONFLIST_NAME.to_string()
}

fn default_network_name() -> String {
    DEFAULT_NETWORK_NAME.to_string()
}

#[derive(Debug, thiserror::Error)]
#[error("writing the CNI configuration {}: {step}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

impl CniConfig {
    /// The file the agent writes.
    pub fn path(&self) -> PathBuf {
        self.conf_dir.join(&self.conflist_name)
    }

    /// The conflist, naming the plugin and the agent's endpoint API `socket`.
    pub fn conflist(&self, socket: &Path) -> serde_json::Value {
        let mut ipam = serde_json::json!({ "type": "palisade", "subnet": self.subnet });
        if let Some(d) = &self.ipam_data_dir {
            ipam["dataDir"] = serde_json::json!(d);
        }
        let mut plugin = serde_json::json!({
            "type": PLUGIN_TYPE,
            "ipam": ipam,
            "enforcerSocket": socket,
        });
        if let Some(mtu) = self.mtu {
            plugin["mtu"] = serde_json::json!(mtu);
        }
        // 1.0.0 for runtimes built on libcni 1.1 (they drop a network whose version the
        // plugin does not list); `cniVersions` lets newer ones pick 1.1.0 (GC, STATUS).
        serde_json::json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["1.0.0", "1.1.0"],
            "name": self.network_name,
            "plugins": [plugin],
        })
    }

    /// Checks the settings with the plugin's own parser: what the agent would write is
    /// what the plugin accepts. Errors name the setting (`cni.subnet`, ...).
    pub fn validate(&self, socket: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        if !self.conf_dir.is_absolute() {
            return Err(invalid(
                "cni.conf_dir",
                format!(
                    "must be an absolute path, got {:?}",
                    self.conf_dir.display().to_string()
                ),
            ));
        }
        let name = &self.conflist_name;
        if name.contains('/') || name.starts_with('.') || !name.ends_with(".conflist") {
            return Err(invalid(
                "cni.conflist_name",
                format!(
                    "{name:?} must be a plain file name ending in .conflist (not hidden: runtimes skip those)"
                ),
            ));
        }
        let conflist = self.conflist(socket);
        let mut plugin = conflist["plugins"][0].clone();
        // What a runtime hands the plugin: the list's version and name injected.
        plugin["cniVersion"] = conflist["cniVersion"].clone();
        plugin["name"] = conflist["name"].clone();
        palisade_cni::config::NetConf::parse(plugin.to_string().as_bytes())
            .map(|_| ())
            .map_err(|e| {
                let field = match &e {
                    palisade_cni::error::Error::InvalidConfig { field, .. } => match *field {
                        "name" => "cni.network_name",
                        "ipam.subnet" | "ipam.rangeStart" | "ipam.rangeEnd" => "cni.subnet",
                        "ipam.dataDir" => "cni.ipam_data_dir",
                        "mtu" => "cni.mtu",
                        _ => "cni",
                    },
                    _ => "cni",
                };
                invalid(field, e.to_string())
            })
    }

    /// Writes the conflist atomically: a hidden temporary file in `conf_dir` (runtimes
    /// read only `.conf`, `.conflist` and `.json` files), synced, mode 0644, renamed over
    /// the final name, then the directory synced. Creates `conf_dir` if missing.
    pub fn write(&self, socket: &Path) -> Result<PathBuf, WriteError> {
        let path = self.path();
        let err = |step, source| WriteError {
            path: path.clone(),
            step,
            source,
        };
        let mut text = serde_json::to_vec_pretty(&self.conflist(socket))
            .map_err(|e| err("encoding", io::Error::other(e)))?;
        text.push(b'\n');
        std::fs::create_dir_all(&self.conf_dir).map_err(|e| err("creating the directory", e))?;
        let tmp = self.conf_dir.join(format!(
            ".{}.tmp.{}",
            self.conflist_name,
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE)
                .open(&tmp)
                .map_err(|e| err("creating the temporary file", e))?;
            f.write_all(&text).map_err(|e| err("writing", e))?;
            f.set_permissions(Permissions::from_mode(MODE))
                .map_err(|e| err("setting mode 0644", e))?;
            f.sync_all().map_err(|e| err("syncing", e))?;
            drop(f);
            std::fs::rename(&tmp, &path).map_err(|e| err("renaming into place", e))?;
            File::open(&self.conf_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err("syncing the directory", e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path) -> CniConfig {
        CniConfig {
            conf_dir: dir.to_path_buf(),
            conflist_name: default_conflist_name(),
            network_name: default_network_name(),
            subnet: "10.244.3.0/24".into(),
            ipam_data_dir: Some("/var/lib/palisade/ipam".into()),
            mtu: Some(1450),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("palisade-cniconf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The written file is a conflist whose plugin entry, as a runtime hands it over, the
    /// plugin's parser accepts with the agent's socket; mode 0644; no temporary file left;
    /// a second write replaces it.
    #[test]
    fn writes_a_conflist_the_plugin_accepts() {
        let dir = tempdir("write").join("net.d");
        let socket = Path::new("/run/palisade/enforcer.sock");
        let c = conf(&dir);
        c.validate(socket).unwrap();
        let path = c.write(socket).unwrap();
        assert_eq!(path, dir.join("10-palisade.conflist"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(list["name"], "palisade");
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
        let mut plugin = list["plugins"][0].clone();
        assert_eq!(plugin["type"], "palisade-cni");
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let net = palisade_cni::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(net.enforcer_socket, socket);
        assert_eq!(net.ipam.subnet_string(), "10.244.3.0/24");
        assert_eq!(net.mtu, Some(1450));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["10-palisade.conflist"]);

        let other = CniConfig {
            subnet: "10.244.4.0/24".into(),
            ..c
        };
        other.write(socket).unwrap();
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(list["plugins"][0]["ipam"]["subnet"], "10.244.4.0/24");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// Bad settings are refused at load naming the setting, with the plugin's reason.
    #[test]
    fn errors_name_the_setting() {
        let socket = Path::new("/run/palisade/enforcer.sock");
        let base = conf(Path::new("/etc/cni/net.d"));
        let cases = [
            (
                CniConfig {
                    subnet: "10.244.3.1/24".into(),
                    ..base.clone()
                },
                "cni.subnet",
                "host bits",
            ),
            (
                CniConfig {
                    subnet: "fd00::/64".into(),
                    ..base.clone()
                },
                "cni.subnet",
                "IPv4",
            ),
            (
                CniConfig {
                    network_name: "my net".into(),
                    ..base.clone()
                },
                "cni.network_name",
                "my net",
            ),
            (
                CniConfig {
                    mtu: Some(20),
                    ..base.clone()
                },
                "cni.mtu",
                "20",
            ),
            (
                CniConfig {
                    ipam_data_dir: Some("var/lib".into()),
                    ..base.clone()
                },
                "cni.ipam_data_dir",
                "absolute",
            ),
            (
                CniConfig {
                    conf_dir: "etc/cni".into(),
                    ..base.clone()
                },
                "cni.conf_dir",
                "absolute",
            ),
            (
                CniConfig {
                    conflist_name: "10-palisade.conf".into(),
                    ..base.clone()
                },
                "cni.conflist_name",
                ".conflist",
            ),
            (
                CniConfig {
                    conflist_name: ".x.conflist".into(),
                    ..base.clone()
                },
                "cni.conflist_name",
                "hidden",
            ),
        ];
        for (c, field, detail) in cases {
            let err = c.validate(socket).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(detail), "{err}");
        }
    }

    /// The settings file of deploy/ (the ConfigMap) is a valid configuration whose conflist
    /// goes to the node's CNI directory as the DaemonSet mounts it.
    #[test]
    fn the_deploy_settings_file_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/config.yaml"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        let c = crate::config::Config::from_str_named(path, &text).unwrap();
        let c = crate::config::Config {
            node_name: "node-1".into(),
            ..c
        };
        c.validate().unwrap();
        let cni = c.cni.unwrap();
        assert_eq!(
            cni.path(),
            Path::new("/host/etc/cni/net.d/10-palisade.conflist")
        );
        assert_eq!(c.socket, Path::new(palisade_api::DEFAULT_SOCKET));
        assert_eq!(
            cni.conflist(&c.socket)["plugins"][0]["enforcerSocket"],
            palisade_api::DEFAULT_SOCKET
        );
    }

    /// A write that cannot complete leaves the previous file as it was and no temporary
    /// file.
    #[test]
    fn a_failed_write_keeps_the_previous_file() {
        let dir = tempdir("fail");
        let socket = Path::new("/run/palisade/enforcer.sock");
        let c = conf(&dir);
        let path = c.write(socket).unwrap();
        let before = std::fs::read(&path).unwrap();
        // The final name is now a non-empty directory: the rename fails.
        let blocked = CniConfig {
            conflist_name: "20-blocked.conflist".into(),
            ..c.clone()
        };
        std::fs::create_dir_all(blocked.path().join("x")).unwrap();
        let err = blocked.write(socket).unwrap_err();
        assert_eq!(err.step, "renaming into place");
        assert!(err.to_string().contains("20-blocked.conflist"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["10-palisade.conflist", "20-blocked.conflist"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
