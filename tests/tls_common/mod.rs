//! TLS helpers for tests/tls_*.rs: certificates made at test time with
//! rcgen (a throwaway CA, server certificates for localhost/127.0.0.1, client
//! certificates), a wss:// backend (a TLS listener in front of the plain
//! tokio-tungstenite test backend), and a TLS WebSocket client.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::within;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, as PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes the certificate and key to `dir/<name>.crt` and `.key`.
    pub fn write(&self, dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn write(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self, cn: &str, serial: u64) -> Leaf {
        self.leaf(cn, serial, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate for `names` only.
    pub fn server_for(&self, names: &[&str]) -> Leaf {
        self.leaf("elsewhere", 2, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, 7, &["localhost"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, cn: &str, serial: u64, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// A wss:// endpoint: terminates TLS with `leaf` and pipes the bytes to the
/// plain WebSocket backend at `plain` (so the test backend's helpers work).
/// With `client_ca`, it requires a client certificate signed by that CA.
pub async fn tls_front(leaf: &Leaf, client_ca: Option<&Ca>, plain: SocketAddr) -> SocketAddr {
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(vec![leaf.der.clone()], leaf.key()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut backend) = TcpStream::connect(plain).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
            });
        }
    });
    addr
}

pub type TlsWs = WebSocketStream<TlsStream<TcpStream>>;

/// The TLS connection to `addr` (verified against `ca` for `localhost`) and
/// the certificate the server presented.
pub async fn tls_connect(addr: SocketAddr, ca: &Ca) -> (TlsStream<TcpStream>, CertificateDer<'static>) {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = within("TCP connect", TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = within("the TLS handshake", connector.connect(name, tcp)).await.expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned();
    (tls, presented)
}

/// A WebSocket over TLS to tether's data port, with extra request headers.
pub async fn wss_open(addr: SocketAddr, ca: &Ca, path: &str, headers: &[(&str, &str)]) -> TlsWs {
    let (tls, _) = tls_connect(addr, ca).await;
    let mut req = format!("wss://localhost:{}{path}", addr.port()).into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    within("the upgrade over TLS", tokio_tungstenite::client_async(req, tls)).await.expect("upgrade over TLS").0
}

/// Next text message, skipping pings and pongs.
pub async fn tls_next_text(ws: &mut TlsWs) -> String {
    within("a message over TLS", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(t))) => return t.to_string(),
                other => panic!("expected text, got {other:?}"),
            }
        }
    })
    .await
}

/// The welcome control frame and the session token.
pub async fn tls_welcome(ws: &mut TlsWs) -> (serde_json::Value, String) {
    let t = tls_next_text(ws).await;
    let w: serde_json::Value = serde_json::from_str(t.strip_prefix('#').expect("a control frame")).unwrap();
    assert_eq!(w["type"], "welcome", "{w}");
    let token = w["session"].as_str().unwrap().to_owned();
    (w, token)
}

/// Expects `m<from>..=m<to>` stamped with seqs `from..=to`.
pub async fn tls_expect_stream(ws: &mut TlsWs, from: u64, to: u64) {
    for i in from..=to {
        assert_eq!(tls_next_text(ws).await, format!("{i}:m{i}"));
    }
}
