//! The CNI environment (`CNI_*` variables), validated the way libcni's `skel` does.
//!
//! The plugin never reads the process environment directly: `main` hands the variables to
//! [`Env::from_vars`], so tests and fuzzers can pass any set.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// Variables the verb requires (libcni `skel`): missing ones are reported together.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// Validated CNI environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// Required for ADD and CHECK; optional for DEL (the netns may be gone).
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as key/value pairs, in order.
    pub args: Vec<(String, String)>,
    pub path: Option<OsString>,
    /// Test hook: `PALISADE_CNI_FAULT=<step>` kills the plugin with SIGKILL at that ADD step
    /// (see [`crate::plugin::FaultPoint`]).
    pub fault: Option<String>,
}

impl Env {
    pub fn from_vars<I>(vars: I) -> Result<Env, Error>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let mut command = None;
        let mut container_id = None;
        let mut netns = None;
        let mut ifname = None;
        let mut args = None;
        let mut path = None;
        let mut fault = None;
        for (k, v) in vars {
            match k.to_str() {
                Some("CNI_COMMAND") => command = Some(v),
                Some("CNI_CONTAINERID") => container_id = Some(v),
                Some("CNI_NETNS") => netns = Some(v),
                Some("CNI_IFNAME") => ifname = Some(v),
                Some("CNI_ARGS") => args = Some(v),
                Some("CNI_PATH") => path = Some(v),
                Some("PALISADE_CNI_FAULT") => fault = Some(v),
                _ => {}
            }
        }
        let Some(command_raw) = command.filter(|c| !c.is_empty()) else {
            return Err(Error::MissingEnv {
                names: "CNI_COMMAND".into(),
            });
        };
        let command_str = utf8("CNI_COMMAND", command_raw)?;
        let command = Command::parse(&command_str).ok_or(Error::UnknownCommand {
            command: command_str,
        })?;

        let present = |name: &str| match name {
            // An empty CNI_CONTAINERID is present but invalid (code 3, as libcni).
            "CNI_CONTAINERID" => container_id.is_some(),
            "CNI_NETNS" => netns.as_ref().is_some_and(|v| !v.is_empty()),
            "CNI_IFNAME" => ifname.is_some(),
            "CNI_PATH" => path.as_ref().is_some_and(|v| !v.is_empty()),
            _ => true,
        };
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|n| !present(n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingEnv {
                names: missing.join(" "),
            });
        }

        let container_id = match (command, container_id) {
            (Command::Add | Command::Del | Command::Check, Some(id)) => {
                let id = utf8("CNI_CONTAINERID", id)?;
                validate_container_id(&id)?;
                Some(id)
            }
            _ => None,
        };
        let ifname = match (command, ifname) {
            (Command::Add | Command::Del | Command::Check, Some(name)) => {
                let name = utf8("CNI_IFNAME", name)?;
                validate_ifname(&name)?;
                Some(name)
            }
            _ => None,
        };
        let netns = netns.filter(|v| !v.is_empty()).map(PathBuf::from);
        let args = match args {
            Some(a) => parse_args(&utf8("CNI_ARGS", a)?)?,
            None => Vec::new(),
        };
        let fault = fault.and_then(|f| f.into_string().ok());
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            fault,
        })
    }

    /// Value of a `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn utf8(name: &'static str, v: OsString) -> Result<String, Error> {
    v.into_string().map_err(|_| Error::InvalidEnv {
        name,
        reason: "not valid UTF-8".into(),
    })
}

/// libcni `ValidateContainerID`: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::MissingContainerId);
    }
    if !valid_name(id) {
        return Err(Error::InvalidContainerId { id: id.to_owned() });
    }
    Ok(())
}

/// The libcni name pattern, shared by container ids and network names.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// libcni `ValidateInterfaceName`.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidIfname {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("interface name is empty");
    }
    if name.len() > 15 {
        return bad("interface name is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("interface name is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("interface name contains / or : or whitespace");
    }
    Ok(())
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
fn parse_args(s: &str) -> Result<Vec<(String, String)>, Error> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::InvalidEnv {
                name: "CNI_ARGS",
                reason: format!("{pair:?} is not KEY=VALUE"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, Error> {
        Env::from_vars(
            pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != name).collect()
    }

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut v = without(name);
        v.push((name, value));
        v
    }

    #[test]
    fn command_missing_or_unknown_is_code_4() {
        let e = env(&without("CNI_COMMAND")).unwrap_err();
        assert_eq!(e.code(), code::INVALID_ENV);
        assert_eq!(
            e.to_string(),
            "required env variables [CNI_COMMAND] missing"
        );
        assert_eq!(
            env(&with("CNI_COMMAND", "FOO")).unwrap_err().code(),
            code::INVALID_ENV
        );
    }

    #[test]
    fn missing_variables_are_named() {
        for name in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let e = env(&without(name)).unwrap_err();
            assert_eq!(e.code(), code::INVALID_ENV, "{name}");
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn container_id_rules() {
        assert_eq!(
            env(&with("CNI_CONTAINERID", "")).unwrap_err().code(),
            code::UNKNOWN_CONTAINER
        );
        for bad in ["-abc", "a/b", "a b", "a;b", ".x"] {
            let e = env(&with("CNI_CONTAINERID", bad)).unwrap_err();
            assert_eq!(e.code(), code::INVALID_ENV, "{bad}");
            assert!(e.to_string().contains("invalid characters in containerID"));
        }
        assert!(env(&with("CNI_CONTAINERID", "default-web_1.2")).is_ok());
    }

    #[test]
    fn ifname_rules() {
        for bad in [
            "",
            ".",
            "..",
            "eth0/1",
            "eth:0",
            "eth 0",
            "abcdefghijklmnop",
        ] {
            assert_eq!(
                env(&with("CNI_IFNAME", bad)).unwrap_err().code(),
                code::INVALID_ENV,
                "{bad:?}"
            );
        }
        assert!(env(&with("CNI_IFNAME", "abcdefghijklmno")).is_ok());
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let mut del = with("CNI_COMMAND", "DEL");
        del.retain(|(k, _)| *k != "CNI_NETNS");
        assert!(env(&del).unwrap().netns.is_none());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "GC")]).unwrap_err().code(),
            code::INVALID_ENV
        );
    }

    #[test]
    fn cni_args() {
        let e = env(&with(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
        ))
        .unwrap();
        assert_eq!(e.arg("K8S_POD_NAMESPACE"), Some("ns"));
        assert_eq!(e.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(
            env(&with("CNI_ARGS", "novalue")).unwrap_err().code(),
            code::INVALID_ENV
        );
    }
}
