//! The admin port cannot be exhausted: idle connections are capped and
//! timed out, and /readyz answers again once they are gone.

mod common;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn idle_connections_are_capped_and_timed_out() {
    let (_backend, t) = setup().await;
    // 100 connections that never send a request.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(t.admin_addr).await.unwrap());
    }
    // 64 are served (and wait for a request head); the other 36 are closed
    // at once. Every idle connection is closed by tether, at once or after
    // the 5 s header timeout: none stays open.
    for mut s in idle {
        let mut buf = [0u8; 64];
        let n = within("tether to close an idle admin connection", s.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got an answer");
    }
    assert_eq!(http_get(t.admin_addr, "/readyz").await, (200, "ready\n".to_owned()));
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_admin_connections_rejected_total"), 36.0);
    // One request per connection: the answer says so.
    let (status, _) = raw_request(t.admin_addr, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    t.stop().await;
}
