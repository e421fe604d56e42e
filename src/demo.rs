//! `tether demo`: a built-in backend that ticks, tether in front of it, and
//! a scripted client that drops its connection and resumes, so a newcomer
//! sees a stream survive a disconnect with nothing lost. It also serves a page
//! (`page`) that shows the stream live in a browser, with a button that
//! breaks the connection. Part of the binary, not the library.

mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use tether::cli::{self, Cli};
use tether::config::Config;
use tether::server::{self, JournalError, StartError};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// tether did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The demo client's WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// tether answered something the demo did not expect.
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// The journal could not be synced on exit.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Demo defaults, unless the user chose otherwise (flags, `TETHER_…`
/// variables or `--config`): loopback ports 8080/9090, the journal in
/// [`default_data_dir`] so that a restarted demo resumes its sessions, and
/// logs at `warn` (or `RUST_LOG`) so that they do not drown the narration.
pub(crate) fn adjust_config(c: &mut Config, cli: &Cli) {
    let defaults = Config::default();
    if cli.listen.is_none() {
        c.server.listen = "127.0.0.1:8080".parse().expect("static address");
    }
    if cli.admin_listen.is_none() {
        c.server.admin_listen = "127.0.0.1:9090".parse().expect("static address");
    }
    let unset = |flag: bool, var: &str| !flag && std::env::var_os(var).is_none();
    if unset(cli.data_dir.is_some(), "TETHER_JOURNAL_DATA_DIR") && c.journal.data_dir == defaults.journal.data_dir {
        c.journal.data_dir = default_data_dir();
    }
    if unset(cli.log_level.is_some(), "TETHER_LOG_LEVEL") && c.log.level == defaults.log.level {
        c.log.level = std::env::var("RUST_LOG").ok().filter(|l| !l.is_empty()).unwrap_or_else(|| "warn".into());
    }
}

/// Where the demo keeps its journal across runs: `$XDG_STATE_HOME/tether-demo`,
/// else `~/.local/state/tether-demo` (the XDG default), else the temp dir's.
pub(crate) fn default_data_dir() -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| std::env::var_os("HOME").and_then(absolute).map(|h| h.join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("tether-demo")
}

/// The demo backend: every connection gets `tick <n>` every `period` and an
/// `echo: <text>` for each text message it sends. Counts connections.
async fn backend(listener: TcpListener, period: Duration, connections: Arc<AtomicU64>, shutdown: CancellationToken) {
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok((tcp, _)) => tcp, Err(_) => continue },
        };
        let connections = connections.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
            connections.fetch_add(1, Ordering::Relaxed);
            let mut tick = tokio::time::interval(period);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        n += 1;
                        if ws.send(Message::text(format!("tick {n}"))).await.is_err() { return; }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if ws.send(Message::text(format!("echo: {t}"))).await.is_err() { return; }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
    }
}

/// Runs the demo until Ctrl-C (or SIGTERM). The page listens on `page_listen`
/// (default 127.0.0.1:8081).
pub(crate) async fn run(mut config: Config, page_listen: Option<SocketAddr>) -> Result<(), DemoError> {
    let stop = cli::shutdown_signal()?;
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    config.server.upstream = format!("ws://{}", listener.local_addr()?);
    let connections = Arc::new(AtomicU64::new(0));
    tokio::spawn(backend(listener, Duration::from_millis(500), connections.clone(), shutdown.clone()));
    let data_dir = config.journal.data_dir.clone();
    let earlier = std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some());
    let running = server::start(config).await?;
    let url = format!("ws://{}/demo", running.data_addr);
    // The default port falls back to any free one, so that the demo's
    // console part runs wherever it ran before; a chosen one must bind.
    let page_listener = match page_listen {
        Some(addr) => TcpListener::bind(addr).await,
        None => match TcpListener::bind("127.0.0.1:8081").await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind("127.0.0.1:0").await,
        },
    };
    let page_listener = match page_listener {
        Ok(l) => l,
        Err(e) => {
            running.drain().await?;
            return Err(DemoError::Unexpected(format!("demo page: {e} (--demo-page-listen)")));
        }
    };
    let page_addr = page_listener.local_addr()?;
    tokio::spawn(page::serve(page_listener, running.data_addr, shutdown.clone()));

    println!("\n== tether demo ==");
    println!("backend: built-in (sends \"tick <n>\" every 500 ms)");
    println!("tether:  {url}   admin: http://{}/metrics", running.admin_addr);
    println!(
        "journal: {} ({}; kept when the demo stops, so clients resume after a restart; --data-dir to change it)",
        data_dir.display(),
        if earlier { "from an earlier run" } else { "new" }
    );
    println!("page:    http://{page_addr}/   (the stream live, with a button that breaks the connection)\n");

    let scripted = script(&url).await;
    if let Ok(last) = &scripted {
        println!(
            "\nEvery seq from 1 to {last} arrived exactly once, in order; the backend saw {} connection(s).",
            connections.load(Ordering::Relaxed)
        );
        try_by_hand(&url, running.admin_addr, page_addr);
        running.serve_until(stop).await?;
        println!("\ntether stopped; the journal stays in {} for the next run.", data_dir.display());
    } else {
        // The journal is closed properly even when the script failed.
        running.drain().await?;
    }
    shutdown.cancel();
    scripted.map(|_| ())
}

/// What to try next, with the addresses this run uses.
fn try_by_hand(url: &str, admin: SocketAddr, page: SocketAddr) {
    let http = url.replacen("ws://", "http://", 1);
    println!("\nTry it by hand (from the tether clone; README.md, \"Client example\"):");
    println!("  cargo run --release -p tether-client --example follow -- {url}");
    println!("  node clients/js/examples/follow.mjs {url}     # after: cd clients/js && npm ci && npm run build");
    println!("  curl -sN --http1.1 -i -H 'Connection: Upgrade' -H 'Upgrade: websocket' \\");
    println!("    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' {http} | cat -v");
    println!("      # the raw protocol; add -H 'Tether-Session: <token>' -H 'Tether-Offset: <seq>' to resume");
    println!("  curl -s http://{admin}/metrics | grep ^tether_resumes");
    println!("Stop the demo and start it again while a client follows: it resumes (outcome \"restarted\").");
    println!("\nWatch it in a browser: http://{page}/ (\"Break the connection\" resets its TCP connection).");
    println!("\ntether keeps running; Ctrl-C to stop.");
}

/// The scripted client: reads four frames, drops its TCP connection,
/// resumes 3 s later, and checks the seqs continue. Returns the last seq.
async fn script(url: &str) -> Result<u64, DemoError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let welcome = next_text(&mut ws).await?;
    let token = json_field(&welcome, "session")?;
    println!("client connects      <- {}", shorten(&welcome));
    println!(
        "                        (…{}… is what differs between tokens: the first {TOKEN_COMMON} characters are the same for every session of a journal)",
        token_tag(&token)
    );
    let mut last = 0u64;
    for _ in 0..4 {
        let frame = next_text(&mut ws).await?;
        last = seq_of(&frame)?;
        println!("client processes     <- {frame}");
    }
    drop(ws);
    println!("\nclient drops its TCP connection without a close frame (a phone entering a tunnel).");
    println!("tether keeps the backend connection open and journals what it sends...\n");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut req = url.into_client_request()?;
    req.headers_mut().insert("tether-session", token.parse().map_err(|_| DemoError::Unexpected("token".into()))?);
    req.headers_mut().insert("tether-offset", last.to_string().parse().expect("digits"));
    println!("client resumes with Tether-Session: …{}… and Tether-Offset: {last}", token_tag(&token));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let welcome = next_text(&mut ws).await?;
    println!("                     <- {}", shorten(&welcome));
    let replay_to: u64 = serde_json::from_str::<serde_json::Value>(&welcome[1..])
        .ok()
        .and_then(|v| v["replay"]["to"].as_u64())
        .unwrap_or(last);
    let mut live = 0;
    while live < 3 {
        let frame = next_text(&mut ws).await?;
        let seq = seq_of(&frame)?;
        if seq != last + 1 {
            return Err(DemoError::Unexpected(format!("expected seq {}, got {seq}", last + 1)));
        }
        last = seq;
        let kind = if seq <= replay_to {
            "replayed"
        } else {
            live += 1;
            "live"
        };
        println!("client processes     <- {frame:<14} ({kind})");
    }
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "demo done".into() })).await?;
    Ok(last)
}

type DemoSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut DemoSocket) -> Result<String, DemoError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => return Err(DemoError::Unexpected(format!("closed: {f:?}"))),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(DemoError::Unexpected("connection ended".into())),
        }
    }
}

fn json_field(control: &str, field: &str) -> Result<String, DemoError> {
    let v: serde_json::Value = serde_json::from_str(control.trim_start_matches('#'))
        .map_err(|e| DemoError::Unexpected(format!("control frame: {e}")))?;
    v[field].as_str().map(str::to_owned).ok_or_else(|| DemoError::Unexpected(format!("no {field} in {control}")))
}

fn seq_of(frame: &str) -> Result<u64, DemoError> {
    frame
        .split_once(':')
        .and_then(|(s, _)| s.parse().ok())
        .ok_or_else(|| DemoError::Unexpected(format!("not a stamped frame: {frame}")))
}

/// Characters of a token that are the same for every session of a journal:
/// the version byte, the journal epoch and the top three bytes of the
/// session id's creation time (src/protocol/token.rs), 12 bytes in base64url.
const TOKEN_COMMON: usize = 16;

/// The part of a token that tells sessions apart: the low bytes of the
/// creation time and the random bytes after it.
pub(crate) fn token_tag(token: &str) -> &str {
    token.get(TOKEN_COMMON..TOKEN_COMMON + 12).unwrap_or(token)
}

/// The welcome frame with the token shortened to [`token_tag`], for printing.
fn shorten(welcome: &str) -> String {
    match json_field(welcome, "session") {
        Ok(t) => welcome.replace(&t, &format!("…{}…", token_tag(&t))),
        Err(_) => welcome.to_owned(),
    }
}
