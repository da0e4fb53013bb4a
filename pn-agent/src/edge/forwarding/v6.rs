//! IPv6's forwarding switch (`net.ipv6.conf.all.forwarding`), decided as
//! IPv4's (see the parent), and the router advertisements a host keeps
//! accepting once pn has turned it on.

use std::{io, path::Path};

use super::{Forwarding, decide};

/// File in the state directory saying that pn turned IPv6 forwarding on
/// (and which interfaces it moved to `accept_ra=2`).
pub const RECORD6: &str = "ipv6-forward-enabled-by-pn";

const CONF: &str = "/proc/sys/net/ipv6/conf";

/// Of the interfaces' `accept_ra` values (name, value as read), those that
/// accept router advertisements only while not forwarding (`1`): they
/// must say `2` before the host forwards, or their advertised routes and
/// addresses expire. `0` (never) and `2` (always) are the operator's
/// choice and stay; `all` is not an interface's setting (the kernel reads
/// each interface's own), `default` is: interfaces made later copy it.
pub fn moved_to_accept_ra_2(found: &[(String, String)]) -> Vec<&str> {
    found
        .iter()
        .filter(|(name, value)| name != "all" && value.trim() == "1")
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Every interface's `accept_ra`, `default` included.
fn accept_ra_values() -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(CONF)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // An interface may go between the listing and the read.
        if let Ok(v) = std::fs::read_to_string(Path::new(CONF).join(&name).join("accept_ra")) {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Turns IPv6 forwarding on in the calling thread's namespace, router
/// advertisements kept where they were accepted, and says who owns it.
pub fn enable6(state_dir: &Path) -> io::Result<Forwarding> {
    let switch = Path::new(CONF).join("all/forwarding");
    let record = state_dir.join(RECORD6);
    let was_on = std::fs::read_to_string(&switch)?.trim() == "1";
    let answer = decide(was_on, record.exists());
    if !was_on {
        let found = accept_ra_values()?;
        let moved = moved_to_accept_ra_2(&found);
        // Before forwarding: no advertisement is ignored in between.
        for name in &moved {
            std::fs::write(Path::new(CONF).join(name).join("accept_ra"), "2")?;
        }
        std::fs::create_dir_all(state_dir)?;
        std::fs::write(
            &record,
            format!(
                "pn-agent turned net.ipv6.conf.all.forwarding on; accept_ra 1 -> 2 on: {}\n",
                moved.join(" ")
            ),
        )?;
        std::fs::write(&switch, "1")?;
        if !moved.is_empty() {
            log::info!(
                "IPv6 forwarding on; router advertisements still accepted on {} (accept_ra=2)",
                moved.join(", ")
            );
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interfaces_that_would_stop_accepting_advertisements_move() {
        let found: Vec<(String, String)> = [
            ("all", "1\n"),
            ("default", "1\n"),
            ("lo", "1\n"),
            ("eth0", "1\n"),
            ("eth1", "0\n"),
            ("wlan0", "2\n"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            moved_to_accept_ra_2(&found),
            ["default", "lo", "eth0"],
            "0 and 2 are the operator's; `all` is nobody's"
        );
        assert!(moved_to_accept_ra_2(&[]).is_empty());
    }
}
