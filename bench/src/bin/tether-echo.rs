//! `tether-echo ADDR`: an RFC 6455 echo server, the reference backend for
//! the Autobahn testsuite run (`scripts/autobahn`).
//!
//! Every text or binary message comes back as it arrived (same opcode, same
//! bytes, reassembled if it was fragmented). tungstenite answers pings and
//! echoes the client's close; a client that breaks the framing rules gets
//! close 1002, and one that sends invalid UTF-8 gets 1007 (RFC 6455 §7.1.7).
//! It prints `listening on ADDR` once bound, so a script can wait for it.

use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The largest message echoed: Autobahn's 9.* performance cases, which
/// `scripts/autobahn` leaves out, go up to 16 MiB; the rest stay under 1 MiB.
const MAX_MESSAGE: usize = 64 << 20;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: tether-echo ADDR (e.g. 127.0.0.1:9001)");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(&addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-echo: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts connections on `addr` forever, one task each.
async fn serve(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(echo(tcp));
    }
}

/// Echoes one connection until it closes or fails.
async fn echo(tcp: TcpStream) {
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else { return };
    let fail = loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            // Pings, pongs and the close reply are tungstenite's; keep
            // reading so it can flush them and see the close through.
            Some(Ok(_)) => {}
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) | None => return,
            Some(Err(WsError::Protocol(_))) => break CloseCode::Protocol,
            Some(Err(WsError::Utf8(_))) => break CloseCode::Invalid,
            Some(Err(WsError::Capacity(_))) => break CloseCode::Size,
            Some(Err(_)) => return,
        }
    };
    let _ = ws.close(Some(CloseFrame { code: fail, reason: "".into() })).await;
}
