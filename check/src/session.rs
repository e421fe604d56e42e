//! One session slot: open a session, read it, break its connection in turn
//! with each fault, resume (by header, by query, sometimes from an older
//! offset), and at the end replay it from the start and close it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::checks::{Check, Counts};
use crate::connect::{self, end_acked, Failed, Opened, Via};
use crate::frames::{classify, Frame};
use crate::judge::{Event, Judge, Start};
use crate::opts::Fault;
use crate::proxy::CutProxy;
use crate::upstream::Up;
use crate::wire::Ws;
use crate::Ctx;

/// What a slot hands back.
pub struct SlotResult {
    /// Its verdicts and counts.
    pub judge: Judge,
    /// Time from each fault to the resumed connection's welcome.
    pub latencies: Vec<Duration>,
    /// Why no session could be opened at all, if so.
    pub unreachable: Option<String>,
    /// Takeovers whose older connection ended without any close frame, and
    /// when: judged once the run is over (lib.rs), against disturbances.
    pub takeovers: Vec<(Instant, String)>,
}

/// Why reading a connection stopped.
#[derive(Debug)]
enum Stop {
    /// The time to inject the next fault came.
    Timer,
    /// The connection ended; the cause, for the counts.
    Ended(String),
    /// The backend ended the session.
    SessionEnded,
}

/// Bound on reading what a dying connection still delivers.
const DRAIN: Duration = Duration::from_secs(5);

struct Slot {
    ctx: Arc<Ctx>,
    proxy: CutProxy,
    judge: Judge,
    up: Up,
    rng: u64,
    faults: usize,
    resumes: usize,
    latencies: Vec<Duration>,
    synced: (u64, u64, u64),
    takeovers: Vec<(Instant, String)>,
    retries: u64,
}

/// Runs slot `slot` until the fault phase is over, then verifies it.
pub async fn run(ctx: Arc<Ctx>, slot: usize, seed: u64) -> SlotResult {
    let mut judge = Judge::new(slot);
    let proxy = match CutProxy::start(ctx.target.host.clone(), ctx.target.port).await {
        Ok(p) => p,
        Err(e) => {
            let unreachable = Some(format!("local proxy: {e}"));
            return SlotResult { judge, latencies: Vec::new(), unreachable, takeovers: Vec::new() };
        }
    };
    judge.counts.sessions = 0;
    let mut s = Slot {
        ctx,
        proxy,
        judge,
        up: Up::new(),
        rng: seed ^ (slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        faults: slot,
        resumes: slot,
        latencies: Vec::new(),
        synced: (0, 0, 0),
        takeovers: Vec::new(),
        retries: 0,
    };
    let unreachable = s.main().await.err();
    s.sync();
    SlotResult { judge: s.judge, latencies: s.latencies, unreachable, takeovers: s.takeovers }
}

impl Slot {
    async fn main(&mut self) -> Result<(), String> {
        let mut ws = match self.new_session().await {
            Ok(ws) => ws,
            Err(Failed::Refused(r)) => return Err(format!("a new session was refused: {r}")),
            Err(e) => return Err(e.to_string()),
        };
        connect::probes(&self.ctx, self.proxy.port, &mut self.judge).await;
        while Instant::now() < self.ctx.fault_until {
            let wait = self.interval();
            let stop = self.read(&mut ws, Instant::now() + wait).await;
            let next = match stop {
                Stop::Timer => self.fault(ws).await,
                Stop::Ended(cause) => {
                    self.ctx.disturbed();
                    self.judge.conn_over();
                    Counts::bump(&mut self.judge.counts.interruptions, cause);
                    self.resume(Instant::now(), None).await
                }
                Stop::SessionEnded => {
                    self.judge.conn_over();
                    self.judge.forget();
                    self.up = Up::new();
                    self.new_session().await.map_err(|e| self.lost(e)).ok()
                }
            };
            ws = match next {
                Some(ws) => ws,
                None => match self.new_session().await {
                    Ok(ws) => ws,
                    Err(e) => {
                        self.judge
                            .checks
                            .fail(Check::Resume, format!("session {}: no new session: {e}", self.judge.slot));
                        return Ok(());
                    }
                },
            };
            self.sync();
        }
        self.verify(ws).await;
        Ok(())
    }

    fn lost(&mut self, e: Failed) {
        self.judge.checks.fail(Check::Resume, format!("session {}: {e}", self.judge.slot));
    }

    /// A uniformly drawn wait between half and 1.5 times the fault interval.
    fn interval(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mean = self.ctx.opts.fault_interval.as_millis() as u64;
        Duration::from_millis(mean / 2 + self.rng % mean.max(1))
    }

    /// Notes a disturbance if opening a connection needed retries.
    fn note_retries(&mut self) {
        let retries: u64 = self.judge.counts.retries.values().sum();
        if retries > self.retries {
            self.retries = retries;
            self.ctx.disturbed();
        }
    }

    fn sync(&mut self) {
        let p = &self.ctx.progress;
        let now = (self.judge.counts.frames, self.judge.counts.connections, self.judge.checks.failures());
        p.frames.fetch_add(now.0 - self.synced.0, Ordering::Relaxed);
        p.connections.fetch_add(now.1 - self.synced.1, Ordering::Relaxed);
        p.failures.fetch_add(now.2 - self.synced.2, Ordering::Relaxed);
        self.synced = now;
    }

    async fn new_session(&mut self) -> Result<Box<Ws>, Failed> {
        let opened = connect::open(&self.ctx, self.proxy.port, &mut self.judge, Start::New, Via::Header).await?;
        self.judge.counts.sessions += 1;
        self.up = Up::new();
        self.opened(opened).await
    }

    /// After a welcome: the upstream bookkeeping, and the messages to send again.
    async fn opened(&mut self, o: Opened) -> Result<Box<Ws>, Failed> {
        let mut ws = o.ws;
        if o.welcome.new_session && o.welcome.outcome == "gap" {
            self.up.report_rest(&mut self.judge.counts);
            self.up = Up::new();
        }
        if self.ctx.opts.send {
            let again = self.up.welcome(o.welcome.up.as_ref(), &mut self.judge.checks, &mut self.judge.counts);
            for m in again {
                if ws.feed(Message::text(m)).await.is_err() {
                    break;
                }
            }
            let _ = ws.flush().await;
        }
        Ok(ws)
    }

    /// Resumes the session after an interruption that began at `since`;
    /// `rewind`: from this older offset. Counts the latency.
    async fn resume(&mut self, since: Instant, rewind: Option<u64>) -> Option<Box<Ws>> {
        // Shifted every three resumes, so that rewinds (every third) use
        // each way in turn.
        let via = [Via::Header, Via::Query, Via::Protocol][(self.resumes + self.resumes / 3) % 3];
        self.resumes += 1;
        let offset = rewind.unwrap_or_else(|| self.judge.offset());
        let opened = connect::open(&self.ctx, self.proxy.port, &mut self.judge, Start::Resume(offset), via).await;
        self.note_retries();
        match opened {
            Ok(o) => {
                self.latencies.push(since.elapsed());
                self.judge.checks.pass(Check::Resume);
                let key = match via {
                    Via::Header => "header",
                    Via::Query => "query",
                    Via::Protocol => "protocol",
                };
                Counts::bump(&mut self.judge.counts.resumes, key);
                if rewind.is_some() {
                    Counts::bump(&mut self.judge.counts.resumes, "rewind");
                }
                self.ctx.progress.resumes.fetch_add(1, Ordering::Relaxed);
                self.opened(o).await.ok()
            }
            Err(e) => {
                self.lost(e);
                self.judge.forget();
                None
            }
        }
    }

    /// Every third resume starts from an older offset, to compare replays.
    fn rewind(&mut self) -> Option<u64> {
        let offset = self.judge.offset();
        (self.resumes % 3 == 2 && offset > 0).then(|| offset.saturating_sub(1 + self.rng % 16))
    }

    /// Reads `ws` until `until`, sending with --send.
    async fn read(&mut self, ws: &mut Ws, until: Instant) -> Stop {
        let mut send = tokio::time::interval(self.ctx.opts.send_interval);
        send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => return Stop::Timer,
                _ = send.tick(), if self.ctx.opts.send => {
                    let m = self.up.send(self.judge.slot, &mut self.judge.counts);
                    if let Err(e) = ws.send(Message::text(m)).await {
                        return Stop::Ended(format!("send failed: {}", short(&e.to_string())));
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(m)) => if let Some(stop) = self.message(&m) { return stop },
                    Some(Err(_)) => return Stop::Ended("connection failed".into()),
                    None => return Stop::Ended("connection ended without a close".into()),
                },
            }
        }
    }

    /// Judges one message; `Some` if the connection is over.
    fn message(&mut self, m: &Message) -> Option<Stop> {
        match classify(m, &self.ctx.opts.seq_field) {
            Frame::Data { seq, hash } => self.judge.data(seq, hash),
            Frame::Control(v) => match self.judge.control(&v) {
                Event::UpAck(w) => self.up.ack(w, &mut self.judge.checks, &mut self.judge.counts),
                Event::End => {
                    self.up.ended(end_acked(&v), &mut self.judge.checks, &mut self.judge.counts);
                    return Some(Stop::SessionEnded);
                }
                Event::Draining | Event::None => {}
            },
            Frame::Close(code) => {
                self.judge.server_closed(code);
                return Some(Stop::Ended(format!(
                    "closed {}",
                    code.map_or("without a code".into(), |c| c.to_string())
                )));
            }
            Frame::Keepalive => {}
            Frame::Malformed(why) => {
                self.judge.checks.fail(Check::Frames, format!("session {}: {why}", self.judge.slot))
            }
        }
        None
    }

    /// Reads what a connection still delivers until it ends (bounded).
    async fn drain(&mut self, ws: &mut Ws) -> bool {
        let until = Instant::now() + DRAIN;
        loop {
            match tokio::time::timeout_at(until.into(), ws.next()).await {
                Ok(Some(Ok(m))) => match self.message(&m) {
                    Some(Stop::SessionEnded) => return true,
                    Some(_) => return false,
                    None => {}
                },
                Ok(Some(Err(_)) | None) | Err(_) => return false,
            }
        }
    }

    /// Injects the next fault into `ws`'s connection and resumes.
    async fn fault(&mut self, mut ws: Box<Ws>) -> Option<Box<Ws>> {
        let faults = &self.ctx.opts.faults;
        let fault = faults[self.faults % faults.len()];
        self.faults += 1;
        Counts::bump(&mut self.judge.counts.faults, fault.name());
        let rewind = self.rewind();
        let ended = match fault {
            Fault::Reset => {
                self.proxy.reset();
                self.drain(&mut ws).await
            }
            Fault::Blackout => {
                let dark = self.proxy.darken();
                tokio::time::sleep(self.ctx.opts.blackout).await;
                dark.reset();
                self.drain(&mut ws).await
            }
            Fault::Close1001 => {
                let bye = CloseFrame { code: CloseCode::Away, reason: "tether check".into() };
                let _ = ws.send(Message::Close(Some(bye))).await;
                self.drain(&mut ws).await
            }
            Fault::Idle => {
                let dark = self.proxy.darken();
                tokio::time::sleep(self.ctx.opts.idle).await;
                self.judge.conn_over();
                let since = Instant::now();
                let next = self.resume(since, rewind).await;
                dark.reset();
                return next;
            }
            Fault::Takeover => return self.takeover(ws, rewind).await,
        };
        self.judge.conn_over();
        if ended {
            self.judge.forget();
            return None;
        }
        self.resume(Instant::now(), rewind).await
    }

    /// Resumes on a new connection while `old` is attached: `old` must then
    /// be closed with 4001; what it still delivers is only compared.
    async fn takeover(&mut self, mut old: Box<Ws>, rewind: Option<u64>) -> Option<Box<Ws>> {
        self.judge.conn_over();
        let next = self.resume(Instant::now(), rewind).await;
        next.as_ref()?;
        let until = Instant::now() + DRAIN;
        let code = loop {
            match tokio::time::timeout_at(until.into(), old.next()).await {
                Ok(Some(Ok(m))) => match classify(&m, &self.ctx.opts.seq_field) {
                    Frame::Data { seq, hash } => self.judge.superseded(seq, hash),
                    Frame::Close(code) => break code.map_or("a close without a code".to_owned(), |c| c.to_string()),
                    _ => {}
                },
                Ok(Some(Err(_)) | None) => break "no close frame".to_owned(),
                Err(_) => break format!("still open after {DRAIN:?}"),
            }
        };
        let why = format!("session {}: a takeover closed the older connection with {code}, not 4001", self.judge.slot);
        if code == "no close frame" || code == "1012" {
            // Through a balancer, the older connection may cross a replica
            // that is restarting (cut, or closed with 1012 by its drain
            // before the takeover reached it): judged at the end against
            // disturbances.
            self.takeovers.push((Instant::now(), why));
        } else {
            self.judge.checks.expect(Check::Outcomes, code == "4001", || why);
        }
        next
    }

    /// End of the run: replay the session from the start (every frame is
    /// compared), wait for acks, then end the session with a 1000 close.
    async fn verify(&mut self, mut ws: Box<Ws>) {
        let bye = CloseFrame { code: CloseCode::Away, reason: "tether check: verifying".into() };
        let _ = ws.send(Message::Close(Some(bye))).await;
        let ended = self.drain(&mut ws).await;
        self.judge.conn_over();
        if ended {
            self.up.finish(self.judge.slot, &mut self.judge.checks);
            return;
        }
        let seen = self.judge.max_seen();
        let Some(mut ws) = self.resume(Instant::now(), Some(0)).await else { return };
        // Until everything seen before is replayed and, with --send, acked.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && (self.judge.offset() < seen || self.up.outstanding() > 0) {
            let stop = self.read_quiet(&mut ws, until).await;
            if let Some(stop) = stop {
                if !matches!(stop, Stop::Timer) {
                    self.judge.conn_over();
                    self.up.finish(self.judge.slot, &mut self.judge.checks);
                    return;
                }
            }
        }
        self.up.finish(self.judge.slot, &mut self.judge.checks);
        // While attached, so that a tether that accepted it would show a takeover too.
        connect::superseded(&self.ctx, self.proxy.port, &mut self.judge).await;
        let bye = CloseFrame { code: CloseCode::Normal, reason: "tether check done".into() };
        let _ = ws.send(Message::Close(Some(bye))).await;
        self.drain(&mut ws).await;
        self.judge.conn_over();
        if self.judge.offset() < seen {
            self.judge.checks.fail(
                Check::Replay,
                format!(
                    "session {}: the final replay from 0 stopped at {} of {seen}",
                    self.judge.slot,
                    self.judge.offset()
                ),
            );
        }
    }

    /// Reads one message (or times out at `until`) without sending.
    async fn read_quiet(&mut self, ws: &mut Ws, until: Instant) -> Option<Stop> {
        match tokio::time::timeout_at(until.into(), ws.next()).await {
            Ok(Some(Ok(m))) => self.message(&m),
            Ok(Some(Err(_)) | None) => Some(Stop::Ended("connection failed".into())),
            Err(_) => Some(Stop::Timer),
        }
    }
}

fn short(s: &str) -> &str {
    s.get(..60).unwrap_or(s)
}
