//! What the `tether check` tests share: backends that send on their own (the
//! checker needs traffic, nothing else), and running the checker as a real
//! process and reading its JSON report.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// How a backend connection behaves.
#[derive(Clone, Copy)]
pub enum Kind {
    /// `tick <n>` every `period`, and `echo: <text>` for each text message
    /// (as `tether demo`'s backend).
    Ticker,
    /// Whatever an application may send: binary frames, text that looks like
    /// stamps or control frames, empty messages, 100 KB messages, bursts,
    /// and now and then the end of the session (a close with a code).
    Odd,
}

/// A backend on 127.0.0.1 that sends every `period`; returns its ws:// URL.
pub async fn backend(kind: Kind, period: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                serve(ws, kind, period).await;
            });
        }
    });
    url
}

async fn serve(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, kind: Kind, period: Duration) {
    let mut tick = tokio::time::interval(period);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let msgs = match kind {
                    Kind::Ticker => vec![Message::text(format!("tick {n}"))],
                    Kind::Odd => odd(n),
                };
                for m in msgs {
                    if ws.feed(m).await.is_err() { return; }
                }
                if ws.flush().await.is_err() { return; }
                // An Odd session ends now and then, as real ones do.
                if matches!(kind, Kind::Odd) && n % 97 == 0 {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::Library(4321), reason: "odd end".into() })).await;
                    return;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if ws.send(Message::text(format!("echo: {t}"))).await.is_err() { return; }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// The messages of an Odd backend's tick `n`.
fn odd(n: u64) -> Vec<Message> {
    match n % 8 {
        0 => vec![Message::binary(n.to_be_bytes().to_vec())],
        1 => vec![Message::text(format!("#{{\"type\":\"welcome\",\"n\":{n}}}"))],
        2 => vec![Message::text(format!("{n}:looks stamped"))],
        3 => vec![Message::text(""), Message::binary(Vec::new())],
        4 => vec![Message::text("x".repeat(100_000))],
        5 => (0..20).map(|i| Message::text(format!("burst {n}.{i}"))).collect(),
        6 => vec![Message::text(format!("{{\"seq\":{n},\"json\":true}}"))],
        _ => vec![Message::binary(vec![0xff; 3])],
    }
}

/// The `tether` binary under test.
pub fn tether_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tether"))
}

/// The binary built with `--features fault-injection` (scripts/build-faulty).
pub fn faulty_bin() -> PathBuf {
    let p = tether_bin().with_file_name("tether-faulty");
    assert!(p.is_file(), "{} is missing: run scripts/build-faulty (scripts/test does)", p.display());
    p
}

/// The checker's report and exit status.
pub struct Checked {
    pub status: i32,
    pub report: Value,
    pub stderr: String,
}

impl Checked {
    /// The status of check `name`.
    pub fn status_of(&self, name: &str) -> &str {
        self.check(name)["status"].as_str().unwrap()
    }

    /// Check `name`'s object.
    pub fn check(&self, name: &str) -> &Value {
        let checks = self.report["checks"].as_array().unwrap_or_else(|| panic!("no report: {}", self.stderr));
        checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}"))
    }

    /// The names of the checks that failed.
    pub fn failed(&self) -> Vec<String> {
        let checks = self.report["checks"].as_array().unwrap_or_else(|| panic!("no report: {}", self.stderr));
        checks.iter().filter(|c| c["status"] == "fail").map(|c| c["name"].as_str().unwrap().to_owned()).collect()
    }

    /// Panics with the report unless every check passed with exit status 0.
    pub fn assert_passed(&self) {
        assert!(
            self.status == 0 && self.report["passed"] == true,
            "status {}: {:#}\n{}",
            self.status,
            self.report,
            self.stderr
        );
    }
}

/// Runs `tether check URL args... --json` and parses its report.
pub async fn check(url: &str, args: &[&str]) -> Checked {
    let out = tokio::process::Command::new(tether_bin())
        .arg("check")
        .arg(url)
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // The checker bounds itself (duration + resume timeout + verification).
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("tether check ends").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Checked { status: out.status.code().unwrap_or(-1), report, stderr }
}

/// Short, busy runs for tests: faults every ~150 ms.
pub const QUICK: &[&str] =
    &["--fault-interval", "150ms", "--blackout", "60ms", "--idle", "200ms", "--resume-timeout", "15s"];
