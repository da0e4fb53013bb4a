//! The edge of the host: what the kernel's own NAT does for pn, set up as
//! one nftables table (`inet pn`) that pn owns and replaces whole.
//!
//! - **Egress.** Container sources (the pool) leaving through anything but
//!   pn's interfaces are masqueraded to the host's address. The eBPF
//!   programs decide whether a container may reach the world (`egress`,
//!   `egress_denied`) and admit the replies (their connection table); the
//!   kernel's conntrack only translates. This is Calico's choice (iptables
//!   or nftables NAT next to eBPF policy) rather than Cilium's (NAT in eBPF
//!   with its own tables): conntrack already handles every protocol corner
//!   (ICMP errors with the quoted packet rewritten, port clashes, TCP
//!   state), keeps translations across an agent restart, and costs nothing
//!   on the member-to-member path, which member traffic skips (`notrack`).
//! - **Publication.** `HOST_IP:PORT` is translated (DNAT) to
//!   `container:web_port` for every source, and the connection's mark says
//!   whether the source was a router ([`pn_common::edge`]): the program on
//!   the container's veth admits routers (`published`) and drops and counts
//!   everyone else (`not_router`) per container, with the rest of pn's
//!   counters and events. A router sending straight to a container's
//!   address carries no mark and gets `not_member`.
//! - **Into pn's interfaces** everything is forwarded: the programs on
//!   them judge it, and count what they drop per container (a stranger
//!   routing the pool through the host gets `not_member`). A pool source
//!   forwarded from anywhere but pn's interfaces to anywhere else is
//!   spoofed: dropped, never masqueraded. Whatever the host's forwarding,
//!   pn's pool is nobody else's path.
//! - **Forwarding.** pn needs IPv4 (and, with IPv6 on, IPv6) forwarding
//!   on; each family is decided on its own. When pn is the one that
//!   turned it on ([`Forwarding::PnOnly`]), everything else forwarded (that
//!   neither enters nor leaves through a pn interface, nor belongs to a
//!   connection already open) is dropped and counted, so the host routes
//!   nothing else. When the host already forwarded before pn
//!   ([`Forwarding::Shared`]: Docker, libvirt, a router), pn leaves the
//!   rest alone: dropping it would break whatever relied on it. The
//!   operator decides otherwise with `--forward-guard on|off`
//!   ([`ForwardGuard`]).
//! - **The gateway's DNS** answers pn's container interfaces only: a query
//!   from any other interface (a neighbour routing the gateway address
//!   through the host, with a member's source address) is dropped before
//!   it reaches the agent and spends that member's budget.
//!
//! The rules come from a pure function of the whole desired state
//! ([`rules::ruleset`]), unit-tested without a kernel, and are applied as
//! one nftables transaction: delete the table and create it again, so a
//! change is atomic and `set` is idempotent.
//!
//! Why the `nftables` crate: it is the typed JSON schema of nftables
//! (MIT/Apache, maintained, no C dependency), handed to the `nft` binary in
//! one batch. `rustables` speaks netlink itself but is GPL-3.0, which the
//! workspace's MIT/Apache licence cannot take; `nftnl` binds libnftnl (C
//! libraries to build against, unsafe FFI, expressions assembled by hand).
//! The cost is the `nft` binary on the host (Debian's `nftables`), run once
//! per change. Nothing is ever written as an nft command string.

mod config;
mod counters;
pub mod deny;
pub mod deny6;
mod error;
pub mod forwarding;
pub mod metrics;
pub mod ports;
pub mod rules;

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

pub use config::{EdgeConfig, EdgeConfig6, GatewayDns, Publication, TunnelNotrack};
pub use counters::{Count, EdgeCounters};
pub use error::EdgeError;
pub use forwarding::{ForwardGuard, Forwarding, Owners};

/// Where the rules go: the kernel through `nft`, or a fake in tests.
pub trait Backend: Send {
    /// Runs one nftables JSON document as one transaction.
    fn apply(&mut self, doc: &nftables::schema::Nftables<'_>) -> Result<(), EdgeError>;
    /// `nft -j list counters table inet pn`, or `None` when the table is absent.
    fn counters(&mut self) -> Result<Option<serde_json::Value>, EdgeError>;
}

/// The `nft` binary (found in `PATH` unless given).
pub struct Nft {
    pub program: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: "nft".into(),
        }
    }
}

impl Nft {
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output, EdgeError> {
        let missing = |source| EdgeError::NftMissing {
            program: self.program.display().to_string(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(missing)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input).map_err(missing)?;
        }
        child.wait_with_output().map_err(missing)
    }
}

/// nft's complaint, on one line.
fn one_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Backend for Nft {
    fn apply(&mut self, doc: &nftables::schema::Nftables<'_>) -> Result<(), EdgeError> {
        let json = rules::to_json(doc).to_string();
        let out = self.run(&["-j", "-f", "-"], Some(json.as_bytes()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(EdgeError::NftFailed(one_line(&out.stderr)))
        }
    }

    fn counters(&mut self) -> Result<Option<serde_json::Value>, EdgeError> {
        let out = self.run(
            &["-j", "list", "counters", "table", "inet", rules::TABLE],
            None,
        )?;
        if !out.status.success() {
            // No table (never set, or cleared): nothing counted.
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| EdgeError::Counters(e.to_string()))
    }
}

/// The edge's rules in the kernel, shaped like tailscale's
/// `wgengine/router`: the whole desired state in, the kernel made to match.
pub struct Edge<B: Backend = Nft> {
    backend: B,
    /// Counts of the tables replaced so far (each `set` starts the kernel's
    /// counters again).
    carried: EdgeCounters,
}

impl Edge<Nft> {
    pub fn new() -> Self {
        Edge::with_backend(Nft::default())
    }
}

impl Default for Edge<Nft> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Edge<B> {
    pub fn with_backend(backend: B) -> Self {
        Edge {
            backend,
            carried: EdgeCounters::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Makes the kernel's edge exactly `cfg`, in one transaction.
    /// Idempotent; established connections keep their translations
    /// (conntrack holds them, not the rules).
    pub fn set(&mut self, cfg: &EdgeConfig) -> Result<(), EdgeError> {
        let doc = rules::ruleset(cfg)?;
        let before = self.read_counters().unwrap_or_default();
        self.backend.apply(&doc)?;
        self.carry(before);
        Ok(())
    }

    /// Removes pn's table (absent is fine).
    pub fn clear(&mut self) -> Result<(), EdgeError> {
        let before = self.read_counters().unwrap_or_default();
        self.backend.apply(&rules::clear())?;
        self.carry(before);
        Ok(())
    }

    /// Whether pn's table is in the kernel (someone may have flushed the
    /// ruleset behind the agent's back).
    pub fn present(&mut self) -> bool {
        matches!(self.backend.counters(), Ok(Some(_)))
    }

    /// Everything the rules dropped since this `Edge` was made.
    pub fn counters(&mut self) -> Result<EdgeCounters, EdgeError> {
        let mut c = self.carried;
        c += self.read_counters()?;
        Ok(c)
    }

    fn carry(&mut self, before: EdgeCounters) {
        self.carried += before;
    }

    fn read_counters(&mut self) -> Result<EdgeCounters, EdgeError> {
        let Some(listing) = self.backend.counters()? else {
            return Ok(EdgeCounters::default());
        };
        Ok(rules::parse_counters(&listing))
    }
}

/// A backend that keeps what it is given, for tests of the code that drives
/// an [`Edge`].
#[derive(Default)]
pub struct Fake {
    /// Every document applied, as JSON.
    pub applied: Vec<serde_json::Value>,
    /// What `counters` returns.
    pub listing: Option<serde_json::Value>,
}

impl Backend for Fake {
    fn apply(&mut self, doc: &nftables::schema::Nftables<'_>) -> Result<(), EdgeError> {
        self.applied.push(rules::to_json(doc));
        Ok(())
    }

    fn counters(&mut self) -> Result<Option<serde_json::Value>, EdgeError> {
        Ok(self.listing.clone())
    }
}

/// `pn-agent edge-apply` (tests): the JSON [`EdgeConfig`] on stdin becomes
/// this namespace's edge, or the edge is removed; with `print`, the nftables
/// document is printed instead.
pub fn apply_stdin(clear: bool, print: bool) -> Result<(), EdgeError> {
    let doc = if clear {
        rules::clear()
    } else {
        let cfg: EdgeConfig = serde_json::from_reader(std::io::stdin().lock())
            .map_err(|e| EdgeError::Invalid(format!("edge configuration on stdin: {e}")))?;
        rules::ruleset(&cfg)?
    };
    if print {
        println!("{:#}", rules::to_json(&doc));
        return Ok(());
    }
    Nft::default().apply(&doc)
}
