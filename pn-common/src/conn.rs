//! Connections and HTTP/1.x requests between members: the event the TC
//! programs send for connection-boundary segments (SYN, FIN, RST) and for
//! segments that start like an HTTP/1.x message, and the recognisers both
//! sides use. Bulk TCP pays only a check of a segment's first four bytes; the
//! agent does the matching (per connection, so keep-alive and pipelined
//! requests each count).

use crate::{Ip4, Ip6};

/// Payload bytes copied into a [`ConnEvent`]: enough for a method, a short
/// path and the version, or a status line.
pub const PAYLOAD: usize = 64;

/// Size of `PN_CONN_EVENTS` (ring buffer): ~5 events per connection and 2 per
/// request, 104 bytes each (128 for IPv6): about 10 000 events in flight.
pub const CONN_EVENTS_BYTES: u32 = 1 << 20;

/// The programs wake the agent's reader only once this many bytes wait in
/// `PN_CONN_EVENTS` (about 4 800 events); below that the reader drains the
/// ring on its own tick ([`CONN_DRAIN_MS`]). A wakeup per event, the
/// default, cost ~2 µs per tracked packet here (an interrupt per event).
/// Half the ring: one keep-alive client's ~12 000 requests a second
/// (~2.6 MB/s of events) stay under it between ticks, so the tick alone
/// drains them (a sixteenth woke the reader ~25 times a second on top of
/// the tick's 10); a burst still leaves 512 KiB for the reader to come
/// (~200 ms at that rate, ~50 ms at 10 MB/s).
pub const CONN_WAKE_BYTES: u64 = CONN_EVENTS_BYTES as u64 / 2;
/// How often the agent drains `PN_CONN_EVENTS` without being woken.
pub const CONN_DRAIN_MS: u64 = 100;

/// Bits of `PN_CONN_CFG[0]` (array of one `u32`, written by the agent).
pub const TRACK_CONNS: u32 = 1;
pub const TRACK_HTTP: u32 = 2;

/// TCP flags, as in the header's 14th byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Kinds of events whose loss is counted in `PN_LOST` (per-CPU array, one
/// `u64` per kind): a full ring buffer loses the event, never silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostKind {
    /// `PN_EVENTS`: new flows and drops.
    Flow = 0,
    /// `PN_CONN_EVENTS`: connection boundaries and HTTP messages.
    Conn = 1,
}

impl LostKind {
    pub const COUNT: u32 = 2;
    pub const ALL: [LostKind; 2] = [LostKind::Flow, LostKind::Conn];

    pub const fn as_str(self) -> &'static str {
        match self {
            LostKind::Flow => "flow",
            LostKind::Conn => "conn",
        }
    }
}

/// One TCP segment between members that matters to connection or request
/// tracking, seen by a TC program of one end's interface. With [`Ip6`]
/// addresses for IPv6 (128 bytes rather than 104): the agent tells the
/// families apart by the record's length, as for [`crate::event::FlowEvent`],
/// so IPv4's events keep their size and their reader.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent<A = Ip4> {
    pub ts_ns: u64,
    pub src: A,
    pub dst: A,
    /// Sequence and acknowledgement numbers, host order: the bytes each way
    /// are told by the boundaries' numbers, so no per-packet counting.
    pub seq: u32,
    pub ack: u32,
    pub ifindex: u32,
    /// Ports, host order.
    pub sport: u16,
    pub dport: u16,
    /// TCP payload length of the segment.
    pub data_len: u16,
    /// Bytes of the payload copied into `payload` (0 for boundaries).
    pub copied: u8,
    /// TCP flags.
    pub flags: u8,
    /// A [`crate::event::Direction`].
    pub direction: u8,
    /// 1: both ends are local members, and this copy (leaving the sender)
    /// is the only one sent: the copy entering the receiver, the same
    /// segment, is not (it would be a second event per segment).
    pub both_local: u8,
    pub _pad: [u8; 2],
    pub payload: [u8; PAYLOAD],
}

const _: () = assert!(core::mem::size_of::<ConnEvent>() == 40 + PAYLOAD);
const _: () = assert!(core::mem::size_of::<ConnEvent<Ip6>>() == 64 + PAYLOAD);
// The ring's records are 8-byte aligned: neither layout may need more.
const _: () = assert!(core::mem::align_of::<ConnEvent<Ip6>>() == 8);
// Past the addresses, IPv6's layout is IPv4's shifted by 24 bytes.
const _: () = assert!(
    core::mem::offset_of!(ConnEvent<Ip6>, payload)
        == core::mem::offset_of!(ConnEvent, payload) + 24
);

impl<A: Default> Default for ConnEvent<A> {
    fn default() -> Self {
        ConnEvent {
            ts_ns: 0,
            src: A::default(),
            dst: A::default(),
            seq: 0,
            ack: 0,
            ifindex: 0,
            sport: 0,
            dport: 0,
            data_len: 0,
            copied: 0,
            flags: 0,
            direction: 0,
            both_local: 0,
            _pad: [0; 2],
            payload: [0; PAYLOAD],
        }
    }
}

impl<A> ConnEvent<A> {
    pub fn payload(&self) -> &[u8] {
        &self.payload[..usize::from(self.copied).min(PAYLOAD)]
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no implicit padding
// (size asserted).
unsafe impl aya::Pod for ConnEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ConnEvent<Ip6> {}

/// Whether a TCP segment with these flags marks a connection's boundary.
pub const fn is_boundary(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
}

/// Methods of HTTP/1.x (RFC 9110, plus PATCH), as the first four bytes of a
/// request line read as a little-endian `u32`, and the status line's `HTTP`.
const STARTS: [[u8; 4]; 10] = [
    *b"GET ", *b"POST", *b"PUT ", *b"HEAD", *b"DELE", *b"PATC", *b"OPTI", *b"CONN", *b"TRAC",
    *b"HTTP",
];

/// The cheap test the programs make on a segment's first four bytes: could
/// it start an HTTP/1.x request or response? False positives (a body that
/// happens to start with `GET `) are refused by the agent's parsers.
#[inline(always)]
pub fn may_start_http(first: [u8; 4]) -> bool {
    let w = u32::from_le_bytes(first);
    let mut i = 0;
    while i < STARTS.len() {
        if w == u32::from_le_bytes(STARTS[i]) {
            return true;
        }
        i += 1;
    }
    false
}

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// A request line's method and target (the target may be cut at the copied
/// bytes' end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'static str,
    pub target: &'a [u8],
}

/// Parses `METHOD SP target SP HTTP/1.x` from the start of a segment. The
/// version is checked when it fits in the copied bytes.
pub fn parse_request(b: &[u8]) -> Option<RequestLine<'_>> {
    let sp = b.iter().position(|&c| c == b' ')?;
    let method = METHODS.iter().find(|m| m.as_bytes() == &b[..sp])?;
    let rest = &b[sp + 1..];
    let end = rest
        .iter()
        .position(|&c| c == b' ' || c == b'\r' || c == b'\n');
    let target = &rest[..end.unwrap_or(rest.len())];
    if target.is_empty() || target.iter().any(|&c| c <= b' ' || c == 0x7f) {
        return None;
    }
    if let Some(e) = end {
        let version = &rest[e..];
        let want = b" HTTP/1.";
        let n = version.len().min(want.len());
        if version[..n] != want[..n] {
            return None;
        }
    }
    Some(RequestLine { method, target })
}

/// Parses `HTTP/1.x NNN` from the start of a segment: the status code.
pub fn parse_status(b: &[u8]) -> Option<u16> {
    if b.len() < 12 || &b[..7] != b"HTTP/1." || !b[7].is_ascii_digit() || b[8] != b' ' {
        return None;
    }
    let d = &b[9..12];
    if !d.iter().all(u8::is_ascii_digit) || b.get(12).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    let code = d.iter().fold(0u16, |n, c| n * 10 + u16::from(c - b'0'));
    (100..=599).contains(&code).then_some(code)
}

/// `1xx` … `5xx`: the status label (bounded, unlike the code itself).
pub fn status_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_http_apart() {
        for s in [
            &b"GET /"[..],
            b"POST",
            b"HTTP/1.1 200",
            b"DELETE /x",
            b"OPTIONS *",
        ] {
            assert!(may_start_http(s[..4].try_into().unwrap()), "{s:?}");
        }
        for s in [
            &b"\x16\x03\x01\x02"[..],
            b"get ",
            b"SSH-",
            b"\0\0\0\0",
            b"HTTX",
        ] {
            assert!(!may_start_http(s[..4].try_into().unwrap()), "{s:?}");
        }
    }

    #[test]
    fn request_lines() {
        let r = parse_request(b"GET /a/b?c=1 HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert_eq!((r.method, r.target), ("GET", &b"/a/b?c=1"[..]));
        let r = parse_request(b"DELETE /x HTTP/1.0\r\n").unwrap();
        assert_eq!(r.method, "DELETE");
        // Cut by the copy: the target up to there.
        let long = b"POST /a-very-long-path-that-goes-past-the-copied-bytes-of-the-ev";
        assert_eq!(parse_request(long).unwrap().target, &long[5..]);
        // Version cut short still matches its prefix.
        assert!(parse_request(b"GET / HT").is_some());
        for bad in [
            &b"GETX / HTTP/1.1"[..],
            b"GET  HTTP/1.1",
            b"GET / HTTP/2.0\r\n",
            b"GET / SPDY",
            b"PUTS / HTTP/1.1",
            b"GET /\x01 HTTP/1.1",
            b"",
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 503\r\n"), Some(503));
        for bad in [
            &b"HTTP/1.1 20 OK"[..],
            b"HTTP/1.1 2000 OK",
            b"HTTP/2 200 OK\r\n",
            b"HTTP/1.1 999 X\r\n",
            b"HTTP/1.1 abc\r\n",
            b"HTTP/1.1",
        ] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
        assert_eq!(
            [100, 204, 301, 418, 500].map(status_class),
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
        );
    }
}
