//! HTTP/2 abuse over a real TLS socket on 127.0.0.1: an over-limit body gets its 413 as on
//! HTTP/1.1; rapid reset, streams beyond the concurrency limit, a client that never opens its
//! flow-control window and header floods each end in the server refusing or closing the
//! abusive connection, while another client's reviews are answered throughout.
//!
//! The abusive clients write raw frames (the well-behaved clients of hyper and h2 refuse to
//! misbehave); the frames are built by hand below.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trustgate_admission::server::Limits;

use support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn limits() -> Limits {
    Limits { drain_grace: Duration::from_secs(5), ..Limits::default() }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix whose high bits are `high`.
fn hpack_int(high: u8, n: u32, value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | u8::try_from(value).unwrap());
        return;
    }
    out.push(high | u8::try_from(max).unwrap());
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).unwrap() | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).unwrap());
}

/// A literal header field without indexing, with a new name.
fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// `POST <path>` on https://localhost: the static table's :method POST and :scheme https, then
/// :path and :authority as literals with indexed names.
fn request_head(path: &str) -> Vec<u8> {
    let mut out = vec![0x83, 0x87];
    hpack_int(0, 4, 4, &mut out);
    hpack_int(0, 7, path.len(), &mut out);
    out.extend_from_slice(path.as_bytes());
    hpack_int(0, 4, 1, &mut out);
    hpack_int(0, 7, "localhost".len(), &mut out);
    out.extend_from_slice(b"localhost");
    out
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A client that speaks HTTP/2 by hand.
struct Raw {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects, sends the preface and `settings`, and acknowledges the server's settings.
    async fn connect(server: &TestServer, pki: &Pki, settings: &[(u16, u32)]) -> Raw {
        let tls = tls_connect(server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = Raw { tls, buf: Vec::new() };
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        raw.write(&hello).await;
        loop {
            let frame = raw.next().await.expect("the server's SETTINGS");
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                break;
            }
        }
        raw.write(&frame(SETTINGS, ACK, 0, &[])).await;
        raw
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// The next frame from the server, or `None` once it closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16 | usize::from(self.buf[1]) << 8 | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(PATIENCE, self.tls.read(&mut chunk)).await.expect("the server is not silent") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Every frame until the server closes the connection.
    async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

/// A well-behaved client on its own connection: it must be answered whatever the other does.
async fn bystander_review(server: &TestServer, pki: &Pki) {
    let mut h2 = http2(tls_connect(server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap()).await;
    let response =
        tokio::time::timeout(PATIENCE, h2.send_request(post("/validate", fixture("pod-create-allowed.json"))))
            .await
            .expect("the other client is answered")
            .unwrap();
    assert_eq!(read(response).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_bodies_get_413_on_http2_without_a_reset() {
    let pki = Pki::new("h2 413 CA");
    let server = TestServer::ready(&pki, limits()).await;
    for declared in [true, false] {
        let tls = tls_connect(server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap();
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let total = 5 * 1024 * 1024;
        let mut request = http::Request::post("https://localhost/validate");
        if declared {
            request = request.header("content-length", total.to_string());
        }
        let (response, mut body) = client.send_request(request.body(()).unwrap(), false).unwrap();
        // The whole body goes out, as curl and the API server send it: a server that resets
        // the stream once it has answered makes a send fail here.
        let uploader = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let mut sent = 0;
            while sent < total {
                body.reserve_capacity(chunk.len());
                let granted = std::future::poll_fn(|cx| body.poll_capacity(cx))
                    .await
                    .expect("the stream stays open for the whole body")
                    .expect("capacity");
                let n = granted.min(total - sent);
                body.send_data(chunk.slice(..n), sent + n == total).expect("the stream was not reset");
                sent += n;
            }
        });
        let response = tokio::time::timeout(PATIENCE, response).await.expect("a response").unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "declared length: {declared}");
        let mut answer = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = answer.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(text, b"the request body exceeds 4194304 bytes\n");
        tokio::time::timeout(PATIENCE, uploader).await.expect("the upload ends").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_closes_the_connection_and_others_are_served() {
    let pki = Pki::new("rapid reset CA");
    let server = TestServer::ready(&pki, limits()).await;
    let mut raw = Raw::connect(&server, &pki, &[]).await;
    let head = request_head("/validate");
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS, stream, &head));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    // The server may close the connection before it has read the whole burst.
    let _ = raw.tls.write_all(&burst).await;
    let _ = raw.tls.flush().await;
    bystander_review(&server, &pki).await;
    let frames = raw.until_closed().await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY).expect("a GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{frames:?}");
    bystander_review(&server, &pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_concurrency_limit_are_refused() {
    let pki = Pki::new("streams CA");
    let server = TestServer::ready(&pki, Limits { request_timeout: Duration::from_millis(500), ..limits() }).await;
    let mut raw = Raw::connect(&server, &pki, &[]).await;
    // 300 requests whose bodies never come: each would hold a handler until the request timeout.
    let head = request_head("/validate");
    let mut burst = Vec::new();
    for i in 0..300u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &head));
    }
    raw.write(&burst).await;
    bystander_review(&server, &pki).await;
    let mut refused = std::collections::BTreeSet::new();
    let mut answered = std::collections::BTreeSet::new();
    while refused.len() + answered.len() < 300 {
        let frame = raw.next().await.expect("the connection stays open");
        match frame.kind {
            RST_STREAM if frame.error_code() == REFUSED_STREAM => assert!(refused.insert(frame.stream)),
            // After the 408 of a served stream whose body never came (RFC 9113 section 8.1).
            RST_STREAM => assert!(frame.error_code() == 0 && answered.contains(&frame.stream), "{frame:?}"),
            // The 408 of a stream that was served, after the request timeout.
            HEADERS => assert!(answered.insert(frame.stream)),
            _ => {}
        }
    }
    assert_eq!((refused.len(), answered.len()), (200, 100));
    assert!(refused.is_disjoint(&answered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_window_is_closed() {
    let pki = Pki::new("window CA");
    let limits =
        Limits { idle_timeout: Duration::from_millis(300), request_timeout: Duration::from_millis(300), ..limits() };
    let server = TestServer::ready(&pki, limits).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 1: one byte of each response, and no WINDOW_UPDATE ever.
    let mut raw = Raw::connect(&server, &pki, &[(0x4, 1)]).await;
    let head = request_head("/imagereview");
    let body = fixture("imagereview-allowed.json");
    let mut requests = Vec::new();
    for i in 0..20u32 {
        requests.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &head));
        requests.extend(frame(DATA, END_STREAM, 2 * i + 1, &body));
    }
    raw.write(&requests).await;
    bystander_review(&server, &pki).await;
    // The answers are stuck behind the window; the connection is closed anyway.
    let frames = raw.until_closed().await;
    let data: usize = frames.iter().filter(|f| f.kind == DATA).map(|f| f.payload.len()).sum();
    assert!(data <= 20, "the server sent {data} bytes of DATA past a 1-byte window per stream");
    assert_eq!(frames.iter().filter(|f| f.kind == HEADERS).count(), 20, "every request was answered");
    bystander_review(&server, &pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_cut_off() {
    let pki = Pki::new("headers CA");
    let server = TestServer::ready(&pki, limits()).await;

    // One header list over the 16 KiB limit, in one HEADERS and one CONTINUATION frame: 431.
    let mut raw = Raw::connect(&server, &pki, &[]).await;
    let mut block = request_head("/validate");
    literal("x-flood", &[b'a'; 12 * 1024], &mut block);
    let mut second = Vec::new();
    literal("x-flood-2", &[b'b'; 12 * 1024], &mut second);
    let mut frames = frame(HEADERS, END_STREAM, 1, &block);
    frames.extend(frame(CONTINUATION, END_HEADERS, 1, &second));
    raw.write(&frames).await;
    let response = loop {
        let frame = raw.next().await.expect("an answer");
        if frame.kind == HEADERS {
            break frame;
        }
    };
    // `:status 431`: a literal with the static table's :status name, "431" Huffman-coded.
    assert_eq!((response.stream, &response.payload[..]), (1, &[0x48, 0x83, 0x69, 0x90, 0xff][..]), "{response:?}");

    // CONTINUATION frames without end: the connection is closed after a few.
    let mut raw = Raw::connect(&server, &pki, &[]).await;
    let mut flood = frame(HEADERS, 0, 1, &request_head("/validate"));
    for _ in 0..400 {
        let mut chunk = Vec::new();
        literal("x-flood", &[b'c'; 16 * 1024 - 32], &mut chunk);
        flood.extend(frame(CONTINUATION, 0, 1, &chunk));
    }
    let _ = raw.tls.write_all(&flood).await;
    bystander_review(&server, &pki).await;
    let got = raw.until_closed().await;
    let goaway = got.iter().find(|f| f.kind == GOAWAY).expect("a GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{got:?}");
    assert!(!got.iter().any(|f| f.kind == HEADERS), "the flooded stream was never served");
    bystander_review(&server, &pki).await;
}
