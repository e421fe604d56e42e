//! wss:// upstreams: tether verifies the backend against a configured CA,
//! presents a client certificate to a backend that requires one (mutual
//! TLS), resumes over it; a backend whose certificate the CA did not sign is
//! a 502 `backend_tls_failed` that names neither the backend nor its address.

mod common;
mod tls_common;

use common::*;
use tls_common::*;

/// tether in front of a wss:// backend that requires a client certificate;
/// a session streams, drops, resumes with a replay, and the backend never
/// sees a second connection.
#[tokio::test]
async fn wss_backend_with_client_certificate_and_resume() {
    let ca = Ca::new("test backend CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = ca.write(certs.path(), "ca");
    let (client_cert, client_key) = ca.client("tether").write(certs.path(), "client");
    let mut backend = Backend::start().await;
    let front = tls_front(&ca.server("backend", 1), Some(&ca), backend.addr).await;
    let t = Tether::start_with(&backend, |c| {
        c.server.upstream = format!("wss://localhost:{}", front.port());
        c.tls.upstream_ca_file = ca_file;
        c.tls.upstream_client_cert_file = client_cert;
        c.tls.upstream_client_key_file = client_key;
    })
    .await;

    let (mut ws, token, b) = attach(&mut backend, &t.url("/feed")).await;
    assert_eq!(b.path, "/feed");
    b.stream(1, 4);
    expect_stream(&mut ws, 1, 4).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    b.stream(5, 8);
    wait_metric(t.admin_addr, "tether_journal_appends_total", 8.0).await;
    let mut ws = resume(&t.url("/feed"), &token, 2).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    expect_stream(&mut ws, 3, 8).await;
    assert_eq!(backend.count(), 1, "the backend saw one connection");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="ok"}"#), 1.0);
    t.stop().await;
}

/// Without the client certificate, the mTLS backend refuses the handshake:
/// a 502 `backend_tls_failed`.
#[tokio::test]
async fn mtls_backend_without_client_certificate_is_a_502() {
    let ca = Ca::new("test backend CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = ca.write(certs.path(), "ca");
    let backend = Backend::start().await;
    let front = tls_front(&ca.server("backend", 1), Some(&ca), backend.addr).await;
    let t = Tether::start_with(&backend, |c| {
        c.server.upstream = format!("wss://localhost:{}", front.port());
        c.tls.upstream_ca_file = ca_file;
    })
    .await;
    let r = connect(&t.url("/"), &[]).await.expect_err("refused");
    assert_eq!((r.status, r.body["error"].as_str()), (502, Some("backend_tls_failed")), "{:?}", r.body);
    assert_eq!(r.body["detail"], "the backend requires a client certificate (tls.upstream_client_cert_file)");
    assert_eq!(backend.count(), 0);
    t.stop().await;
}

/// A backend certificate from a CA tether does not trust: a clear 502 with
/// its own error name, counted, and no backend address in the body.
#[tokio::test]
async fn wrong_ca_is_a_502_backend_tls_failed() {
    let trusted = Ca::new("the CA tether trusts");
    let other = Ca::new("some other CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = trusted.write(certs.path(), "ca");
    let backend = Backend::start().await;
    let front = tls_front(&other.server("backend", 1), None, backend.addr).await;
    let t = Tether::start_with(&backend, |c| {
        c.server.upstream = format!("wss://localhost:{}", front.port());
        c.tls.upstream_ca_file = ca_file;
    })
    .await;

    let r = connect(&t.url("/"), &[]).await.expect_err("refused");
    assert_eq!(r.status, 502);
    assert_eq!(r.body["error"], "backend_tls_failed", "{}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert_eq!(detail, "the backend's TLS certificate is not signed by a trusted CA");
    assert!(!detail.contains("localhost") && !detail.contains(&front.port().to_string()), "{detail}");
    assert_eq!(backend.count(), 0, "nothing reached the backend");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="backend_tls_failed"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_refusals_total{error="backend_tls_failed",status="502"}"#), 1.0);
    t.stop().await;
}

/// A certificate for another name: the same refusal, a different detail.
#[tokio::test]
async fn wrong_host_name_is_a_502_backend_tls_failed() {
    let ca = Ca::new("test backend CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = ca.write(certs.path(), "ca");
    let backend = Backend::start().await;
    let front = tls_front(&ca.server_for(&["backend.example"]), None, backend.addr).await;
    let t = Tether::start_with(&backend, |c| {
        c.server.upstream = format!("wss://localhost:{}", front.port());
        c.tls.upstream_ca_file = ca_file;
    })
    .await;
    let r = connect(&t.url("/"), &[]).await.expect_err("refused");
    assert_eq!((r.status, r.body["error"].as_str()), (502, Some("backend_tls_failed")), "{:?}", r.body);
    assert_eq!(r.body["detail"], "the backend's TLS certificate is not valid for its host name");
    t.stop().await;
}
