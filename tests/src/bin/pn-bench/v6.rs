//! IPv6 beside IPv4: the address a member got, measurements that stop
//! (with the reason kept for the report) rather than fail the bench when
//! IPv6 cannot be measured, and the rows that set IPv6 against IPv4 in
//! the same rounds.

use std::{net::Ipv6Addr, time::Duration};

use pn_tests::{Namespace, eventually, scenario::Member};

use crate::{
    Effort,
    report::{Measurement, Row},
};

/// Seconds of one IPv6 measurement: shorter than IPv4's so the IPv6 rows
/// add only a few seconds a round (on veths and the tunnel a stream is at
/// full rate within milliseconds, so the rates compare).
pub fn seconds(effort: Effort) -> u64 {
    (effort.seconds / 2).max(1)
}

/// IPv6 measurements towards one address; the first failure ends them and
/// is kept as the reason the report gives.
pub struct Probe {
    ip: Option<Ipv6Addr>,
    why_not: Option<String>,
}

impl Probe {
    /// Towards `m`'s IPv6 address, if its attach answer has one.
    pub fn to(m: &Member) -> Probe {
        match m.attached["ip6"].as_str().map(str::parse::<Ipv6Addr>) {
            Some(Ok(ip)) => Probe {
                ip: Some(ip),
                why_not: None,
            },
            _ => Probe {
                ip: None,
                why_not: Some(format!(
                    "the container has no IPv6 address (attach answered {})",
                    m.attached
                )),
            },
        }
    }

    /// `f(ip)` while nothing has failed yet; `None` once something did.
    pub fn measure<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(Ipv6Addr) -> anyhow::Result<T>,
    ) -> Option<T> {
        let ip = self.ip?;
        match f(ip) {
            Ok(v) => Some(v),
            Err(e) => {
                self.ip = None;
                self.why_not = Some(format!("{what} over IPv6 to {ip} failed: {e:#}"));
                None
            }
        }
    }

    /// Waits until `from` pings the address (after a start or a relaunch
    /// the routes may come a moment after IPv4's); a measurement towards
    /// an unreachable address would wait out TCP's connect timeouts.
    pub fn reach(&mut self, from: &Namespace) {
        let Some(ip) = self.ip else { return };
        let ip_s = ip.to_string();
        let ok = eventually(Duration::from_secs(10), || {
            from.exec(&["ping", "-6", "-c", "1", "-W", "1", &ip_s])
                .status
                .success()
        });
        if !ok {
            self.ip = None;
            self.why_not = Some(format!("{ip} did not answer `ping -6` within 10 s"));
        }
    }

    /// Why nothing more was measured, if so.
    pub fn why_not(&self) -> Option<&str> {
        self.why_not.as_deref()
    }
}

/// pn over IPv6 against `baseline` (its own family's, when measured), and
/// against pn over IPv4 in the same rounds. Rows without values are left
/// out (the probe's reason goes to the notes).
pub fn rows(
    what: &str,
    pn6: Measurement,
    baseline: Option<(&str, Measurement)>,
    pn4: Measurement,
) -> Vec<Row> {
    if pn6.values.is_empty() {
        return Vec::new();
    }
    let mut rows = Vec::new();
    if let Some((name, b)) = baseline.filter(|(_, b)| !b.values.is_empty()) {
        rows.push(Row::versus(&format!("{what}, IPv6"), pn6.clone(), name, b));
    }
    rows.push(Row::versus(
        &format!("{what}: IPv6 against IPv4 (pn, same rounds)"),
        pn6,
        "pn, IPv4",
        pn4,
    ));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[f64]) -> Measurement {
        Measurement::new("x", true, v.to_vec())
    }

    #[test]
    fn rows_leave_out_what_was_not_measured() {
        assert!(rows("t", m(&[]), Some(("b", m(&[1.0]))), m(&[1.0])).is_empty());
        let r = rows("t", m(&[2.0]), Some(("b", m(&[]))), m(&[4.0]));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ratio(), Some(0.5));
        let r = rows("t", m(&[2.0]), Some(("b", m(&[1.0]))), m(&[4.0]));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].what, "t, IPv6");
        assert_eq!(r[0].ratio(), Some(2.0));
    }
}
