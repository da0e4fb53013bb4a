//! The network configuration list a container runtime is given for pn
//! (`pn-agent cni-config` prints it, the `pn` plugin reads it): one plugin
//! of type `pn` naming the application and the container type.

use std::path::Path;

use pn_common::ids::{AppId, ContainerType};
use serde_json::{Value, json};

/// The CNI spec version of the configuration (and of the plugin's results).
pub const CNI_VERSION: &str = "1.0.0";

/// The plugin's binary name, and so its `type`.
pub const PLUGIN_TYPE: &str = "pn";

/// The CNI spec's rule for network names (and container ids): 1 to 255
/// characters among a-z, A-Z, 0-9, `_`, `.`, `-`, the first alphanumeric.
pub fn valid_name(s: &str) -> bool {
    s.len() <= 255
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The default network name for an app and type: `ap-…-TYPE`.
pub fn default_name(app: &AppId, ctype: &ContainerType) -> String {
    format!("{app}-{ctype}")
}

/// The configuration list for `app`'s containers of type `ctype`, with the
/// agent reached at `agent_socket`.
pub fn network_config_list(
    name: &str,
    app: &AppId,
    ctype: &ContainerType,
    agent_socket: &Path,
) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "app": app.to_string(),
            "containerType": ctype.to_string(),
            "agentSocket": agent_socket.to_string_lossy(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_cni_rule() {
        assert!(valid_name("ap-a71da13f-7c70-4c00-a644-eee8558d8053-web"));
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(256)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_list_has_the_contract_shape() {
        let app: AppId = "ap-a71da13f-7c70-4c00-a644-eee8558d8053".parse().unwrap();
        let web: ContainerType = "web".parse().unwrap();
        let v = network_config_list(
            &default_name(&app, &web),
            &app,
            &web,
            Path::new("/run/pn-agent/api.sock"),
        );
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0",
                   "name": "ap-a71da13f-7c70-4c00-a644-eee8558d8053-web",
                   "plugins": [{"type": "pn", "app": "ap-a71da13f-7c70-4c00-a644-eee8558d8053",
                                "containerType": "web", "agentSocket": "/run/pn-agent/api.sock"}]})
        );
    }
}
