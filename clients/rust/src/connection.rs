//! The connection task behind every [`Client`](crate::Client): connect,
//! read the welcome, pass data and control frames on to the stream, write
//! upstream messages, reconnect with backoff (and jitter), give a session up,
//! close.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::builder::request;
use crate::frame::{self, Frame};
use crate::shared::{Item, Shared};
use crate::upstream::UpShared;
use crate::{Builder, Error, Event, Message, Outcome, Payload, ResetInfo, ResetReason, StampMode, State};

/// A small PRNG for the jitter (xorshift64*, seeded per client).
struct Jitter(u64);
impl Jitter {
    fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        Jitter(h.finish() | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Why a connection stopped.
enum Exit {
    /// Reconnect (`welcomed`: the connection got as far as the welcome).
    Retry { error: String, welcomed: bool },
    /// The client is done.
    Stop,
}

/// Upstream messages written per turn of the connection loop, between reads.
const UP_BATCH: usize = 64;

/// What a turn of the connection loop does.
enum Turn {
    /// Write upstream messages.
    Up,
    /// Handle what tether sent.
    Read(Option<Result<tungstenite::Message, tungstenite::Error>>),
}

/// Completes when there may be upstream messages to write.
async fn up_work(up: Option<&UpShared>) {
    match up {
        Some(up) => up.work.notified().await,
        None => std::future::pending().await,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The connection task: connects, resumes and reconnects with backoff until
/// the client is done.
pub(crate) async fn run(cfg: Builder, shared: Arc<Shared>, tx: mpsc::Sender<Item>, mut out: mpsc::Receiver<Payload>) {
    let mut jitter = Jitter::new();
    let mut attempt = 0u32;
    let mut failed_resumes = 0u32;
    loop {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        shared.set_state(State::Connecting);
        let resume = {
            let c = shared.cursor();
            c.token.clone().map(|t| (t, c.offset))
        };
        let req = match request(&cfg, resume.as_ref().map(|(t, o)| (t.as_str(), *o))) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Item::Fatal(e)).await;
                return;
            }
        };
        let connect = tokio::time::timeout(cfg.connect_timeout, tokio_tungstenite::connect_async(req));
        let result = tokio::select! {
            r = connect => r,
            _ = shared.notify.notified() => return,
        };
        let (error, refused, welcomed) = match result {
            Ok(Ok((mut ws, _))) => {
                let exit = connection(&cfg, &shared, &tx, &mut out, &mut ws).await;
                if let Some(up) = &shared.up {
                    up.buf().disconnected();
                }
                match exit {
                    Exit::Stop => return,
                    Exit::Retry { error, welcomed } => (error, None, welcomed),
                }
            }
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                (format!("refused: {status} {body}"), Some(status), false)
            }
            Ok(Err(e)) => (e.to_string(), None, false),
            Err(_) => ("connect timed out".to_owned(), None, false),
        };
        if welcomed {
            attempt = 0;
            failed_resumes = 0;
        } else if resume.is_some() {
            // A resume that never got its welcome failed. A refusal that no
            // retry can change gives the session up at once.
            failed_resumes += 1;
            let definitive = matches!(refused, Some(400 | 401 | 409));
            if definitive || failed_resumes >= cfg.max_failed_resumes {
                let reset = {
                    let mut c = shared.cursor();
                    let info = ResetInfo {
                        reason: match refused {
                            Some(status) if definitive => ResetReason::Refused(status),
                            _ => ResetReason::FailedResumes,
                        },
                        failed_attempts: failed_resumes,
                        last_offset: c.offset,
                    };
                    c.token = None;
                    c.offset = 0;
                    c.last = 0;
                    c.epoch += 1;
                    Item::Event(c.epoch, Event::Reset(info))
                };
                failed_resumes = 0;
                if tx.send(reset).await.is_err() {
                    return;
                }
            }
        }
        let retry_in = cfg.backoff.delay(attempt, jitter.next());
        attempt = attempt.saturating_add(1);
        shared.set_state(State::Reconnecting);
        let epoch = shared.cursor().epoch;
        if tx.send(Item::Event(epoch, Event::Disconnected { error, retry_in })).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = shared.notify.notified() => return,
        }
    }
}

/// One connection, from the upgrade to its end.
async fn connection(
    cfg: &Builder,
    shared: &Shared,
    tx: &mpsc::Sender<Item>,
    out: &mut mpsc::Receiver<Payload>,
    ws: &mut Ws,
) -> Exit {
    let mut welcomed = false;
    let mut replay_to = 0u64;
    let mut ended = false;
    let up = shared.up.as_deref();
    // Upstream writes and reads take turns first, so neither starves the other.
    let mut up_first = false;
    loop {
        // Upstream messages go out only after this connection's welcome.
        let up_ready = welcomed && !ended && up.is_some();
        up_first = !up_first;
        let turn = tokio::select! {
            biased;
            _ = shared.notify.notified() => return close(shared, ws).await,
            _ = up_work(up), if up_ready && up_first => Turn::Up,
            p = out.recv(), if welcomed => {
                let m = match p {
                    Some(Payload::Text(t)) => tungstenite::Message::text(t),
                    Some(Payload::Binary(b)) => tungstenite::Message::binary(b),
                    None => return Exit::Stop,
                };
                if let Err(e) = ws.send(m).await {
                    return Exit::Retry { error: e.to_string(), welcomed };
                }
                continue;
            }
            m = ws.next() => Turn::Read(m),
            _ = up_work(up), if up_ready && !up_first => Turn::Up,
        };
        let msg = match turn {
            Turn::Read(m) => m,
            Turn::Up => {
                let up = up.expect("upstream");
                let batch = up.buf().take(UP_BATCH);
                let more = batch.len() == UP_BATCH;
                for m in batch {
                    if let Err(e) = ws.feed(m).await {
                        return Exit::Retry { error: e.to_string(), welcomed };
                    }
                }
                if let Err(e) = ws.flush().await {
                    return Exit::Retry { error: e.to_string(), welcomed };
                }
                if more {
                    up.work.notify_one(); // the rest at the next turn
                }
                continue;
            }
        };
        let frame = match msg {
            Some(Ok(tungstenite::Message::Text(t))) => frame::parse_text(&t, cfg.stamp_mode, &cfg.json_field),
            Some(Ok(tungstenite::Message::Binary(b))) => frame::parse_binary(b),
            Some(Ok(tungstenite::Message::Close(f))) => {
                let code = f.as_ref().map(|f| u16::from(f.code));
                if ended {
                    shared.set_state(State::Ended);
                    return Exit::Stop;
                }
                if code == Some(4001) {
                    shared.set_state(State::TakenOver);
                    let epoch = shared.cursor().epoch;
                    let _ = tx.send(Item::Event(epoch, Event::TakenOver)).await;
                    return Exit::Stop;
                }
                if let (Some(up), Some(code @ (4003 | 4004))) = (up, code) {
                    up.buf().rejected();
                    let epoch = shared.cursor().epoch;
                    let reason = f.as_ref().map(|f| f.reason.to_string()).unwrap_or_default();
                    if tx.send(Item::Event(epoch, Event::UpstreamRejected { code, reason })).await.is_err() {
                        return Exit::Stop;
                    }
                }
                let why = f.map(|f| format!("closed {} {}", f.code, f.reason)).unwrap_or_else(|| "closed".into());
                return Exit::Retry { error: why, welcomed };
            }
            Some(Ok(_)) => continue, // ping, pong: tungstenite answers pings
            Some(Err(e)) if !ended => return Exit::Retry { error: e.to_string(), welcomed },
            None if !ended => return Exit::Retry { error: "connection lost".into(), welcomed },
            Some(Err(_)) | None => {
                shared.set_state(State::Ended);
                return Exit::Stop;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // A wrong stamp mode would misread every frame: stop rather than guess.
                shared.set_state(State::Closed);
                let _ = tx.send(Item::Fatal(Error::Protocol(e))).await;
                let _ = ws
                    .close(Some(CloseFrame { code: CloseCode::Library(4000), reason: "client protocol error".into() }))
                    .await;
                return Exit::Stop;
            }
        };
        let epoch = shared.cursor().epoch;
        let item = match frame {
            Frame::Data { seq, payload } => {
                shared.received.fetch_add(1, Ordering::Relaxed);
                Item::Message(epoch, Message { seq, payload, replay: seq <= replay_to })
            }
            Frame::Welcome(w, up_welcome) => {
                welcomed = true;
                replay_to = w.replay.map_or(0, |r| r.to);
                let new_session = w.gap.as_ref().is_some_and(|g| g.new_session);
                let epoch = {
                    let mut c = shared.cursor();
                    c.token = Some(w.session.clone());
                    if new_session {
                        c.epoch += 1;
                        c.offset = 0;
                        c.last = 0;
                    }
                    c.epoch
                };
                let in_doubt = match (up, up_welcome) {
                    (None, _) => Vec::new(),
                    // A new session (after a reset) or a gap's: seqs restart.
                    (Some(up), Some(u)) => up.update(|b| b.welcome(new_session || w.outcome == Outcome::New, u)),
                    (Some(_), None) => {
                        // Stamped messages would reach the backend stamped.
                        shared.set_state(State::Closed);
                        let e = "tether accepted no upstream guarantee (no `up` in the welcome): is it older than \
                                 this client?";
                        let _ = tx.send(Item::Fatal(Error::Protocol(e.into()))).await;
                        let _ = ws.close(Some(CloseFrame { code: CloseCode::Library(4000), reason: "".into() })).await;
                        return Exit::Stop;
                    }
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                shared.set_state(State::Open);
                let gap = w.gap.clone();
                if tx.send(Item::Event(epoch, Event::Welcome(w))).await.is_err() {
                    return gone(shared, ws).await;
                }
                if let Some(g) = gap {
                    if tx.send(Item::Event(epoch, Event::Gap(g))).await.is_err() {
                        return gone(shared, ws).await;
                    }
                }
                if let Some(up) = up {
                    up.work.notify_one();
                }
                if in_doubt.is_empty() {
                    continue;
                }
                Item::Event(epoch, Event::InDoubt(in_doubt))
            }
            Frame::UpAck(seq) => {
                if let Some(up) = up {
                    up.update(|b| b.ack(seq));
                }
                continue;
            }
            Frame::Gap(g) => Item::Event(epoch, Event::Gap(g)),
            Frame::Draining => Item::Event(epoch, Event::Draining),
            Frame::End { code, reason, up_acked } => {
                ended = true;
                if let Some(up) = up {
                    up.update(|b| b.end(up_acked));
                }
                Item::Event(epoch, Event::End { code, reason })
            }
            Frame::Unknown => continue,
        };
        if tx.send(item).await.is_err() {
            return gone(shared, ws).await;
        }
    }
}

/// The application stopped reading: close() was called, or the client dropped.
async fn gone(shared: &Shared, ws: &mut Ws) -> Exit {
    if shared.closing.load(Ordering::SeqCst) {
        close(shared, ws).await
    } else {
        Exit::Stop
    }
}

/// Ends the session: close 1000, then wait (bounded) for tether's close.
async fn close(shared: &Shared, ws: &mut Ws) -> Exit {
    if !shared.closing.load(Ordering::SeqCst) {
        return Exit::Stop;
    }
    let reason = shared.close_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let frame = CloseFrame { code: CloseCode::Normal, reason: reason.into() };
    if ws.close(Some(frame)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                // Acks still count while tether answers the close.
                if let (Some(up), Ok(tungstenite::Message::Text(t))) = (&shared.up, m) {
                    if let Ok(Frame::UpAck(seq) | Frame::End { up_acked: Some(seq), .. }) =
                        frame::parse_text(&t, StampMode::Prefix, "")
                    {
                        up.update(|b| b.ack(seq));
                    }
                }
            }
        })
        .await;
    }
    Exit::Stop
}
