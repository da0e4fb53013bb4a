//! The identifiers of the contract: network `pn-<uuid>`, application
//! `ap-<uuid>` (UUID v4, lower case), host `[a-z0-9-]{1,63}`, container type
//! `[a-z][a-z0-9-]{0,31}`, container index ≥ 1. Parsing accepts any letter
//! case (DNS names arrive in any case) and always prints lower case.

use std::{fmt, str::FromStr, string::String};

/// Why an identifier was rejected; the message is meant for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdError {
    Network(String),
    App(String),
    Host(String),
    ContainerType(String),
    Index(String),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Network(s) => write!(
                f,
                "invalid network id {s:?}: expected pn-<uuid v4>, e.g. pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c"
            ),
            IdError::App(s) => write!(
                f,
                "invalid application id {s:?}: expected ap-<uuid v4>, e.g. ap-a71da13f-7c70-4c00-a644-eee8558d8053"
            ),
            IdError::Host(s) => write!(
                f,
                "invalid host id {s:?}: expected 1 to 63 characters among a-z, 0-9 and -"
            ),
            IdError::ContainerType(s) => write!(
                f,
                "invalid container type {s:?}: expected a lower-case letter then up to 31 of a-z, 0-9 and -"
            ),
            IdError::Index(s) => {
                write!(
                    f,
                    "invalid container index {s:?}: expected an integer from 1"
                )
            }
        }
    }
}

impl std::error::Error for IdError {}

/// A UUID v4 (RFC 4122 variant), kept as bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// Makes a v4 UUID from 16 random bytes (sets the version and variant bits).
    pub fn from_random_bytes(mut b: [u8; 16]) -> Uuid {
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 36-character hyphenated form; `None` unless it is a v4 UUID.
    pub fn parse(s: &str) -> Option<Uuid> {
        let s = s.as_bytes();
        if s.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if s[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let hi = hex(s[i])?;
            let lo = hex(s[i + 1])?;
            out[n] = (hi << 4) | lo;
            n += 1;
            i += 2;
        }
        if out[6] >> 4 != 4 || out[8] >> 6 != 0b10 {
            return None;
        }
        Some(Uuid(out))
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $err:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                strip_prefix_ci(s, $prefix)
                    .and_then(Uuid::parse)
                    .map($name)
                    .ok_or_else(|| IdError::$err(s.into()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        string_serde!($name);
    };
}

macro_rules! string_serde {
    ($name:ident) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// `pn-<uuid>`: a private network.
    NetworkId,
    "pn-",
    Network
);
prefixed_id!(
    /// `ap-<uuid>`: an application.
    AppId,
    "ap-",
    App
);

fn valid_label(s: &str, max: usize, first_letter: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && (!first_letter || b[0].is_ascii_lowercase())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A host of the fleet: `[a-z0-9-]{1,63}`.
///
/// Shared rather than copied: every container record names its host, and
/// the membership view makes each of them point at its host's one copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(std::sync::Arc<str>);

impl HostId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let lower = s.to_ascii_lowercase();
        if valid_label(&lower, 63, false) {
            Ok(HostId(lower.into()))
        } else {
            Err(IdError::Host(s.into()))
        }
    }
}

/// The longest container type.
const CONTAINER_TYPE_MAX: usize = 32;

/// A container type (a process of the app's formation): `[a-z][a-z0-9-]{0,31}`.
///
/// Kept inline rather than as a `String`: every container record holds one
/// and each index of the membership view a copy of its key, one heap
/// allocation each. Zero-padded, the bytes order and compare as the text
/// does (no byte of a type is 0).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerType {
    bytes: [u8; CONTAINER_TYPE_MAX],
    len: u8,
}

impl ContainerType {
    /// The type reached by the bare application name.
    pub const WEB: &'static str = "web";

    pub fn as_str(&self) -> &str {
        // Only ASCII labels are ever stored (`from_str`), so this never fails.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl FromStr for ContainerType {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let lower = s.to_ascii_lowercase();
        if !valid_label(&lower, CONTAINER_TYPE_MAX, true) {
            return Err(IdError::ContainerType(s.into()));
        }
        let mut bytes = [0; CONTAINER_TYPE_MAX];
        bytes[..lower.len()].copy_from_slice(lower.as_bytes());
        Ok(ContainerType {
            bytes,
            len: lower.len() as u8,
        })
    }
}

macro_rules! plain_display {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        string_serde!($name);
    };
}
plain_display!(HostId);
plain_display!(ContainerType);

/// Parses a container index (≥ 1, no sign, no leading zero).
pub fn parse_index(s: &str) -> Result<u32, IdError> {
    match s.parse::<u32>() {
        Ok(n) if n >= 1 && !s.starts_with('0') && !s.starts_with('+') => Ok(n),
        _ => Err(IdError::Index(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PN: &str = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c";
    const AP: &str = "ap-a71da13f-7c70-4c00-a644-eee8558d8053";

    #[test]
    fn seed_ids_round_trip() {
        assert_eq!(PN.parse::<NetworkId>().unwrap().to_string(), PN);
        assert_eq!(AP.parse::<AppId>().unwrap().to_string(), AP);
        let upper = PN.to_uppercase();
        assert_eq!(upper.parse::<NetworkId>().unwrap().to_string(), PN);
    }

    #[test]
    fn malformed_ids_are_rejected_with_the_expected_form() {
        for bad in [
            "",
            "pn-",
            "ap-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c",
            "pn-ad0fd6a1d05e40eabf63c4f8a75a9d8c",
            "pn-ad0fd6a1-d05e-10ea-bf63-c4f8a75a9d8c", // version 1
            "pn-ad0fd6a1-d05e-40ea-7f63-c4f8a75a9d8c", // wrong variant
            "pn-zd0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c",
            "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c0",
            "pn-é0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c",
        ] {
            let err = bad.parse::<NetworkId>().unwrap_err();
            assert!(err.to_string().contains("expected pn-<uuid v4>"), "{bad}");
        }
        assert!(PN.parse::<AppId>().is_err());
    }

    #[test]
    fn random_bytes_make_a_v4() {
        let id = NetworkId(Uuid::from_random_bytes([0xff; 16]));
        assert_eq!(id.to_string().parse::<NetworkId>().unwrap(), id);
    }

    #[test]
    fn hosts_and_types() {
        assert_eq!("Host-1".parse::<HostId>().unwrap().as_str(), "host-1");
        assert!("".parse::<HostId>().is_err());
        assert!("a".repeat(64).parse::<HostId>().is_err());
        assert!("a_b".parse::<HostId>().is_err());
        assert_eq!("web".parse::<ContainerType>().unwrap().as_str(), "web");
        assert!("myappbackend".parse::<ContainerType>().is_ok());
        assert!("1web".parse::<ContainerType>().is_err());
        assert!("w".repeat(33).parse::<ContainerType>().is_err());
        assert!("w".repeat(32).parse::<ContainerType>().is_ok());
        assert!("we.b".parse::<ContainerType>().is_err());
        assert_eq!(
            "Worker".parse::<ContainerType>().unwrap().to_string(),
            "worker"
        );
        let full = "w".repeat(32);
        assert_eq!(full.parse::<ContainerType>().unwrap().as_str(), full);
        // Ordered as the text: a prefix first.
        let t = |s: &str| s.parse::<ContainerType>().unwrap();
        assert!(t("web") < t("web-1") && t("web-1") < t("worker") && t("a") < t("web"));
    }

    #[test]
    fn indexes() {
        assert_eq!(parse_index("1"), Ok(1));
        assert_eq!(parse_index("42"), Ok(42));
        for bad in ["0", "-1", "+1", "01", "x", ""] {
            assert!(parse_index(bad).is_err(), "{bad}");
        }
    }
}
