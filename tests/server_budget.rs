//! The memory budget for request bodies, over a real TLS socket on 127.0.0.1: a body that
//! does not fit waits unread and gets 503 at the request timeout; a light address (the API
//! server's) takes room from the heaviest at once; HTTP/2 streams count in the same budget;
//! the metrics say what happened.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::sync::mpsc;
use trustgate_admission::body_budget::BudgetLimits;
use trustgate_admission::server::Limits;

use support::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn limits(global: usize, per_source: usize, request_timeout: Duration) -> Limits {
    Limits {
        body_budget: BudgetLimits { global, per_source },
        request_timeout,
        drain_grace: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// A POST whose body declares `length` bytes (or no length: chunked on HTTP/1.1) and sends
/// only what is pushed into the returned sender: an upload stalled on purpose.
fn stalled_post(length: Option<usize>) -> (Request<ChannelBody>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(4);
    let mut request = Request::post("/validate").header("host", "localhost").header("content-type", "application/json");
    if let Some(length) = length {
        request = request.header("content-length", length.to_string());
    }
    (request.body(ChannelBody(rx)).unwrap(), tx)
}

/// Starts a stalled upload of `length` bytes from `source` on HTTP/1.1 and returns once its
/// first bytes are sent; the returned task resolves to the server's status for it.
async fn stall_h1(
    server: &TestServer,
    pki: &Pki,
    source: IpAddr,
    length: usize,
) -> (tokio::task::JoinHandle<StatusCode>, mpsc::Sender<Bytes>) {
    let tls = tls_connect_from(source, server.addr, client_config(&[&pki.ca], &[b"http/1.1"])).await.unwrap();
    let mut h1 = http1::<ChannelBody>(tls).await;
    let (request, tx) = stalled_post(Some(length));
    tx.send(Bytes::from(vec![b'{'; 1024])).await.unwrap();
    let task = tokio::spawn(async move {
        match h1.send_request(request).await {
            Ok(response) => response.status(),
            // Closed under the upload after the answer: the status was not read in time.
            Err(_) => StatusCode::from_u16(599).unwrap(),
        }
    });
    (task, tx)
}

async fn review_from(server: &TestServer, pki: &Pki, source: IpAddr) -> (StatusCode, Bytes) {
    let tls = tls_connect_from(source, server.addr, client_config(&[&pki.ca], &[b"http/1.1"])).await.unwrap();
    let mut h1: H1 = http1(tls).await;
    read(h1.send_request(post("/validate", fixture("deployment-create-denied.json"))).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_fit_waits_unread_then_gets_503_at_the_request_timeout() {
    let pki = Pki::new("budget-timeout");
    let timeout = Duration::from_millis(800);
    let server = TestServer::ready(&pki, limits(64 * MIB, MIB, timeout)).await;
    let config = client_config(&[&pki.ca], &[b"http/1.1"]);
    // A body of unknown length (chunked) is given room 64 KiB ahead of what has arrived.
    let started = Instant::now();
    let mut h1 = http1::<ChannelBody>(tls_connect_from(ip(2), server.addr, config.clone()).await.unwrap()).await;
    let (request, grower) = stalled_post(None);
    let waiting = tokio::spawn(async move { h1.send_request(request).await.map(|r| r.status()) });
    server.await_value("trustgate_admission_body_bytes_in_flight", (64 * KIB) as f64).await;
    // A later upload from the same address takes the rest of its 1 MiB (and, having started
    // later, outlives the first one's timeout).
    let (_holder, _keep) = stall_h1(&server, &pki, ip(2), MIB - 64 * KIB).await;
    server.await_value("trustgate_admission_body_bytes_in_flight", MIB as f64).await;
    // The first body goes on: it needs more room, and waits for it, unread.
    grower.send(Bytes::from(vec![b'{'; 1024])).await.unwrap();
    server.await_value("trustgate_admission_body_budget_waits_total", 1.0).await;

    // Another address is not held up by the full one.
    let (status, _) = review_from(&server, &pki, ip(3)).await;
    assert_eq!(status, StatusCode::OK);

    let status = tokio::time::timeout(PATIENCE, waiting).await.expect("answered").unwrap().expect("a response");
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited >= timeout, "it waited for room until the request timeout: {waited:?}");
    assert!(waited < timeout + Duration::from_secs(2), "and was answered at once then: {waited:?}");
    let metrics = server.metrics();
    assert_eq!(
        metric_value(&metrics, r#"trustgate_admission_body_budget_refusals_total{reason="timeout"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, r#"trustgate_admission_rejected_requests_total{code="503"}"#), 1.0);
    drop(grower);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_address_is_answered_at_once_while_other_addresses_fill_the_budget() {
    let pki = Pki::new("budget-share");
    // Two attacker addresses hold the whole global budget; the timeout is long, so a review
    // answered quickly was not answered by waiting for an attacker to give up.
    let server = TestServer::ready(&pki, limits(2 * MIB, MIB, Duration::from_secs(30))).await;
    let (first, _keep_first) = stall_h1(&server, &pki, ip(2), MIB).await;
    let (second, _keep_second) = stall_h1(&server, &pki, ip(3), MIB).await;
    server.await_value("trustgate_admission_body_bytes_in_flight", (2 * MIB) as f64).await;

    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = review_from(&server, &pki, ip(1)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains(r#""allowed":false"#), "the policy's answer");
        assert!(started.elapsed() < Duration::from_secs(5), "answered without waiting out an attacker");
    }
    let preempted =
        |metrics: &str| metric_value(metrics, r#"trustgate_admission_body_budget_refusals_total{reason="preempted"}"#);
    let metrics = server.metrics();
    assert!(preempted(&metrics) >= 1.0, "{metrics}");
    // The preempted uploads were answered 503 (or closed under their upload after it).
    let mut answered = Vec::new();
    for task in [first, second] {
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), task).await {
            answered.push(status.unwrap());
        }
    }
    assert!(!answered.is_empty(), "at least one attacker upload was cut short");
    for status in answered {
        assert!(status.as_u16() == 503 || status.as_u16() == 599, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_count_in_the_same_budget() {
    let pki = Pki::new("budget-h2");
    let server = TestServer::ready(&pki, limits(64 * MIB, MIB, Duration::from_millis(800))).await;
    let tls = tls_connect_from(ip(2), server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap();
    let (h2, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    // On one connection: a stream of unknown length gets its first 64 KiB of room, a later
    // stream takes the rest of the address's 1 MiB, and when the first goes on it waits for
    // room and is answered 503 in the protocol (a response, not a reset).
    let (request, grower) = stalled_post(None);
    let mut first = h2.clone();
    let waiting = tokio::spawn(async move { first.send_request(request).await.map(|r| r.status()) });
    server.await_value("trustgate_admission_body_bytes_in_flight", (64 * KIB) as f64).await;
    let (request, holder) = stalled_post(Some(MIB - 64 * KIB));
    holder.send(Bytes::from(vec![b'{'; 1024])).await.unwrap();
    let mut second = h2.clone();
    let _holding = tokio::spawn(async move { second.send_request(request).await.map(|r| r.status()) });
    server.await_value("trustgate_admission_body_bytes_in_flight", MIB as f64).await;
    grower.send(Bytes::from(vec![b'{'; 1024])).await.unwrap();
    server.await_value("trustgate_admission_body_budget_waits_total", 1.0).await;
    let status = tokio::time::timeout(PATIENCE, waiting).await.unwrap().unwrap().expect("a response, not a reset");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let metrics = server.metrics();
    assert_eq!(
        metric_value(&metrics, r#"trustgate_admission_body_budget_refusals_total{reason="timeout"}"#),
        1.0,
        "{metrics}"
    );
    let senders = [grower, holder];
    // A review from another address on HTTP/2 is answered meanwhile.
    let tls = tls_connect_from(ip(3), server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap();
    let mut other = http2(tls).await;
    let (status, _) =
        read(other.send_request(post("/validate", fixture("deployment-create-denied.json"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    drop(senders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bytes_are_given_back_when_uploads_end_or_their_clients_go() {
    let pki = Pki::new("budget-release");
    let server = TestServer::ready(&pki, limits(64 * MIB, 16 * MIB, Duration::from_secs(30))).await;
    let (task, tx) = stall_h1(&server, &pki, ip(2), 2 * MIB).await;
    server.await_value("trustgate_admission_body_bytes_in_flight", (2 * MIB) as f64).await;
    // The client goes away mid-upload.
    drop(tx);
    task.abort();
    server.await_value("trustgate_admission_body_bytes_in_flight", 0.0).await;
    // Answered reviews give their room back too.
    for _ in 0..5 {
        assert_eq!(review_from(&server, &pki, ip(1)).await.0, StatusCode::OK);
    }
    server.await_value("trustgate_admission_body_bytes_in_flight", 0.0).await;
}
