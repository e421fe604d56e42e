//! Where a trial's client connections run: on the harness's shared 2-worker
//! runtime (saturation: the clients need both CPUs' worth of reading), or,
//! for paced trials, on a current-thread runtime of their own. At 1,000
//! connections × 20 msg/s every message arrives alone, and on the shared
//! runtime each one woke a parked worker and often the other one too
//! (`eventfd` writes in the profile); one thread that owns every client
//! socket takes each message with one `epoll` wake-up at most.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{self, Check, Tally, Watch, Ws};
use crate::stream::PARALLEL_CONNECTS;

/// What every client is told to do.
pub struct Start {
    /// The `go` message to send upstream.
    pub go: String,
    /// How to read the stream.
    pub check: Check,
    /// When to give up.
    pub deadline: Instant,
    /// Progress and cancellation, shared with the trial.
    pub watch: Watch,
}

/// Connected clients, not started yet.
pub enum Fleet {
    /// On the shared runtime.
    Shared(Vec<Ws>),
    /// On their own thread, waiting for the start.
    Own { start: oneshot::Sender<Start>, done: oneshot::Receiver<Vec<Tally>> },
}

/// Clients reading their streams.
pub enum Running {
    Shared(Vec<JoinHandle<Tally>>),
    Own(oneshot::Receiver<Vec<Tally>>, Option<Vec<Tally>>),
}

impl Fleet {
    /// Opens `n` connections to `url`, on a thread of their own if `own`.
    pub async fn connect(url: &str, n: usize, own: bool) -> anyhow::Result<Fleet> {
        if !own {
            return Ok(Fleet::Shared(client::connect_many(url, n, PARALLEL_CONNECTS, false).await?));
        }
        let (ready_tx, ready) = oneshot::channel::<anyhow::Result<()>>();
        let (start, start_rx) = oneshot::channel::<Start>();
        let (done_tx, done) = oneshot::channel();
        let url = url.to_owned();
        std::thread::Builder::new().name("clients".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let clients = match client::connect_many(&url, n, PARALLEL_CONNECTS, false).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let Ok(s) = start_rx.await else { return };
                let handles: Vec<_> = clients
                    .into_iter()
                    .map(|ws| tokio::spawn(client::run_stream(ws, s.go.clone(), s.check, s.deadline, s.watch.clone())))
                    .collect();
                let mut out = Vec::with_capacity(handles.len());
                for h in handles {
                    if let Ok(t) = h.await {
                        out.push(t);
                    }
                }
                let _ = done_tx.send(out);
            });
        })?;
        ready.await.map_err(|_| anyhow::anyhow!("the client thread ended"))??;
        Ok(Fleet::Own { start, done })
    }

    /// Every client sends `go` and reads.
    pub fn start(self, s: Start) -> Running {
        match self {
            Fleet::Shared(clients) => Running::Shared(
                clients
                    .into_iter()
                    .map(|ws| tokio::spawn(client::run_stream(ws, s.go.clone(), s.check, s.deadline, s.watch.clone())))
                    .collect(),
            ),
            Fleet::Own { start, done } => {
                let _ = start.send(s);
                Running::Own(done, None)
            }
        }
    }
}

impl Running {
    /// True once every client is done.
    pub fn is_finished(&mut self) -> bool {
        match self {
            Running::Shared(h) => h.iter().all(|h| h.is_finished()),
            Running::Own(rx, got) => {
                if got.is_none() {
                    *got = rx.try_recv().ok();
                }
                got.is_some()
            }
        }
    }

    /// Every client's tally.
    pub async fn finish(self) -> anyhow::Result<Vec<Tally>> {
        match self {
            Running::Shared(handles) => {
                let mut out = Vec::with_capacity(handles.len());
                for h in handles {
                    out.push(h.await?);
                }
                Ok(out)
            }
            Running::Own(_, Some(got)) => Ok(got),
            Running::Own(rx, None) => rx.await.map_err(|_| anyhow::anyhow!("the client thread ended")),
        }
    }
}
