//! What the CLI prints in table form: aligned columns, and the status as
//! one line per subsystem.

use crate::proto::Status;

/// Columns padded to their widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `pn-agent status` as text.
pub fn status_text(s: &Status) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "host        {} (pn-agent {})\n",
        s.host, s.version
    ));
    t.push_str(&format!(
        "store       {} — {} at revision {}\n",
        s.store.backend,
        if s.store.reachable {
            "reachable"
        } else {
            "UNREACHABLE (enforcing last known state)"
        },
        s.store.revision
    ));
    if let Some(m) = &s.store.member {
        t.push_str(&format!(
            "            member {m} ({} failover(s))\n",
            s.store.failovers
        ));
    }
    if let Some(e) = &s.store.last_error {
        t.push_str(&format!("            last error: {e}\n"));
    }
    t.push_str(&format!(
        "datapath    {} on {} interface(s), pins in {}\n",
        s.datapath.programs.join(", "),
        s.datapath.attached_interfaces,
        s.datapath.bpffs.display()
    ));
    let lost: Vec<String> = s
        .datapath
        .events_lost
        .iter()
        .map(|(k, per_cpu)| format!("{k} {} (per cpu {per_cpu:?})", per_cpu.iter().sum::<u64>()))
        .collect();
    t.push_str(&format!(
        "events lost {}; {} connection(s) tracked\n",
        if lost.is_empty() {
            "-".to_string()
        } else {
            lost.join(", ")
        },
        s.datapath.conns_tracked
    ));
    if !s.datapath.events_suppressed.is_empty() {
        let held: Vec<String> = s
            .datapath
            .events_suppressed
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        t.push_str(&format!(
            "events held back by the budget (counted, not sent): {}\n",
            held.join(", ")
        ));
    }
    t.push_str(&format!(
        "endpoints   {} local, {} remote, {} in maps\n",
        s.endpoints.local, s.endpoints.remote, s.endpoints.in_maps
    ));
    t.push_str(&format!("dns         {}\n", s.dns));
    t.push_str(&format!("tunnel      {}\n", s.tunnel));
    let e = &s.edge;
    t.push_str(&format!(
        "edge        {}; {} published on {} for {}; {} range(s) never the world; forwarding {} (IPv6 {}; guard {}{})\n",
        if e.applied {
            "table in place".to_string()
        } else {
            format!(
                "NO TABLE ({}): containers reach nothing outside",
                e.last_error.as_deref().unwrap_or("not applied yet")
            )
        },
        e.published,
        if e.host_addrs.is_empty() {
            "no address".to_string()
        } else {
            e.host_addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        if e.router_cidrs.is_empty() {
            "no router (nothing published)".to_string()
        } else {
            e.router_cidrs
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        e.egress_deny.len(),
        e.forwarding,
        e.forwarding6,
        e.forward_guard,
        if e.forwarded_before_pn {
            ", forwarding was on before pn"
        } else {
            ""
        }
    ));
    if s.peers.is_empty() {
        t.push_str("peers       none\n");
    }
    for p in &s.peers {
        t.push_str(&format!(
            "peer        {} {} ({} containers) tunnel: {}\n",
            p.host,
            p.advertise.as_deref().unwrap_or("-"),
            p.containers,
            p.tunnel
        ));
    }
    t
}
