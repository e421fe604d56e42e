//! Client → backend: reading and writing the backend proceed independently.
//! A backend that writes its reply before it reads the next message gets
//! every pipelined message; a backend that stops reading cannot hold a
//! session past its linger, a drain, or `limits.max_sessions`; and a client
//! whose messages find no room is closed with 1013 (docs/PROTOCOL.md §10);
//! a client still sending when tether closes gets the close, not a reset.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// 1 MiB: the default `limits.max_message_bytes`.
const MIB: usize = 1 << 20;
/// Messages a client sends to a backend that never reads before the test
/// acts: 16 MiB, more than the path from tether to that backend holds
/// (tether's socket send buffer, at most `net.ipv4.tcp_wmem` = 4 MiB here,
/// plus the backend's receive window, which stays at its initial 64 KiB
/// because it never reads). tether reads the client eagerly, so once these
/// are sent its write to the backend is blocked for good.
const SENT: u64 = 16;

/// A WebSocket backend that answers each message by sending it back before
/// it reads the next one, as any echo or RPC loop does.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket backend that completes the handshake and then never reads:
/// each connection is handed to the test, which keeps it open.
async fn deaf_backend() -> (SocketAddr, mpsc::UnboundedReceiver<WebSocketStream<TcpStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = tx.send(ws);
            }
        }
    });
    (addr, rx)
}

/// Message `i` of a pipelined burst: its index, then filler up to `size`.
fn numbered(i: u64, size: usize) -> Vec<u8> {
    let mut m = i.to_be_bytes().to_vec();
    m.resize(size, b'.');
    m
}

/// A client task sending numbered 1 MiB messages as fast as tether takes
/// them, and how many it has sent.
struct Pipeline {
    task: tokio::task::JoinHandle<futures_util::stream::SplitSink<Ws, Message>>,
    sent: watch::Receiver<u64>,
}

/// Sends `n` numbered 1 MiB messages on `sink`.
fn pipeline(mut sink: futures_util::stream::SplitSink<Ws, Message>, n: u64) -> Pipeline {
    let (tx, sent) = watch::channel(0);
    let task = tokio::spawn(async move {
        for i in 0..n {
            if sink.send(Message::binary(numbered(i, MIB))).await.is_err() {
                break;
            }
            tx.send_replace(i + 1);
        }
        sink
    });
    Pipeline { task, sent }
}

/// The close frame on a client's read half, past any data before it.
async fn close_frame(
    stream: &mut futures_util::stream::SplitStream<Ws>,
) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    within("the close frame", async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("no close frame before: {other:?}"),
            }
        }
    })
    .await
}

impl Pipeline {
    /// Waits until `n` messages have been sent.
    async fn sent(&mut self, n: u64) {
        within("the client's messages to be sent", self.sent.wait_for(|s| *s >= n)).await.unwrap();
    }
}

#[tokio::test]
async fn pipelined_megabyte_echoes_all_arrive_in_order() {
    let addr = echo_backend().await;
    let t = Tether::start_with(&Backend::start().await, |c| {
        c.server.upstream = format!("ws://{addr}");
        // Retention trims whole segments of 64 frames for bytes; 64 MiB of
        // 1 MiB frames would trim what this client is about to read.
        c.journal.max_session_bytes = 1 << 30;
    })
    .await;
    let mut ws = open(&t.url("/"), &[]).await;
    welcome(&mut ws).await;
    let (sink, mut stream) = ws.split();
    let sender = pipeline(sink, 200);
    within("200 echoes", async {
        let mut seq = 0u64;
        while seq < 200 {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => {
                    seq += 1;
                    assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), seq, "stamp");
                    assert_eq!(b.len(), 8 + MIB);
                    assert_eq!(&b[8..], numbered(seq - 1, MIB).as_slice(), "echo {seq} in order");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("after {seq} echoes: {other:?}"),
            }
        }
    })
    .await;
    drop(within("the sender", sender.task).await.unwrap());
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_frames_total{direction="upstream"}"#), 200.0);
    assert_eq!(metric(&m, r#"tether_frames_total{direction="downstream"}"#), 200.0);
    t.stop().await;
}

#[tokio::test]
async fn linger_expires_while_a_write_to_the_backend_is_blocked() {
    let (addr, mut conns) = deaf_backend().await;
    let t = Tether::start_with(&Backend::start().await, |c| {
        c.server.upstream = format!("ws://{addr}");
        c.limits.max_sessions = 1;
        c.session.linger = Duration::from_millis(200);
    })
    .await;
    let mut ws = open(&t.url("/"), &[]).await;
    welcome(&mut ws).await;
    let deaf = within("the backend connection", conns.recv()).await.unwrap();
    let (sink, stream) = ws.split();
    let mut sender = pipeline(sink, 200);
    sender.sent(SENT).await;

    // The client goes away; the backend still reads nothing.
    sender.task.abort();
    drop(stream);
    let m = wait_metric(t.admin_addr, r#"tether_sessions{state="orphaned"}"#, 1.0).await;
    assert_eq!(metric(&m, r#"tether_sessions{state="detached"}"#), 0.0);
    wait_metric(t.admin_addr, "tether_backend_connections", 0.0).await;

    // The slot is free: a new session gets one.
    let mut ws = open(&t.url("/"), &[]).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="over_capacity",status="503"}"#), 0.0);
    assert_eq!(metric(&m, "tether_backend_connections"), 1.0);
    drop(deaf);
    t.stop().await;
}

#[tokio::test]
async fn sigterm_drains_while_a_write_to_the_backend_is_blocked() {
    let (addr, mut conns) = deaf_backend().await;
    let dir = tempfile::tempdir().unwrap();
    // A grace far longer than any wait of this test: the drain must not need it.
    let env = [("TETHER_SERVER_SHUTDOWN_GRACE", "600s")];
    let p = TetherProcess::start(&format!("ws://{addr}"), dir.path(), &env).await;
    let mut ws = open(&p.url("/"), &[]).await;
    welcome(&mut ws).await;
    let deaf = within("the backend connection", conns.recv()).await.unwrap();
    let (sink, mut stream) = ws.split();
    let mut sender = pipeline(sink, 200);
    sender.sent(SENT).await;

    let logs = p.logs.clone();
    let status = p.signal("-TERM").await;
    assert!(status.success(), "{status:?}");
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("drained; journal synced and closed"), "{logs}");
    assert!(!logs.contains("grace period expired"), "{logs}");
    // The client was told to resume: draining, then 1012.
    let mut saw = Vec::new();
    within("the client's close", async {
        while let Some(Ok(m)) = stream.next().await {
            saw.push(m);
        }
    })
    .await;
    assert!(saw.iter().any(|m| m.to_text().is_ok_and(|t| t == r##"#{"type":"draining"}"##)), "{saw:?}");
    assert!(saw.iter().any(|m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == 1012)), "{saw:?}");
    sender.task.abort();
    drop(deaf);
}

#[tokio::test]
async fn client_whose_messages_find_no_room_is_closed_with_1013() {
    let (addr, mut conns) = deaf_backend().await;
    let t = Tether::start_with(&Backend::start().await, |c| {
        c.server.upstream = format!("ws://{addr}");
        c.session.upstream_stall_timeout = Duration::from_millis(300);
    })
    .await;
    let mut ws = open(&t.url("/"), &[]).await;
    let (_, token) = welcome(&mut ws).await;
    let deaf = within("the backend connection", conns.recv()).await.unwrap();
    let (sink, mut stream) = ws.split();
    let sender = pipeline(sink, 200);

    let close = close_frame(&mut stream).await.expect("a close code");
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
    let m = wait_metric(t.admin_addr, r#"tether_client_disconnects_total{kind="upstream_stalled"}"#, 1.0).await;
    assert_eq!(metric(&m, r#"tether_sessions{state="detached"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_sessions{state="attached"}"#), 0.0);
    sender.task.abort();

    // Detached, not ended: the session resumes on the same backend connection.
    let mut ws = resume(&t.url("/"), &token, 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    drop(deaf);
    t.stop().await;
}

#[tokio::test]
async fn a_client_busy_sending_gets_the_close_code_not_a_reset() {
    // The backend never reads, so tether stops reading the client too: when
    // tether closes, the client's bytes are waiting unread in its socket.
    let (addr, mut conns) = deaf_backend().await;
    let t = Tether::start_with(&Backend::start().await, |c| c.server.upstream = format!("ws://{addr}")).await;
    let mut ws = open(&t.url("/"), &[]).await;
    let (_, token) = welcome(&mut ws).await;
    let deaf = within("the backend connection", conns.recv()).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = closed.clone();
    let (progress, mut sent_so_far) = watch::channel(0u64);
    // Sends until it learns of tether's close, as any client busy sending
    // does; then replies to the close.
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            match sink.send(Message::binary(numbered(sent, MIB))).await {
                Ok(()) => {
                    sent += 1;
                    progress.send_replace(sent);
                }
                Err(tokio_tungstenite::tungstenite::Error::Protocol(_)) => break, // the close was read meanwhile
                Err(e) => return Err(format!("send {sent}: {e}")),
            }
        }
        match sink.close().await {
            Ok(()) | Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => Ok(sent),
            Err(e) => Err(format!("close reply: {e}")),
        }
    });
    // More than the path to the backend holds: tether's reader waits for
    // room, and the client's next bytes stay unread in tether's socket.
    within("the client's sends to back up", sent_so_far.wait_for(|s| *s >= SENT)).await.unwrap();
    // A takeover: tether closes the first connection with 4001.
    let mut other = resume(&t.url("/"), &token, 0).await;
    welcome(&mut other).await;

    let close = close_frame(&mut stream).await;
    closed.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4001));
    let sent = within("the sender", sender).await.unwrap().unwrap_or_else(|e| panic!("a reset: {e}"));
    // tether read what the client still sent, then closed TCP after the
    // closing handshake: an end, not "connection reset".
    match within("the end", stream.next()).await {
        None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => {}
        other => panic!("expected the end of the stream, got {other:?} ({sent} messages sent)"),
    }
    drop(deaf);
    t.stop().await;
}
