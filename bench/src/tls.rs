//! `tether-bench tls`: what TLS costs on both of tether's sides.
//!
//! The same stream runs through tether twice per round, interleaved: once
//! plain (clients on ws://, a ws:// backend) and once with TLS on both
//! sides (clients on wss:// to tether's data port, tether to a wss://
//! backend), with certificates made at start by rcgen. The ratio TLS ÷
//! plain is taken within each round, so machine noise between rounds
//! cancels out. The backend runs in this process on its own runtime thread
//! (its TLS must be part of the measurement, which the `backend` child
//! process has none of); every delivered message is checked for order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::procs::{Launcher, Setup};
use crate::stats::{fixed, thousands};

/// `tether-bench tls` options.
#[derive(Debug, Args)]
pub struct TlsOpts {
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 512, 16384])]
    pub sizes: Vec<usize>,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100])]
    pub conns: Vec<usize>,
    /// Rounds; each runs every cell plain, then with TLS.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Payload megabytes each trial moves in all (at least 20,000 messages).
    #[arg(long, default_value_t = 48)]
    pub megabytes: usize,
    /// Where the journals and certificates go (needs a real disk).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Run this `tether` binary instead of the library linked into tether-bench.
    #[arg(long)]
    pub tether_bin: Option<PathBuf>,
}

/// The throwaway CA, the server certificate for 127.0.0.1 and the TLS
/// configurations made from them.
struct Pki {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    fn new(dir: &Path) -> anyhow::Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "tether-bench CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
        std::fs::create_dir_all(dir)?;
        let (cert, key, ca_path) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
        std::fs::write(&cert, leaf.pem())?;
        std::fs::write(&key, leaf_key.serialize_pem())?;
        std::fs::write(&ca_path, ca.pem())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(leaf.der().to_vec())], key_der)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone())?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Pki { cert, key, ca: ca_path, server: Arc::new(server), client: Arc::new(client) })
    }
}

/// The backend: on each connection, waits for a text message `N` and sends
/// N text messages of the trial's size as fast as the socket takes them.
async fn backend(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, size: usize) {
    let payload = Message::text("x".repeat(size));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let (tls, payload) = (tls.clone(), payload.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        produce(stream, payload).await;
                    }
                }
                None => produce(tcp, payload).await,
            }
        });
    }
}

async fn produce<S: AsyncRead + AsyncWrite + Unpin>(stream: S, payload: Message) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        let Some(n) = msg.to_text().ok().and_then(|t| t.parse::<u64>().ok()) else { continue };
        for i in 0..n {
            if ws.feed(payload.clone()).await.is_err() {
                return;
            }
            if i % 64 == 63 && ws.flush().await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// A client connection through tether, either kind of stream.
enum Client {
    Plain(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Tls(Box<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Client {
    async fn connect(data: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>) -> anyhow::Result<Client> {
        let tcp = TcpStream::connect(data).await?;
        tcp.set_nodelay(true)?;
        Ok(match tls {
            None => Client::Plain(Box::new(tokio_tungstenite::client_async(format!("ws://{data}/"), tcp).await?.0)),
            Some(c) => {
                let stream = c.connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp).await?;
                Client::Tls(Box::new(tokio_tungstenite::client_async(format!("wss://{data}/"), stream).await?.0))
            }
        })
    }

    async fn send(&mut self, m: Message) -> anyhow::Result<()> {
        match self {
            Client::Plain(ws) => ws.send(m).await?,
            Client::Tls(ws) => ws.send(m).await?,
        }
        Ok(())
    }

    async fn next_text(&mut self) -> anyhow::Result<String> {
        let m = match self {
            Client::Plain(ws) => ws.next().await,
            Client::Tls(ws) => ws.next().await,
        };
        match m {
            Some(Ok(Message::Text(t))) => Ok(t.to_string()),
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(e)) => Err(e.into()),
            None => bail!("tether closed the connection"),
        }
    }

    /// Reads the welcome, asks for `n` messages and reads them, checking
    /// that their seqs run 1..=n.
    async fn stream(&mut self, n: u64) -> anyhow::Result<()> {
        let welcome = self.next_text().await?;
        if !welcome.starts_with('#') {
            bail!("expected the welcome, got {welcome:?}");
        }
        self.send(Message::text(n.to_string())).await?;
        for want in 1..=n {
            let text = self.next_text().await?;
            let seq = text.split_once(':').and_then(|(s, _)| s.parse::<u64>().ok());
            if seq != Some(want) {
                bail!("expected seq {want}, got {:?}", text.get(..20));
            }
        }
        Ok(())
    }
}

/// One trial: `conns` clients each stream their share; messages/s in all.
async fn trial(l: &Launcher, pki: &Pki, tls: bool, size: usize, conns: usize, total: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = listener.local_addr()?;
    let acceptor = tls.then(|| tokio_rustls::TlsAcceptor::from(pki.server.clone()));
    // The backend gets a runtime of its own, as a separate process would.
    let backend_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let std_listener = listener.into_std()?;
    backend_rt.spawn(async move {
        if let Ok(l) = TcpListener::from_std(std_listener) {
            backend(l, acceptor, size).await;
        }
    });
    let (upstream, extra) = if tls {
        let extra = vec![
            ("TETHER_TLS_CERT_FILE", pki.cert.display().to_string()),
            ("TETHER_TLS_KEY_FILE", pki.key.display().to_string()),
            ("TETHER_TLS_UPSTREAM_CA_FILE", pki.ca.display().to_string()),
        ];
        (format!("wss://localhost:{}", backend_addr.port()), extra)
    } else {
        (format!("ws://{backend_addr}"), Vec::new())
    };
    let tether = l.tether(Setup::JournalNone, &upstream, &extra)?;
    let connector = tls.then(|| tokio_rustls::TlsConnector::from(pki.client.clone()));
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(Client::connect(tether.data, connector.as_ref()).await?);
    }
    let each = (total / conns as u64).max(1);
    let start = Instant::now();
    let tasks: Vec<_> = clients.into_iter().map(|mut c| tokio::spawn(async move { c.stream(each).await })).collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t).await.context("trial timed out")???;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(tether);
    backend_rt.shutdown_background();
    Ok((each * conns as u64) as f64 / secs)
}

/// Runs the TLS matrix and prints a Markdown table on stdout.
pub async fn run(o: TlsOpts, l: Launcher) -> anyhow::Result<bool> {
    let pki = Pki::new(&l.data_root().join("pki"))?;
    let mut rows = Vec::new();
    for &size in &o.sizes {
        for &conns in &o.conns {
            let total = ((o.megabytes << 20) / size).max(20_000) as u64;
            let (mut plain, mut tls, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..o.runs {
                let p = trial(&l, &pki, false, size, conns, total).await?;
                let t = trial(&l, &pki, true, size, conns, total).await?;
                eprintln!("tls: {size} B x {conns}, round {}: plain {p:.0}/s, tls {t:.0}/s", run + 1);
                plain.push(p);
                tls.push(t);
                ratios.push(t / p);
            }
            rows.push((size, conns, median(&mut plain), median(&mut tls), median(&mut ratios), min(&ratios)));
        }
    }
    println!("| payload | connections | plain (msg/s) | TLS both sides (msg/s) | TLS ÷ plain (median) | worst round |");
    println!("|---|---|---|---|---|---|");
    for (size, conns, p, t, r, worst) in rows {
        println!(
            "| {size} B | {conns} | {} | {} | {} | {} |",
            thousands(p),
            thousands(t),
            fixed(r, 2),
            fixed(worst, 2)
        );
    }
    Ok(true)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Checks the options before anything starts.
pub fn check(o: &TlsOpts) -> anyhow::Result<()> {
    if o.runs == 0 || o.sizes.is_empty() || o.conns.contains(&0) {
        return Err(anyhow!("--runs, --sizes and --conns must be non-empty and positive"));
    }
    Ok(())
}
