//! The cutting proxy: one per session, on 127.0.0.1, forwarding to the
//! URL's host and port (TLS passes through untouched). It can make a
//! connection lose every byte in flight (both ways, without a reset, as a
//! dead network path does) and reset connections on both sides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tether_testkit::pipe;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// One forwarded connection.
struct Conn {
    task: AbortHandle,
    sockets: [Weak<TcpStream>; 2],
    dark: Arc<AtomicBool>,
}

/// A session's proxy.
pub struct CutProxy {
    /// The loopback port the session connects to.
    pub port: u16,
    live: Arc<Mutex<Vec<Conn>>>,
    task: AbortHandle,
}

/// Connections made dark by [`CutProxy::darken`], to reset later.
pub struct Darkened(Vec<Conn>);

impl CutProxy {
    /// Listens on 127.0.0.1 and forwards each connection to `host:port`.
    pub async fn start(host: String, port: u16) -> std::io::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?.port();
        let live: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let conns = live.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let host = host.clone();
                let conns = conns.clone();
                // The dial runs on its own so one slow connect does not hold
                // the next accept.
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect((host.as_str(), port)).await else { return };
                    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
                    let dark = Arc::new(AtomicBool::new(false));
                    let (c, u, d1, d2) = (client.clone(), upstream.clone(), dark.clone(), dark.clone());
                    let task = tokio::spawn(async move {
                        // Either direction ending ends both.
                        tokio::select! {
                            _ = pipe(c.clone(), u.clone(), &d1) => {}
                            _ = pipe(u, c, &d2) => {}
                        }
                    });
                    let mut live = conns.lock().unwrap_or_else(|p| p.into_inner());
                    live.retain(|c| !c.task.is_finished());
                    live.push(Conn {
                        task: task.abort_handle(),
                        sockets: [Arc::downgrade(&client), Arc::downgrade(&upstream)],
                        dark,
                    });
                });
            }
        });
        Ok(CutProxy { port: local, live, task: task.abort_handle() })
    }

    fn take(&self) -> Vec<Conn> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.drain(..).filter(|c| !c.task.is_finished()).collect()
    }

    /// Every live connection loses what it carries from now on, both ways;
    /// new connections are not affected.
    pub fn darken(&self) -> Darkened {
        let conns = self.take();
        for c in &conns {
            c.dark.store(true, Ordering::SeqCst);
        }
        Darkened(conns)
    }

    /// Resets every live connection on both sides now.
    pub fn reset(&self) -> usize {
        Darkened(self.take()).reset()
    }
}

impl Darkened {
    /// Resets these connections on both sides (RST, as a middlebox that
    /// lost their state does); returns how many there were.
    pub fn reset(self) -> usize {
        for c in &self.0 {
            for s in &c.sockets {
                if let Some(s) = s.upgrade() {
                    let _ = s.set_zero_linger();
                }
            }
            c.task.abort();
        }
        self.0.len()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset();
    }
}
