//! Certificate rotation without a restart: files rewritten in place (cert-manager and friends)
//! and kubelet's Secret-volume update (a `..data` symlink swap). Each test asserts that the new
//! certificate is served afterwards and that a connection opened before keeps working.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio_util::sync::CancellationToken;
use trustgate_admission::metrics::{self, TlsMetrics};
use trustgate_admission::server::Limits;
use trustgate_admission::tls::{CertificateFiles, Reloader};
use trustgate_core::engine::snapshot::Store;

use support::*;

const RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// Starts a server on `files` with the reloader running; returns it with the reload metrics.
async fn start(files: CertificateFiles) -> (TestServer, prometheus_client::registry::Registry, CancellationToken) {
    let mut registry = metrics::registry();
    let (credentials, reloader) = Reloader::load(files, TlsMetrics::register(&mut registry)).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(reloader.run(RELOAD_INTERVAL, stop.clone()));
    let store = Store::new();
    store.publish(snapshot());
    let server = TestServer::start(credentials, store, Limits::default()).await;
    (server, registry, stop)
}

/// Waits until handshakes present `expected`.
async fn await_served(server: &TestServer, config: Arc<rustls::ClientConfig>, expected: &[u8]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if served_certificate(server.addr, config.clone()).await == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(RELOAD_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_rewritten_in_place_are_served_without_restart() {
    let (old_ca, new_ca) = (Pki::new("old CA"), Pki::new("new CA"));
    let (old, new) = (old_ca.server_cert(), new_ca.server_cert());
    let dir = tempfile::tempdir().unwrap();
    let files = old.write(dir.path());
    let (server, registry, stop) = start(files.clone()).await;
    let config = client_config(&[&old_ca.ca, &new_ca.ca], &[]);
    assert_eq!(served_certificate(server.addr, config.clone()).await, old.der);

    let mut kept: H1 = http1(tls_connect(server.addr, config.clone()).await.unwrap()).await;
    new.write(dir.path());
    await_served(&server, config.clone(), &new.der).await;

    // A client that trusts only the new CA now verifies the server.
    let only_new = client_config(&[&new_ca.ca], &[]);
    let (status, _) = send(server.addr, only_new, post("/validate", fixture("pod-create-allowed.json"))).await;
    assert_eq!(status, StatusCode::OK);
    // The connection opened before the rotation still serves requests.
    let (status, _) = read(exchange(&mut kept, post("/validate", fixture("pod-create-allowed.json"))).await).await;
    assert_eq!(status, StatusCode::OK);

    let text = metrics::encode(&registry).unwrap();
    assert!(text.contains(r#"trustgate_tls_certificate_reloads_total{result="success"}"#), "{text}");
    stop.cancel();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_data_symlink_swap_is_served_without_restart() {
    use std::os::unix::fs::symlink;
    let pki = Pki::new("rotating CA");
    let (old, new) = (pki.server_cert(), pki.server_cert());
    let dir = tempfile::tempdir().unwrap();
    // The layout kubelet gives a Secret volume: timestamped directory, `..data` pointing at it,
    // and the visible files as symlinks through `..data`.
    let generation = |name: &str, cert: &ServerCert| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        cert.write(&path);
    };
    generation("..2025_03_01_10_00_00.1", &old);
    symlink("..2025_03_01_10_00_00.1", dir.path().join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        symlink(Path::new("..data").join(file), dir.path().join(file)).unwrap();
    }
    let files = CertificateFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
    let (server, _registry, stop) = start(files).await;
    let config = client_config(&[&pki.ca], &[b"h2"]);
    assert_eq!(served_certificate(server.addr, config.clone()).await, old.der);
    let kept = http2(tls_connect(server.addr, config.clone()).await.unwrap()).await;

    // kubelet's atomic update: write the new generation, then rename a new symlink over `..data`.
    generation("..2025_04_01_10_00_00.2", &new);
    symlink("..2025_04_01_10_00_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2025_03_01_10_00_00.1")).unwrap();
    await_served(&server, config, &new.der).await;

    let (status, _) =
        read(kept.clone().send_request(post("/validate", fixture("pod-create-allowed.json"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rotation_keeps_the_previous_certificate() {
    let pki = Pki::new("CA");
    let (old, other) = (pki.server_cert(), pki.server_cert());
    let dir = tempfile::tempdir().unwrap();
    let files = old.write(dir.path());
    let (server, registry, stop) = start(files.clone()).await;
    // A certificate whose key never arrives.
    std::fs::write(&files.cert, &other.cert_pem).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !metrics::encode(&registry).unwrap().contains(r#"trustgate_tls_certificate_reloads_total{result="error"} 1"#)
    {
        assert!(Instant::now() < deadline, "the failed reload was never reported");
        tokio::time::sleep(RELOAD_INTERVAL).await;
    }
    let config = client_config(&[&pki.ca], &[]);
    assert_eq!(served_certificate(server.addr, config).await, old.der);
    stop.cancel();
}
