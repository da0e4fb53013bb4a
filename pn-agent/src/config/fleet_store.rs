//! What a fleet store (`--store etcd…`) asks of the rest of the settings:
//! the tunnel, and TLS unless the store is on this host.

use std::net::IpAddr;

use anyhow::bail;

use super::StoreSpec;

/// A fleet store needs the tunnel: without it, traffic to members on other
/// hosts would leave in clear text.
pub(super) fn needs_tunnel(advertise: bool, underlay_iface: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        (!advertise, "--advertise"),
        (!underlay_iface, "--underlay-iface"),
    ]
    .iter()
    .filter(|(m, _)| *m)
    .map(|(_, flag)| *flag)
    .collect();
    if !missing.is_empty() {
        bail!(
            "a fleet store (--store etcd…) needs {}: without the tunnel, traffic to \
             members on other hosts would leave this host in clear text",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// `etcd://` is plain text and unauthenticated: whoever is on the path to
/// the store reads the membership and writes any record. Only a store on
/// this host's loopback keeps that path inside the host; anything else is
/// refused unless `--store-insecure` says it is a test bed.
pub(super) fn plain_text_allowed(store: &StoreSpec, insecure: bool) -> anyhow::Result<()> {
    let StoreSpec::Etcd(endpoints) = store else {
        return Ok(());
    };
    if insecure {
        return Ok(());
    }
    if let Some(off) = endpoints.iter().find(|e| !on_loopback(e)) {
        bail!(
            "--store etcd://… is plain text and unauthenticated, and {off} is not on this \
             host's loopback: anyone on the path could rewrite the fleet; use etcds://… \
             (or --store-insecure on a test bed)"
        );
    }
    Ok(())
}

/// `HOST:PORT` (already checked to have a port) names a loopback address.
fn on_loopback(endpoint: &str) -> bool {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
