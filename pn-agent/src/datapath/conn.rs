//! The maps of connection and request tracking, taken from the loaded object
//! by `kernel` and read by the connection tracker (`crate::conns`).

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use pn_common::conn::LostKind;

use super::error::{Context as _, Result};

pub struct ConnMaps {
    /// `PN_CONN_EVENTS`, until the reader takes it.
    pub events: Option<RingBuf<MapData>>,
    /// `PN_CONN_CFG`: the `TRACK_*` bits.
    pub track: Array<MapData, u32>,
    /// `PN_LOST`: events lost to a full ring buffer, per kind and CPU.
    pub lost: PerCpuArray<MapData, u64>,
}

impl ConnMaps {
    pub fn set_track(&mut self, bits: u32) -> Result<()> {
        self.track
            .set(0, bits, 0)
            .ctx(|| "writing PN_CONN_CFG".into())
    }

    /// Lost events per kind, one count per CPU.
    pub fn lost(&self) -> Result<Vec<(LostKind, Vec<u64>)>> {
        LostKind::ALL
            .iter()
            .map(|&k| {
                let per_cpu = self
                    .lost
                    .get(&(k as u32), 0)
                    .ctx(|| "reading PN_LOST".into())?;
                Ok((k, per_cpu.iter().copied().collect()))
            })
            .collect()
    }
}
