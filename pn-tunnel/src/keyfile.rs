//! The host's static key on disk, and keys as text (base64, as the store
//! publishes them).

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use base64::Engine as _;

use crate::handshake::{HandshakeError, StaticKeys};

/// Name of the key file in the agent's state directory.
pub const HOST_KEY_FILE: &str = "host.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("creating {0}: {1}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("{0} does not hold a base64 32-byte key")]
    Invalid(PathBuf),
    /// Anyone who reads the key can pose as this host to the whole fleet;
    /// anyone who writes it can make it another's.
    #[error(
        "{path} {why}; the host key must be the agent's user's alone: `chown` it to that user and `chmod 600` it, or remove it (a new key is made, and the host registers it)"
    )]
    Exposed { path: PathBuf, why: String },
    #[error("host key: {0}")]
    Key(#[from] HandshakeError),
}

/// The host's static X25519 key: created on first start (mode 0600), then
/// reused, so peers keep trusting it across restarts. An existing file is
/// read only if it is a regular file (not a link), owned by this process's
/// user and neither readable nor writable by anyone else.
pub fn host_key(state_dir: &Path) -> Result<StaticKeys, KeyFileError> {
    let path = state_dir.join(HOST_KEY_FILE);
    match read_private(&path) {
        Ok(text) => {
            let private = decode_key(text.trim()).ok_or(KeyFileError::Invalid(path))?;
            Ok(StaticKeys::from_private(private)?)
        }
        Err(e) if e.kind() == Some(std::io::ErrorKind::NotFound) => {
            let keys = StaticKeys::generate()?;
            let create = |path: &Path| -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                writeln!(f, "{}", encode_key(&keys.private))?;
                f.sync_all()
            };
            create(&path).map_err(|e| KeyFileError::Create(path.clone(), e))?;
            log::info!("created host key {}", path.display());
            Ok(keys)
        }
        Err(e) => Err(e.into_error(path)),
    }
}

/// Why a key file was not read.
enum ReadError {
    Io(std::io::Error),
    Exposed(String),
}

impl ReadError {
    fn kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            ReadError::Io(e) => Some(e.kind()),
            ReadError::Exposed(_) => None,
        }
    }

    fn into_error(self, path: PathBuf) -> KeyFileError {
        match self {
            ReadError::Io(e) => KeyFileError::Read(path, e),
            ReadError::Exposed(why) => KeyFileError::Exposed { path, why },
        }
    }
}

/// The file's text, if it is the process user's alone. Opened without
/// following a link, then checked on the open file (no race with a rename).
fn read_private(path: &Path) -> Result<String, ReadError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::Exposed("is a symbolic link".into()),
            _ => ReadError::Io(e),
        })?;
    let meta = f.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::Exposed("is not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(ReadError::Exposed(format!(
            "belongs to uid {}, not to the agent's (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ReadError::Exposed(format!(
            "has mode {mode:03o}: its group or others may read or write it"
        )));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(ReadError::Io)?;
    Ok(text)
}

/// A key as text (standard base64).
pub fn encode_key(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A key from text; `None` unless it is base64 of exactly 32 bytes.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()?
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pn-keyfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_once_private_then_reused() {
        let d = temp_dir("reuse");
        let k1 = host_key(&d).unwrap();
        let mode = std::fs::metadata(d.join(HOST_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let k2 = host_key(&d).unwrap();
        assert_eq!(k1.public, k2.public);
        assert_eq!(k1.private, k2.private);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_key() {
        let d = temp_dir("damaged");
        let path = d.join(HOST_KEY_FILE);
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(host_key(&d), Err(KeyFileError::Invalid(_))));
        // Base64, but of a key too short.
        std::fs::write(&path, &encode_key(&[1; 32])[..20]).unwrap();
        assert!(matches!(host_key(&d), Err(KeyFileError::Invalid(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_key_others_may_read_or_write_is_refused_not_replaced() {
        let d = temp_dir("exposed");
        let k = host_key(&d).unwrap();
        let path = d.join(HOST_KEY_FILE);
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = host_key(&d).err().expect("refused");
            assert!(matches!(e, KeyFileError::Exposed { .. }), "{mode:o}: {e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(host_key(&d).unwrap().public, k.public, "unchanged");
        // A link to a key is not followed.
        let link = temp_dir("link");
        std::os::unix::fs::symlink(&path, link.join(HOST_KEY_FILE)).unwrap();
        assert!(matches!(host_key(&link), Err(KeyFileError::Exposed { .. })));
        // Someone else's file (only root can give one away).
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = host_key(&d).err().expect("refused");
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&link).unwrap();
    }

    #[test]
    fn keys_round_trip_as_text() {
        let k = [7u8; 32];
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        assert_eq!(decode_key("AAAA"), None);
        assert_eq!(decode_key("***"), None);
    }
}
