//! The listeners queue a reconnect storm: every client of a restarted
//! replica may connect at once, and a full accept queue drops their SYNs
//! (each dropped client then waits a 1 s retransmit).

mod common;

use common::*;

/// The accept queue the kernel gives the listener on `port`: `ss`'s Send-Q
/// for a listening socket.
fn backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().next().unwrap_or_else(|| panic!("no listener on port {port}: {text:?}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_listeners_queue_a_reconnect_storm() {
    let (_backend, t) = setup().await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    // 4096, or less if the kernel allows less; never the 128 of
    // `TcpListener::bind`.
    let want = somaxconn.min(4096);
    assert_eq!(backlog(t.data_addr.port()), want, "data port");
    assert_eq!(backlog(t.admin_addr.port()), want, "admin port");
    t.stop().await;
}
