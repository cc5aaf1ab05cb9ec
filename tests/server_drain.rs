//! Graceful shutdown: in-flight requests finish, new connections are refused, readiness turns
//! false; and the real binary's signal handling (drain on SIGTERM, exit at once on a second
//! signal) together with its one JSON log line per decision.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use trustgate_admission::server::Limits;

use support::*;

/// Starts a request whose body is held back: returns the sender of the rest and the response.
async fn request_in_flight(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    body: &[u8],
) -> (tokio::sync::mpsc::Sender<Bytes>, tokio::task::JoinHandle<(StatusCode, Bytes)>, Bytes) {
    let (half, rest) = body.split_at(body.len() / 2);
    let (chunks, receiver) = tokio::sync::mpsc::channel(2);
    let mut h1 = http1(tls_connect(addr, config).await.unwrap()).await;
    let request = Request::post("/validate").header("host", "localhost").body(ChannelBody(receiver)).unwrap();
    let response = tokio::spawn(async move { read(h1.send_request(request).await.unwrap()).await });
    chunks.send(Bytes::copy_from_slice(half)).await.unwrap();
    (chunks, response, Bytes::copy_from_slice(rest))
}

/// Waits until connecting to `addr` is refused.
async fn await_refused(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {
                assert!(Instant::now() < deadline, "new connections were still accepted while draining");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let pki = Pki::new("drain CA");
    let server = TestServer::ready(&pki, Limits { drain_grace: Duration::from_secs(30), ..Limits::default() }).await;
    let config = client_config(&[&pki.ca], &[]);
    let (chunks, response, rest) =
        request_in_flight(server.addr, config.clone(), &fixture("deployment-create-denied.json")).await;
    server.await_metric("trustgate_admission_in_flight_requests 1").await;

    // What serve.rs does on SIGTERM.
    server.store.start_draining();
    server.shutdown.cancel();
    await_refused(server.addr).await;
    assert!(!server.task.is_finished(), "the server stopped before its in-flight request was answered");

    chunks.send(rest).await.unwrap();
    drop(chunks);
    let (status, body) = tokio::time::timeout(PATIENCE, response).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    let review: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["response"]["allowed"], false);
    assert_eq!(review["response"]["status"]["code"], 403);
    tokio::time::timeout(PATIENCE, server.task).await.expect("the server returns once drained").unwrap();
}

/// The `trustgate serve` process, killed if the test fails.
struct Server {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    config: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Server {
    async fn start(drain_grace: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let (addr, admin) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_trustgate"))
            .args(["serve", "--self-signed", "--log-format", "json", "--drain-grace", drain_grace])
            .arg("--ca-bundle-out")
            .arg(&ca)
            .arg("--policy-file")
            .arg(fixture_path("policies.yaml"))
            .args(["--addr", &addr.to_string(), "--admin-addr", &admin.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut server = Server { child, addr, admin, log, config: client_config(&[], &[]), _dir: dir };
        let deadline = Instant::now() + PATIENCE;
        while server.admin_get("/readyz").await.map(|r| r.0) != Some(StatusCode::OK) {
            assert!(server.child.try_wait().unwrap().is_none(), "trustgate serve exited:\n{}", server.log());
            assert!(Instant::now() < deadline, "never ready:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pem = std::fs::read(&ca).expect("the CA bundle is written where --ca-bundle-out says");
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        server.config = client_config(&[&ca], &[]);
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    async fn admin_get(&self, path: &str) -> Option<(StatusCode, String)> {
        let tcp = TcpStream::connect(self.admin).await.ok()?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(connection);
        let request = Request::get(path).header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
        let response = send.send_request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn await_admin(&self, path: &str, expected: (StatusCode, &str)) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.admin_get(path).await;
            if got.as_ref().is_some_and(|(status, body)| *status == expected.0 && body.contains(expected.1)) {
                return;
            }
            assert!(Instant::now() < deadline, "{path} never returned {expected:?} (last: {got:?}):\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    async fn await_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "trustgate serve did not exit:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_process_then_exits_0() {
    let mut server = Server::start("30s").await;
    let (status, body) =
        send(server.addr, server.config.clone(), post("/validate", fixture("pod-create-denied.json"))).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    let (chunks, response, rest) =
        request_in_flight(server.addr, server.config.clone(), &fixture("deployment-dryrun-denied.json")).await;
    server.await_admin("/metrics", (StatusCode::OK, "trustgate_admission_in_flight_requests 1")).await;

    server.signal("-TERM");
    server.await_admin("/readyz", (StatusCode::SERVICE_UNAVAILABLE, "shutting down")).await;
    await_refused(server.addr).await;
    assert!(server.child.try_wait().unwrap().is_none(), "exited with a request in flight:\n{}", server.log());

    chunks.send(rest).await.unwrap();
    drop(chunks);
    let (status, body) = tokio::time::timeout(PATIENCE, response).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    let review: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["response"]["uid"], "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a");
    assert_eq!(review["response"]["allowed"], false);

    let exit = server.await_exit().await;
    assert_eq!(exit.code(), Some(0), "{}", server.log());

    // One JSON line per decision, with the request's identity on its span.
    let log = server.log();
    let decisions: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["span"]["name"] == "admission")
        .collect();
    assert_eq!(decisions.len(), 2, "{log}");
    let first = &decisions[0];
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["message"], "denied");
    let span = &first["span"];
    assert_eq!(span["uid"], "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9");
    assert_eq!(span["kind"], "Pod");
    assert_eq!(span["namespace"], "default");
    assert_eq!(span["object_name"], "scratch");
    assert_eq!(span["operation"], "CREATE");
    assert_eq!(span["subresource"], "");
    assert_eq!(span["dry_run"], false);
    assert_eq!(span["decision"], "deny");
    assert_eq!(span["violations"], 1);
    assert!(span["micros"].as_u64().is_some(), "{first}");
    assert_eq!(first["reasons"], "Enforce corporate Untrusted spec.containers[0] \"nginx:1.25\"", "{first}");
    assert_eq!(decisions[1]["span"]["dry_run"], true);
    assert!(!log.contains("PRIVATE KEY"), "key material in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_without_waiting_for_the_drain() {
    let mut server = Server::start("10m").await;
    let (_chunks, _response, _rest) =
        request_in_flight(server.addr, server.config.clone(), &fixture("pod-create-denied.json")).await;
    server.await_admin("/metrics", (StatusCode::OK, "trustgate_admission_in_flight_requests 1")).await;
    server.signal("-TERM");
    server.await_admin("/readyz", (StatusCode::SERVICE_UNAVAILABLE, "shutting down")).await;
    server.signal("-INT");
    let exit = server.await_exit().await;
    assert_eq!(exit.code(), Some(1), "{}", server.log());
    assert!(server.log().contains("second signal"), "{}", server.log());
}

/// Kept-alive connections, as the API server's webhook client pools them, are sent elsewhere
/// during the shutdown delay instead of being closed under a request: the next HTTP/1.1
/// answer says `Connection: close`, HTTP/2 gets GOAWAY, new connections are still answered;
/// only after the delay does the listener close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_delay_sends_clients_elsewhere_before_the_listener_closes() {
    let pki = Pki::new("delay CA");
    let delay = Duration::from_secs(6);
    let limits = Limits { shutdown_delay: delay, drain_grace: Duration::from_secs(5), ..Limits::default() };
    let server = TestServer::ready(&pki, limits).await;
    let (h1_config, h2_config) = (client_config(&[&pki.ca], &[]), client_config(&[&pki.ca], &[b"h2"]));
    let review = fixture("deployment-create-denied.json");
    let mut h1 = http1(tls_connect(server.addr, h1_config.clone()).await.unwrap()).await;
    let response = exchange(&mut h1, post("/validate", review.clone())).await;
    assert_eq!(response.headers().get("connection"), None, "kept alive while serving");
    assert_eq!(read(response).await.0, StatusCode::OK);
    let mut h2 = http2(tls_connect(server.addr, h2_config).await.unwrap()).await;
    assert_eq!(read(h2.send_request(post("/validate", review.clone())).await.unwrap()).await.0, StatusCode::OK);

    // What serve.rs does on SIGTERM.
    server.store.start_draining();
    server.shutdown.cancel();
    let started = Instant::now();

    let response = exchange(&mut h1, post("/validate", review.clone())).await;
    assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(read(response).await.0, StatusCode::OK, "the request on the old connection is answered");
    let deadline = Instant::now() + PATIENCE;
    while !h2.is_closed() {
        assert!(Instant::now() < deadline, "HTTP/2 got no GOAWAY during the shutdown delay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fresh = http1(tls_connect(server.addr, h1_config).await.expect("still accepting")).await;
    let response = exchange(&mut fresh, post("/validate", review)).await;
    assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(read(response).await.0, StatusCode::OK, "a new connection is answered during the delay");
    assert!(started.elapsed() < delay, "the checks above ran within the delay ({:?})", started.elapsed());

    await_refused(server.addr).await;
    assert!(started.elapsed() >= delay, "the listener closed before the delay was over");
    tokio::time::timeout(PATIENCE, server.task).await.expect("the server returns once drained").unwrap();
}
