//! The tunnel's metrics (behind the `metrics` feature): what the data path
//! carried and dropped ([`Counters`]) and the handshakes ([`Stats`]), read
//! at each scrape.

use std::sync::{Arc, atomic::Ordering};

use pn_common::Reason;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{Counters, Device};
use crate::Stats;

/// Registers the tunnel's collector.
pub fn register(r: &mut Registry, device: Arc<Device>) {
    r.register_collector(Box::new(TunnelCollector(device)));
}

struct TunnelCollector(Arc<Device>);

impl std::fmt::Debug for TunnelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelCollector")
    }
}

impl Collector for TunnelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_data(&self.0.counters, &mut encoder)?;
        encode_handshakes(&self.0.handshake_stats(), &mut encoder)
    }
}

/// One counter family with one label, `(value, count)` per series.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in rows {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn encode_data(c: &Counters, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    family(
        encoder,
        "pn_tunnel_packets",
        "Packets carried by the encrypted tunnel",
        "direction",
        [("tx", load(&c.tx_packets)), ("rx", load(&c.rx_packets))],
    )?;
    family(
        encoder,
        "pn_tunnel_bytes",
        "Inner bytes carried by the encrypted tunnel",
        "direction",
        [("tx", load(&c.tx_bytes)), ("rx", load(&c.rx_bytes))],
    )?;
    family(
        encoder,
        "pn_tunnel_drops",
        "Packets the tunnel dropped, per reason",
        "reason",
        Reason::ALL
            .into_iter()
            .map(|r| (r.as_str(), load(&c.drops[r as usize])))
            .filter(|&(_, n)| n > 0),
    )?;
    family(
        encoder,
        "pn_tunnel_syscalls",
        "Reads and writes of the tunnel's TUN device and UDP socket (batching: packets per call)",
        "op",
        [
            ("tun_read", load(&c.tun_reads)),
            ("udp_send", load(&c.udp_sends)),
            ("udp_read", load(&c.udp_reads)),
            ("tun_write", load(&c.tun_writes)),
        ],
    )?;
    family(
        encoder,
        "pn_tunnel_spins",
        "Spins of the tunnel's loops before sleeping, per outcome (hit: something arrived within it)",
        "outcome",
        [("hit", load(&c.spin_hits)), ("miss", load(&c.spin_misses))],
    )?;
    let seconds = load(&c.spin_ns) as f64 / 1e9;
    let m = encoder.encode_descriptor(
        "pn_tunnel_spin_seconds",
        "CPU time the tunnel's loops spent spinning before sleeping (the spin's cost)",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(seconds).encode(m)?;
    let m = encoder.encode_descriptor(
        "pn_tunnel_rx_overflow",
        "Datagrams the tunnel's sockets dropped for want of buffer (SO_RXQ_OVFL)",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(load(&c.rx_overflow)).encode(m)?;
    let m = encoder.encode_descriptor(
        "pn_tunnel_workers",
        "Tunnel workers running (a TUN queue, a UDP socket and two threads each)",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(load(&c.workers) as i64).encode(m)
}

fn encode_handshakes(hs: &Stats, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        "pn_tunnel_sessions",
        "Tunnel sessions started, per AEAD the handshake settled on",
        "cipher",
        [
            ("chacha20poly1305", hs.sessions_chacha20poly1305),
            ("aes256gcm", hs.sessions_aes256gcm),
        ],
    )?;
    family(
        encoder,
        "pn_tunnel_handshakes",
        "Tunnel handshakes, per event",
        "event",
        [
            ("initiated", hs.initiations_sent),
            ("completed", hs.handshakes_completed),
            ("answered", hs.initiations_answered),
            ("expired_sessions", hs.sessions_expired),
            ("queue_dropped", hs.queue_dropped),
            ("processed", hs.initiations_processed),
            ("cookie_sent", hs.cookies_sent),
            ("cookie_received", hs.cookies_received),
        ],
    )
}
