//! What kind of failure an operation had: carried by every typed error of
//! the agent's subsystems, by the control API's error responses, and mapped
//! to the CLI's exit code, so scripts and tests branch on the kind, never on
//! the wording of a message.

use serde::{Deserialize, Serialize};

/// The kinds of failure an operator can act on differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The named network, app, container, host or namespace does not exist.
    NotFound,
    /// The request contradicts the current state (already attached
    /// elsewhere, network not empty, overlapping range, ...).
    Conflict,
    /// The request itself is malformed (bad name, bad range, bad index).
    Invalid,
    /// A pool ran out (addresses, ranges, indexes, ports).
    Exhausted,
    /// Something the agent depends on cannot be reached right now (the
    /// store, the agent itself); trying again later may work.
    Unavailable,
    /// A bug or an unexpected kernel/store failure.
    Internal,
    /// The caller may not use the agent's API: neither root nor the user the
    /// agent runs as.
    Denied,
}

impl ErrorKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Invalid,
        ErrorKind::Exhausted,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Denied,
    ];

    /// The CLI's exit code for this kind (documented in the README). 2 is
    /// also what clap uses for malformed arguments: both are "fix the
    /// command line".
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Invalid => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Exhausted => 5,
            ErrorKind::Unavailable => 6,
            ErrorKind::Denied => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Denied => "denied",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by each subsystem's typed error.
pub trait Kind {
    fn kind(&self) -> ErrorKind;
}

/// A failed operation as the control API reports it: its kind and one line
/// for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl Kind for Error {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_not_zero() {
        let codes: std::collections::HashSet<i32> =
            ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(!codes.contains(&0));
    }

    #[test]
    fn kinds_travel_as_snake_case() {
        for k in ErrorKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), k);
        }
    }
}
