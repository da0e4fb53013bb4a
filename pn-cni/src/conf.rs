//! What a runtime gives the plugin: the `CNI_*` environment and the network
//! configuration on stdin, checked here once, so that every mistake is
//! reported with the CNI spec's code for it (4: environment, 6: not JSON,
//! 7: network configuration, 1: version).

use std::path::PathBuf;

use pn_api::DEFAULT_API_SOCKET;
use pn_common::ids::{AppId, ContainerType, parse_index};
use rscni_types::{
    error::Error,
    types::{Cmd, ContainerId, InterfaceName, NetConf},
    version::SpecVersion,
};
use serde_json::Value;

/// The spec versions this plugin speaks (their results share one layout;
/// STATUS and GC need 1.1.0).
pub const SUPPORTED: [SpecVersion; 2] = [SpecVersion::new(1, 0, 0), SpecVersion::new(1, 1, 0)];

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub cmd: Cmd,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    /// `PN_INDEX` from `CNI_ARGS`: the container index to take.
    pub index: Option<u32>,
}

impl Env {
    /// Reads the environment through `get` (a variable's value, if set and
    /// not empty).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Env, Error> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let cmd: Cmd = get("CNI_COMMAND").unwrap_or_default().parse()?;
        let mut index = None;
        for pair in get("CNI_ARGS").unwrap_or_default().split(';') {
            // Runtimes pass their own keys too (K8S_POD_NAME, IgnoreUnknown…):
            // only ours are read.
            if let Some(v) = pair.strip_prefix("PN_INDEX=") {
                index =
                    Some(parse_index(v).map_err(|e| {
                        Error::InvalidEnvValue(format!("CNI_ARGS PN_INDEX={v}: {e}"))
                    })?);
            }
        }
        Ok(Env {
            cmd,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            index,
        })
    }

    /// `CNI_CONTAINERID`, required and checked against the spec's rule.
    pub fn container_id(&self) -> Result<String, Error> {
        let id = self
            .container_id
            .clone()
            .ok_or_else(|| Error::missing_env(&["CNI_CONTAINERID"]))?;
        Ok(ContainerId::try_from(id)?.to_string())
    }

    /// `CNI_IFNAME`, required and a valid interface name.
    pub fn ifname(&self) -> Result<String, Error> {
        let name = self
            .ifname
            .clone()
            .ok_or_else(|| Error::missing_env(&["CNI_IFNAME"]))?;
        Ok(InterfaceName::try_from(name)?.to_string())
    }

    /// `CNI_NETNS`, required: a path to a namespace that exists.
    pub fn netns(&self) -> Result<String, Error> {
        let path = self
            .netns
            .clone()
            .ok_or_else(|| Error::missing_env(&["CNI_NETNS"]))?;
        if !path.starts_with('/') {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_NETNS {path:?} is not an absolute path"
            )));
        }
        if !std::path::Path::new(&path).exists() {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_NETNS {path} does not exist"
            )));
        }
        if !is_nsfs(&path) {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_NETNS {path} is not a namespace (a mount point without its namespace?)"
            )));
        }
        Ok(path)
    }
}

/// Whether `path` is a namespace file (on nsfs: `/proc/PID/ns/net`, or a
/// bind mount of one such as `/run/netns/NAME`), not a plain file.
fn is_nsfs(path: &str) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is large enough for
    // the statfs the kernel writes; it is read only when the call succeeds.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures.
    // SAFETY: initialised by the successful call above.
    let is = rc == 0 && unsafe { st.assume_init() }.f_type as i64 == NSFS_MAGIC;
    is
}

/// The network configuration of one invocation, with pn's own keys read.
#[derive(Debug, Clone)]
pub struct Conf {
    pub net: NetConf,
    pub version: SpecVersion,
    pub app: AppId,
    pub ctype: ContainerType,
    pub agent_socket: PathBuf,
    /// The container index to take (default: the lowest free one).
    pub index: Option<u32>,
}

/// The version the stdin document declares, for commands that read
/// nothing else (VERSION) and for the error object of a document that does
/// not parse further.
pub fn declared_version(stdin: &[u8]) -> Option<SpecVersion> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str()?.parse().ok()
}

/// The version of `declared` if this plugin speaks it.
pub fn negotiate(declared: SpecVersion) -> Result<SpecVersion, Error> {
    if SUPPORTED.contains(&declared) {
        Ok(declared)
    } else {
        Err(Error::IncompatibleVersion(format!(
            "the configuration is version {declared}; pn speaks {}",
            SUPPORTED.map(|v| v.to_string()).join(", ")
        )))
    }
}

impl Conf {
    pub fn parse(stdin: &[u8]) -> Result<Conf, Error> {
        let net: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            Error::FailedToDecode(format!("the network configuration is not valid: {e}"))
        })?;
        let version = negotiate(net.version()?)?;
        net.validate_name()?;
        let text = |key: &str| -> Result<Option<&str>, Error> {
            match net.custom.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(Error::InvalidNetworkConfig(format!(
                    "\"{key}\" must be a string, not {other}"
                ))),
            }
        };
        let required = |key: &str| {
            text(key)?.ok_or_else(|| {
                Error::InvalidNetworkConfig(format!(
                    "\"{key}\" is missing (see `pn-agent cni-config`)"
                ))
            })
        };
        let bad = |key: &str, e: &dyn std::fmt::Display| {
            Error::InvalidNetworkConfig(format!("\"{key}\": {e}"))
        };
        let app: AppId = required("app")?.parse().map_err(|e| bad("app", &e))?;
        let ctype: ContainerType = required("containerType")?
            .parse()
            .map_err(|e| bad("containerType", &e))?;
        let agent_socket = PathBuf::from(text("agentSocket")?.unwrap_or(DEFAULT_API_SOCKET));
        if !agent_socket.is_absolute() {
            return Err(bad(
                "agentSocket",
                &format!("{} is not an absolute path", agent_socket.display()),
            ));
        }
        let index = match net.custom.get("index") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|i| (1..=u64::from(u32::MAX)).contains(i))
                    .map(|i| i as u32)
                    .ok_or_else(|| bad("index", &format!("{v} is not an integer from 1")))?,
            ),
        };
        Ok(Conf {
            version,
            app,
            ctype,
            agent_socket,
            index,
            net,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const APP: &str = "ap-a71da13f-7c70-4c00-a644-eee8558d8053";

    fn code(e: &Error) -> u32 {
        u32::from(e)
    }

    fn env(vars: &[(&str, &str)]) -> Result<Env, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|k| map.get(k).cloned())
    }

    fn conf(extra: &str) -> Result<Conf, Error> {
        Conf::parse(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"web","type":"pn","app":"{APP}","containerType":"web"{extra}}}"#
            )
            .as_bytes(),
        )
    }

    #[test]
    fn a_full_environment_is_read() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x;PN_INDEX=3"),
        ])
        .unwrap();
        assert_eq!(e.cmd, Cmd::Add);
        assert_eq!(e.container_id().unwrap(), "c0ffee");
        assert_eq!(e.netns().unwrap(), "/proc/self/ns/net");
        assert_eq!(e.ifname().unwrap(), "eth0");
        assert_eq!(e.index, Some(3));
    }

    #[test]
    fn environment_mistakes_are_code_4() {
        for vars in [
            vec![],
            vec![("CNI_COMMAND", "MAKE")],
            vec![("CNI_COMMAND", "ADD"), ("CNI_ARGS", "PN_INDEX=0")],
            vec![("CNI_COMMAND", "ADD"), ("CNI_ARGS", "PN_INDEX=x")],
        ] {
            assert_eq!(code(&env(&vars).unwrap_err()), 4, "{vars:?}");
        }
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap();
        for err in [
            e.container_id().unwrap_err(),
            e.ifname().unwrap_err(),
            e.netns().unwrap_err(),
        ] {
            assert_eq!(code(&err), 4, "{err}");
        }
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "bad id"),
            ("CNI_IFNAME", "much-too-long-name"),
            ("CNI_NETNS", "/run/netns/pn-does-not-exist"),
        ])
        .unwrap();
        assert!(e.container_id().unwrap_err().to_string().contains("bad id"));
        assert_eq!(code(&e.ifname().unwrap_err()), 4);
        let err = e.netns().unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "relative")]).unwrap();
        assert_eq!(code(&e.netns().unwrap_err()), 4);
        // A file that exists but is no namespace.
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/proc/self/status")]).unwrap();
        let err = e.netns().unwrap_err();
        assert_eq!(code(&err), 4);
        assert!(err.to_string().contains("not a namespace"), "{err}");
    }

    #[test]
    fn a_configuration_is_read_with_its_defaults() {
        let c = conf("").unwrap();
        assert_eq!(c.app.to_string(), APP);
        assert_eq!(c.ctype.to_string(), "web");
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(c.index, None);
        assert_eq!(c.version, SpecVersion::new(1, 0, 0));
        let c = conf(r#","agentSocket":"/tmp/a.sock","index":2"#).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.index, Some(2));
    }

    #[test]
    fn configuration_mistakes_have_their_codes() {
        assert_eq!(code(&Conf::parse(b"{not json").unwrap_err()), 6);
        let cases = [
            (r#","index":0"#, "index"),
            (r#","index":"1""#, "index"),
            (r#","agentSocket":"api.sock""#, "agentSocket"),
            (r#","agentSocket":7"#, "agentSocket"),
        ];
        for (extra, key) in cases {
            let e = conf(extra).unwrap_err();
            assert_eq!(code(&e), 7, "{extra}: {e}");
            assert!(e.to_string().contains(key), "{e}");
        }
        let e =
            Conf::parse(br#"{"cniVersion":"1.0.0","name":"w","type":"pn","containerType":"web"}"#)
                .unwrap_err();
        assert_eq!(code(&e), 7);
        assert!(e.to_string().contains("\"app\" is missing"), "{e}");
        let e = Conf::parse(
            br#"{"cniVersion":"1.0.0","name":"w","type":"pn","app":"ap-nope","containerType":"web"}"#,
        )
        .unwrap_err();
        assert_eq!(code(&e), 7, "{e}");
        let e = Conf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"w","type":"pn","app":"{APP}","containerType":"Web!"}}"#)
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(code(&e), 7, "{e}");
        let e = Conf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"bad name","type":"pn","app":"{APP}","containerType":"web"}}"#)
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(code(&e), 7, "{e}");
    }

    #[test]
    fn what_cni_config_prints_is_what_the_plugin_reads() {
        let app: AppId = APP.parse().unwrap();
        let web: ContainerType = "web".parse().unwrap();
        let list = pn_api::cni::network_config_list(
            "my-web",
            &app,
            &web,
            std::path::Path::new("/run/pn/api.sock"),
        );
        // What a runtime hands the plugin: the list's version and name with
        // the plugin's own keys.
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        let c = Conf::parse(conf.to_string().as_bytes()).unwrap();
        assert_eq!((c.app, c.ctype, c.net.name.as_str()), (app, web, "my-web"));
        assert_eq!(c.agent_socket, PathBuf::from("/run/pn/api.sock"));
    }

    #[test]
    fn only_known_versions_are_spoken() {
        for v in ["0.4.0", "1.2.0", "0.3.1"] {
            let e = Conf::parse(
                format!(r#"{{"cniVersion":"{v}","name":"w","type":"pn","app":"{APP}","containerType":"web"}}"#)
                    .as_bytes(),
            )
            .unwrap_err();
            assert_eq!(code(&e), 1, "{v}: {e}");
            assert!(e.to_string().contains("1.0.0"), "{e}");
        }
        assert_eq!(
            declared_version(br#"{"cniVersion":"1.0.0"}"#),
            Some(SpecVersion::new(1, 0, 0))
        );
        assert_eq!(declared_version(b"garbage"), None);
    }
}
