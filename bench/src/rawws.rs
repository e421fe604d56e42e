//! A minimal WebSocket reader for the replay scenario: one TCP socket, the
//! upgrade written by hand, and server frames parsed straight from 1 MiB
//! reads. The tungstenite client (one `Message`, one `Utf8Bytes` check,
//! one `clock_gettime`, a timer and a cancellation poll per frame) cost
//! 0.32 µs per frame and took a whole CPU at 3 M frames/s, so it, not
//! tether, set the replay figure. Every frame is still checked: each seq
//! and each backend index in order, the end marker's count, gap reports.

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::{Check, Tally};
use crate::sys::now_ns;

/// Bytes per read: a replay batch is up to 256 KiB on tether's side.
const READ: usize = 1 << 20;

/// Connects to `url` (`ws://host:port/path`) with extra `headers`, then
/// reads a stamped stream into `tally` until the end marker or `deadline`.
/// An error also lands in `tally.error`.
pub async fn read_stream(url: &str, headers: &[(&str, String)], tally: &mut Tally, check: &Check, deadline: Instant) {
    if let Err(e) = tokio::time::timeout_at(deadline, run(url, headers, tally, check))
        .await
        .unwrap_or_else(|_| Err(anyhow!("timed out before the end marker")))
    {
        tally.error.get_or_insert_with(|| format!("{e:#}"));
    }
}

async fn run(url: &str, headers: &[(&str, String)], tally: &mut Tally, check: &Check) -> anyhow::Result<()> {
    let rest = url.strip_prefix("ws://").context("only ws:// URLs")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut sock = TcpStream::connect(host).await.with_context(|| format!("connect {host}"))?;
    sock.set_nodelay(true)?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await?;

    let mut buf = vec![0u8; READ];
    let mut end = 0usize;
    // The response head; whatever follows it is frames.
    let mut start = loop {
        if let Some(at) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                bail!("upgrade refused: {:.80}", String::from_utf8_lossy(&buf[..at]));
            }
            break at + 4;
        }
        let n = sock.read(&mut buf[end..]).await?;
        if n == 0 {
            bail!("connection ended during the upgrade");
        }
        end += n;
    };
    loop {
        // Parse every whole frame in the buffer.
        loop {
            let Some((op, head, len)) = header(&buf[start..end])? else { break };
            let payload = &buf[start + head..start + head + len];
            start += head + len;
            match op {
                0x1 => {
                    if feed(tally, payload, check) {
                        tally.last_ns = now_ns();
                        return Ok(());
                    }
                }
                0x8 => bail!("closed before the end marker"),
                // Pings (every 30 s by default) need no answer in a run this short.
                0x2 | 0x9 | 0xA => {}
                op => bail!("unexpected opcode {op}"),
            }
        }
        // One timestamp per read, not per frame.
        tally.last_ns = now_ns();
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
            if end == buf.len() {
                bail!("a frame larger than {READ} bytes");
            }
        }
        let n = sock.read(&mut buf[end..]).await?;
        if n == 0 {
            bail!("connection ended before the end marker");
        }
        end += n;
    }
}

/// `(opcode, header bytes, payload bytes)` of the frame at the start of
/// `b`, or `None` if it is not all there yet.
fn header(b: &[u8]) -> anyhow::Result<Option<(u8, usize, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x80 == 0 {
        bail!("fragmented frame");
    }
    if b[1] & 0x80 != 0 {
        bail!("masked frame from the server");
    }
    let (head, len) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() >= 10 => (10, u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize),
        126 | 127 => return Ok(None),
        n => (2, n as usize),
    };
    Ok((b.len() >= head + len).then_some((b[0] & 0x0f, head, len)))
}

/// Leading decimal digits of `b` and what follows the separator after them.
fn number(b: &[u8], sep: u8) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || b.get(digits) != Some(&sep) {
        return None;
    }
    let n = b[..digits].iter().fold(0u64, |n, c| n * 10 + u64::from(c - b'0'));
    Some((n, &b[digits + 1..]))
}

/// One text frame: `<seq>:<index>,...` checked like [`Tally::feed`] does;
/// control frames and the end marker go through `feed` itself. True at the
/// end marker.
fn feed(tally: &mut Tally, payload: &[u8], check: &Check) -> bool {
    let fast = payload.first() != Some(&b'#') && check.stamped && check.record_from == u64::MAX;
    if fast {
        if let Some((seq, body)) = number(payload, b':') {
            if let Some((idx, _)) = number(body, b',') {
                tally.check_seq(seq);
                tally.check_idx(idx);
                tally.data += 1;
                return false;
            }
        }
    }
    match std::str::from_utf8(payload) {
        Ok(text) => tally.feed(text, check),
        Err(_) => {
            tally.dups += 1;
            tally.error.get_or_insert_with(|| "a text frame that is not UTF-8".into());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        let check = Check { stamped: true, record_from: u64::MAX, first_seq: 1, first_idx: 0, ack_every: 0 };
        let mut t = Tally::new(&check);
        assert!(!feed(&mut t, b"1:0,5,xx", &check));
        assert!(!feed(&mut t, b"2:1,5,xx", &check));
        assert!(!feed(&mut t, b"4:3,5,xx", &check));
        assert!(!feed(&mut t, b"4:3,5,xx", &check));
        // seq 3 and index 2 missing; seq 4 and index 3 twice.
        assert_eq!((t.data, t.gaps, t.dups), (4, 2, 2));
        assert!(feed(&mut t, b"5:end,4", &check));
        assert!(t.complete);
        assert_eq!(header(&[0x81, 126, 1, 0]).unwrap(), None);
        assert_eq!(header(&[0x81, 2, b'a', b'b']).unwrap(), Some((1, 2, 2)));
    }
}
