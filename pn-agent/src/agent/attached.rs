//! Host-local truth: what this agent itself attached, one small file per
//! local container in the state directory (`attached/<host interface>`),
//! written when its interface is made and removed when the interface goes.
//! What the agent does to a container's namespace and interfaces
//! (re-addressing after a move, health probes, the runtime's CHECK, the
//! namespace's resolv.conf) takes the namespace, the interface name and the
//! runtime reference from here, never from the store: a record in the
//! store, whoever wrote it, cannot make this agent act on a namespace it
//! did not attach.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::model::{Container, ContainerKey, RuntimeRef};

const DIR: &str = "attached";

/// What the attach made, as the agent made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Local {
    pub key: ContainerKey,
    pub netns: String,
    pub ifname: String,
    #[serde(default)]
    pub runtime: Option<RuntimeRef>,
}

/// The records, by host-side interface name (each one the agent derives
/// from the container's key).
pub(super) struct Attached {
    dir: PathBuf,
    known: Mutex<HashMap<String, Local>>,
}

impl Attached {
    /// The records of `state_dir`; one that does not decode is skipped
    /// (logged): its container is then not acted on until attached again.
    pub fn open(state_dir: &Path) -> io::Result<Attached> {
        let dir = state_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let mut known = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match std::fs::read(entry.path()).map(|b| serde_json::from_slice::<Local>(&b)) {
                Ok(Ok(l)) if l.key.host_ifname() == name => {
                    known.insert(name, l);
                }
                Ok(Ok(_)) => log::warn!("{}: not the record of {name}", entry.path().display()),
                Ok(Err(e)) => log::warn!("{}: {e}", entry.path().display()),
                Err(e) => log::warn!("{}: {e}", entry.path().display()),
            }
        }
        Ok(Attached {
            dir,
            known: Mutex::new(known),
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the attach of `c` made (written whole, then renamed).
    pub fn record(&self, c: &Container) -> io::Result<()> {
        let l = Local {
            key: c.key.clone(),
            netns: c.netns.clone(),
            ifname: c.ifname.clone(),
            runtime: c.runtime.clone(),
        };
        let name = c.key.host_ifname();
        let tmp = self.dir.join(format!(".{name}"));
        std::fs::write(&tmp, serde_json::to_vec(&l).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, self.dir.join(&name))?;
        self.known().insert(name, l);
        Ok(())
    }

    /// Forgets the container of host interface `name` (gone).
    pub fn forget(&self, name: &str) {
        if self.known().remove(name).is_some()
            && let Err(e) = std::fs::remove_file(self.dir.join(name))
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("removing the local record of {name}: {e}");
        }
    }

    /// `c` with the namespace, interface and runtime reference this agent
    /// gave it; `None` if this agent did not attach it.
    pub fn local(&self, c: &Container) -> Option<Container> {
        let known = self.known();
        let l = known.get(&c.key.host_ifname()).filter(|l| l.key == c.key)?;
        Some(Container {
            netns: l.netns.clone(),
            ifname: l.ifname.clone(),
            runtime: l.runtime.clone(),
            ..c.clone()
        })
    }

    /// Whether a container this agent attached is in namespace `netns`.
    pub fn has_netns(&self, netns: &str) -> bool {
        self.known().values().any(|l| l.netns == netns)
    }

    /// Whether this agent has a record of host interface `name`.
    pub fn has(&self, name: &str) -> bool {
        self.known().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::model::container;

    #[test]
    fn records_survive_a_restart_and_override_the_store() {
        let dir = std::env::temp_dir().join(format!("pn-attached-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Attached::open(&dir).unwrap();
        let c = container(1, [10, 240, 0, 1], "h1");
        assert_eq!(a.local(&c), None);
        a.record(&c).unwrap();
        let again = Attached::open(&dir).unwrap();
        let mut forged = c.clone();
        forged.netns = "another-tenant".into();
        forged.ifname = "eth0".into();
        assert_eq!(again.local(&forged), Some(c.clone()));
        assert!(again.has_netns(&c.netns) && !again.has_netns("another-tenant"));
        // A record under another key's interface is no record of it.
        std::fs::copy(
            dir.join(DIR).join(c.key.host_ifname()),
            dir.join(DIR)
                .join(container(2, [10, 240, 0, 2], "h1").key.host_ifname()),
        )
        .unwrap();
        let third = Attached::open(&dir).unwrap();
        assert_eq!(third.local(&container(2, [10, 240, 0, 2], "h1")), None);
        third.forget(&c.key.host_ifname());
        assert_eq!(Attached::open(&dir).unwrap().local(&c), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
