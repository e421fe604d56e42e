//! What tether's integration tests and `tether-bench` both need to read
//! from a running tether: its admin port, over a plain HTTP/1.1 GET; and
//! ports to start one on; and a proxy that cuts connections as real
//! networks do ([`CutProxy`]).

mod cut;

pub use cut::{pipe, CutProxy};

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP GET with `Connection: close`; returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not HTTP: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample in Prometheus text (`name{labels}` exactly as
/// tether renders it), or 0 if it is absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == sample).and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

/// One sample scraped from tether's `/metrics` at `admin`, or 0.
pub async fn scrape(admin: SocketAddr, sample: &str) -> std::io::Result<f64> {
    Ok(metric(&http_get(admin, "/metrics").await?.1, sample))
}

/// A loopback port that was free a moment ago, for a tether (or a replica
/// that must come back on the same port) whose address must be known before
/// it starts. It is taken below Linux's ephemeral range (32768 and up),
/// where the OS hands out ports for `:0` listeners and outgoing
/// connections, so nothing else takes it meanwhile; and it is never handed
/// out twice in one process, so tests running side by side (and one
/// replica's three ports) never share one.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<(u64, HashSet<u16>)>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let (x, ports) = given.get_or_insert_with(|| {
        let seed = u64::from(std::process::id()) ^ std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64;
        (seed | 1, HashSet::new())
    });
    loop {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let port = 12_000 + (*x % 20_000) as u16;
        if !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.insert(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_one_sample() {
        let text = "# HELP x y\nx_total{a=\"1\"} 3\nx_total 4\n";
        assert_eq!(super::metric(text, "x_total{a=\"1\"}"), 3.0);
        assert_eq!(super::metric(text, "x_total"), 4.0);
        assert_eq!(super::metric(text, "y"), 0.0);
    }
}
