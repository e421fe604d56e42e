//! `limits.max_sessions` is reserved before tether dials the backend, so a
//! burst of upgrades cannot make more backend handshakes than the limit.

mod common;

use common::*;
use futures_util::future::join_all;

#[tokio::test]
async fn burst_of_40_upgrades_makes_at_most_5_backend_handshakes() {
    let (mut backend, t) = setup_with(|c| c.limits.max_sessions = 5).await;
    let url = t.url("/");
    let results = within("40 concurrent upgrades", join_all((0..40).map(|_| connect(&url, &[])))).await;

    let mut kept = Vec::new();
    for r in results {
        match r {
            Ok((ws, _)) => kept.push(ws),
            Err(r) => {
                assert_eq!((r.status, r.body["error"].as_str()), (503, Some("over_capacity")), "{:?}", r.body);
                assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
            }
        }
    }
    assert_eq!(kept.len(), 5);
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(backend.next_conn().await);
    }
    let m = wait_metric(t.admin_addr, r#"tether_sessions{state="attached"}"#, 5.0).await;
    assert_eq!(backend.count(), 5, "backend handshakes");
    assert_eq!(metric(&m, r#"tether_refusals_total{error="over_capacity",status="503"}"#), 35.0);
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="ok"}"#), 5.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="new",reason="none"}"#), 5.0);
    assert_eq!(metric(&m, "tether_backend_connections"), 5.0);
    drop((kept, conns));
    t.stop().await;
}
