//! TLS with rustls (the `ring` provider) on both sides of tether:
//!
//! - [`client_config`]: for `wss://` upstreams — the platform's trust store
//!   (`rustls-native-certs`) or `tls.upstream_ca_file`, and an optional
//!   client certificate for backends that want mutual TLS;
//! - [`ServerTls`]: the data port's certificate, read from PEM files and
//!   swapped without a restart when they change on disk (cert-manager
//!   rotates them): a background task compares the files' modification time
//!   and length every `tls.reload_interval`; a new pair that does not load
//!   keeps the old certificate, logs a warning and counts
//!   `tether_tls_reloads_total{result="error"}`.
//!
//! The admin port stays plain HTTP.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{file, TlsConfig};
use crate::metrics::Metrics;

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file was read but holds nothing usable.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the
    /// certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider tether uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid { path: path.to_owned(), problem: problem.into() }
}

fn certs_from(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn key_from(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid(path, format!("no usable private key: {e}")))
}

async fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

// ---------------------------------------------------------------- upstream

/// The client configuration for `wss://` upstreams.
pub(crate) async fn client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match file(&tls.upstream_ca_file) {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(certs_from(path, &read(path).await?)?);
            if added == 0 {
                return Err(invalid(path, "no usable CA certificate"));
            }
        }
        None => {
            let found = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
                .await
                .map_err(|e| invalid(Path::new("<system trust store>"), e.to_string()))?;
            for e in &found.errors {
                tracing::warn!(error = %e, "system trust store: a certificate could not be read");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("the system trust store is empty: wss:// upstreams need tls.upstream_ca_file");
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (file(&tls.upstream_client_cert_file), file(&tls.upstream_client_key_file)) {
        (Some(cert), Some(key)) => {
            let chain = certs_from(cert, &read(cert).await?)?;
            let key = key_from(key, &read(key).await?)?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    // tether speaks HTTP/1.1 to the backend (the upgrade).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a failed TLS handshake with the backend tells the client: the kind of
/// failure, never the backend's name or address (rustls' own messages may
/// carry the names the certificate was expected to match).
pub(crate) fn describe_handshake_error(e: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the backend's TLS certificate is not signed by a trusted CA"
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "the backend's TLS certificate is not valid for its host name",
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            "the backend's TLS certificate has expired"
        }
        Some(Error::InvalidCertificate(_)) => "the backend's TLS certificate was rejected",
        Some(Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) => {
            "the backend requires a client certificate (tls.upstream_client_cert_file)"
        }
        Some(Error::AlertReceived(_)) => "the backend refused the TLS handshake",
        _ => "the TLS handshake with the backend failed",
    }
}

/// True if `e` is rustls' (with TLS 1.3, a backend that rejects tether's
/// client certificate says so only after the handshake, on the first read).
pub(crate) fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// A backend connection: plain TCP or TLS over TCP. The TLS state is boxed so
/// that plain sessions (most of them) stay as small as before.
#[derive(Debug)]
pub(crate) enum MaybeTls {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------- data port

/// The data port's certificate, swapped in place when its files change.
#[derive(Debug)]
pub(crate) struct ServerTls {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The files' stamp taken before they were first read, so a change
    /// between the start and the first check of [`ServerTls::watch`] is
    /// still seen.
    loaded: Stamp,
}

/// What identifies one version of the files: modification time and length
/// of each.
type Stamp = [(Option<SystemTime>, u64); 2];

impl ResolvesServerCert for ServerTls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServerTls {
    /// Loads `cert_file` and `key_file`; an error here stops tether's start.
    pub(crate) async fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerTls>, TlsError> {
        let provider = provider();
        let loaded = stamp(cert_file, key_file).await;
        let key = load_pair(&provider, cert_file, key_file).await?;
        Ok(Arc::new(ServerTls {
            current: ArcSwap::from_pointee(key),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            loaded,
        }))
    }

    /// A TLS acceptor that asks this resolver for the certificate of each
    /// new connection.
    pub(crate) fn acceptor(self: &Arc<ServerTls>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads the files whenever their stamp changes, every `interval`,
    /// until `stop`. A failed reload is retried when the files change again.
    pub(crate) async fn watch(
        self: Arc<ServerTls>,
        interval: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        let mut seen = self.loaded;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&self.cert_file, &self.key_file).await;
            if now == seen {
                continue;
            }
            seen = now;
            match load_pair(&self.provider, &self.cert_file, &self.key_file).await {
                Ok(key) => {
                    self.current.store(Arc::new(key));
                    metrics.tls_reload("ok");
                    tracing::info!(cert_file = %self.cert_file.display(), "data port certificate reloaded");
                }
                Err(e) => {
                    metrics.tls_reload("error");
                    tracing::warn!(error = %e, "data port certificate not reloaded; keeping the previous one");
                }
            }
        }
    }
}

async fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let one = |p: &Path| {
        let p = p.to_owned();
        async move {
            match tokio::fs::metadata(&p).await {
                Ok(m) => (m.modified().ok(), m.len()),
                Err(_) => (None, 0),
            }
        }
    };
    [one(cert_file).await, one(key_file).await]
}

async fn load_pair(provider: &CryptoProvider, cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certs_from(cert_file, &read(cert_file).await?)?;
    let key = key_from(key_file, &read(key_file).await?)?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| invalid(key_file, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(invalid(key_file, format!("does not match {}: {e}", cert_file.display()))),
    }
}
