//! A real etcd cluster for the tests: three (or `n`) [`EtcdServer`]
//! members, on loopback with ports of their own or in one network namespace
//! on addresses of their own, in plain text or TLS like the single one
//! (peers talk plain HTTP between themselves, as there). A member is killed
//! and started again with its data, and the cluster says which one leads.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::etcd::{ELECTION_TIMEOUT, EtcdServer, ServerTls};

pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// `n` members on loopback, plain text.
    pub fn start(name: &str, n: usize) -> EtcdCluster {
        Self::local(name, n, None)
    }

    /// `n` members on loopback, TLS only (one certificate for all: they
    /// share 127.0.0.1).
    pub fn start_tls(name: &str, n: usize, tls: ServerTls) -> EtcdCluster {
        Self::local(name, n, Some(tls))
    }

    fn local(name: &str, n: usize, tls: Option<ServerTls>) -> EtcdCluster {
        let members = (1..=n)
            .map(|i| EtcdServer::local_member(&format!("{name}-m{i}"), tls.clone()))
            .collect();
        Self::launch(members)
    }

    /// One member per address of `ips` (clients on 2379 each) in the
    /// network namespace `netns`, which must hold those addresses; a TLS
    /// certificate must name them all.
    pub fn in_netns(netns: &str, ips: &[Ipv4Addr], tls: Option<ServerTls>) -> EtcdCluster {
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                EtcdServer::netns_member(&format!("{netns}-m{}", i + 1), netns, *ip, tls.clone())
            })
            .collect();
        Self::launch(members)
    }

    fn launch(mut members: Vec<EtcdServer>) -> EtcdCluster {
        let initial: Vec<String> = members.iter().map(EtcdServer::peer_entry).collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.join(&initial);
            m.restart();
        }
        let c = EtcdCluster { members };
        c.wait_leader(Duration::from_secs(30))
            .expect("the etcd cluster elected no leader within 30 s");
        c
    }

    /// Every member's client endpoint, `IP:PORT`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// The endpoints comma-separated, as `--store etcd://…` takes them.
    pub fn endpoint_list(&self) -> String {
        self.endpoints().join(",")
    }

    /// The index of the running member that says it leads, if any.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(EtcdServer::is_leader)
    }

    /// The leader's index once one is elected and every running member
    /// follows it, or `None` after `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader()
                && self
                    .members
                    .iter()
                    .filter(|m| m.running())
                    .all(EtcdServer::has_leader)
            {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A running member that does not lead (the first one), if any.
    pub fn follower(&self) -> Option<usize> {
        let leader = self.leader();
        (0..self.members.len()).find(|&i| Some(i) != leader && self.members[i].running())
    }

    /// Kills member `i` (as a crash would); its data stays for
    /// `restart_member`.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// Starts member `i` again with its data; it rejoins the cluster.
    pub fn restart_member(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// Kills every member: the whole store out (as [`EtcdServer::stop`]).
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }

    /// Starts every stopped member again and waits for a leader.
    pub fn restart(&mut self) {
        for m in self.members.iter_mut().filter(|m| !m.running()) {
            m.restart();
        }
        self.wait_leader(Duration::from_secs(30))
            .expect("the etcd cluster elected no leader within 30 s");
    }

    /// How long losing the leader may take at most before a new one leads:
    /// the followers' election timeout, and an election's rounds (a split
    /// vote costs another randomized timeout, up to twice it).
    pub fn election_bound() -> Duration {
        ELECTION_TIMEOUT * 3
    }
}
