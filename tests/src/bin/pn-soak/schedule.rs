//! The faults of a soak, decided before it starts and from its seed alone:
//! a pure function from (seed, plan) to a list of (time, fault), so a seed
//! replays the same sequence and the executor never decides anything.

use std::{fmt, time::Duration};

/// What happens to the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// SIGTERM to an agent, then started again (no service manager).
    AgentTerm,
    /// SIGKILL to an agent, then started again.
    AgentKill,
    /// A successor started while the agent runs: it takes over.
    AgentHandOver,
    /// An etcd member killed, restarted after `hold`.
    EtcdKill,
    /// The member etcd's cluster follows killed, restarted after `hold`.
    EtcdLeaderKill,
    /// A host's packets to etcd dropped for `hold` (a firewall rule).
    HostCut,
    /// A host's underlay interface down for `hold`, then up.
    LinkFlap,
    /// A container attached to a churning app.
    Attach,
    /// A churning app's container detached.
    Detach,
    /// A churning app moved to another network.
    AppMove,
    /// A container sends DNS queries as fast as it can for `hold`.
    DnsFlood,
    /// Forged tunnel initiations toward a host for `hold`.
    HandshakeFlood,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::AgentTerm,
        Kind::AgentKill,
        Kind::AgentHandOver,
        Kind::EtcdKill,
        Kind::EtcdLeaderKill,
        Kind::HostCut,
        Kind::LinkFlap,
        Kind::Attach,
        Kind::Detach,
        Kind::AppMove,
        Kind::DnsFlood,
        Kind::HandshakeFlood,
    ];

    /// The kind a command line names (`agent-kill`, `etcd-leader-kill`…).
    pub fn parse(slug: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.slug() == slug)
    }

    pub fn slug(self) -> String {
        let mut out = String::new();
        for (i, c) in format!("{self:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::AgentTerm => "agent SIGTERM + start",
            Kind::AgentKill => "agent SIGKILL + start",
            Kind::AgentHandOver => "agent hand-over (upgrade)",
            Kind::EtcdKill => "etcd member kill + restart",
            Kind::EtcdLeaderKill => "etcd leader kill + restart",
            Kind::HostCut => "host cut from etcd",
            Kind::LinkFlap => "underlay link flap",
            Kind::Attach => "container attach",
            Kind::Detach => "container detach",
            Kind::AppMove => "app move",
            Kind::DnsFlood => "DNS flood",
            Kind::HandshakeFlood => "handshake flood",
        }
    }

    /// How long the fault lasts, when it lasts (from, to).
    fn hold_range(self) -> Option<(Duration, Duration)> {
        let ms = Duration::from_millis;
        match self {
            Kind::EtcdKill | Kind::EtcdLeaderKill => Some((ms(1_000), ms(4_000))),
            Kind::HostCut => Some((ms(2_000), ms(6_000))),
            Kind::LinkFlap => Some((ms(300), ms(3_000))),
            Kind::DnsFlood | Kind::HandshakeFlood => Some((ms(1_000), ms(3_000))),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault with its targets. `host` and `member` index the fleet's hosts
/// and etcd's members; `pick` chooses among what exists when it runs (a
/// container to detach, an app to move and where), so the plan needs no
/// model of the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: Kind,
    pub host: usize,
    pub member: usize,
    pub pick: u32,
    pub hold: Duration,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        match self.kind {
            Kind::EtcdKill => write!(f, " (member {})", self.member + 1)?,
            Kind::EtcdLeaderKill => {}
            Kind::Attach | Kind::Detach | Kind::AppMove => write!(f, " (pick {})", self.pick)?,
            _ => write!(f, " (h{})", self.host + 1)?,
        }
        if !self.hold.is_zero() {
            write!(f, " for {} ms", self.hold.as_millis())?;
        }
        Ok(())
    }
}

/// A fault and when it starts at the earliest (after the soak's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// The soak's shape, as far as the plan needs it.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    pub duration: Duration,
    pub hosts: usize,
    pub etcd_members: usize,
    /// Quiet time between two faults (from, to).
    pub gap: (Duration, Duration),
    /// Only these kinds (all when empty): the others' turns are skipped,
    /// so a seed keeps its targets and times for the kinds kept.
    pub only: &'a [Kind],
}

fn between(rng: &mut fastrand::Rng, (lo, hi): (Duration, Duration)) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(rng.u64(lo..=hi.max(lo)))
}

/// The faults of a soak: rounds in which every kind comes once, in an
/// order shuffled per round (so a short soak still meets most kinds, and a
/// long one meets each as often), separated by random gaps, until
/// `plan.duration`.
pub fn schedule(seed: u64, plan: &Plan<'_>) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    let mut at = Duration::ZERO;
    loop {
        let mut round = Kind::ALL;
        rng.shuffle(&mut round);
        for kind in round {
            at += between(&mut rng, plan.gap);
            if at >= plan.duration {
                return out;
            }
            let fault = Fault {
                kind,
                host: rng.usize(..plan.hosts.max(1)),
                member: rng.usize(..plan.etcd_members.max(1)),
                pick: rng.u32(..),
                hold: kind
                    .hold_range()
                    .map_or(Duration::ZERO, |r| between(&mut rng, r)),
            };
            if plan.only.is_empty() || plan.only.contains(&kind) {
                out.push(Planned { at, fault });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(secs: u64) -> Plan<'static> {
        Plan {
            duration: Duration::from_secs(secs),
            hosts: 3,
            etcd_members: 3,
            gap: (Duration::from_millis(500), Duration::from_millis(2_000)),
            only: &[],
        }
    }

    #[test]
    fn kinds_have_command_line_names() {
        assert_eq!(Kind::EtcdLeaderKill.slug(), "etcd-leader-kill");
        for k in Kind::ALL {
            assert_eq!(Kind::parse(&k.slug()), Some(k));
        }
        assert_eq!(Kind::parse("nothing"), None);
    }

    #[test]
    fn only_keeps_the_kinds_asked_for_at_their_times() {
        let all = schedule(11, &plan(600));
        let only = [Kind::EtcdKill, Kind::AppMove];
        let some = schedule(
            11,
            &Plan {
                only: &only,
                ..plan(600)
            },
        );
        assert!(!some.is_empty());
        let kept: Vec<Planned> = all
            .into_iter()
            .filter(|p| only.contains(&p.fault.kind))
            .collect();
        assert_eq!(some, kept);
    }

    #[test]
    fn a_seed_replays_the_same_faults() {
        assert_eq!(schedule(42, &plan(600)), schedule(42, &plan(600)));
        assert_ne!(schedule(42, &plan(600)), schedule(43, &plan(600)));
    }

    #[test]
    fn faults_come_in_order_inside_the_soak_and_on_real_targets() {
        for seed in 0..50 {
            let p = plan(120);
            let s = schedule(seed, &p);
            assert!(!s.is_empty());
            assert!(s.windows(2).all(|w| w[0].at < w[1].at));
            for f in &s {
                assert!(f.at < p.duration);
                assert!(f.fault.host < p.hosts && f.fault.member < p.etcd_members);
                match f.fault.kind.hold_range() {
                    Some((lo, hi)) => assert!(f.fault.hold >= lo && f.fault.hold <= hi),
                    None => assert!(f.fault.hold.is_zero()),
                }
            }
        }
    }

    #[test]
    fn every_kind_comes_once_per_round() {
        let s = schedule(7, &plan(3_600));
        assert!(s.len() >= 3 * Kind::ALL.len());
        for round in s
            .chunks(Kind::ALL.len())
            .filter(|r| r.len() == Kind::ALL.len())
        {
            let mut kinds: Vec<Kind> = round.iter().map(|p| p.fault.kind).collect();
            kinds.sort();
            assert_eq!(kinds, Kind::ALL.to_vec());
        }
    }

    #[test]
    fn gaps_stay_in_their_range() {
        let p = plan(600);
        let s = schedule(9, &p);
        let mut prev = Duration::ZERO;
        for f in &s {
            let gap = f.at - prev;
            assert!(gap >= p.gap.0 && gap <= p.gap.1, "{gap:?}");
            prev = f.at;
        }
    }

    #[test]
    fn one_host_and_one_member_are_the_only_targets() {
        let p = Plan {
            hosts: 1,
            etcd_members: 1,
            ..plan(300)
        };
        assert!(
            schedule(1, &p)
                .iter()
                .all(|f| f.fault.host == 0 && f.fault.member == 0)
        );
    }
}
