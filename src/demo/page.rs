//! The demo page: one loopback port that serves a page showing the stream
//! live (through the JS client library), proxies the page's WebSocket to
//! tether over plain TCP, and cuts those connections on request, the way a
//! tunnel does: both ends get a TCP reset and no close frame, and for the
//! next few seconds new connections are reset too (the tunnel lasts).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

const PAGE: &str = include_str!("page.html");
/// `clients/js`'s minified bundle; `scripts/test-js` fails if it differs from a fresh build.
const BUNDLE: &str = include_str!("tether-client.min.js");
const MAX_HEAD: usize = 16 * 1024;
/// The longest outage `POST /cut?ms=` may ask for.
const MAX_OUTAGE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Live {
    conns: Vec<(AbortHandle, Weak<TcpStream>, Weak<TcpStream>)>,
    /// Until then, new WebSocket connections are reset at once.
    down_until: Option<Instant>,
}

/// Serves the page on `listener` until `shutdown`; WebSocket upgrades go to
/// tether's data port at `tether`.
pub(crate) async fn serve(listener: TcpListener, tether: SocketAddr, shutdown: CancellationToken) {
    let live = Arc::new(Mutex::new(Live::default()));
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok((tcp, _)) => tcp, Err(_) => continue },
        };
        tokio::spawn(handle(tcp, tether, live.clone()));
    }
}

async fn handle(mut tcp: TcpStream, tether: SocketAddr, live: Arc<Mutex<Live>>) {
    let mut head = Vec::with_capacity(1024);
    let (method, path, upgrade, from_page) = loop {
        let mut buf = [0u8; 2048];
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let upgrade = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && String::from_utf8_lossy(h.value).to_ascii_lowercase().contains("websocket")
                });
                // A custom header needs a CORS preflight, which is never
                // answered: another site open in the browser cannot cut.
                let from_page = req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("x-tether-demo"));
                break (req.method.unwrap_or("").to_owned(), req.path.unwrap_or("/").to_owned(), upgrade, from_page);
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            _ => return,
        }
    };
    if upgrade {
        let down = live.lock().unwrap_or_else(|e| e.into_inner()).down_until.is_some_and(|t| Instant::now() < t);
        if down {
            let _ = tcp.set_zero_linger(); // still in the tunnel
            return;
        }
        return proxy(tcp, head, tether, live).await;
    }
    let (path, query) = path.split_once('?').unwrap_or((&path, ""));
    let (status, ctype, body) = match (method.as_str(), path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_owned()),
        ("GET", "/tether-client.min.js") => ("200 OK", "text/javascript; charset=utf-8", BUNDLE.to_owned()),
        ("POST", "/cut") if from_page => {
            let ms = query.split('&').find_map(|kv| kv.strip_prefix("ms=")).and_then(|v| v.parse().ok()).unwrap_or(0);
            let outage = Duration::from_millis(ms).min(MAX_OUTAGE);
            ("200 OK", "application/json", format!("{{\"cut\":{},\"ms\":{}}}", cut(&live, outage), outage.as_millis()))
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Forwards the upgrade (head included) to tether, byte for byte.
async fn proxy(client: TcpStream, head: Vec<u8>, tether: SocketAddr, live: Arc<Mutex<Live>>) {
    let Ok(mut upstream) = TcpStream::connect(tether).await else { return };
    if upstream.write_all(&head).await.is_err() {
        return;
    }
    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
    let (c, u) = (client.clone(), upstream.clone());
    let task = tokio::spawn(async move {
        // Either direction ending ends both.
        tokio::select! {
            _ = pipe(c.clone(), u.clone()) => {}
            _ = pipe(u, c) => {}
        }
    });
    let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
    l.conns.retain(|(h, _, _)| !h.is_finished());
    l.conns.push((task.abort_handle(), Arc::downgrade(&client), Arc::downgrade(&upstream)));
}

/// Resets both sockets of every proxied connection, and refuses new ones
/// for `outage`. Returns how many were cut.
fn cut(live: &Mutex<Live>, outage: Duration) -> usize {
    let conns: Vec<_> = {
        let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
        l.down_until = Some(Instant::now() + outage);
        l.conns.drain(..).collect()
    };
    let mut n = 0;
    for (task, a, b) in conns {
        if task.is_finished() {
            continue;
        }
        for s in [a, b].iter().filter_map(Weak::upgrade) {
            let _ = s.set_zero_linger();
        }
        task.abort();
        n += 1;
    }
    n
}

async fn pipe(from: Arc<TcpStream>, to: Arc<TcpStream>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut done = 0;
        while done < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[done..n]) {
                Ok(w) => done += w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    }
}
