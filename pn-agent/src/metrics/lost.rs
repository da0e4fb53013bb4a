//! Events the datapath could not deliver (ring buffer full), per kind and
//! CPU, events it held back (over the per-CPU budget), and the tracker's
//! own health, for the metrics endpoint.

use std::sync::atomic::Ordering;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::Inputs;

pub fn encode(inputs: &Inputs, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let (lost, suppressed) = {
        let dp = inputs.datapath.lock().unwrap_or_else(|p| p.into_inner());
        (dp.maps().conn_ref().lost(), dp.maps().events_suppressed())
    };
    match suppressed {
        Ok(suppressed) => {
            let mut m = encoder.encode_descriptor(
                "pn_events_suppressed",
                "Flow events held back by the per-CPU budget (--drop-events-per-sec), per kind (drop, new_flow); the packets are still counted",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in suppressed {
                ConstCounter::new(n)
                    .encode(m.encode_family(&[("kind", crate::flows::kind_name(kind))])?)?;
            }
        }
        Err(e) => log::error!("reading suppressed events for metrics: {e:#}"),
    }
    match lost {
        Ok(lost) => {
            let mut m = encoder.encode_descriptor(
                "pn_events_lost",
                "Events the datapath could not deliver (ring buffer full), per kind (flow, conn) and CPU",
                None,
                MetricType::Counter,
            )?;
            for (kind, per_cpu) in lost {
                for (cpu, n) in per_cpu.iter().enumerate() {
                    ConstCounter::new(*n).encode(m.encode_family(&[
                        ("kind", kind.as_str().to_string()),
                        ("cpu", cpu.to_string()),
                    ])?)?;
                }
            }
        }
        Err(e) => log::error!("reading lost events for metrics: {e:#}"),
    }
    let hub = &inputs.conns;
    for (name, help, n) in [
        (
            "pn_conn_events",
            "Connection and request events read from the datapath",
            &hub.received,
        ),
        (
            "pn_conn_events_malformed",
            "Connection events that could not be decoded",
            &hub.malformed,
        ),
        (
            "pn_conn_untracked",
            "Connections not tracked because the agent's table was full",
            &hub.untracked,
        ),
    ] {
        ConstCounter::new(n.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    ConstGauge::new(hub.tracked() as i64).encode(encoder.encode_descriptor(
        "pn_conn_tracked",
        "Connections in the agent's table",
        None,
        MetricType::Gauge,
    )?)?;
    Ok(())
}
