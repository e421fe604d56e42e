//! The URL under check: where its host is, how to reach it (TLS or not),
//! and the request target every connection asks for.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::opts::Opts;

/// Why the checker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL is not one the checker can use.
    #[error("URL {0}")]
    Url(String),
    /// The TLS settings cannot be built.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The deployment under check.
#[derive(Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Host name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `Host` header value (the URL's authority).
    pub authority: String,
    /// Path and query of every request.
    pub path: String,
    /// `Some` for wss://.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Extra headers from the command line.
    pub headers: Vec<(String, String)>,
}

impl Target {
    /// Parses the URL and builds the TLS client the options ask for.
    pub fn new(opts: &Opts) -> Result<Target, TargetError> {
        let url = opts.url.trim();
        let bad = |why: &str| TargetError::Url(format!("{url:?}: {why}"));
        let (secure, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad("must start with ws:// or wss://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("needs a host (and no user:password@)"));
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("has a fragment, a space or a control character"));
        }
        if let Some((_, query)) = path.split_once('?') {
            if query.split('&').any(|p| p.starts_with("tether_")) {
                return Err(bad("must not carry tether_* parameters: the checker sets them"));
            }
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None if secure => 443,
            None => 80,
        };
        let tls = if secure {
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("host is not a valid TLS server name"))?;
            Some((tokio_rustls::TlsConnector::from(client_config(opts)?), name))
        } else {
            if opts.insecure || opts.ca_file.is_some() {
                return Err(bad("--insecure and --ca-file are for wss:// URLs"));
            }
            None
        };
        Ok(Target {
            url: url.to_owned(),
            host,
            port,
            authority: authority.to_owned(),
            path,
            tls,
            headers: opts.headers.clone(),
        })
    }

    /// The request target with extra query parameters appended.
    pub fn path_with(&self, params: &[(&str, String)]) -> String {
        let mut p = self.path.clone();
        for (k, v) in params {
            p.push(if p.contains('?') { '&' } else { '?' });
            p.push_str(k);
            p.push('=');
            p.push_str(v);
        }
        p
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(opts: &Opts) -> Result<Arc<rustls::ClientConfig>, TargetError> {
    let tls = |e: String| TargetError::Tls(e);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?;
    let mut config = if opts.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate)).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &opts.ca_file {
            Some(path) => {
                let (added, _) = roots.add_parsable_certificates(read_certs(path)?);
                if added == 0 {
                    return Err(tls(format!("{}: no usable CA certificate", path.display())));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(tls("the system trust store is empty: give --ca-file".into()));
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TargetError> {
    let pem = std::fs::read(path).map_err(|e| TargetError::Tls(format!("{}: {e}", path.display())))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TargetError::Tls(format!("{}: bad PEM: {e}", path.display())))
}

/// `--insecure`: accepts any certificate (signatures are still checked, so
/// the handshake itself is sound).
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn target(url: &str) -> Result<Target, TargetError> {
        Target::new(&Opts::parse_from(["tether check", url]))
    }

    #[test]
    fn urls() {
        let t = target("ws://127.0.0.1:8080/demo?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 8080, "/demo?x=1"));
        assert_eq!(t.path_with(&[("tether_offset", "3".into())]), "/demo?x=1&tether_offset=3");
        let t = target("ws://[::1]").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str(), t.authority.as_str()), ("::1", 80, "/", "[::1]"));
        assert_eq!(target("ws://h?a=b").unwrap().path, "/?a=b");
        assert!(target("http://h/").is_err());
        assert!(target("ws://h/?tether_session=x").is_err());
        assert!(target("ws://h:99999/").is_err());
    }
}
