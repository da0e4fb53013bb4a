//! The host's static X25519 key on disk and its public half in the store:
//! created on first start (mode 0600), then reused, so peers keep trusting
//! the host across restarts.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;
use base64::Engine as _;

use super::handshake::StaticKeys;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Reads `host.key` in `state_dir`, or creates it.
pub fn host_key(state_dir: &Path) -> anyhow::Result<StaticKeys> {
    let path = state_dir.join("host.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = B64
                .decode(text.trim())
                .with_context(|| format!("{} is not base64", path.display()))?;
            let private: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} does not hold a 32-byte key", path.display()))?;
            Ok(StaticKeys::from_private(private)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = StaticKeys::generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{}", B64.encode(keys.private))?;
            f.sync_all()?;
            log::info!("created host key {}", path.display());
            Ok(keys)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A public key as published in the store.
pub fn encode_key(k: &[u8; 32]) -> String {
    B64.encode(k)
}

/// A public key read from the store; `None` if it is not 32 bytes of base64.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let k = [7u8; 32];
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        assert_eq!(decode_key("not base64!"), None);
        assert_eq!(decode_key(&B64.encode([1u8; 31])), None);
    }
}
