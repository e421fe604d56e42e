//! A TCP proxy a test cuts the way a real network does: in-flight bytes are
//! lost during a blackout, then both sides get a reset, and connections
//! opened during the blackout are reset at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A cutting proxy on 127.0.0.1 in front of `target`.
pub struct CutProxy {
    /// The port clients connect to.
    pub port: u16,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    live: Mutex<Vec<(AbortHandle, Weak<TcpStream>)>>,
    /// While set, bytes read are dropped and new connections are reset.
    dark: AtomicBool,
}

impl CutProxy {
    /// Starts forwarding to `127.0.0.1:target_port`.
    pub async fn start(target_port: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if st.dark.load(Ordering::SeqCst) {
                    let _ = client.set_zero_linger();
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else { continue };
                let (client, upstream) = (Arc::new(client), Arc::new(upstream));
                let (c, u, s1, s2) = (client.clone(), upstream.clone(), st.clone(), st.clone());
                let task = tokio::spawn(async move {
                    // Either direction ending ends both.
                    tokio::select! {
                        _ = pipe(c.clone(), u.clone(), &s1.dark) => {}
                        _ = pipe(u, c, &s2.dark) => {}
                    }
                });
                let mut live = st.live.lock().unwrap_or_else(|p| p.into_inner());
                live.retain(|(h, _)| !h.is_finished());
                live.push((task.abort_handle(), Arc::downgrade(&client)));
                live.push((task.abort_handle(), Arc::downgrade(&upstream)));
            }
        });
        CutProxy { port, state }
    }

    /// Goes dark for `blackout` (bytes in flight are lost), then resets
    /// every live connection on both sides. Returns how many client
    /// connections were cut.
    pub async fn cut(&self, blackout: Duration) -> usize {
        self.state.dark.store(true, Ordering::SeqCst);
        tokio::time::sleep(blackout).await;
        let live: Vec<_> = {
            let mut live = self.state.live.lock().unwrap_or_else(|p| p.into_inner());
            live.drain(..).filter(|(h, _)| !h.is_finished()).collect()
        };
        for (h, sock) in &live {
            if let Some(sock) = sock.upgrade() {
                let _ = sock.set_zero_linger();
            }
            h.abort();
        }
        self.state.dark.store(false, Ordering::SeqCst);
        live.len() / 2
    }
}

/// Copies bytes from `from` to `to` until either side ends; bytes read
/// while `lose` is set are dropped, as a network loses what is in flight.
pub async fn pipe(from: Arc<TcpStream>, to: Arc<TcpStream>, lose: &AtomicBool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        if lose.load(Ordering::SeqCst) {
            continue; // lost in flight
        }
        let mut done = 0;
        while done < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[done..n]) {
                Ok(w) => done += w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    }
}
