//! The agent's CPU read apart: its own threads' run time (schedstat, ns)
//! and what its reaped children cost (the edge's `nft` runs every 10 s,
//! in clock ticks), plus its threads' context switches. The sum of
//! `utime + stime + cutime + cstime` mixes them: an `nft` run of tens of
//! milliseconds landing in a 3 s phase weighs more than the agent's work.

/// A reading of one agent process.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentCpu {
    /// Run time of the threads alive at the reading, ns (an exited thread's
    /// time is lost: the pool's idle threads leave after 10 s).
    pub own_ns: u64,
    /// Reaped children's user and system time, seconds (tick-grained).
    pub children_s: f64,
    /// Voluntary and involuntary context switches of the live threads.
    pub switches: u64,
}

impl AgentCpu {
    pub fn read(pid: u32) -> AgentCpu {
        let mut r = AgentCpu::default();
        let tasks = format!("/proc/{pid}/task");
        for e in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                r.own_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
                r.switches += s
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(close) = stat.rfind(')')
        {
            // After the name: state(0) … cutime(13) cstime(14).
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            r.children_s = (num(13) + num(14)) as f64 / hz;
        }
        r
    }

    /// From `self` to `later`: (own µs, children's µs, switches).
    pub fn since(self, later: AgentCpu) -> (f64, f64, f64) {
        (
            later.own_ns.saturating_sub(self.own_ns) as f64 / 1e3,
            (later.children_s - self.children_s).max(0.0) * 1e6,
            later.switches.saturating_sub(self.switches) as f64,
        )
    }
}
