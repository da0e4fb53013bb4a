//! IPv4 and IPv6 forwarding, which pn needs (containers' packets are
//! routed by the host), without making the host a router for anything else.
//!
//! Whether the host forwarded before pn decides what pn may drop: if pn
//! turned forwarding on, nothing but pn's traffic was forwarded before, and
//! nothing else may be now ([`Forwarding::PnOnly`]); if it was already on,
//! something else on the host relies on it and pn must not drop its traffic
//! ([`Forwarding::Shared`]). pn records that it turned forwarding on in its
//! state directory, so a restarted agent (which finds forwarding on) keeps
//! the same answer.
//!
//! The operator can override that answer with `--forward-guard`
//! ([`ForwardGuard`]): `on` drops what is not pn's even on a host that
//! forwarded before (a host whose only routed traffic is pn's, where
//! forwarding was on by habit or by an image's default), `off` never drops
//! it (another router arrived after pn).
//!
//! Each family is decided once, at start, on its own: IPv6's switch and
//! record are its own ([`enable6`]), so a host that forwarded IPv4 for
//! Docker but no IPv6 has pn's IPv6 forwarding guarded, and the reverse.
//! IPv6 forwarding also changes what a host does with router
//! advertisements: an interface with `accept_ra=1` ignores them once it
//! forwards, and would lose its default route and addresses when they
//! expire. When pn turns it on, it first moves those interfaces (and
//! `default`, for interfaces made later) to `accept_ra=2`, which accepts
//! advertisements while forwarding, as the kernel's documentation says.
//! Neither family's switch is turned back off when the agent stops:
//! containers keep their traffic across a restart and after a stop, as
//! their programs stay attached.

mod v6;

use std::{io, path::Path};

pub use v6::{RECORD6, enable6, moved_to_accept_ra_2};

pub use crate::config::ForwardGuard;

/// What the forward hook does with traffic that is not pn's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// pn turned forwarding on: forward nothing but pn's traffic.
    #[default]
    PnOnly,
    /// The host already forwarded for something else: leave that alone.
    Shared,
}

impl std::str::FromStr for Forwarding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pn-only" => Ok(Forwarding::PnOnly),
            "shared" => Ok(Forwarding::Shared),
            _ => Err(format!("{s:?}: expected pn-only or shared")),
        }
    }
}

impl ForwardGuard {
    /// Whether the table drops what is not pn's, on a host where
    /// forwarding is `found`.
    pub const fn drops_others(self, found: Forwarding) -> bool {
        match self {
            ForwardGuard::Auto => matches!(found, Forwarding::PnOnly),
            ForwardGuard::On => true,
            ForwardGuard::Off => false,
        }
    }
}

/// Who owns each family's forwarding on this host, decided at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub v4: Forwarding,
    /// With `--ipv6 off`, [`Forwarding::Shared`]: pn never turns IPv6
    /// forwarding on, so whatever the host forwards is its own.
    pub v6: Forwarding,
}

/// File in the state directory saying that pn turned forwarding on.
pub const RECORD: &str = "ip-forward-enabled-by-pn";

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";

/// The answer, from what was found: forwarding already on, and pn's record.
pub const fn decide(was_on: bool, recorded_by_pn: bool) -> Forwarding {
    if was_on && !recorded_by_pn {
        Forwarding::Shared
    } else {
        Forwarding::PnOnly
    }
}

/// Turns IPv4 forwarding on in the calling thread's namespace and says who
/// owns it.
pub fn enable(state_dir: &Path) -> io::Result<Forwarding> {
    let record = state_dir.join(RECORD);
    let was_on = std::fs::read_to_string(SYSCTL)?.trim() == "1";
    let answer = decide(was_on, record.exists());
    if !was_on {
        std::fs::create_dir_all(state_dir)?;
        std::fs::write(&record, "pn-agent turned net.ipv4.ip_forward on\n")?;
        std::fs::write(SYSCTL, "1")?;
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pn_forwards_only_its_own_unless_the_host_forwarded_before() {
        // First start on a host that did not forward.
        assert_eq!(decide(false, false), Forwarding::PnOnly);
        // Restart: forwarding is on, but pn turned it on.
        assert_eq!(decide(true, true), Forwarding::PnOnly);
        // Someone else turned it on before pn ever ran.
        assert_eq!(decide(true, false), Forwarding::Shared);
        // Turned off since by the operator: pn turns it on again, its own.
        assert_eq!(decide(false, true), Forwarding::PnOnly);
    }

    #[test]
    fn the_guard_follows_the_host_unless_the_operator_says() {
        use ForwardGuard::*;
        use Forwarding::*;
        assert!(Auto.drops_others(PnOnly));
        assert!(!Auto.drops_others(Shared));
        assert!(On.drops_others(Shared) && On.drops_others(PnOnly));
        assert!(!Off.drops_others(PnOnly) && !Off.drops_others(Shared));
        for g in [Auto, On, Off] {
            assert_eq!(g.to_string().parse(), Ok(g));
        }
        assert!("yes".parse::<ForwardGuard>().is_err());
    }

    #[test]
    fn parses() {
        assert_eq!("pn-only".parse(), Ok(Forwarding::PnOnly));
        assert_eq!("shared".parse(), Ok(Forwarding::Shared));
        assert!("yes".parse::<Forwarding>().is_err());
    }
}
