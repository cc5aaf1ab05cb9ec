//! Shared by the server tests: certificates generated on the spot, an in-process server on
//! 127.0.0.1:0, and HTTPS clients (HTTP/1.1 and HTTP/2) built on hyper and rustls.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use trustgate_admission::metrics::{self, AdmissionMetrics, SnapshotCollector, TlsMetrics};
use trustgate_admission::server::{self, Admission, Limits};
use trustgate_admission::tls::{CertificateFiles, Credentials, Reloader};
use trustgate_core::engine::snapshot::{Snapshot, Store};

/// Generous bound for anything asynchronous on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The policies of tests/fixtures/policies.yaml, compiled.
pub fn snapshot() -> Snapshot {
    let path = fixture_path("policies.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let policies = trustgate_manifest::manifest::parse_policies(&path.display().to_string(), &text).unwrap();
    let (policies, errors) = trustgate_core::engine::PolicySet::compile(&policies);
    assert!(errors.is_empty(), "{errors:?}");
    Snapshot { policies, namespaces: None }
}

/// A CA made for one test, and server certificates it signs.
pub struct Pki {
    pub ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its key, as PEM, plus the certificate's DER to compare with.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = params.self_signed(&key).unwrap();
        Pki { ca: ca.der().clone(), issuer: Issuer::new(params, key) }
    }

    pub fn server_cert(&self) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl ServerCert {
    pub fn write(&self, dir: &Path) -> CertificateFiles {
        let files = CertificateFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key") };
        std::fs::write(&files.cert, &self.cert_pem).unwrap();
        std::fs::write(&files.key, &self.key_pem).unwrap();
        files
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        let dir = tempfile::tempdir().unwrap();
        let (credentials, _) = Reloader::load(self.write(dir.path()), TlsMetrics::default()).unwrap();
        credentials
    }
}

/// An admission server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub shutdown: CancellationToken,
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(credentials: Arc<Credentials>, store: Arc<Store>, limits: Limits) -> Self {
        let mut registry = metrics::registry();
        SnapshotCollector::register(&mut registry, store.clone());
        let admission_metrics = AdmissionMetrics::register(&mut registry);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = Arc::new(credentials.server_config().unwrap());
        let shutdown = CancellationToken::new();
        let admission = Admission::new(store.clone(), admission_metrics, &limits);
        let task = tokio::spawn(server::serve(listener, tls, admission, limits, shutdown.clone()));
        TestServer { addr, store, shutdown, registry: Arc::new(registry), task }
    }

    /// A server with the fixture policies loaded.
    pub async fn ready(pki: &Pki, limits: Limits) -> Self {
        let store = Store::new();
        store.publish(snapshot());
        TestServer::start(pki.server_cert().credentials(), store, limits).await
    }

    pub fn metrics(&self) -> String {
        metrics::encode(&self.registry).unwrap()
    }

    /// Waits until the metric `series` (name and labels) has the value `value`.
    pub async fn await_value(&self, series: &str, value: f64) {
        let deadline = Instant::now() + PATIENCE;
        while metric_value(&self.metrics(), series) != value {
            assert!(Instant::now() < deadline, "{series} never became {value}:\n{}", self.metrics());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the metrics text contains `needle`.
    pub async fn await_metric(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.metrics().contains(needle) {
            assert!(Instant::now() < deadline, "metrics never showed {needle:?}:\n{}", self.metrics());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn client_config(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Opens a TCP connection and completes the TLS handshake, verifying the server as `localhost`.
pub async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// Opens a TCP connection from `source` (any address of 127/8 is local on Linux): how the tests
/// tell one client address from another.
pub async fn tcp_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// [`tls_connect`] from the address `source`.
pub async fn tls_connect_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, addr).await?;
    TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// The value of one sample line of the metrics text, `name{labels} value`; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The DER of the certificate the server presents now.
pub async fn served_certificate(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tls = tls_connect(addr, config).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

pub type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

pub async fn http1<B>(tls: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    send
}

pub async fn http2(tls: TlsStream<TcpStream>) -> H2 {
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    send
}

pub fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

pub async fn read(response: Response<Incoming>) -> (StatusCode, Bytes) {
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, Bytes) {
    let mut h1: H1 = http1(tls_connect(addr, config).await.unwrap()).await;
    read(h1.send_request(request).await.unwrap()).await
}

/// A request body fed chunk by chunk from a channel: a request kept in flight on purpose.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Sends a request on a kept-alive HTTP/1.1 connection once it is ready for another one.
pub async fn exchange<B>(h1: &mut hyper::client::conn::http1::SendRequest<B>, request: Request<B>) -> Response<Incoming>
where
    B: Body + 'static,
{
    h1.ready().await.expect("the connection takes another request");
    h1.send_request(request).await.expect("a response")
}
