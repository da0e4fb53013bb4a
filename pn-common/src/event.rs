//! Events the programs send to user space through the `PN_EVENTS` ring buffer:
//! drops and new flows. The agent turns them into `pn-agent flows` lines.

use crate::{Ip4, Ip6, Reason};

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    NewFlow = 1,
    Drop = 2,
}

impl EventKind {
    /// The kind as flow lines, status and metrics name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::NewFlow => "new_flow",
            EventKind::Drop => "drop",
        }
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Leaving a container (host-side ingress of its veth).
    FromContainer = 1,
    /// Entering a container (host-side egress of its veth).
    ToContainer = 2,
    /// Arriving on the underlay interface.
    Underlay = 3,
}

/// One event; with [`Ip6`] addresses for an IPv6 packet (56 bytes rather
/// than 32: the agent tells the families apart by the record's length, so
/// IPv4's events keep their size and their reader).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent<A = Ip4> {
    pub ts_ns: u64,
    pub src: A,
    pub dst: A,
    pub ifindex: u32,
    /// Length of the packet that raised the event.
    pub bytes: u32,
    pub sport: u16,
    pub dport: u16,
    pub kind: u8,
    pub reason: u8,
    pub proto: u8,
    pub direction: u8,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 32);
const _: () = assert!(core::mem::size_of::<FlowEvent<Ip6>>() == 56);

impl<A> FlowEvent<A> {
    pub fn kind(&self) -> Option<EventKind> {
        match self.kind {
            1 => Some(EventKind::NewFlow),
            2 => Some(EventKind::Drop),
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        Reason::from_u8(self.reason)
    }

    pub fn direction(&self) -> Option<Direction> {
        match self.direction {
            1 => Some(Direction::FromContainer),
            2 => Some(Direction::ToContainer),
            3 => Some(Direction::Underlay),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers only, no implicit padding (size asserted).
unsafe impl aya::Pod for FlowEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowEvent<Ip6> {}
