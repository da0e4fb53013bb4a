//! The network settings of the tests' namespaces, written out so that no
//! test depends on the machine it runs on.

use crate::run::run_in;

/// The network settings every namespace of the tests starts with, written
/// out whatever the machine's: a new namespace copies the root namespace's
/// IPv4 settings (`net.core.devconf_inherit_init_net = 0`, the default), so
/// on a machine that forwards (Docker, podman, Kubernetes, a router) every
/// simulated host would start as a router, and a strict `rp_filter` or an
/// `accept_local` would change what a spoofed packet does. These are the
/// kernel's own defaults (accepting redirects aside); a test that wants a
/// host forwarding before its agent starts says so
/// ([`crate::Namespace::sysctl`]). Per interface: `all`, `default`
/// (interfaces made later) and `lo` (made with the namespace).
const BASELINE_SYSCTLS: &[(&str, &[&str], &str)] = &[
    ("ipv4/conf/{}/forwarding", &["all", "default", "lo"], "0"),
    ("ipv4/conf/{}/rp_filter", &["all", "default", "lo"], "0"),
    ("ipv4/conf/{}/accept_local", &["all", "default", "lo"], "0"),
    (
        "ipv4/conf/{}/route_localnet",
        &["all", "default", "lo"],
        "0",
    ),
    ("ipv4/conf/{}/proxy_arp", &["all", "default"], "0"),
    ("ipv4/conf/{}/arp_ignore", &["all", "default"], "0"),
    ("ipv4/conf/{}/arp_announce", &["all", "default"], "0"),
    ("ipv4/conf/{}/send_redirects", &["all", "default"], "1"),
    // A host's redirect must not reroute a test's stranger around the host
    // it means to go through (the kernel sends it before the forward hook).
    ("ipv4/conf/{}/accept_redirects", &["all", "default"], "0"),
    ("ipv6/conf/{}/disable_ipv6", &["all", "default"], "0"),
    ("ipv6/conf/{}/forwarding", &["all", "default"], "0"),
];

/// Writes [`BASELINE_SYSCTLS`] in namespace `name`. IPv6 ones are skipped
/// on a kernel without IPv6; IPv4 ones must take.
pub(crate) fn set_baseline(name: &str) {
    run_in(name, || {
        for (key, ifaces, value) in BASELINE_SYSCTLS {
            for iface in *ifaces {
                let path = format!("/proc/sys/net/{}", key.replace("{}", iface));
                match std::fs::write(&path, value) {
                    Ok(()) => {}
                    Err(e)
                        if key.starts_with("ipv6") && e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("writing {path}: {e}"),
                }
            }
        }
    });
}
