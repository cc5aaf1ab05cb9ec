//! Request-body memory benchmark of `trustgate serve` (the release binary): attackers on four
//! addresses (127.0.0.2 to 127.0.0.5) open requests that declare a body one byte under the 4 MiB
//! limit and never finish it, while the API server's address (127.0.0.1) sends reviews. Targets:
//! server RSS under 128 MiB in every phase, every review answered, p99 under 100 ms in every
//! phase, and RSS back within 10 MiB of the idle figure once the attack is over.
//!
//!     ulimit -n 20000; cargo bench --bench bodies      (or `just bench-bodies`)
//!
//! One server runs through all the phases:
//!
//! - idle: a warm-up of a few hundred reviews, then the RSS the recovery is compared with.
//! - stall: 1,000 HTTP/1.1 connections (250 per attacker address) each send the head of
//!   `POST /validate` with `content-length: 4194303`, then all of the body but its last byte as
//!   fast as the socket takes it, then wait.
//! - trickle: the same 1,000 connections send the body one byte a second.
//! - h2: 50 HTTP/2 connections with 100 streams each, every stream such a POST uploading as far as
//!   flow control lets it and never ending.
//! - recovery: the attackers gone, TRUSTGATE_BODIES_RECOVERY_SECS later, RSS against idle.
//!
//! An attacker whose connection or stream the server answers, resets or closes opens another at
//! once. For the TRUSTGATE_BODIES_PHASE_SECS of each attack, from its start, come from 127.0.0.1:
//! reviews each on a new TLS connection, one after the other, spread over the phase, and
//! reviews at a fixed rate on a few kept-alive connections, paced open-loop (a
//! review's latency counts from when it was due, so a slow server cannot hide behind a client
//! that waits for it; the time on the connection, without the wait for a free one, is printed
//! beside it). A review not answered `200` with `allowed: false` within 10 s is failed.
//! The server's VmRSS is sampled every 100 ms; a phase whose RSS passes
//! TRUSTGATE_BODIES_RSS_ABORT_MIB (plus what earlier phases left the server holding above its idle
//! figure, so that one phase's leftovers do not stop the next at once) is stopped there, and
//! reported so.
//!
//! Settings (environment):
//!
//! - TRUSTGATE_BODIES_BIN: the server binary [default: target/release/trustgate, built with
//!   `cargo build --release --locked` if missing]; TRUSTGATE_BODIES_SERVER_ARGS: more `serve` flags.
//! - TRUSTGATE_BODIES_PHASES: which attack phases, in order [stall,trickle,h2].
//! - TRUSTGATE_BODIES_PHASE_SECS [20], TRUSTGATE_BODIES_RECOVERY_SECS [30].
//! - TRUSTGATE_BODIES_RSS_ABORT_MIB [1536].
//! - TRUSTGATE_BODIES_CONNECTIONS: HTTP/1.1 attacker connections [1000];
//!   TRUSTGATE_BODIES_H2_CONNECTIONS [50] and TRUSTGATE_BODIES_H2_STREAMS per connection [100].
//! - TRUSTGATE_BODIES_REVIEWS: reviews on new connections per phase [40];
//!   TRUSTGATE_BODIES_RATE: kept-alive reviews per second [500] on
//!   TRUSTGATE_BODIES_KEEPALIVE connections [16].
//!
//! The server's log goes to target/tmp/bodies-server.log. The benchmark reports and exits 0
//! whether the targets pass or not; it fails only when it cannot run.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

const API_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ATTACKERS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)),
];

/// The length attackers declare: one byte short of the server's 4 MiB body limit, so the server
/// cannot refuse it from the header alone.
const DECLARED: usize = 4 * 1024 * 1024 - 1;
/// What attackers send of it: the last byte never comes.
const SENT: usize = DECLARED - 1;
/// Every attacker body is cut from this one buffer (HTTP/2 sends slices of it without a copy),
/// so a thousand uploads cost the load generator no memory of their own.
static FILLER: [u8; 64 * 1024] = [b' '; 64 * 1024];

const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

const RSS_TARGET_KIB: u64 = 128 * 1024;
const P99_TARGET_MS: f64 = 100.0;
const RECOVERY_SLACK_KIB: u64 = 10 * 1024;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Server {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }
}

/// The VmRSS of a process in KiB; `None` once it has exited (a zombie has no VmRSS line).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Why a connection never got to carry a request.
enum ConnectError {
    /// The local side failed (out of ports, the listen backlog full): worth a short pause.
    Connect(String),
    /// The server closed it or broke off the handshake: how a refusal looks from outside.
    Handshake(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Connect(e) => write!(f, "connect: {e}"),
            ConnectError::Handshake(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

async fn tls_connect(
    source: IpAddr,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tcp = connect_from(source, addr).await.map_err(|e| ConnectError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))
}

fn client_config(ca_pem: &[u8], alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem).expect("the CA bundle is PEM")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    // No session resumption: every new connection pays for a full handshake, as a new
    // API-server connection (and an attacker that wants to cost the server most) does.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
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

/// The metrics lines about request bodies and rejected requests, and the connection refusals
/// that explain what attackers saw as refused.
fn body_metrics(metrics: &str) -> Vec<&str> {
    const PREFIXES: [&str; 4] = [
        "trustgate_admission_body",
        "trustgate_admission_rejected_requests",
        "trustgate_admission_connections_refused",
        "trustgate_admission_connections_shed",
    ];
    metrics.lines().filter(|l| PREFIXES.iter().any(|p| l.starts_with(p))).collect()
}

/// The memory of TCP socket buffers on the whole machine, in KiB (`/proc/net/sockstat` counts
/// pages): bytes a server leaves unread sit there, outside its RSS, and both ends of every
/// loopback connection count.
fn tcp_buffers_kib() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut fields = tcp.split_whitespace();
    while let Some(field) = fields.next() {
        if field == "mem" {
            return fields.next()?.parse::<u64>().ok().map(|pages| pages * 4);
        }
    }
    None
}

/// Samples the server's RSS every 100 ms on a thread of its own, so that a load generator busy
/// with a thousand connections cannot delay the samples; past `abort_kib` (or if the server
/// exits) it cancels the phase.
struct RssWatch {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<RssReport>,
}

struct RssReport {
    max_kib: u64,
    /// The RSS past which the phase is stopped.
    abort_kib: u64,
    /// When the phase was stopped for passing it.
    stopped_after: Option<Duration>,
    server_gone: bool,
    /// The most the machine's TCP buffers held ([`tcp_buffers_kib`]).
    tcp_buffers_max_kib: u64,
}

impl RssWatch {
    fn start(pid: u32, abort_kib: u64, abort: CancellationToken) -> RssWatch {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut report = RssReport {
                    max_kib: 0,
                    abort_kib,
                    stopped_after: None,
                    server_gone: false,
                    tcp_buffers_max_kib: 0,
                };
                while !done.load(Ordering::Relaxed) {
                    let Some(rss) = rss_kib(pid) else {
                        report.server_gone = true;
                        abort.cancel();
                        break;
                    };
                    report.max_kib = report.max_kib.max(rss);
                    report.tcp_buffers_max_kib = report.tcp_buffers_max_kib.max(tcp_buffers_kib().unwrap_or(0));
                    if rss > abort_kib && report.stopped_after.is_none() {
                        report.stopped_after = Some(started.elapsed());
                        abort.cancel();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                report
            })
        };
        RssWatch { done, thread }
    }

    fn finish(self) -> RssReport {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("the RSS watch panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// The API server's reviews

/// What one kind of review traffic saw: latencies of the right answers, and the failures.
#[derive(Default)]
struct Reviews {
    latencies_ms: Vec<f64>,
    /// Kept-alive reviews only: from the request's start on its connection to the answer, without
    /// the time it waited for a free connection. Tells the server's time from queueing here.
    service_ms: Vec<f64>,
    failed: usize,
    /// Failures by their (shortened) message, so that 10,000 alike print as one line.
    errors: BTreeMap<String, usize>,
}

impl Reviews {
    fn record(&mut self, result: Result<(), String>, latency: Duration) {
        match result {
            Ok(()) => self.latencies_ms.push(latency.as_secs_f64() * 1000.0),
            Err(error) => {
                self.failed += 1;
                let short: String = error.chars().take(100).collect();
                *self.errors.entry(short).or_insert(0) += 1;
            }
        }
    }

    fn merge(&mut self, other: Reviews) {
        self.latencies_ms.extend(other.latencies_ms);
        self.service_ms.extend(other.service_ms);
        self.failed += other.failed;
        for (error, n) in other.errors {
            *self.errors.entry(error).or_insert(0) += n;
        }
    }

    fn sort(&mut self) {
        self.latencies_ms.sort_by(f64::total_cmp);
        self.service_ms.sort_by(f64::total_cmp);
    }

    fn answered(&self) -> usize {
        self.latencies_ms.len()
    }

    /// On sorted latencies.
    fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies_ms, p)
    }

    fn summary(&self) -> String {
        let total = self.answered() + self.failed;
        let mut line = match (self.percentile(0.5), self.percentile(0.99), self.percentile(1.0)) {
            (Some(p50), Some(p99), Some(max)) => {
                format!("{}/{total} answered, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms", self.answered())
            }
            _ => format!("0/{total} answered"),
        };
        let service = &self.service_ms;
        if let (Some(p50), Some(p99), Some(max)) =
            (percentile(service, 0.5), percentile(service, 0.99), percentile(service, 1.0))
        {
            line += &format!(" (on the connection: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms)");
        }
        line
    }

    fn failures(&self) -> String {
        self.errors.iter().map(|(e, n)| format!("{n}x {e}")).collect::<Vec<_>>().join("; ")
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn review_request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/validate")
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// The right answer to the fixture: 200 and an AdmissionReview that denies it.
async fn check_answer(response: hyper::Response<Incoming>) -> Result<(), String> {
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(60)]).trim_end()));
    }
    let review: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
    match review.pointer("/response/allowed") {
        Some(serde_json::Value::Bool(false)) => Ok(()),
        other => Err(format!("response.allowed is {other:?}, not false")),
    }
}

/// One review on a new TLS connection from 127.0.0.1: connect, handshake, POST, full answer.
async fn review_on_new_connection(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    body: &Bytes,
) -> Result<(), String> {
    let tls = tls_connect(API_SERVER, addr, config).await.map_err(|e| e.to_string())?;
    let (mut send, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    let exchange = async move {
        let result = match send.send_request(review_request(body)).await {
            Ok(response) => check_answer(response).await,
            Err(e) => Err(format!("request: {e}")),
        };
        // Dropping the sender lets the connection future below finish.
        drop(send);
        result
    };
    // Both driven here, not the connection spawned: a review that times out leaves nothing behind.
    let (result, _) = tokio::join!(exchange, connection);
    result
}

/// Reviews on new connections, `count` of them started evenly over `span`, each after the one
/// before it has finished (as flood.rs sends them).
async fn one_by_one(
    count: usize,
    span: Duration,
    stop: CancellationToken,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    body: Bytes,
) -> Reviews {
    let mut reviews = Reviews::default();
    let start = Instant::now();
    for i in 0..count {
        let due = start + span.mul_f64(i as f64 / count as f64);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let started = Instant::now();
        let result = tokio::time::timeout(REVIEW_TIMEOUT, review_on_new_connection(addr, config.clone(), &body))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REVIEW_TIMEOUT:?}")));
        reviews.record(result, started.elapsed());
    }
    reviews
}

/// A kept-alive HTTP/1.1 connection from 127.0.0.1; its driver task goes with it.
struct KeptAlive {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for KeptAlive {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl KeptAlive {
    async fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<KeptAlive, String> {
        let tls = tls_connect(API_SERVER, addr, config).await.map_err(|e| e.to_string())?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(KeptAlive { send, driver })
    }

    async fn review(&mut self, body: &Bytes) -> Result<(), String> {
        self.send.ready().await.map_err(|e| format!("connection closed: {e}"))?;
        let response = self.send.send_request(review_request(body)).await.map_err(|e| format!("request: {e}"))?;
        check_answer(response).await
    }
}

/// Takes due times off the shared queue and sends a review for each on its own kept-alive
/// connection, reopened after any failure (a timed-out request leaves it in an unknown state).
async fn kept_alive_worker(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    body: Bytes,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>,
) -> Reviews {
    let mut reviews = Reviews::default();
    // Opened before the first review is due, so that kept-alive latencies are those of kept-alive
    // connections; a failure here shows in the first review.
    let mut connection =
        tokio::time::timeout(REVIEW_TIMEOUT, KeptAlive::open(addr, config.clone())).await.ok().and_then(Result::ok);
    loop {
        let Some(due) = queue.lock().await.recv().await else { break };
        let started = Instant::now();
        let attempt = async {
            if connection.is_none() {
                connection = Some(KeptAlive::open(addr, config.clone()).await?);
            }
            connection.as_mut().unwrap().review(&body).await
        };
        // The 10 s count from when the review was due: time spent queued behind busy
        // connections is the server's slowness too.
        let result = tokio::time::timeout_at((due + REVIEW_TIMEOUT).into(), attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REVIEW_TIMEOUT:?}")));
        if result.is_err() {
            connection = None;
        } else {
            reviews.service_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        reviews.record(result, due.elapsed());
    }
    reviews
}

/// The API server's traffic for `span` (or until `stop`): reviews on new connections one after
/// the other, and reviews at `rate` per second on `connections` kept-alive connections.
#[allow(clippy::too_many_arguments)]
async fn legit_traffic(
    span: Duration,
    stop: CancellationToken,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    body: Bytes,
    new_connection_reviews: usize,
    rate: f64,
    connections: usize,
) -> (Reviews, Reviews) {
    let (due, queue) = mpsc::unbounded_channel();
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let connections = if rate > 0.0 { connections } else { 0 };
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(kept_alive_worker(addr, config.clone(), body.clone(), queue.clone())))
        .collect();
    // Open-loop: the due times follow the clock, whatever the answers do. Unbounded, since the
    // pacer must never wait for the workers; at most rate x span entries.
    let pacer = {
        let stop = stop.clone();
        async move {
            let start = Instant::now();
            // A rate of 0 sends no kept-alive reviews.
            for n in (0u64..).take_while(|_| rate > 0.0) {
                let at = start + Duration::from_secs_f64(n as f64 / rate);
                if at >= start + span {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(at.into()) => {}
                }
                if due.send(at).is_err() {
                    break;
                }
            }
            // Dropping `due` closes the queue: the workers finish what is in it and return.
        }
    };
    let (_, mut fresh) =
        tokio::join!(pacer, one_by_one(new_connection_reviews, span, stop, addr, config.clone(), body.clone()));
    let mut kept = Reviews::default();
    for worker in workers {
        kept.merge(worker.await.expect("a review worker panicked"));
    }
    fresh.sort();
    kept.sort();
    (fresh, kept)
}

// ---------------------------------------------------------------------------------------------
// The attackers

/// What the attackers of one phase saw.
#[derive(Default)]
struct Tally {
    /// Connections that got as far as sending a request.
    opened: AtomicU64,
    /// Connections the server closed or broke off before a request could be sent.
    refused: AtomicU64,
    /// Connections the server closed after the request was sent, without answering it.
    closed: AtomicU64,
    /// HTTP/2 streams opened.
    streams: AtomicU64,
    /// Requests (or streams) in flight now, and the most at once.
    open: AtomicUsize,
    peak: AtomicUsize,
    /// How many the attack keeps in flight when the server lets it.
    target: AtomicUsize,
    /// Answers the server sent, by status.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Other endings (HTTP/2 resets, connection errors), by what they were.
    notes: Mutex<BTreeMap<String, u64>>,
}

/// Counts a request in flight while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tally {
    fn in_flight(&self) -> InFlight<'_> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        InFlight(&self.open)
    }

    fn answered(&self, status: u16) {
        *self.statuses.lock().unwrap().entry(status).or_insert(0) += 1;
    }

    fn note(&self, what: String) {
        *self.notes.lock().unwrap().entry(what).or_insert(0) += 1;
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn status(&self, status: u16) -> u64 {
        self.statuses.lock().unwrap().get(&status).copied().unwrap_or(0)
    }

    fn summary(&self, http2: bool) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let answers = {
            let statuses = self.statuses.lock().unwrap();
            if statuses.is_empty() {
                "none".to_owned()
            } else {
                statuses.iter().map(|(s, n)| format!("{n}x {s}")).collect::<Vec<_>>().join(", ")
            }
        };
        let mut line = format!(
            "attackers: {} connections opened, {} refused, {} closed by the server",
            load(&self.opened),
            load(&self.refused),
            load(&self.closed)
        );
        if http2 {
            line += &format!("; {} streams opened", load(&self.streams));
        }
        line += &format!(
            "; at most {} of {} requests in flight",
            self.peak.load(Ordering::Relaxed),
            self.target.load(Ordering::Relaxed)
        );
        line += &format!("; answers: {answers}; {} x 503", self.status(503));
        let notes = self.notes.lock().unwrap();
        if !notes.is_empty() {
            line += &format!("; {}", notes.iter().map(|(w, n)| format!("{n}x {w}")).collect::<Vec<_>>().join(", "));
        }
        line
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attack {
    Stall,
    Trickle,
    H2,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::Stall => "stall",
            Attack::Trickle => "trickle",
            Attack::H2 => "h2",
        }
    }
}

/// Sends what an attacker sends of its body; returns only when the server stops taking it.
async fn send_body<W: tokio::io::AsyncWrite + Unpin>(writer: &mut W, attack: Attack) -> std::io::Result<()> {
    if attack == Attack::Trickle {
        for _ in 0..SENT {
            writer.write_all(b" ").await?;
            writer.flush().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    } else {
        let mut left = SENT;
        while left > 0 {
            let n = left.min(FILLER.len());
            writer.write_all(&FILLER[..n]).await?;
            left -= n;
        }
        writer.flush().await?;
    }
    Ok(())
}

/// The status of the server's answer, or `None` if it closed the connection without one.
async fn read_status<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while head.len() < b"HTTP/1.1 200".len() {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// One HTTP/1.1 attacker: a connection at a time, each a never-finished POST, the next one
/// opened as soon as the server answers or closes the last.
async fn http1_attacker(
    source: IpAddr,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    attack: Attack,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let head = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {DECLARED}\r\n\r\n"
    );
    let one = async || {
        let tls = match tls_connect(source, addr, config.clone()).await {
            Ok(tls) => tls,
            Err(ConnectError::Connect(_)) => {
                Tally::count(&tally.refused);
                // Nothing reached the server: pause instead of spinning on a local error.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return;
            }
            Err(ConnectError::Handshake(_)) => return Tally::count(&tally.refused),
        };
        let (mut reader, mut writer) = tokio::io::split(tls);
        if writer.write_all(head.as_bytes()).await.is_err() {
            return Tally::count(&tally.closed);
        }
        Tally::count(&tally.opened);
        let _in_flight = tally.in_flight();
        let upload = async {
            // A failed write means the server stopped reading: its answer (or close) is what
            // ends this connection, so wait for the reader.
            let _ = send_body(&mut writer, attack).await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            status = read_status(&mut reader) => match status {
                Some(status) => tally.answered(status),
                None => Tally::count(&tally.closed),
            },
            () = upload => {}
        }
    };
    while !stop.is_cancelled() {
        tokio::select! {
            // Dropping the connection closes it.
            () = stop.cancelled() => return,
            () = one() => {}
        }
    }
}

/// Uploads as much of a stream's body as flow control lets through, and returns once the body
/// is all sent but for its last byte or the stream is gone.
async fn upload_h2(body: &mut h2::SendStream<Bytes>) {
    let mut sent = 0;
    while sent < SENT {
        body.reserve_capacity((SENT - sent).min(FILLER.len()));
        match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
            Some(Ok(0)) => tokio::task::yield_now().await,
            Some(Ok(granted)) => {
                let n = granted.min(SENT - sent);
                if body.send_data(Bytes::from_static(&FILLER[..n]), false).is_err() {
                    return;
                }
                sent += n;
            }
            Some(Err(_)) | None => return,
        }
    }
}

/// One HTTP/2 stream slot: a never-finished POST at a time, reopened when the server answers or
/// resets it; returns when the connection is gone.
async fn h2_stream(mut client: h2::client::SendRequest<Bytes>, tally: Arc<Tally>) {
    loop {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => return,
        };
        let request = Request::post("https://localhost/validate")
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, DECLARED)
            .body(())
            .unwrap();
        let Ok((response, mut body)) = client.send_request(request, false) else { return };
        Tally::count(&tally.streams);
        let _in_flight = tally.in_flight();
        let upload = async {
            upload_h2(&mut body).await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            // An answer followed at once by a reset counts as the answer.
            biased;
            answer = response => match answer {
                Ok(response) => tally.answered(response.status().as_u16()),
                Err(e) if e.is_reset() => {
                    tally.note(format!("streams reset ({})", e.reason().map_or("?".to_owned(), |r| format!("{r:?}"))));
                }
                Err(_) => return,
            },
            () = upload => {}
        }
    }
}

/// One HTTP/2 attacker connection with `streams` stream slots, reconnected whenever the server
/// closes it.
async fn h2_attacker(
    source: IpAddr,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    streams: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let one = async || {
        let tls = match tls_connect(source, addr, config.clone()).await {
            Ok(tls) => tls,
            Err(ConnectError::Connect(_)) => {
                Tally::count(&tally.refused);
                tokio::time::sleep(Duration::from_millis(10)).await;
                return;
            }
            Err(ConnectError::Handshake(_)) => return Tally::count(&tally.refused),
        };
        let Ok((client, connection)) = h2::client::handshake(tls).await else {
            return Tally::count(&tally.refused);
        };
        Tally::count(&tally.opened);
        // Dropped with this future: that aborts the streams' tasks.
        let mut slots = tokio::task::JoinSet::new();
        for _ in 0..streams {
            slots.spawn(h2_stream(client.clone(), tally.clone()));
        }
        drop(client);
        tokio::select! {
            ended = connection => {
                Tally::count(&tally.closed);
                if let Err(e) = ended {
                    tally.note(format!("connections ended ({})", e.reason().map_or_else(|| e.to_string(), |r| format!("{r:?}"))));
                }
            }
            () = async { while slots.join_next().await.is_some() {} } => Tally::count(&tally.closed),
        }
    };
    while !stop.is_cancelled() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = one() => {}
        }
    }
}

/// Starts an attack's tasks on `runtime`, spread evenly over the attacker addresses. Returns
/// them and how many requests (HTTP/1.1) or streams (HTTP/2) it keeps open at most.
fn start_attack(
    attack: Attack,
    runtime: &tokio::runtime::Handle,
    addr: SocketAddr,
    configs: &Configs,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> (Vec<tokio::task::JoinHandle<()>>, usize) {
    let source = |i: usize| ATTACKERS[i % ATTACKERS.len()];
    match attack {
        Attack::Stall | Attack::Trickle => {
            let tasks = (0..configs.connections)
                .map(|i| {
                    let task =
                        http1_attacker(source(i), addr, configs.http1.clone(), attack, tally.clone(), stop.clone());
                    runtime.spawn(task)
                })
                .collect();
            (tasks, configs.connections)
        }
        Attack::H2 => {
            let tasks = (0..configs.h2_connections)
                .map(|i| {
                    let task = h2_attacker(
                        source(i),
                        addr,
                        configs.h2.clone(),
                        configs.h2_streams,
                        tally.clone(),
                        stop.clone(),
                    );
                    runtime.spawn(task)
                })
                .collect();
            (tasks, configs.h2_connections * configs.h2_streams)
        }
    }
}

struct Configs {
    http1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    connections: usize,
    h2_connections: usize,
    h2_streams: usize,
}

// ---------------------------------------------------------------------------------------------
// Phases and the report

struct Phase {
    name: &'static str,
    rss_start_kib: u64,
    rss: RssReport,
    fresh: Reviews,
    kept: Reviews,
    tally: Option<Arc<Tally>>,
}

impl Phase {
    /// " (stopped after ...)" when the phase was cut short, else nothing.
    fn rss_note(&self) -> String {
        let mut notes = Vec::new();
        if let Some(after) = self.rss.stopped_after {
            let passed = mib(self.rss.abort_kib);
            notes.push(format!("stopped after {:.1} s: RSS passed {passed:.0} MiB", after.as_secs_f64()));
        }
        if self.rss.server_gone {
            notes.push("THE SERVER EXITED".to_owned());
        }
        if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
    }

    fn p99_ok(&self) -> bool {
        [&self.fresh, &self.kept].iter().all(|r| r.percentile(0.99).is_some_and(|p| p < P99_TARGET_MS))
    }

    fn failed(&self) -> usize {
        self.fresh.failed + self.kept.failed
    }
}

async fn print_phase(phase: &Phase, server: &Server) {
    println!(
        "{:>8}: RSS max {:.1} MiB{}, at start {:.1} MiB ({:+.1} MiB in the phase); server fds {}; \
         TCP buffers (machine) max {:.1} MiB",
        phase.name,
        mib(phase.rss.max_kib),
        phase.rss_note(),
        mib(phase.rss_start_kib),
        mib(phase.rss.max_kib) - mib(phase.rss_start_kib),
        server.open_fds(),
        mib(phase.rss.tcp_buffers_max_kib)
    );
    for (kind, reviews) in [("new-connection", &phase.fresh), ("kept-alive", &phase.kept)] {
        println!("{:>8}  {kind} reviews: {}", "", reviews.summary());
        if reviews.failed > 0 {
            println!("{:>8}    failed: {}", "", reviews.failures());
        }
    }
    if let Some(tally) = &phase.tally {
        println!("{:>8}  {}", "", tally.summary(phase.name == Attack::H2.name()));
    }
    // Counters are cumulative since the server started.
    let metrics = admin_get(server.admin, "/metrics").await.unwrap_or_default();
    for line in body_metrics(&metrics) {
        println!("{:>8}  {line}", "");
    }
}

fn latency_cell(reviews: &Reviews) -> String {
    match (reviews.percentile(0.5), reviews.percentile(0.99)) {
        (Some(p50), Some(p99)) => format!("{}/{} {p50:.1}/{p99:.1}", reviews.answered(), reviews.failed),
        _ => format!("{}/{} -", reviews.answered(), reviews.failed),
    }
}

fn main() {
    let phase_span = Duration::from_secs(setting("TRUSTGATE_BODIES_PHASE_SECS", 20));
    let recovery_span = Duration::from_secs(setting("TRUSTGATE_BODIES_RECOVERY_SECS", 30));
    let abort_mib: u64 = setting("TRUSTGATE_BODIES_RSS_ABORT_MIB", 1536);
    let reviews: usize = setting("TRUSTGATE_BODIES_REVIEWS", 40);
    let rate: f64 = setting("TRUSTGATE_BODIES_RATE", 500.0);
    let keepalive: usize = setting("TRUSTGATE_BODIES_KEEPALIVE", 16);
    let phases: String = setting("TRUSTGATE_BODIES_PHASES", "stall,trickle,h2".to_owned());
    let extra: String = setting("TRUSTGATE_BODIES_SERVER_ARGS", String::new());
    let attacks: Vec<Attack> = phases
        .split(',')
        .map(|p| match p.trim() {
            "stall" => Attack::Stall,
            "trickle" => Attack::Trickle,
            "h2" => Attack::H2,
            other => panic!("TRUSTGATE_BODIES_PHASES: no phase {other:?} (stall, trickle, h2)"),
        })
        .collect();

    // Cargo builds the binary for the bench (target/release/trustgate); the fallback covers a
    // bench executable run by hand after the binary was removed.
    let binary: String = setting("TRUSTGATE_BODIES_BIN", env!("CARGO_BIN_EXE_trustgate").to_owned());
    if !std::path::Path::new(&binary).exists() && std::env::var_os("TRUSTGATE_BODIES_BIN").is_none() {
        let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .args(["build", "--release", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(built.success(), "cargo build --release --locked failed");
    }

    let dir = tempfile::tempdir().unwrap();
    let log_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bodies-server.log");
    let log = std::fs::File::create(&log_path).expect("the server log can be created");
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
        .stderr(log);
    let server = Server { child: command.spawn().expect("trustgate serve starts"), admin };
    let pid = server.pid();

    let body = Bytes::from(
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deployment-create-denied.json")).unwrap(),
    );

    // Two runtimes: the attackers' thousand connections on one, the API server's reviews on the
    // other, so that a review is never queued behind attacker tasks in this process (the two
    // still share the machine's CPUs with each other and the server, as they would share a node).
    let attack_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("attack")
        .enable_all()
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("legit")
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while admin_get(server.admin, "/readyz").await.is_none() {
            assert!(Instant::now() < deadline, "the server never became ready (log: {})", log_path.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let configs = Configs {
            http1: client_config(&pem, b"http/1.1"),
            h2: client_config(&pem, b"h2"),
            connections: setting("TRUSTGATE_BODIES_CONNECTIONS", 1000),
            h2_connections: setting("TRUSTGATE_BODIES_H2_CONNECTIONS", 50),
            h2_streams: setting("TRUSTGATE_BODIES_H2_STREAMS", 100),
        };
        let limit = Command::new("sh").args(["-c", "ulimit -n"]).output().map_or_else(
            |_| "?".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
        println!(
            "bodies: {binary} {extra}; attackers from {}..={} declare {DECLARED}-byte bodies and never finish; \
             {reviews} new-connection reviews and {rate} kept-alive reviews/s on {keepalive} connections from \
             {API_SERVER} per {} s phase; open-file limit {limit}; server log {}",
            ATTACKERS[0],
            ATTACKERS[ATTACKERS.len() - 1],
            phase_span.as_secs(),
            log_path.display()
        );

        let legit = |span: Duration, stop: CancellationToken, count: usize, rate: f64| {
            legit_traffic(span, stop, addr, configs.http1.clone(), body.clone(), count, rate, keepalive)
        };
        let mut results = Vec::new();

        // Idle: a warm-up (the first reviews fill the server's caches and buffers), then the
        // figure the recovery is held to.
        let watch = RssWatch::start(pid, abort_mib * 1024, CancellationToken::new());
        let rss_start_kib = rss_kib(pid).unwrap_or(0);
        let (fresh, kept) = legit(Duration::from_secs(1), CancellationToken::new(), 10, 300.0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_kib = rss_kib(pid).unwrap_or(0);
        let idle = Phase { name: "idle", rss_start_kib, rss: watch.finish(), fresh, kept, tally: None };
        print_phase(&idle, &server).await;
        println!("{:>8}  the idle figure (RSS after the warm-up): {:.1} MiB", "", mib(idle_kib));
        results.push(idle);

        let mut server_gone = false;
        for attack in &attacks {
            let stop_phase = CancellationToken::new();
            // A child: the RSS watch stopping the phase stops the attackers at once, not only once
            // the reviews in flight are done (they may take 10 s, and the attack would go on).
            let stop_attack = stop_phase.child_token();
            let rss_start_kib = rss_kib(pid).unwrap_or(0);
            let abort_kib = abort_mib * 1024 + rss_start_kib.saturating_sub(idle_kib);
            let watch = RssWatch::start(pid, abort_kib, stop_phase.clone());
            let tally = Arc::new(Tally::default());
            let (tasks, target) =
                start_attack(*attack, attack_runtime.handle(), addr, &configs, &tally, &stop_attack);
            tally.target.store(target, Ordering::Relaxed);
            // The reviews start with the attack: how the server copes while the attackers connect
            // and fill their bodies counts as much as how it copes once they all wait.
            let (fresh, kept) = legit(phase_span, stop_phase.clone(), reviews, rate).await;
            stop_attack.cancel();
            for task in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
            let rss = watch.finish();
            server_gone |= rss.server_gone;
            let phase = Phase { name: attack.name(), rss_start_kib, rss, fresh, kept, tally: Some(tally) };
            print_phase(&phase, &server).await;
            results.push(phase);
            if server_gone {
                break;
            }
            // Let the server finish with what the attackers left before the next phase.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }

        // Recovery: the attackers are gone; what the server gave back.
        tokio::time::sleep(recovery_span).await;
        let recovery_kib = rss_kib(pid);
        let (after, _) = legit(Duration::from_secs(1), CancellationToken::new(), 10, 0.0).await;
        match recovery_kib {
            Some(kib) => println!(
                "recovery: RSS {:.1} MiB {} s after the last attack (idle {:.1} MiB, {:+.1} MiB); then new-connection reviews: {}",
                mib(kib),
                recovery_span.as_secs(),
                mib(idle_kib),
                mib(kib) - mib(idle_kib),
                after.summary()
            ),
            None => println!("recovery: the server is gone"),
        }

        println!();
        println!(
            "{:<9}{:<30}{:<28}{:<28}attackers opened/refused/closed, 503s",
            "phase", "RSS max MiB (in the phase)", "new-conn ok/fail p50/p99 ms", "kept-alive ok/fail p50/p99"
        );
        for phase in &results {
            let attackers = phase.tally.as_ref().map_or_else(
                || "-".to_owned(),
                |t| {
                    format!(
                        "{}/{}/{}, {}",
                        t.opened.load(Ordering::Relaxed),
                        t.refused.load(Ordering::Relaxed),
                        t.closed.load(Ordering::Relaxed),
                        t.status(503)
                    )
                },
            );
            let stopped = if phase.rss.stopped_after.is_some() { ", stopped" } else { "" };
            let growth = mib(phase.rss.max_kib) - mib(phase.rss_start_kib);
            println!(
                "{:<9}{:<30}{:<28}{:<28}{attackers}",
                phase.name,
                format!("{:.1} ({growth:+.1}{stopped})", mib(phase.rss.max_kib)),
                latency_cell(&phase.fresh),
                latency_cell(&phase.kept)
            );
        }
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        let per_phase = |f: &dyn Fn(&Phase) -> String| results.iter().map(f).collect::<Vec<_>>().join(", ");
        let rss_ok = results.iter().all(|p| p.rss.max_kib < RSS_TARGET_KIB && p.rss.stopped_after.is_none());
        println!(
            "{}  server RSS max < {} MiB in every phase: {}",
            verdict(rss_ok && !server_gone),
            RSS_TARGET_KIB / 1024,
            per_phase(&|p| format!("{} {:.1}{}", p.name, mib(p.rss.max_kib), p.rss_note()))
        );
        let answered_ok = results.iter().all(|p| p.failed() == 0);
        println!(
            "{}  every legit review answered: {}",
            verdict(answered_ok),
            per_phase(&|p| format!("{} {} failed", p.name, p.failed()))
        );
        let p99 = |r: &Reviews| r.percentile(0.99).map_or_else(|| "-".to_owned(), |p| format!("{p:.1}"));
        println!(
            "{}  legit p99 < {P99_TARGET_MS} ms in every phase: {}",
            verdict(results.iter().all(Phase::p99_ok)),
            per_phase(&|p| format!("{} {}/{} ms", p.name, p99(&p.fresh), p99(&p.kept)))
        );
        let recovered = recovery_kib.is_some_and(|kib| kib <= idle_kib + RECOVERY_SLACK_KIB);
        println!(
            "{}  recovery RSS within {} MiB of idle: {} vs {:.1} MiB",
            verdict(recovered),
            RECOVERY_SLACK_KIB / 1024,
            recovery_kib.map_or_else(|| "server gone".to_owned(), |kib| format!("{:.1}", mib(kib))),
            mib(idle_kib)
        );
    });
    attack_runtime.shutdown_timeout(Duration::from_secs(5));
}
