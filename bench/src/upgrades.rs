//! The backend of `tether-bench reopen`: it accepts WebSocket upgrades,
//! records the `CLOCK_MONOTONIC` time of each one (when its 101 was
//! written), counts handshakes in flight (from the TCP accept until the 101
//! is written), and holds every connection open, reading and dropping what
//! arrives, until the peer closes it: a backend connection that ended would
//! end its session, and a session that ended is not reopened.
//!
//! With a stall, it answers no upgrade until a given time (a backend that
//! is slow for a while).
//!
//! It runs in the harness's process, on a 2-worker runtime of its own, so
//! that the harness blocking on a tether start-up cannot delay an accept.
//! It uses the harness backend's listener ([`crate::backend::listen_wide`]:
//! an accept queue of 4096, as tether's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::sys::now_ns;

/// What the backend saw.
#[derive(Default)]
struct State {
    /// When each upgrade completed, in the order they did.
    times: Mutex<Vec<u64>>,
    /// Handshakes between accept and 101, and the most at once since the
    /// last [`Upgrades::reset_peak`].
    inflight: AtomicI64,
    peak: AtomicI64,
    /// Upgraded connections still open.
    live: AtomicI64,
    /// Accepted connections whose upgrade failed.
    failed: AtomicU64,
    /// Until this `CLOCK_MONOTONIC` ns, upgrades wait before answering.
    stall_until: AtomicU64,
}

/// The recording backend; stops (and closes every connection) on drop.
pub struct Upgrades {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Upgrades {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Upgrades {
    /// Binds a loopback port and starts accepting.
    pub fn start() -> anyhow::Result<Upgrades> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backend")
            .enable_all()
            .build()?;
        let listener = std::thread::scope(|s| {
            s.spawn(|| rt.block_on(crate::backend::listen_wide("127.0.0.1:0"))).join().expect("no panic")
        })?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(_) => {
                        // Out of file descriptors, most likely: try again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let now = st.inflight.fetch_add(1, Ordering::Relaxed) + 1;
                st.peak.fetch_max(now, Ordering::Relaxed);
                tokio::spawn(hold(tcp, st.clone()));
            }
        });
        Ok(Upgrades { addr, state, rt: Some(rt) })
    }

    /// Its ws:// URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Upgrades so far.
    pub fn count(&self) -> usize {
        self.state.times.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The completion times of upgrades `from..` (in completion order).
    pub fn times_from(&self, from: usize) -> Vec<u64> {
        let times = self.state.times.lock().unwrap_or_else(|p| p.into_inner());
        times.get(from..).map(<[u64]>::to_vec).unwrap_or_default()
    }

    /// Upgraded connections still open.
    pub fn live(&self) -> i64 {
        self.state.live.load(Ordering::Relaxed)
    }

    /// Accepted connections whose upgrade failed, so far.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::Relaxed)
    }

    /// Starts a new peak of handshakes in flight.
    pub fn reset_peak(&self) {
        self.state.peak.store(self.state.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Handshakes accepted before `ns` (`CLOCK_MONOTONIC`) are answered at
    /// `ns`: a backend that is slow for a while.
    pub fn stall_until(&self, ns: u64) {
        self.state.stall_until.store(ns, Ordering::Relaxed);
    }

    /// The most handshakes in flight at once since [`Upgrades::reset_peak`].
    pub fn peak_inflight(&self) -> i64 {
        self.state.peak.load(Ordering::Relaxed)
    }
}

/// Upgrades `tcp`, records it, and reads until the peer closes.
async fn hold(tcp: TcpStream, st: Arc<State>) {
    let _ = tcp.set_nodelay(true);
    let stall = st.stall_until.load(Ordering::Relaxed).saturating_sub(now_ns());
    if stall > 0 {
        tokio::time::sleep(std::time::Duration::from_nanos(stall)).await;
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let upgraded = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await;
    st.inflight.fetch_sub(1, Ordering::Relaxed);
    let Ok(mut ws) = upgraded else {
        st.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    st.times.lock().unwrap_or_else(|p| p.into_inner()).push(now_ns());
    st.live.fetch_add(1, Ordering::Relaxed);
    while let Some(Ok(_)) = ws.next().await {}
    st.live.fetch_sub(1, Ordering::Relaxed);
}

/// The most timestamps (sorted, ns) within any `window_ns`.
pub fn peak_in_window(sorted: &[u64], window_ns: u64) -> usize {
    let (mut best, mut lo) = (0, 0);
    for (hi, &t) in sorted.iter().enumerate() {
        while t - sorted[lo] >= window_ns {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::peak_in_window;

    #[test]
    fn peak_window_counts_the_densest_stretch() {
        let ms = 1_000_000;
        let t = [0, 10 * ms, 20 * ms, 150 * ms, 160 * ms, 170 * ms, 180 * ms, 260 * ms];
        assert_eq!(peak_in_window(&t, 100 * ms), 4);
        assert_eq!(peak_in_window(&t, 1000 * ms), 8);
        assert_eq!(peak_in_window(&[], 100 * ms), 0);
    }
}
