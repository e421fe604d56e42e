//! TLS on the data port: a client connects with TLS, resumes over TLS; the
//! certificate files are replaced on disk and new connections get the new
//! certificate without a restart; a broken new pair keeps the old one.

mod common;
mod tls_common;

use std::time::Duration;

use common::*;
use tls_common::*;

/// A client over TLS gets its session, drops, and resumes over TLS with a
/// replay; the admin port stays plain HTTP.
#[tokio::test]
async fn tls_client_and_resume_over_tls() {
    let ca = Ca::new("test data-port CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server("tether", 1).write(certs.path(), "tls");
    let mut backend = Backend::start().await;
    let t = Tether::start_with(&backend, |c| {
        c.tls.cert_file = cert;
        c.tls.key_file = key;
    })
    .await;

    let mut ws = wss_open(t.data_addr, &ca, "/feed", &[]).await;
    let (w, token) = tls_welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new", "{w}");
    let b = backend.next_conn().await;
    assert_eq!(b.headers.get("x-forwarded-proto").unwrap(), "https");
    b.stream(1, 3);
    tls_expect_stream(&mut ws, 1, 3).await;
    drop(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    b.stream(4, 6);
    wait_metric(t.admin_addr, "tether_journal_appends_total", 6.0).await;
    let mut ws = wss_open(t.data_addr, &ca, "/feed", &[("tether-session", &token), ("tether-offset", "1")]).await;
    let (w, _) = tls_welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    tls_expect_stream(&mut ws, 2, 6).await;
    assert_eq!(backend.count(), 1);
    // The admin port is plain HTTP.
    assert_eq!(http_get(t.admin_addr, "/readyz").await.0, 200);
    t.stop().await;
}

/// cert-manager replaces the files: the reload is counted, and a new
/// connection sees the new certificate while the old connection goes on.
/// A broken replacement is counted as an error and the last good
/// certificate stays.
#[tokio::test]
async fn rotated_certificate_is_served_to_new_connections() {
    let ca = Ca::new("test data-port CA");
    let certs = tempfile::tempdir().unwrap();
    let first = ca.server("tether-1", 1);
    // As a Kubernetes secret volume: the files are read through a symlink
    // to a versioned directory that is swapped in one rename.
    let publish = |version: &str, cert_pem: &str, key_pem: &str| {
        let dir = certs.path().join(version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), key_pem).unwrap();
        let link = certs.path().join("next");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        std::fs::rename(&link, certs.path().join("current")).unwrap();
    };
    publish("v1", &first.cert_pem, &first.key_pem);
    let (cert, key) = (certs.path().join("current/tls.crt"), certs.path().join("current/tls.key"));
    let mut backend = Backend::start().await;
    let t = Tether::start_with(&backend, |c| {
        c.tls.cert_file = cert.clone();
        c.tls.key_file = key.clone();
        c.tls.reload_interval = Duration::from_millis(50);
    })
    .await;

    let (_, presented) = tls_connect(t.data_addr, &ca).await;
    assert_eq!(presented, first.der);
    let mut old = wss_open(t.data_addr, &ca, "/", &[]).await;
    tls_welcome(&mut old).await;
    let b = backend.next_conn().await;

    // Rotate: a new key and certificate, new serial and subject.
    let second = ca.server("tether-2", 2);
    publish("v2", &second.cert_pem, &second.key_pem);
    wait_metric(t.admin_addr, r#"tether_tls_reloads_total{result="ok"}"#, 1.0).await;
    let (_, presented) = tls_connect(t.data_addr, &ca).await;
    assert_eq!(presented, second.der, "a new connection gets the new certificate");
    b.stream(1, 2);
    tls_expect_stream(&mut old, 1, 2).await;

    // A broken replacement (a key that does not match the certificate).
    publish("v3", &ca.server("tether-3", 3).cert_pem, &second.key_pem);
    wait_metric(t.admin_addr, r#"tether_tls_reloads_total{result="error"}"#, 1.0).await;
    let (_, presented) = tls_connect(t.data_addr, &ca).await;
    assert_eq!(presented, second.der, "the last good certificate stays");
    assert_eq!(metric(&t.metrics().await, r#"tether_tls_reloads_total{result="ok"}"#), 1.0);
    t.stop().await;
}
