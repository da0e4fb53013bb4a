//! The host's static key on disk, and keys as text (base64, as the store
//! publishes them).

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
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
    #[error("host key: {0}")]
    Key(#[from] HandshakeError),
}

/// The host's static X25519 key: created on first start (mode 0600), then
/// reused, so peers keep trusting it across restarts.
pub fn host_key(state_dir: &Path) -> Result<StaticKeys, KeyFileError> {
    let path = state_dir.join(HOST_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let private = decode_key(text.trim()).ok_or(KeyFileError::Invalid(path))?;
            Ok(StaticKeys::from_private(private)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
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
        Err(e) => Err(KeyFileError::Read(path, e)),
    }
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
        std::fs::write(d.join(HOST_KEY_FILE), "not a key\n").unwrap();
        assert!(matches!(host_key(&d), Err(KeyFileError::Invalid(_))));
        // Base64, but of a key too short.
        std::fs::write(d.join(HOST_KEY_FILE), &encode_key(&[1; 32])[..20]).unwrap();
        assert!(matches!(host_key(&d), Err(KeyFileError::Invalid(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keys_round_trip_as_text() {
        let k = [7u8; 32];
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        assert_eq!(decode_key("AAAA"), None);
        assert_eq!(decode_key("***"), None);
    }
}
