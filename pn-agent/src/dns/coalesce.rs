//! Identical questions in flight share one upstream query: the first to
//! miss the cache leads (asks upstream), the ones after it follow (wait for
//! its answer), and every one is answered with its own id and spelling.
//!
//! Followers are bounded twice: each holds a forwarding slot of its client's
//! share like any forward (so the fair shares of [`super::Limits`] are
//! unchanged), and one flight takes at most `max_followers`; past that a
//! query asks upstream on its own. Flights are keyed by transport too: an
//! answer fetched over UDP may be truncated, which a TCP client must not get.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::watch;

use super::cache::{Entry, Key};

/// How a flight ended, for its followers.
#[derive(Clone, Debug)]
pub enum Landed {
    Answer(Arc<Entry>),
    /// No usable answer: each follower gets SERVFAIL.
    Failed,
}

type Slot = Option<Landed>;

#[derive(Debug)]
struct Flight {
    tx: watch::Sender<Slot>,
    followers: AtomicUsize,
}

type FlightKey = (Key, bool);

/// The questions in flight now; never more than the forwards in flight.
#[derive(Debug)]
pub struct Flights {
    max_followers: usize,
    map: Mutex<HashMap<FlightKey, Arc<Flight>>>,
}

/// What a query missing the cache does.
pub enum Joined {
    /// Ask upstream, then [`Lead::land`] the answer for the followers.
    Lead(Lead),
    /// Wait for the leader's answer.
    Follow(Follower),
    /// The flight has all the followers it may have: ask upstream alone.
    Alone,
}

/// The duty to ask upstream for a flight; dropped without landing (the
/// task ended), its followers get SERVFAIL.
pub struct Lead {
    flights: Arc<Flights>,
    key: FlightKey,
    flight: Arc<Flight>,
}

pub struct Follower(watch::Receiver<Slot>);

impl Flights {
    pub fn new(max_followers: usize) -> Arc<Flights> {
        Arc::new(Flights {
            max_followers,
            map: Mutex::default(),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(self: &Arc<Self>, key: &Key, tcp: bool) -> Joined {
        let mut map = self.map();
        let fk = (key.clone(), tcp);
        if let Some(f) = map.get(&fk) {
            // A follower counts for the flight's whole life (it is gone
            // when the flight lands), which is what the bound is about.
            if f.followers.fetch_add(1, Ordering::Relaxed) >= self.max_followers {
                f.followers.fetch_sub(1, Ordering::Relaxed);
                return Joined::Alone;
            }
            return Joined::Follow(Follower(f.tx.subscribe()));
        }
        let flight = Arc::new(Flight {
            tx: watch::channel(None).0,
            followers: AtomicUsize::new(0),
        });
        map.insert(fk.clone(), flight.clone());
        Joined::Lead(Lead {
            flights: self.clone(),
            key: fk,
            flight,
        })
    }

    /// Questions in flight now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

impl Lead {
    pub fn land(self, landed: Landed) {
        self.flight.tx.send_replace(Some(landed));
        // Drop ends the flight.
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut map = self.flights.map();
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }
}

impl Follower {
    /// The leader's answer; Failed if it gave up without one.
    pub async fn wait(mut self) -> Landed {
        match self.0.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Landed::Failed),
            Err(_) => Landed::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::cache::question;

    fn key(name: &str) -> Key {
        let mut q = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        question(&q).unwrap().key
    }

    #[tokio::test]
    async fn one_leads_the_others_follow_and_all_get_the_answer() {
        let f = Flights::new(2);
        let k = key("example.com");
        let Joined::Lead(lead) = f.join(&k, false) else {
            panic!("the first leads")
        };
        let Joined::Follow(a) = f.join(&k, false) else {
            panic!("the second follows")
        };
        let Joined::Follow(b) = f.join(&k, false) else {
            panic!("the third follows")
        };
        assert!(matches!(f.join(&k, false), Joined::Alone), "two at most");
        // Another transport, another flight.
        assert!(matches!(f.join(&k, true), Joined::Lead(_)));
        lead.land(Landed::Failed);
        assert!(matches!(a.wait().await, Landed::Failed));
        assert!(matches!(b.wait().await, Landed::Failed));
        assert_eq!(f.len(), 0, "a landed flight is gone");
        assert!(matches!(f.join(&k, false), Joined::Lead(_)));
    }

    #[tokio::test]
    async fn a_leader_gone_without_an_answer_fails_its_followers() {
        let f = Flights::new(8);
        let k = key("example.com");
        let lead = f.join(&k, false);
        let Joined::Follow(a) = f.join(&k, false) else {
            panic!()
        };
        drop(lead);
        assert!(matches!(a.wait().await, Landed::Failed));
        assert_eq!(f.len(), 0);
    }
}
