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
//! TRUSTGATE_BENCH_FIXTURE (default tests/fixtures/deployment-create-denied.json).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
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
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        if http2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            return Sender::H2 { send, body: body.clone() };
        }
        let mut request = format!(
            "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Sender::H1 { tls: Box::new(tls), request: request.into(), buf: Vec::with_capacity(16 * 1024) }
    }

    async fn review(&mut self) {
        match self {
            Sender::H1 { tls, request, buf } => {
                tls.write_all(request).await.unwrap();
                tls.flush().await.unwrap();
                buf.clear();
                loop {
                    if let Some(end) = response_end(buf) {
                        assert!(buf.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(buf));
                        assert_eq!(end, buf.len(), "one response per request");
                        return;
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the server closed the connection");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            Sender::H2 { send, body } => {
                let request = Request::post("/validate")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let response = send.send_request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert!(body.starts_with(br#"{"apiVersion":"admission.k8s.io/v1""#));
            }
        }
    }
}

/// Where the HTTP/1.1 response in `buf` ends, once its head and `content-length` body are in.
fn response_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII response head");
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .map(|(_, v)| v.trim().parse().expect("a numeric content-length"))
        .expect("responses carry a content-length");
    (buf.len() >= head_end + length).then_some(head_end + length)
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
                    sender.review().await;
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

async fn fixed_rate(senders: Vec<Sender>, rate: f64, duration: Duration) -> (usize, Latencies) {
    let connections = senders.len();
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut sender)| {
            // Stagger the connections evenly across one interval.
            let first = start + interval.mul_f64(i as f64 / connections as f64);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut scheduled = first;
                let mut previous_done = first;
                while scheduled < start + duration {
                    tokio::time::sleep_until(scheduled).await;
                    // Late because the previous answer was late: that wait is the server's and
                    // counts. Late because the timer (1 ms granularity) woke us late: it is the
                    // load generator's and does not.
                    let base = if previous_done > scheduled { scheduled } else { tokio::time::Instant::now() };
                    sender.review().await;
                    previous_done = tokio::time::Instant::now();
                    latencies.push(micros(previous_done - base));
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
    (all.len(), Latencies(all))
}

fn main() {
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
    let policy_file = dir.path().join("policies.yaml");
    std::fs::write(&policy_file, policies(policy_count)).unwrap();
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
        println!("review: {} ({} bytes); policies: {policy_count}", fixture, body.len());
        println!("idle:        RSS {:.1} MiB", idle_rss as f64 / 1024.0);

        let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&pem).unwrap()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let config = Arc::new(config);

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
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
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

        let fixed_connections = connections.min(16);
        let mut senders = Vec::new();
        for _ in 0..fixed_connections {
            senders.push(Sender::connect(server.addr, config.clone(), http2, &body).await);
        }
        let (count, latencies) = fixed_rate(senders, rate, Duration::from_secs(secs)).await;
        println!(
            "fixed rate:  {rate:.0} reviews/s over {fixed_connections} connections, {count} reviews; {}",
            latencies.summary()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("after load:  RSS {:.1} MiB", server.rss_kib() as f64 / 1024.0);
    });
}
