//! The tunnel's settings from `--tunnel-*`: the protocol's
//! ([`pn_tunnel::Config`]) and its I/O's ([`pn_tunnel::device::Options`]).

use std::net::SocketAddr;

use anyhow::bail;
use pn_tunnel::device::{MAX_WORKERS, Options};

/// `--advertise`, an IPv4 endpoint: the tunnel's socket binds IPv4 only
/// and the XDP underlay guard knows IPv4 peers only, so an IPv6 endpoint
/// would be published to peers that could never reach it (an IPv4-mapped
/// one is its IPv4 address).
pub(super) fn advertise_v4(advertise: Option<SocketAddr>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(SocketAddr::V6(a)) = advertise else {
        return Ok(advertise);
    };
    match a.ip().to_ipv4_mapped() {
        Some(ip) => Ok(Some(SocketAddr::from((ip, a.port())))),
        None => bail!(
            "invalid --advertise {a}: the tunnel runs over IPv4 only (an IPv6 underlay is not \
             supported yet): advertise this host's IPv4 underlay address"
        ),
    }
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

/// The I/O's switches: workers, offloads, spin, pinning.
pub(super) fn device_options(
    workers: Option<usize>,
    offloads: Option<String>,
    spin_us: Option<u64>,
    pin: Option<bool>,
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
    Ok(o)
}
