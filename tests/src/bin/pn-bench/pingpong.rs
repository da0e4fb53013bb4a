//! TCP request/response with each round trip timed: a 1-byte request, an
//! answer of a chosen size, over one connection, as fast as it goes.
//! (Debian's sockperf answers a ping-pong with the request's own size, so a
//! 1-byte request with a 64 KiB answer needs this small tool.)

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;
use pn_tests::Namespace;

const PORT: u16 = 7078;

/// Round trips are not recorded during this first stretch (connection
/// start, slow start of the answer's window).
const WARM_UP: Duration = Duration::from_millis(200);

/// One ping-pong run.
#[derive(Clone, Copy, Debug)]
pub struct PingPong {
    /// Round trips per second.
    pub rate: f64,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 99th percentile round trip, µs.
    pub p99_us: f64,
}

/// The answering side: one connection at a time; each byte read is answered
/// with `answer` bytes. Stops when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(l: TcpListener, answer: usize, stop: &AtomicBool) {
    let body = vec![b'a'; answer];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut b = [0u8; 1];
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {
                    if s.write_all(&body).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
}

fn server(ns: &Namespace, answer: usize) -> anyhow::Result<Server> {
    let l = ns.run(|| TcpListener::bind(("0.0.0.0", PORT)))?;
    l.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // The listening socket belongs to the namespace it was made in; the
    // thread that serves it may live anywhere.
    let thread = std::thread::spawn(move || serve(l, answer, &s));
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}

/// `q`-quantile of sorted samples (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// Ping-pong from `client` to `server_ip` (a server in `server`) for
/// `seconds`: 1-byte requests, `answer`-byte answers.
pub fn run(
    client: &Namespace,
    server_ns: &Namespace,
    server_ip: Ipv4Addr,
    answer: usize,
    seconds: u64,
) -> anyhow::Result<PingPong> {
    let _srv = server(server_ns, answer)?;
    client.run(move || -> anyhow::Result<PingPong> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((server_ip, PORT)),
            Duration::from_secs(5),
        )
        .with_context(|| format!("connecting to {server_ip}:{PORT}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = vec![0u8; answer];
        let warm = Instant::now() + WARM_UP;
        while Instant::now() < warm {
            s.write_all(b"x")?;
            s.read_exact(&mut buf)?;
        }
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let mut samples: Vec<u64> = Vec::with_capacity(1 << 16);
        let mut t = start;
        while t < deadline {
            s.write_all(b"x")?;
            s.read_exact(&mut buf).context("reading the answer")?;
            let now = Instant::now();
            samples.push((now - t).as_nanos() as u64);
            t = now;
        }
        let rate = samples.len() as f64 / (t - start).as_secs_f64();
        samples.sort_unstable();
        Ok(PingPong {
            rate,
            p50_us: quantile(&samples, 0.50) / 1e3,
            p99_us: quantile(&samples, 0.99) / 1e3,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.50), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
