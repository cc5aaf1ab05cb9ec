//! Connection floods over real TCP and TLS on 127.0.0.1: one address hogging connections
//! (silent, or stopped mid-handshake) cannot keep another address's reviews out; the per-source
//! limit, shedding at the global cap and the handshake deadline, with their metrics; and the API
//! server's own pools (HTTP/1.1 keep-alive, HTTP/2 multiplexing) from one address keep working.
//!
//! Client addresses are told apart by binding to 127.0.0.2 (the hog) and 127.0.0.1 (the API
//! server): all of 127/8 is local on Linux.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trustgate_admission::server::Limits;

use support::*;

const API_SERVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const HOG: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

const OPEN: &str = "trustgate_admission_open_connections";
const PER_SOURCE: &str = r#"trustgate_admission_connections_refused_total{reason="per_source_limit"}"#;
const GLOBAL: &str = r#"trustgate_admission_connections_refused_total{reason="global_limit"}"#;

fn limits() -> Limits {
    Limits { drain_grace: Duration::from_secs(5), ..Limits::default() }
}

/// One review on a new TLS connection from `source`.
async fn review_from(source: IpAddr, server: &TestServer, pki: &Pki) -> StatusCode {
    let tls = tls_connect_from(source, server.addr, client_config(&[&pki.ca], &[b"http/1.1"])).await.unwrap();
    let mut h1: H1 = http1(tls).await;
    let response = exchange(&mut h1, post("/validate", fixture("pod-create-allowed.json"))).await;
    read(response).await.0
}

/// Waits until the server closes `tcp` (end of stream or reset), reading whatever comes first.
async fn closed_by_server(tcp: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await.expect("the server closes the connection") {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_hogging_connections_is_refused_and_cannot_stop_another_sources_reviews() {
    let pki = Pki::new("hog CA");
    let limits = Limits { max_connections: 64, max_connections_per_source: 16, ..limits() };
    let server = TestServer::ready(&pki, limits).await;

    // The hog takes every connection it can and never speaks.
    let mut hog = Vec::new();
    for _ in 0..200 {
        hog.push(tcp_from(HOG, server.addr).await.unwrap());
    }
    server.await_value(PER_SOURCE, 184.0).await;
    server.await_value(OPEN, 16.0).await;

    for _ in 0..5 {
        assert_eq!(review_from(API_SERVER, &server, &pki).await, StatusCode::OK);
    }
    let metrics = server.metrics();
    assert_eq!(metric_value(&metrics, PER_SOURCE), 184.0, "the reviews were not refused:\n{metrics}");
    assert!(!metrics.contains("connections_shed_total{"), "{metrics}");
    // The refused ones were closed at once; the hog's first 16 are still held.
    for tcp in &mut hog[16..] {
        closed_by_server(tcp).await;
    }
    server.await_value(OPEN, 16.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_handshakes_and_idle_connections_are_shed_busy_ones_never() {
    let pki = Pki::new("cap CA");
    let limits = Limits { max_connections: 4, max_connections_per_source: 4, ..limits() };
    let server = TestServer::ready(&pki, limits).await;

    // The hog holds all four slots in the TLS handshake.
    let mut hog = Vec::new();
    for _ in 0..4 {
        hog.push(tcp_from(HOG, server.addr).await.unwrap());
    }
    server.await_value(OPEN, 4.0).await;
    // A review from another address gets a slot: the hog's oldest handshake gives way.
    assert_eq!(review_from(API_SERVER, &server, &pki).await, StatusCode::OK);
    closed_by_server(&mut hog[0]).await;
    server.await_value(r#"trustgate_admission_connections_shed_total{reason="handshaking"}"#, 1.0).await;
    drop(hog);
    server.await_value(OPEN, 0.0).await;

    // Four established connections: three with a request in flight, one idle.
    let config = client_config(&[&pki.ca], &[b"http/1.1"]);
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(BusyRequest::start(tls_connect_from(HOG, server.addr, config.clone()).await.unwrap()).await);
    }
    let (mut idle_send, idle_connection) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
            tls_connect_from(API_SERVER, server.addr, config.clone()).await.unwrap(),
        ))
        .await
        .unwrap();
    let idle_connection = tokio::spawn(idle_connection);
    // One review first: the server has seen its handshake through, and it is idle after.
    let (status, _) = read(exchange(&mut idle_send, post("/validate", fixture("pod-create-allowed.json"))).await).await;
    assert_eq!(status, StatusCode::OK);
    server.await_value("trustgate_admission_in_flight_requests", 3.0).await;

    // A newcomer takes the idle connection's slot (and keeps a request in flight)...
    let tls = tls_connect_from(API_SERVER, server.addr, config.clone()).await.unwrap();
    // Closed by the server (cleanly or by a reset: either ends it).
    let _ = tokio::time::timeout(PATIENCE, idle_connection).await.expect("the idle connection is closed").unwrap();
    drop(idle_send);
    server.await_value(r#"trustgate_admission_connections_shed_total{reason="idle"}"#, 1.0).await;
    busy.push(BusyRequest::start(tls).await);
    server.await_value("trustgate_admission_in_flight_requests", 4.0).await;

    // ...and with every slot busy, the next connection is refused at once.
    let mut refused = tcp_from(API_SERVER, server.addr).await.unwrap();
    closed_by_server(&mut refused).await;
    server.await_value(GLOBAL, 1.0).await;
    // The busy connections were left alone: their reviews complete.
    for request in busy {
        assert_eq!(request.finish().await, StatusCode::OK);
    }
}

/// A review whose body is half sent: a connection with a request in flight.
struct BusyRequest {
    rest: tokio::sync::mpsc::Sender<bytes::Bytes>,
    remainder: bytes::Bytes,
    response: tokio::task::JoinHandle<StatusCode>,
}

impl BusyRequest {
    async fn start(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        let mut body = bytes::Bytes::from(fixture("pod-create-allowed.json"));
        let length = body.len();
        let first = body.split_to(length / 2);
        let mut h1 = http1::<ChannelBody>(tls).await;
        let (rest, chunks) = tokio::sync::mpsc::channel(2);
        rest.send(first).await.unwrap();
        let request = http::Request::post("/validate")
            .header("host", "localhost")
            .header("content-length", length.to_string())
            .body(ChannelBody(chunks))
            .unwrap();
        let response = tokio::spawn(async move { read(exchange(&mut h1, request).await).await.0 });
        BusyRequest { rest, remainder: body, response }
    }

    async fn finish(self) -> StatusCode {
        self.rest.send(self.remainder).await.unwrap();
        drop(self.rest);
        tokio::time::timeout(PATIENCE, self.response).await.expect("an answer").unwrap()
    }
}

/// The first bytes of a TLS ClientHello record, and then nothing.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_after_the_deadline() {
    let pki = Pki::new("handshake CA");
    let server = TestServer::ready(&pki, Limits { handshake_timeout: Duration::from_millis(300), ..limits() }).await;
    let mut partial = tcp_from(HOG, server.addr).await.unwrap();
    partial.write_all(PARTIAL_CLIENT_HELLO).await.unwrap();
    let mut silent = tcp_from(HOG, server.addr).await.unwrap();
    closed_by_server(&mut partial).await;
    closed_by_server(&mut silent).await;
    server.await_value(r#"trustgate_admission_connections_shed_total{reason="handshake_timeout"}"#, 2.0).await;
    server.await_value(OPEN, 0.0).await;
    // A client that completes its handshake is not bound by it.
    let tls = tls_connect_from(API_SERVER, server.addr, client_config(&[&pki.ca], &[b"http/1.1"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut h1: H1 = http1(tls).await;
    let (status, _) = read(exchange(&mut h1, post("/validate", fixture("pod-create-allowed.json"))).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_multiplexed_pools_from_one_address_keep_working() {
    let pki = Pki::new("pools CA");
    // As tight as the API server's pools allow: eight HTTP/1.1 connections and one HTTP/2.
    let limits = Limits { max_connections: 16, max_connections_per_source: 9, ..limits() };
    let server = TestServer::ready(&pki, limits).await;
    let h1_config = client_config(&[&pki.ca], &[b"http/1.1"]);
    let h2_config = client_config(&[&pki.ca], &[b"h2"]);

    let mut pool = Vec::new();
    for _ in 0..8 {
        let tls = tls_connect_from(API_SERVER, server.addr, h1_config.clone()).await.unwrap();
        let mut h1: H1 = http1(tls).await;
        pool.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..25 {
                let (status, _) =
                    read(exchange(&mut h1, post("/validate", fixture("pod-create-denied.json"))).await).await;
                ok += usize::from(status == StatusCode::OK);
            }
            (ok, h1)
        }));
    }
    let h2 = http2(tls_connect_from(API_SERVER, server.addr, h2_config).await.unwrap()).await;
    // More requests at once than the server's stream limit: the client queues the rest.
    let multiplexed =
        (0..300).map(|_| {
            let mut h2 = h2.clone();
            async move {
                read(h2.send_request(post("/validate", fixture("pod-create-allowed.json"))).await.unwrap()).await.0
            }
        });
    let statuses = futures::future::join_all(multiplexed).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let mut ok = 0;
    let mut kept = Vec::new();
    for task in pool {
        let (answered, h1) = task.await.unwrap();
        ok += answered;
        kept.push(h1);
    }
    assert_eq!(ok, 200);
    let metrics = server.metrics();
    assert!(!metrics.contains("connections_refused_total{"), "{metrics}");
    assert!(!metrics.contains("connections_shed_total{"), "{metrics}");
    assert_eq!(metric_value(&metrics, OPEN), 9.0, "every connection of the pools is still open:\n{metrics}");
}
