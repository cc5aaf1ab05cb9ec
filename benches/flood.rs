//! Connection-flood benchmark of `trustgate serve` (the release binary): while one address
//! (127.0.0.2) keeps taking every connection it can and never speaks, or stops in the middle of
//! its TLS ClientHello, another address (127.0.0.1, the API server) sends reviews, each on a new
//! TLS connection, one after the other. Target: every review answered, p99 under 100 ms.
//!
//!     ulimit -n 20000; cargo bench --bench flood      (or `just bench-flood`)
//!
//! The hog holds up to TRUSTGATE_FLOOD_CONNECTIONS (6,000) connections at once and opens a new
//! one as soon as the server closes one, as fast as it can: a refusal costs the server an accept
//! and a close, and the hog never lets up. Each phase (no flood, idle flood, mid-handshake flood)
//! warms up for TRUSTGATE_FLOOD_WARMUP_SECS (3) and then sends TRUSTGATE_FLOOD_REVIEWS (40)
//! reviews; a review not answered within 10 s counts as failed.
//!
//! TRUSTGATE_FLOOD_BIN runs another build of the binary (for a before/after comparison; the
//! server is started with flags every version has). TRUSTGATE_FLOOD_SERVER_ARGS adds flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

const API_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const HOG: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The first bytes of a TLS ClientHello record, and then nothing.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a];

const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Server {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn status(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_owned()).unwrap_or_default()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, Iterator::count)
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// A plain-HTTP GET on the admin port; the body, if 200.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(admin).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.ok()?;
    response.starts_with("HTTP/1.1 200").then(|| response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))?
}

/// The hog: keeps `target` connections open from 127.0.0.2, reopening each one the server
/// closes at once.
struct Hog {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hog {
    fn start(addr: SocketAddr, target: usize, partial: bool) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let tasks = (0..target)
            .map(|_| {
                let (stop, open, opened) = (stop.clone(), open.clone(), opened.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut tcp) = connect_from(HOG, addr).await else {
                            // Out of ports or the backlog is full: try again shortly.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        opened.fetch_add(1, Ordering::Relaxed);
                        open.fetch_add(1, Ordering::Relaxed);
                        if partial {
                            let _ = tcp.write_all(PARTIAL_CLIENT_HELLO).await;
                        }
                        // Never speaks (further); waits for the server to close.
                        let mut buf = [0u8; 64];
                        loop {
                            tokio::select! {
                                read = tcp.read(&mut buf) => match read {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                },
                                () = tokio::time::sleep(Duration::from_millis(200)) => {
                                    if stop.load(Ordering::Relaxed) {
                                        break;
                                    }
                                }
                            }
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Hog { stop, open, opened, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One review on a new TLS connection from 127.0.0.1: connect, handshake, POST, full answer.
async fn review(addr: SocketAddr, config: Arc<rustls::ClientConfig>, request: &[u8]) -> Result<(), String> {
    let tcp = connect_from(API_SERVER, addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.map_err(|e| format!("read: {e}"))?;
    if !response.starts_with(b"HTTP/1.1 200 ") {
        return Err(format!("answer: {}", String::from_utf8_lossy(&response[..response.len().min(80)])));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// The admin metrics lines of the connection counters.
fn connection_counters(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("trustgate_admission_connections_") || l.starts_with("trustgate_admission_open_"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    let target: usize = setting("TRUSTGATE_FLOOD_CONNECTIONS", 6000);
    let reviews: usize = setting("TRUSTGATE_FLOOD_REVIEWS", 40);
    let warmup = Duration::from_secs(setting("TRUSTGATE_FLOOD_WARMUP_SECS", 3));
    let binary: String = setting("TRUSTGATE_FLOOD_BIN", env!("CARGO_BIN_EXE_trustgate").to_owned());
    let extra: String = setting("TRUSTGATE_FLOOD_SERVER_ARGS", String::new());

    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_port(), free_port());
    let mut command = Command::new(&binary);
    command
        .args(["serve", "--self-signed", "--log-format", "json"])
        .arg("--ca-bundle-out")
        .arg(dir.path().join("ca.pem"))
        .arg("--policy-file")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies"))
        .args(["--addr", &addr.to_string(), "--admin-addr", &admin.to_string()])
        .args(extra.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Server { child: command.spawn().expect("trustgate serve starts"), addr, admin };

    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pod-create-denied.json")).unwrap();
    let mut request = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while admin_get(server.admin, "/readyz").await.is_none() {
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&pem).unwrap()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session resumption: each review pays for a full handshake, as a new API-server
        // connection does.
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        let limit = std::process::Command::new("sh").args(["-c", "ulimit -n"]).output().map_or_else(
            |_| "?".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
        println!("flood: {binary}; hog up to {target} connections from {HOG}; {reviews} reviews from {API_SERVER}, each on a new TLS connection; open-file limit {limit}");

        for (name, flood) in [("no flood", None), ("idle flood", Some(false)), ("mid-handshake flood", Some(true))] {
            let hog = flood.map(|partial| Hog::start(server.addr, target, partial));
            tokio::time::sleep(warmup).await;
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..reviews {
                let started = Instant::now();
                match tokio::time::timeout(REVIEW_TIMEOUT, review(server.addr, config.clone(), &request)).await {
                    Ok(Ok(())) => latencies.push(started.elapsed().as_secs_f64() * 1000.0),
                    Ok(Err(e)) => failures.push(e),
                    Err(_) => failures.push(format!("no answer within {REVIEW_TIMEOUT:?}")),
                }
            }
            let (held, opened) = hog.as_ref().map_or((0, 0), |h| (h.open.load(Ordering::Relaxed), h.opened.load(Ordering::Relaxed)));
            let fds = server.open_fds();
            let rss = server.status("VmRSS:");
            let metrics = admin_get(server.admin, "/metrics").await.unwrap_or_default();
            if let Some(hog) = hog {
                hog.stop().await;
            }
            latencies.sort_by(f64::total_cmp);
            let summary = if latencies.is_empty() {
                "none answered".to_owned()
            } else {
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    percentile(&latencies, 0.5),
                    percentile(&latencies, 0.99),
                    percentile(&latencies, 1.0)
                )
            };
            println!(
                "{name:>20}: {}/{reviews} answered, {summary}; hog held {held} open, opened {opened} in all; server fds {fds}, RSS {rss}",
                latencies.len()
            );
            if !failures.is_empty() {
                println!("{:>20}  failed: {failures:?}", "");
            }
            let counters = connection_counters(&metrics);
            if !counters.is_empty() {
                println!("{:>20}  {counters}", "");
            }
            // Let the server close what the hog left before the next phase.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
