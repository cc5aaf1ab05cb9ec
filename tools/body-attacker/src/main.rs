//! A hostile client of the webhook, for the e2e test of the request-body budget
//! (tests/e2e_bodies.rs): it keeps `--connections` TLS connections to each target, each one
//! POSTing /validate with a `Content-Length` one byte short of 4 MiB, sending all of it but the
//! last byte and then holding the connection, or trickling (`--trickle`, one byte a second).
//! Whenever a connection ends (a 503, a reset, the server closing it), it reconnects at once.
//! It stops after `--seconds` and prints one line of JSON: what it did.
//!
//! It verifies no certificate: an attacker need not trust the server. Not part of trustgate;
//! `cargo build -p trustgate-body-attacker`. In-cluster, `.ci/e2e.sh node` loads it as the image
//! `trustgate-body-attacker:e2e` and the test runs it as a Pod (so that the webhook sees it from
//! a Pod address, as it would see a tenant).
//!
//! Usage: body-attacker [--source IP] [--connections N] [--seconds S] [--trickle] HOST:PORT...

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// The declared body: one byte short of 4 MiB (the default `--max-request-bytes` is 4 MiB).
const DECLARED: usize = 4 * 1024 * 1024 - 1;
static FILLER: [u8; 64 * 1024] = [b' '; 64 * 1024];

#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    /// Body bytes the server's TCP stack accepted.
    bytes: AtomicU64,
    /// Connections that got an HTTP status back (a 503 from the budget, a 408, ...).
    answered: AtomicU64,
    /// Connections that ended without a status (closed or reset).
    dropped: AtomicU64,
    /// Connections open now, and the most at once.
    open: AtomicU64,
    most_open: AtomicU64,
}

struct Options {
    targets: Vec<SocketAddr>,
    source: Option<IpAddr>,
    connections: usize,
    seconds: u64,
    trickle: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options { targets: Vec::new(), source: None, connections: 100, seconds: 60, trickle: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--source" => options.source = Some(value("--source")?.parse().map_err(|e| format!("--source: {e}"))?),
            "--connections" => {
                options.connections = value("--connections")?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            "--seconds" => options.seconds = value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--trickle" => options.trickle = true,
            target => options.targets.push(target.parse().map_err(|e| format!("{target:?}: {e}"))?),
        }
    }
    if options.targets.is_empty() {
        return Err(
            "usage: body-attacker [--source IP] [--connections N] [--seconds S] [--trickle] HOST:PORT...".into()
        );
    }
    Ok(options)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One upload: connect, send the headers and all but the last byte, then wait for the end.
async fn upload(target: SocketAddr, options: &Options, tls: &TlsConnector, tally: &Tally) -> Result<(), String> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| e.to_string())?;
    if let Some(source) = options.source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(target).await.map_err(|e| e.to_string())?;
    let name = ServerName::from(target.ip());
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    tally.connects.fetch_add(1, Ordering::Relaxed);
    let open = tally.open.fetch_add(1, Ordering::Relaxed) + 1;
    tally.most_open.fetch_max(open, Ordering::Relaxed);
    let head = format!(
        "POST /validate?timeout=10s HTTP/1.1\r\nhost: {target}\r\ncontent-type: application/json\r\ncontent-length: {DECLARED}\r\n\r\n"
    );
    let sent = async {
        writer.write_all(head.as_bytes()).await?;
        let mut left = DECLARED - 1;
        while left > 0 {
            let n = if options.trickle { 1 } else { left.min(FILLER.len()) };
            writer.write_all(&FILLER[..n]).await?;
            writer.flush().await?;
            tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
            left -= n;
            if options.trickle {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // All but the last byte: hold the connection until the server ends it.
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    };
    let mut status = [0u8; 12];
    let answered = tokio::select! {
        _ = sent => false,
        read = reader.read_exact(&mut status) => read.is_ok() && status.starts_with(b"HTTP/1.1 "),
    };
    tally.open.fetch_sub(1, Ordering::Relaxed);
    let counter = if answered { &tally.answered } else { &tally.dropped };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(options) => Arc::new(options),
        Err(message) => {
            eprintln!("body-attacker: {message}");
            std::process::exit(2);
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut workers = Vec::new();
    for &target in &options.targets {
        for _ in 0..options.connections {
            let (options, tls, tally) = (options.clone(), tls.clone(), tally.clone());
            workers.push(tokio::spawn(async move {
                // Reconnect as fast as the server lets us, until the deadline.
                while Instant::now() < deadline {
                    let attempt = upload(target, &options, &tls, &tally);
                    match tokio::time::timeout_at(deadline.into(), attempt).await {
                        Err(_) => return,
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "{{\"connects\": {}, \"connectErrors\": {}, \"bodyBytes\": {}, \"answered\": {}, \"dropped\": {}, \"mostOpen\": {}}}",
        load(&tally.connects),
        load(&tally.connect_errors),
        load(&tally.bytes),
        load(&tally.answered),
        load(&tally.dropped),
        load(&tally.most_open),
    );
}
