//! Load benchmark of `trustgate serve`: the release binary, over HTTPS with keep-alive, driven
//! by a load generator in this process (both on the same machine, as the targets require).
//!
//!     cargo bench --bench server_load
//!
//! Phases, each reported on stdout:
//! 1. idle: the server with N policies loaded (default 1,000), resident memory after start-up;
//! 2. saturation: C connections (default 64) send closed-loop for S seconds; throughput,
//!    latency percentiles, and the server's peak resident memory;
//! 3. fixed rate: R reviews/s (default 2,000) spread over the connections, open loop, latency
//!    measured from each request's scheduled send time (no coordinated omission).
//!
//! Settings (environment): TRUSTGATE_BENCH_SECS (10), TRUSTGATE_BENCH_CONNECTIONS (64),
//! TRUSTGATE_BENCH_RATE (2000), TRUSTGATE_BENCH_POLICIES (1000), TRUSTGATE_BENCH_HTTP (1 or 2),
//! TRUSTGATE_BENCH_SERVER_THREADS (server --worker-threads, default: CPUs),
//! TRUSTGATE_BENCH_CLIENT_THREADS (load generator threads, default: CPUs),
//! TRUSTGATE_BENCH_FIXTURE (default tests/fixtures/deployment-create-denied.json),
//! TRUSTGATE_BENCH_FIXED_CONNECTIONS (connections of the fixed-rate phase, default 16),
//! TRUSTGATE_BENCH_FIXED_SECS (its length, default TRUSTGATE_BENCH_SECS),
//! TRUSTGATE_BENCH_POLICY_FILE (a policy file or directory instead of the generated policies).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `n` policies in the shape of a large multi-team cluster: a few cluster-wide baselines and
/// one policy per team namespace.
fn policies(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (selector, mode) = if i < 3 {
            (String::new(), ["Enforce", "Warn", "Audit"][i])
        } else {
            (
                format!("  namespaceSelector:\n    matchLabels:\n      kubernetes.io/metadata.name: team-{i}\n"),
                "Enforce",
            )
        };
        write!(
            out,
            "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata:\n  name: policy-{i:04}\nspec:\n  mode: {mode}\n  trustedRegistries:\n    - registry.my.com\n    - ghcr.io/my-org\n    - team-{i}.registry.example:5000/apps\n    - \"*.dkr.ecr.eu-west-1.amazonaws.com\"\n  tags:\n    deny: [latest]\n  excludedNamespaces: [kube-system]\n{selector}  exceptions:\n    - images: [docker.io/library/busybox]\n      namespaces: [debug]\n      expires: \"2030-01-01T00:00:00Z\"\n      reason: bench\n  message: \"Team {i}: use registry.my.com\"\n---\n"
        )
        .unwrap();
    }
    out
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
    fn rss_kib(&self) -> u64 {
        rss_kib(&self.child.id().to_string())
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&self.child.id().to_string())
    }
}

/// User plus system CPU time of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn ready(admin: SocketAddr) -> bool {
    let Ok(tcp) = TcpStream::connect(admin).await else { return false };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else { return false };
    tokio::spawn(conn);
    let request = Request::get("/readyz").header("host", "localhost").body(Full::<Bytes>::default()).unwrap();
    matches!(send.send_request(request).await, Ok(r) if r.status() == StatusCode::OK)
}

fn start_server(dir: &Path, policies: &Path, threads: Option<usize>) -> Server {
    let (addr, admin) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_trustgate"));
    command
        .args(["serve", "--self-signed", "--log-format", "json"])
        .arg("--ca-bundle-out")
        .arg(dir.join("ca.pem"))
        .arg("--policy-file")
        .arg(policies)
        .args(["--addr", &addr.to_string(), "--admin-addr", &admin.to_string()])
        .env("RUST_LOG", std::env::var("TRUSTGATE_BENCH_LOG").unwrap_or_else(|_| "info".to_owned()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(threads) = threads {
        command.args(["--worker-threads", &threads.to_string()]);
    }
    Server { child: command.spawn().expect("trustgate serve starts"), addr, admin }
}

/// One kept-alive connection. HTTP/1.1 is spoken by hand (the request is serialized once, the
/// response parsed just enough to find its end): the load generator shares the CPUs with the
/// server, so it must cost as little as possible. HTTP/2 goes through hyper's client.
enum Sender {
    H1 { tls: Box<TlsStream<TcpStream>>, request: Arc<[u8]>, buf: Vec<u8> },
    H2 { send: hyper::client::conn::http2::SendRequest<Full<Bytes>>, body: Bytes },
}

impl Sender {
    async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>, http2: bool, body: &Bytes) -> Sender {
        Sender::try_connect(addr, config, http2, body).await.unwrap_or_else(|e| panic!("cannot connect: {e}"))
    }

    async fn try_connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        http2: bool,
        body: &Bytes,
    ) -> Result<Sender, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let tls = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").expect("a valid name"), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        if http2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            return Ok(Sender::H2 { send, body: body.clone() });
        }
        let mut request = format!(
            "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Ok(Sender::H1 { tls: Box::new(tls), request: request.into(), buf: Vec::with_capacity(16 * 1024) })
    }

    /// Sends one review and reads its answer: `Err` says what was wrong with it (an I/O error,
    /// a status other than 200, a body that is not an AdmissionReview, a closed connection).
    async fn review(&mut self) -> Result<(), String> {
        match self {
            Sender::H1 { tls, request, buf } => {
                tls.write_all(request).await.map_err(|e| format!("write: {e}"))?;
                tls.flush().await.map_err(|e| format!("flush: {e}"))?;
                buf.clear();
                loop {
                    if let Some(end) = response_end(buf)? {
                        if !buf.starts_with(b"HTTP/1.1 200 ") {
                            return Err(String::from_utf8_lossy(buf).into_owned());
                        }
                        if end != buf.len() {
                            return Err("more than one response to one request".to_owned());
                        }
                        return Ok(());
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    let n = tls.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("the server closed the connection".to_owned());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            Sender::H2 { send, body } => {
                let request = Request::post("/validate")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let response = send.send_request(request).await.map_err(|e| format!("send: {e}"))?;
                if response.status() != StatusCode::OK {
                    return Err(format!("status {}", response.status()));
                }
                let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
                if !body.starts_with(br#"{"apiVersion":"admission.k8s.io/v1""#) {
                    return Err(String::from_utf8_lossy(&body).into_owned());
                }
                Ok(())
            }
        }
    }
}

/// Where the HTTP/1.1 response in `buf` ends, once its head and `content-length` body are in.
fn response_end(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head_end = head_end + 4;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "a response head that is not ASCII".to_owned())?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .ok_or_else(|| format!("a response without content-length: {head}"))?
        .1
        .trim()
        .parse()
        .map_err(|_| format!("a content-length that is not a number: {head}"))?;
    Ok((buf.len() >= head_end + length).then_some(head_end + length))
}

/// Latencies in microseconds.
struct Latencies(Vec<u32>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let index = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        f64::from(self.0[index]) / 1000.0
    }

    fn summary(mut self) -> String {
        self.0.sort_unstable();
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.percentile(0.50),
            self.percentile(0.90),
            self.percentile(0.99),
            self.percentile(0.999),
            self.percentile(1.0)
        )
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn saturate(senders: Vec<Sender>, duration: Duration) -> (usize, Latencies, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    sender.review().await.unwrap_or_else(|e| panic!("a failed review: {e}"));
                    latencies.push(micros(t.elapsed()));
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    (all.len(), Latencies(all), elapsed)
}

/// Where and how the load generator connects.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    http2: bool,
    body: Bytes,
}

impl Connector {
    async fn connect(&self) -> Result<Sender, String> {
        Sender::try_connect(self.addr, self.config.clone(), self.http2, &self.body).await
    }
}

/// Reviews answered and failed so far, read by samplers while the load runs.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Progress {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("no panic while holding it");
        first.get_or_insert(error);
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn report(&self) -> String {
        let first = self.first_error.lock().expect("no panic while holding it");
        match &*first {
            None => format!("{} failed", self.failed()),
            Some(e) => format!("{} failed (first: {e})", self.failed()),
        }
    }
}

/// `rate` reviews/s over `connections` kept-alive connections for `duration`, open loop. A
/// failed review (error, timeout of 10 s, non-200) is counted in `progress` and its connection
/// replaced; the run goes on.
async fn fixed_rate(
    connector: &Connector,
    connections: usize,
    rate: f64,
    duration: Duration,
    progress: Arc<Progress>,
) -> Latencies {
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(connector.connect().await.unwrap_or_else(|e| panic!("cannot connect: {e}")));
    }
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, sender)| {
            // Stagger the connections evenly across one interval.
            let first = start + interval.mul_f64(i as f64 / connections as f64);
            let (connector, progress) = (connector.clone(), progress.clone());
            tokio::spawn(async move {
                let mut sender = Some(sender);
                // Every slot written up front (a non-zero fill is not calloc's untouched pages),
                // so that the RSS samples of long runs do not count this buffer growing (4 bytes
                // a review) as the server's memory.
                let slots = (duration.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 1;
                let mut latencies = std::hint::black_box(vec![u32::MAX; slots]);
                latencies.clear();
                let mut scheduled = first;
                let mut previous_done = first;
                while scheduled < start + duration {
                    tokio::time::sleep_until(scheduled).await;
                    // Late because the previous answer was late: that wait is the server's and
                    // counts. Late because the timer (1 ms granularity) woke us late: it is the
                    // load generator's and does not.
                    let base = if previous_done > scheduled { scheduled } else { tokio::time::Instant::now() };
                    let result = match sender.as_mut() {
                        Some(s) => match tokio::time::timeout(Duration::from_secs(10), s.review()).await {
                            Ok(result) => result,
                            Err(_) => Err("no answer within 10 s".to_owned()),
                        },
                        None => Err("no connection".to_owned()),
                    };
                    previous_done = tokio::time::Instant::now();
                    latencies.push(micros(previous_done - base));
                    match result {
                        Ok(()) => {
                            progress.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            progress.fail(e);
                            sender = connector.connect().await.map_err(|e| progress.fail(e)).ok();
                        }
                    }
                    scheduled += interval;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    Latencies(all)
}

/// Resident memory of process `pid` ("self" for this one), in KiB.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(str::to_owned))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: &str) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of `(x, y)` points, in y units per x unit.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

fn client_config(ca_pem: &[u8], http2: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Arc::new(config)
}

fn main() {
    match std::env::var("TRUSTGATE_BENCH_MODE").as_deref() {
        Ok("soak") => return soak::run(),
        Ok("churn") => return churn::run(),
        Ok("standard") | Err(_) => {}
        Ok(other) => panic!("TRUSTGATE_BENCH_MODE is standard, soak or churn, not {other:?}"),
    }
    let secs: u64 = setting("TRUSTGATE_BENCH_SECS", 10);
    let connections: usize = setting("TRUSTGATE_BENCH_CONNECTIONS", 64);
    let rate: f64 = setting("TRUSTGATE_BENCH_RATE", 2000.0);
    let policy_count: usize = setting("TRUSTGATE_BENCH_POLICIES", 1000);
    let http2 = setting("TRUSTGATE_BENCH_HTTP", 1u8) == 2;
    let server_threads: Option<usize> =
        std::env::var("TRUSTGATE_BENCH_SERVER_THREADS").ok().and_then(|v| v.parse().ok());
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let client_threads: usize = setting("TRUSTGATE_BENCH_CLIENT_THREADS", cpus);
    let fixture: String = setting(
        "TRUSTGATE_BENCH_FIXTURE",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deployment-create-denied.json").to_owned(),
    );
    let body = Bytes::from(std::fs::read(&fixture).expect("the review fixture"));

    let dir = tempfile::tempdir().unwrap();
    let policy_file = match std::env::var_os("TRUSTGATE_BENCH_POLICY_FILE") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let generated = dir.path().join("policies.yaml");
            std::fs::write(&generated, policies(policy_count)).unwrap();
            generated
        }
    };
    let server = start_server(dir.path(), &policy_file, server_threads);

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(client_threads).enable_all().build().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(server.admin).await {
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss = server.rss_kib();
        println!(
            "trustgate serve: {cpus} CPUs, server threads {}, load generator threads {client_threads}, HTTP/{}",
            server_threads.map_or("default".to_owned(), |t| t.to_string()),
            if http2 { 2 } else { 1 }
        );
        let policies_shown = std::env::var("TRUSTGATE_BENCH_POLICY_FILE").unwrap_or_else(|_| policy_count.to_string());
        println!("review: {} ({} bytes); policies: {policies_shown}", fixture, body.len());
        println!("idle:        RSS {:.1} MiB", idle_rss as f64 / 1024.0);

        let config = client_config(&std::fs::read(dir.path().join("ca.pem")).unwrap(), http2);

        // Warm-up, also checks the answers.
        let mut senders = Vec::new();
        for _ in 0..connections {
            senders.push(Sender::connect(server.addr, config.clone(), http2, &body).await);
        }
        let _ = saturate(senders, Duration::from_secs(1)).await;

        let mut senders = Vec::new();
        for _ in 0..connections {
            senders.push(Sender::connect(server.addr, config.clone(), http2, &body).await);
        }
        let peak = Arc::new(AtomicU64::new(0));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, sampling, pid) = (peak.clone(), sampling.clone(), server.child.id());
            std::thread::spawn(move || {
                let status_path = format!("/proc/{pid}/status");
                while sampling.load(Ordering::Relaxed) {
                    let rss = std::fs::read_to_string(&status_path)
                        .ok()
                        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(str::to_owned))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let (ticks, own_ticks) = (server.cpu_ticks(), cpu_ticks("self"));
        let (count, latencies, elapsed) = saturate(senders, Duration::from_secs(secs)).await;
        let cpu = (server.cpu_ticks() - ticks) as f64 / 100.0 / elapsed.as_secs_f64();
        let own_cpu = (cpu_ticks("self") - own_ticks) as f64 / 100.0 / elapsed.as_secs_f64();
        sampling.store(false, Ordering::Relaxed);
        sampler.join().unwrap();
        println!(
            "saturation:  {:.0} reviews/s over {connections} connections for {:.1} s; {}; CPU: server {:.0}%, load generator {:.0}%; server peak RSS {:.1} MiB",
            count as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            latencies.summary(),
            cpu * 100.0,
            own_cpu * 100.0,
            peak.load(Ordering::Relaxed) as f64 / 1024.0
        );

        let fixed_connections = setting("TRUSTGATE_BENCH_FIXED_CONNECTIONS", connections.min(16));
        let fixed_secs = setting("TRUSTGATE_BENCH_FIXED_SECS", secs);
        let connector = Connector { addr: server.addr, config: config.clone(), http2, body: body.clone() };
        let progress = Arc::new(Progress::default());
        let ticks = server.cpu_ticks();
        let latencies =
            fixed_rate(&connector, fixed_connections, rate, Duration::from_secs(fixed_secs), progress.clone()).await;
        // The server process's user + system time over the phase, per review answered.
        let cpu_micros = (server.cpu_ticks() - ticks) as f64 * 10_000.0 / latencies.0.len().max(1) as f64;
        println!(
            "fixed rate:  {rate:.0} reviews/s over {fixed_connections} connections, {} reviews, {}; {}; server CPU {cpu_micros:.1} µs per review",
            latencies.0.len(),
            progress.report(),
            latencies.summary()
        );
        assert_eq!(progress.failed(), 0, "no review fails at a fixed rate");
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("after load:  RSS {:.1} MiB", server.rss_kib() as f64 / 1024.0);
    });
}

/// Where benchmark output files go: the cargo target directory.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn fixture_body() -> (String, Bytes) {
    let fixture: String = setting(
        "TRUSTGATE_BENCH_FIXTURE",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deployment-create-denied.json").to_owned(),
    );
    let body = Bytes::from(std::fs::read(&fixture).expect("the review fixture"));
    (fixture, body)
}

fn client_runtime() -> tokio::runtime::Runtime {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: usize = setting("TRUSTGATE_BENCH_CLIENT_THREADS", cpus);
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap()
}

/// `TRUSTGATE_BENCH_MODE=soak` (`just soak`): the release binary at a fixed rate for a long
/// time (TRUSTGATE_BENCH_SECS, default 1,800), its RSS and open file descriptors sampled every
/// TRUSTGATE_SOAK_SAMPLE_SECS (10) into a CSV under target/ (TRUSTGATE_SOAK_CSV overrides).
mod soak {
    use super::*;
    use std::io::Write as _;

    struct Sample {
        secs: f64,
        rss_kib: u64,
        fds: u64,
    }

    pub fn run() {
        let secs: u64 = setting("TRUSTGATE_BENCH_SECS", 1800);
        let rate: f64 = setting("TRUSTGATE_BENCH_RATE", 2000.0);
        let connections: usize = setting("TRUSTGATE_BENCH_CONNECTIONS", 16);
        let policy_count: usize = setting("TRUSTGATE_BENCH_POLICIES", 1000);
        let sample_secs: u64 = setting("TRUSTGATE_SOAK_SAMPLE_SECS", 10).max(1);
        let http2 = setting("TRUSTGATE_BENCH_HTTP", 1u8) == 2;
        let server_threads: Option<usize> =
            std::env::var("TRUSTGATE_BENCH_SERVER_THREADS").ok().and_then(|v| v.parse().ok());
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let csv_path: String =
            setting("TRUSTGATE_SOAK_CSV", target_dir().join(format!("soak-{unix}.csv")).display().to_string());
        let (fixture, body) = fixture_body();

        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policies.yaml");
        std::fs::write(&policy_file, policies(policy_count)).unwrap();
        let server = start_server(dir.path(), &policy_file, server_threads);
        let pid = server.child.id().to_string();
        let runtime = client_runtime();
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !ready(server.admin).await {
                assert!(Instant::now() < deadline, "the server never became ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        println!(
            "soak: {secs} s at {rate:.0} reviews/s over {connections} connections, HTTP/{}; review {fixture} ({} bytes); policies {policy_count}; server pid {pid}",
            if http2 { 2 } else { 1 },
            body.len()
        );
        println!("samples every {sample_secs} s to {csv_path}");

        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (progress, stop, pid) = (progress.clone(), stop.clone(), pid.clone());
            let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path).expect("the CSV file"));
            std::thread::spawn(move || {
                writeln!(csv, "elapsed_s,rss_kib,fds,reviews,failed").unwrap();
                let started = Instant::now();
                let mut samples = Vec::new();
                let mut next = started;
                loop {
                    let sample =
                        Sample { secs: started.elapsed().as_secs_f64(), rss_kib: rss_kib(&pid), fds: open_fds(&pid) };
                    let (done, failed) = (progress.done.load(Ordering::Relaxed), progress.failed());
                    writeln!(csv, "{:.1},{},{},{done},{failed}", sample.secs, sample.rss_kib, sample.fds).unwrap();
                    csv.flush().unwrap();
                    println!(
                        "  {:>6.0} s  RSS {:>6} KiB  fds {:>3}  reviews {done:>9}  failed {failed}",
                        sample.secs, sample.rss_kib, sample.fds
                    );
                    samples.push(sample);
                    next += Duration::from_secs(sample_secs);
                    while Instant::now() < next {
                        if stop.load(Ordering::Relaxed) {
                            return samples;
                        }
                        std::thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
                    }
                }
            })
        };
        let connector = Connector {
            addr: server.addr,
            config: client_config(&std::fs::read(dir.path().join("ca.pem")).unwrap(), http2),
            http2,
            body,
        };
        let latencies =
            runtime.block_on(fixed_rate(&connector, connections, rate, Duration::from_secs(secs), progress.clone()));
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap();

        let reviews = latencies.0.len();
        println!("\nsoak summary ({secs} s):");
        println!("  reviews {reviews}, {}", progress.report());
        println!("  latency {}", latencies.summary());
        let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
        let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
        // The first minute holds start-up growth (allocator arenas, connection buffers).
        let settled: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.secs >= 60.0 || secs < 120)
            .map(|s| (s.secs / 3600.0, s.rss_kib as f64))
            .collect();
        println!(
            "  RSS KiB: first {}, min {}, max {}, last {}; slope after the first minute {:+.0} KiB/h over {} samples",
            rss.first().copied().unwrap_or(0),
            rss.iter().min().copied().unwrap_or(0),
            rss.iter().max().copied().unwrap_or(0),
            rss.last().copied().unwrap_or(0),
            slope(&settled),
            settled.len()
        );
        println!(
            "  open fds: min {}, max {}",
            fds.iter().min().copied().unwrap_or(0),
            fds.iter().max().copied().unwrap_or(0)
        );
        println!("  samples: {csv_path}");
        assert_eq!(progress.failed(), 0, "no review fails during the soak");
    }
}

/// `TRUSTGATE_BENCH_MODE=churn` (`just bench-churn`): policy updates published through the
/// watcher's own path (cluster::index, then Store::publish) at TRUSTGATE_CHURN_RATE per second
/// (50) while the server, in this process, answers TRUSTGATE_BENCH_RATE reviews/s (2,000) for
/// TRUSTGATE_BENCH_SECS (60).
mod churn {
    use super::*;
    use kube::runtime::watcher::Event;
    use trustgate_admission::metrics::{self, AdmissionMetrics};
    use trustgate_admission::server::{self, Admission, Limits};
    use trustgate_admission::tls::{Credentials, SelfSigned};
    use trustgate_cluster::index::{Index, PolicyObject};
    use trustgate_core::engine::snapshot::Store;

    /// Policy `i` of the multi-team set of [`policies`], at revision `revision`: each revision
    /// trusts another team registry and says so in its message, so each is a real change.
    fn policy(i: usize, revision: u64) -> PolicyObject {
        let mode = if i < 3 { ["Enforce", "Warn", "Audit"][i] } else { "Enforce" };
        let mut spec = serde_json::json!({
            "mode": mode,
            "trustedRegistries": [
                "registry.my.com",
                "ghcr.io/my-org",
                format!("team-{i}.registry.example:5000/apps-r{revision}"),
                "*.dkr.ecr.eu-west-1.amazonaws.com"
            ],
            "tags": {"deny": ["latest"]},
            "excludedNamespaces": ["kube-system"],
            "exceptions": [{
                "images": ["docker.io/library/busybox"],
                "namespaces": ["debug"],
                "expires": "2030-01-01T00:00:00Z",
                "reason": "bench"
            }],
            "message": format!("Team {i}: use registry.my.com (revision {revision})")
        });
        if i >= 3 {
            spec["namespaceSelector"] =
                serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": format!("team-{i}")}});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "trustgate.dev/v1alpha1",
            "kind": "TrustedRegistryPolicy",
            "metadata": {"name": format!("policy-{i:04}"), "generation": revision + 1, "resourceVersion": revision.to_string()},
            "spec": spec
        }))
        .expect("a policy object")
    }

    fn namespace(name: &str) -> kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}
        }))
        .expect("namespace metadata")
    }

    pub fn run() {
        let secs: u64 = setting("TRUSTGATE_BENCH_SECS", 60);
        let rate: f64 = setting("TRUSTGATE_BENCH_RATE", 2000.0);
        let churn_rate: f64 = setting("TRUSTGATE_CHURN_RATE", 50.0);
        let connections: usize = setting("TRUSTGATE_BENCH_CONNECTIONS", 16);
        let policy_count: usize = setting("TRUSTGATE_BENCH_POLICIES", 1000).max(1);
        let http2 = setting("TRUSTGATE_BENCH_HTTP", 1u8) == 2;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let server_threads: usize = setting("TRUSTGATE_BENCH_SERVER_THREADS", cpus);
        let (fixture, body) = fixture_body();

        // The initial state as a watcher's first list delivers it.
        let mut index = Index::new();
        index.apply_policy(Event::Init);
        for i in 0..policy_count {
            index.apply_policy(Event::InitApply(policy(i, 0)));
        }
        index.apply_policy(Event::InitDone);
        index.apply_namespace(Event::Init);
        for name in ["default", "kube-system", "team-3", "team-4"] {
            index.apply_namespace(Event::InitApply(namespace(name)));
        }
        index.apply_namespace(Event::InitDone);
        let store = Store::new();
        store.publish(index.snapshot().expect("the index is synced"));

        let server_runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(server_threads).enable_all().build().unwrap();
        let generated = SelfSigned::generate(&["localhost".to_owned()]).unwrap();
        let config = client_config(generated.ca_pem.as_bytes(), http2);
        let tls = Arc::new(Credentials::new(generated.key).server_config().unwrap());
        let mut registry = metrics::registry();
        let limits = Limits::default();
        let admission = Admission::new(store.clone(), AdmissionMetrics::register(&mut registry), &limits);
        let listener = server_runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let served = server_runtime.spawn(server::serve(listener, tls, admission, limits, shutdown.clone()));

        println!(
            "churn: {churn_rate:.0} policy updates/s for {secs} s while serving {rate:.0} reviews/s over {connections} connections, HTTP/{}; in-process server, {server_threads} threads, no log subscriber; review {fixture}; policies {policy_count}",
            if http2 { 2 } else { 1 }
        );
        let runtime = client_runtime();
        let connector = Connector { addr, config, http2, body };
        // Warm-up: connections, allocator, caches.
        runtime.block_on(fixed_rate(
            &connector,
            connections,
            rate,
            Duration::from_secs(2),
            Arc::new(Progress::default()),
        ));

        let started = Instant::now();
        let duration = Duration::from_secs(secs);
        let stop = Arc::new(AtomicBool::new(false));
        let rss = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(secs as usize + 64);
                while !stop.load(Ordering::Relaxed) {
                    samples.push((started.elapsed().as_secs_f64(), rss_kib("self")));
                    std::thread::sleep(Duration::from_secs(1));
                }
                samples.push((started.elapsed().as_secs_f64(), rss_kib("self")));
                samples
            })
        };
        let churner = {
            let store = store.clone();
            std::thread::spawn(move || {
                let interval = Duration::from_secs_f64(1.0 / churn_rate);
                // Written in full before the run, as the review latency buffers are: its growth
                // is not counted as the server's.
                let mut costs = vec![u32::MAX; (secs as f64 * churn_rate) as usize + 64];
                costs.clear();
                let mut published = 0u64;
                let mut revision = 0;
                while started.elapsed() < duration {
                    revision += 1;
                    let t = Instant::now();
                    let i = (revision as usize) % policy_count;
                    let change = index.apply_policy(Event::Apply(policy(i, revision)));
                    if change.snapshot {
                        store.publish(index.snapshot().expect("the index is synced"));
                        published += 1;
                    }
                    costs.push(micros(t.elapsed()));
                    if let Some(wait) =
                        (started + interval.mul_f64(revision as f64)).checked_duration_since(Instant::now())
                    {
                        std::thread::sleep(wait);
                    }
                }
                (revision, published, Latencies(costs))
            })
        };
        let progress = Arc::new(Progress::default());
        let latencies = runtime.block_on(fixed_rate(&connector, connections, rate, duration, progress.clone()));
        let elapsed = started.elapsed();
        let (updates, published, costs) = churner.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let rss = rss.join().unwrap();
        shutdown.cancel();
        server_runtime.block_on(served).unwrap();

        println!("reviews:   {}, {}; {}", latencies.0.len(), progress.report(), latencies.summary());
        println!(
            "updates:   {updates} applied, {published} snapshots published ({:.1}/s); cost of one (compile, assemble, publish): {}",
            published as f64 / elapsed.as_secs_f64(),
            costs.summary()
        );
        let at = |fraction: f64| rss[((rss.len() - 1) as f64 * fraction) as usize].1;
        let settled: Vec<(f64, f64)> = rss.iter().map(|&(t, kib)| (t / 60.0, kib as f64)).collect();
        println!(
            "RSS (this process: server and load generator): start {} KiB, middle {} KiB, end {} KiB, min {}, max {}; slope {:+.0} KiB/min",
            at(0.0),
            at(0.5),
            at(1.0),
            rss.iter().map(|r| r.1).min().unwrap_or(0),
            rss.iter().map(|r| r.1).max().unwrap_or(0),
            slope(&settled)
        );
        // Every tenth of the run, to tell a warm-up step from growth that goes on.
        let tenths: Vec<String> = (0..=10)
            .map(|t| rss[(rss.len() - 1) * t / 10])
            .map(|(secs, kib)| format!("{secs:.0} s {kib} KiB"))
            .collect();
        println!("RSS by tenths of the run: {}", tenths.join(", "));
        // The issue's measure: growth over the last five sixths (the last 25 minutes of 30),
        // up to the last sample inside the run.
        let inside: Vec<&(f64, u64)> = rss.iter().filter(|(t, _)| *t <= secs as f64).collect();
        if let (Some(from), Some(to)) = (inside.iter().find(|(t, _)| *t >= secs as f64 / 6.0), inside.last()) {
            println!("RSS growth from {:.0} s to {:.0} s: {:+} KiB", from.0, to.0, to.1 as i64 - from.1 as i64);
        }
        assert_eq!(progress.failed(), 0, "no review fails while policies churn");
    }
}
