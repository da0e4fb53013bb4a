//! What can go wrong on the edge.

use crate::error::{ErrorKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid edge configuration: {0}")]
    Invalid(String),
    #[error("cannot run {program}: {source} (is the nftables package installed?)")]
    NftMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables refused pn's rules: {0}")]
    NftFailed(String),
    #[error("reading pn's nftables counters: {0}")]
    Counters(String),
}

impl Kind for EdgeError {
    fn kind(&self) -> ErrorKind {
        match self {
            EdgeError::Invalid(_) => ErrorKind::Invalid,
            EdgeError::NftMissing { .. } => ErrorKind::Unavailable,
            EdgeError::NftFailed(_) | EdgeError::Counters(_) => ErrorKind::Internal,
        }
    }
}
