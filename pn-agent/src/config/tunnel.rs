//! The tunnel's settings from `--tunnel-*`: the protocol's
//! ([`pn_tunnel::Config`]) and its I/O's ([`pn_tunnel::device::Options`]).

use std::net::SocketAddr;

use anyhow::bail;
use pn_tunnel::device::{MAX_WORKERS, Options};

/// `--advertise`, an IPv4 or an IPv6 endpoint: the tunnel's sockets are of
/// its family (an IPv4-mapped one is its IPv4 address). An IPv6 one must be
/// a global or unique-local unicast address peers can reach: the
/// unspecified address, loopback, multicast and link-local (which needs an
/// interface peers cannot name) are refused here, as the store's checks
/// would refuse the host's record.
pub(super) fn advertise_endpoint(
    advertise: Option<SocketAddr>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(SocketAddr::V6(a)) = advertise else {
        return Ok(advertise);
    };
    if let Some(ip) = a.ip().to_ipv4_mapped() {
        return Ok(Some(SocketAddr::from((ip, a.port()))));
    }
    let ip = a.ip();
    let what = if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_unicast_link_local() {
        "link-local"
    } else if a.port() == 0 {
        "port 0"
    } else {
        return Ok(Some(SocketAddr::from((*ip, a.port()))));
    };
    bail!("invalid --advertise {a}: {what} cannot be a tunnel endpoint peers reach")
}

/// The tunnel's settings from `--tunnel-*`.
pub(super) fn tunnel_config(
    cipher: Option<String>,
    rekey_after_secs: Option<u64>,
    rekey_after_messages: Option<u64>,
) -> anyhow::Result<pn_tunnel::Config> {
    let mut tunnel = pn_tunnel::Config::default();
    if let Some(c) = cipher {
        tunnel.cipher = c
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid --tunnel-cipher: {e}"))?;
    }
    if let Some(secs) = rekey_after_secs {
        if secs == 0 {
            bail!("invalid --tunnel-rekey-after-secs 0");
        }
        tunnel.rekey_after_time = std::time::Duration::from_secs(secs);
        // Keep WireGuard's margin between renewing and refusing a session.
        tunnel.reject_after_time =
            tunnel.rekey_after_time + std::time::Duration::from_secs(secs.div_ceil(2).max(5));
    }
    if let Some(n) = rekey_after_messages {
        if n == 0 {
            bail!("invalid --tunnel-rekey-after-messages 0");
        }
        tunnel.rekey_after_messages = n;
    }
    Ok(tunnel)
}

/// The I/O's switches: workers, offloads, spin, pinning; and notrack, the
/// edge's (off unless given).
pub(super) fn device_options(
    workers: Option<usize>,
    offloads: Option<String>,
    spin_us: Option<u64>,
    pin: Option<bool>,
    pin_rx: Option<bool>,
    notrack: Option<bool>,
) -> anyhow::Result<Options> {
    let mut o = Options::default();
    if let Some(n) = workers {
        if !(1..=MAX_WORKERS).contains(&n) {
            bail!("invalid --tunnel-workers {n}: 1 to {MAX_WORKERS}");
        }
        o.workers = n;
    }
    if let Some(list) = offloads {
        o.set_offloads(&list)
            .map_err(|e| anyhow::anyhow!("invalid --tunnel-offloads: {e}"))?;
    }
    if let Some(us) = spin_us {
        if us > 1000 {
            bail!("invalid --tunnel-spin-us {us}: at most 1000");
        }
        o.spin = std::time::Duration::from_micros(us);
    }
    if let Some(pin) = pin {
        o.pin = pin;
    }
    if let Some(pin_rx) = pin_rx {
        o.pin_rx = pin_rx;
    }
    o.notrack = notrack.unwrap_or(false);
    Ok(o)
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
