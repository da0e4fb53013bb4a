//! DNS: queries per second and latency (dnsperf, from a container) for names
//! of the zone and for forwarded names; baseline for the forwarded case: the
//! same upstream queried directly.

use pn_tests::{Host, Namespace, net, unique_prefix};

use crate::{
    Effort,
    report::{Measurement, Row, Scenario},
    tools,
};

pub fn run(effort: Effort) -> anyhow::Result<Scenario> {
    let p = unique_prefix();
    let mut host = Host::create(&p, "h1");
    let _upstream = net::fake_dns_upstream(&host.ns, 5353, "192.0.2.1".parse()?);
    host.launch(&["--dns-upstream", "127.0.0.1:5353"]);
    let net_id = host.create_network(&[]);
    let app = host.create_app(&net_id);
    let c1 = Namespace::new(&format!("{p}-c1"));
    let others: Vec<Namespace> = (0..3)
        .map(|i| Namespace::new(&format!("{p}-w{i}")))
        .collect();
    host.attach(&app, "web", &c1);
    for ns in &others {
        host.attach(&app, "worker", ns);
    }
    let base = format!("{app}.{net_id}.private-network.internal");
    let zone_names = vec![
        base.clone(),
        format!("web.{base}"),
        format!("1.web.{base}"),
        format!("worker.{base}"),
        format!("2.worker.{base}"),
    ];
    let world = vec!["example.com".to_string(), "www.example.org".to_string()];
    let (mut zq, mut zl, mut fq, mut fl, mut dq, mut dl) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..effort.runs {
        let (q, l) = tools::dnsperf(&c1, "169.254.1.1", 53, &zone_names, effort.seconds)?;
        zq.push(q);
        zl.push(l);
        let (q, l) = tools::dnsperf(&c1, "169.254.1.1", 53, &world, effort.seconds)?;
        fq.push(q);
        fl.push(l);
        let (q, l) = tools::dnsperf(&host.ns, "127.0.0.1", 5353, &world, effort.seconds)?;
        dq.push(q);
        dl.push(l);
    }
    Ok(Scenario {
        name: "dns".into(),
        title: "DNS".into(),
        setup: "dnsperf (4 clients, 64 queries in flight) inside a container, against the agent on \
                169.254.1.1:53: names of the zone (app, type and container names of a 4-container app), \
                and names of the world forwarded to an upstream on the host (a minimal UDP responder \
                of the test harness). Baseline for forwarding: dnsperf straight at that upstream."
            .into(),
        rows: vec![
            Row::alone("zone names: queries/s", Measurement::new("q/s", true, zq)),
            Row::alone("zone names: average latency", Measurement::new("ms", false, zl)),
            Row::versus("forwarded names: queries/s", Measurement::new("q/s", true, fq), "upstream direct", Measurement::new("q/s", true, dq)),
            Row::versus("forwarded names: average latency", Measurement::new("ms", false, fl), "upstream direct", Measurement::new("ms", false, dl)),
        ],
        notes: vec![],
    })
}
