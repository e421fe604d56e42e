//! The warnings an operator needs at a first deploy: a backend tether
//! cannot connect to (at `warn`, rate-limited, every failure counted), an
//! unset `token.secret`, and no colour codes in logs that are not read on a
//! terminal. Real tether processes; stderr read line by line.

mod common;

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Error as WsError;

/// tether with `args` and `env`, its stderr lines on a channel, and the
/// data address from its "tether is serving" line (with every line before it).
fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("journal"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _dir = dir;
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut before = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tether did not serve: {before:?}");
        };
        if line.contains("tether is serving") {
            let addr = line.split("data_addr").nth(1).unwrap();
            let addr: String = addr
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            before.push(line);
            return (child, rx, addr, before);
        }
        before.push(line);
    }
}

/// SIGTERM, then every remaining line until stderr closes.
fn stop(child: &mut Child, rx: mpsc::Receiver<String>) -> Vec<String> {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    assert!(child.wait().unwrap().success());
    rx.iter().collect()
}

/// `(message, suppressed)` of each WARN line.
fn warnings(lines: &[String]) -> Vec<(String, Option<u64>)> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .map(|v| (v["fields"]["message"].as_str().unwrap().to_owned(), v["fields"]["suppressed"].as_u64()))
        .collect()
}

const NO_SECRET: &str = "token.secret is not set: tokens are signed with a secret generated and kept in the \
     journal, so losing the journal invalidates every token, and no other replica can verify them; set \
     TETHER_TOKEN_SECRET (at least 32 characters)";

/// K clients against a backend that refuses connections: one warn line at
/// once, then (the interval being an hour) none until the drain, whose line
/// counts the K - 1 left out. Each client got its 502.
#[tokio::test]
async fn an_unreachable_backend_warns_once_per_interval_with_the_count() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = [("TETHER_LOG_WARN_INTERVAL", "1h"), ("TETHER_TOKEN_SECRET", "")];
    let (mut child, rx, addr, before) = spawn(&["--upstream", &upstream, "--log-format", "json"], &env);
    assert_eq!(warnings(&before), [(NO_SECRET.to_owned(), None)]);
    const K: u64 = 5;
    for _ in 0..K {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/")).await {
            Err(WsError::Http(r)) => assert_eq!(r.status(), 502),
            other => panic!("expected a 502, got {:?}", other.map(|(_, r)| r.status())),
        }
    }
    let lines = stop(&mut child, rx);
    assert_eq!(
        warnings(&lines),
        [
            ("cannot connect to the backend".to_owned(), None),
            (format!("cannot connect to the backend ({} more suppressed)", K - 1), Some(K - 1)),
        ]
    );
    let first: Value =
        lines.iter().find_map(|l| serde_json::from_str(l).ok().filter(|v: &Value| v["level"] == "WARN")).unwrap();
    assert_eq!(first["fields"]["upstream"], upstream.as_str());
    assert!(first["fields"]["error"]
        .as_str()
        .unwrap()
        .starts_with("cannot connect to the backend: Connection refused"));
}

/// With the secret set there is no warning, and human-format lines carry no
/// colour codes when stderr is not a terminal.
#[test]
fn human_logs_to_a_pipe_have_no_colour_codes() {
    let (mut child, rx, _, before) = spawn(&["--log-format", "human"], &[("TETHER_TOKEN_SECRET", SECRET)]);
    let lines = [before, stop(&mut child, rx)].concat();
    assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("drained")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains('\x1b')), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("WARN")), "{lines:?}");
}

/// What a flapping client costs in log lines at `info` (docs/OPERATIONS.md):
/// one line per event, so two per drop-and-resume cycle, plus one when the
/// session is created. The figure in the docs is this test's.
#[tokio::test]
async fn a_flapping_session_costs_two_lines_per_cycle() {
    let (mut backend, _dir, p) = setup_process().await;
    let (mut ws, mut token, _b) = attach(&mut backend, &p.url("/")).await;
    const CYCLES: usize = 10;
    let session_lines =
        |lines: &[String], id: &str| -> Vec<String> { lines.iter().filter(|l| l.contains(id)).cloned().collect() };
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &token).unwrap();
    let id: String = raw[9..25].iter().map(|b| format!("{b:02x}")).collect();
    for cycle in 1..=CYCLES {
        drop_abruptly(ws);
        // The detach must be seen before the resume, or it is a takeover.
        within("the detach line", async {
            while session_lines(&p.logs.lock().unwrap(), &id).iter().filter(|l| l.contains("client detached")).count()
                < cycle
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        ws = resume(&p.url("/"), &token, 0).await;
        token = welcome(&mut ws).await.1;
    }
    // The resume's line is written before its welcome is sent, and read
    // from the pipe by another task.
    within("the last attach line", async {
        while session_lines(&p.logs.lock().unwrap(), &id).len() < 1 + 2 * CYCLES {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let mine = session_lines(&p.logs.lock().unwrap(), &id);
    let bytes: usize = mine.iter().map(|l| l.len() + 1).sum();
    eprintln!("{} lines, {} bytes of JSON for {CYCLES} drop/resume cycles", mine.len(), bytes);
    assert_eq!(mine.len(), 1 + 2 * CYCLES, "{mine:#?}");
    assert_eq!(mine.iter().filter(|l| l.contains("\"outcome\":\"resumed\"")).count(), CYCLES);
    p.kill9().await;
}
