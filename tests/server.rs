//! The admission server over a real TLS socket on 127.0.0.1: AdmissionReview and ImageReview
//! fixtures, every bad-input path, limits and timeouts, HTTP/2 and TLS 1.2.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trustgate_admission::server::Limits;
use trustgate_core::engine::snapshot::Store;

use support::*;

const TRUSTED: &str = "(trusted: registry.my.com, ghcr.io/my-org)";
const MESSAGE: &str = "Use images from registry.my.com; see https://wiki.example/registries";

/// What a fixture must get back.
enum Expect {
    /// Allowed, with exactly these warnings.
    Allow(&'static [&'static str]),
    /// Denied with 403 and exactly this message.
    Deny(String),
    /// Allowed, with exactly these (computed) warnings.
    Warn(Vec<String>),
}

fn denial(lines: &[String]) -> String {
    let mut message = lines.join("\n");
    message.push('\n');
    message.push_str(MESSAGE);
    message
}

fn untrusted(subject: &str, container: &str, field: &str, image: &str, normalized: &str) -> String {
    format!(
        "{subject}: container {container:?} ({field}) image {image:?} resolves to {normalized}, which policy \"corporate\" does not trust {TRUSTED}"
    )
}

fn admission_fixtures() -> Vec<(&'static str, Expect)> {
    vec![
        ("pod-create-allowed.json", Expect::Allow(&[])),
        (
            "pod-create-denied.json",
            Expect::Deny(denial(&[untrusted(
                "Pod default/scratch",
                "nginx",
                "spec.containers[0]",
                "nginx:1.25",
                "docker.io/library/nginx:1.25",
            )])),
        ),
        (
            "deployment-create-denied.json",
            Expect::Deny(denial(&[
                untrusted(
                    "Deployment default/web",
                    "migrate",
                    "spec.template.spec.initContainers[0]",
                    "ghcr.io/other-org/migrate:1.0",
                    "ghcr.io/other-org/migrate:1.0",
                ),
                // The line SPEC section 3 shows, verbatim.
                "Deployment default/web: container \"nginx\" (spec.template.spec.containers[0]) image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com, ghcr.io/my-org)".to_owned(),
            ])),
        ),
        ("deployment-update-allowed.json", Expect::Allow(&[])),
        (
            "deployment-update-warned.json",
            Expect::Allow(&[
                "Deployment batch/reports: container \"app\" (spec.template.spec.containers[0]) image \"registry.my.com/reports/app:3.1\" resolves to registry.my.com/reports/app:3.1, but policy \"batch-pinned\" requires images pinned by digest; write registry.my.com/reports/app@sha256:<digest>",
            ]),
        ),
        (
            "deployment-dryrun-denied.json",
            Expect::Deny(denial(&[untrusted(
                "Deployment default/web",
                "nginx",
                "spec.template.spec.containers[0]",
                "nginx",
                "docker.io/library/nginx:latest",
            )])),
        ),
        ("cronjob-create-allowed.json", Expect::Allow(&[])),
        (
            "cronjob-create-denied.json",
            Expect::Deny(denial(&[untrusted(
                "CronJob default/nightly-report",
                "report",
                "spec.jobTemplate.spec.template.spec.containers[0]",
                "quay.io/acme/report:1.0",
                "quay.io/acme/report:1.0",
            )])),
        ),
        (
            "pod-ephemeralcontainers-denied.json",
            Expect::Deny(denial(&[untrusted(
                "Pod default/web-5c7b9d8f6-x2k4p",
                "debugger-7xk2q",
                "spec.ephemeralContainers[0]",
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
            )])),
        ),
        ("deployment-scale-skipped.json", Expect::Allow(&[])),
        ("deployment-delete-skipped.json", Expect::Allow(&[])),
    ]
}

fn limits() -> Limits {
    Limits { drain_grace: Duration::from_secs(5), ..Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_fixtures_get_their_decisions() {
    let pki = Pki::new("fixtures CA");
    let server = TestServer::ready(&pki, limits()).await;
    expect_decisions(&server, &pki, admission_fixtures()).await;
    let metrics = server.metrics();
    for line in [
        r#"trustgate_admission_requests_total{endpoint="validate",kind="Deployment",operation="CREATE",decision="deny"} 2"#,
        r#"trustgate_admission_requests_total{endpoint="validate",kind="Deployment",operation="UPDATE",decision="warn"} 1"#,
        r#"trustgate_admission_requests_total{endpoint="validate",kind="Pod",operation="UPDATE",decision="deny"} 1"#,
        r#"trustgate_admission_requests_total{endpoint="validate",kind="other",operation="UPDATE",decision="allow"} 1"#,
        r#"trustgate_admission_request_duration_seconds_count{endpoint="validate"} 11"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

/// UPDATE fixtures with an oldObject (existingImages) and registry rules (policy
/// `platform-rules`, namespace `platform`).
fn semantics_fixtures() -> Vec<(&'static str, Expect)> {
    const EXISTING: &str = "; admitted because the object already had this image before this update (policy \"corporate\" has existingImages: Allow)";
    let legacy = |image: &str, normalized: &str| {
        untrusted("Deployment default/legacy", "app", "spec.template.spec.containers[0]", image, normalized)
    };
    vec![
        (
            "deployment-restart-existing-warned.json",
            Expect::Warn(vec![format!("{}{EXISTING}", legacy("nginx:1.25", "docker.io/library/nginx:1.25")), MESSAGE.to_owned()]),
        ),
        ("deployment-update-new-image-denied.json", Expect::Deny(denial(&[legacy("redis:7.2", "docker.io/library/redis:7.2")]))),
        // Created by a user, not a controller: its ownerReference to a ReplicaSet proves nothing.
        ("pod-registry-rules-denied.json", Expect::Deny(platform_rules_violations().join("\n"))),
        // The same Pod, created by the ReplicaSet controller from a template trustgate admitted:
        // it inherits that admission (existingImages: Allow), its violations as warnings.
        (
            "pod-registry-rules-inherited.json",
            Expect::Warn(
                platform_rules_violations()
                    .iter()
                    .map(|v| format!("{v}; admitted because system:serviceaccount:kube-system:replicaset-controller created it from the template of ReplicaSet \"tools-6f7d9c8b4\", which trustgate admitted (policy \"platform-rules\" has existingImages: Allow)"))
                    .collect(),
            ),
        ),
    ]
}

fn platform_rules_violations() -> [&'static str; 2] {
    [
        "Pod platform/tools-6f7d9c8b4-*: container \"proxy\" (spec.containers[0]) image \"registry.my.com/mirror/nginx:1.25\" resolves to registry.my.com/mirror/nginx:1.25, but policy \"platform-rules\" requires images from registry.my.com/mirror to be pinned by digest (spec.registryRules[0] (registry.my.com/mirror)); write registry.my.com/mirror/nginx@sha256:<digest>",
        "Pod platform/tools-6f7d9c8b4-*: container \"api\" (spec.containers[1]) image \"registry.my.com/platform/api:1.0\" resolves to registry.my.com/platform/api:1.0 (imagePullPolicy IfNotPresent), but policy \"platform-rules\" requires imagePullPolicy Always for images from registry.my.com (spec.registryRules[1] (registry.my.com)), so that no Pod runs it from the node's cache without pull credentials; set spec.containers[1].imagePullPolicy: Always",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_images_and_registry_rules_fixtures_get_their_decisions() {
    let pki = Pki::new("semantics CA");
    let server = TestServer::ready(&pki, limits()).await;
    expect_decisions(&server, &pki, semantics_fixtures()).await;
    let metrics = server.metrics();
    for line in [
        r#"trustgate_admission_requests_total{endpoint="validate",kind="Deployment",operation="UPDATE",decision="warn"} 1"#,
        r#"trustgate_admission_requests_total{endpoint="validate",kind="Deployment",operation="UPDATE",decision="deny"} 1"#,
        r#"trustgate_admission_requests_total{endpoint="validate",kind="Pod",operation="CREATE",decision="deny"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

/// Sends every fixture over one kept-alive connection, as the API server does, and checks
/// each answer.
async fn expect_decisions(server: &TestServer, pki: &Pki, fixtures: Vec<(&'static str, Expect)>) {
    let config = client_config(&[&pki.ca], &[b"http/1.1"]);
    let mut h1: H1 = http1(tls_connect(server.addr, config).await.unwrap()).await;
    for (name, expect) in fixtures {
        let body = fixture(name);
        let sent: Value = serde_json::from_slice(&body).unwrap();
        // One kept-alive connection for all of them, as the API server does.
        let response = exchange(&mut h1, post("/validate", body)).await;
        assert_eq!(response.headers()["content-type"], "application/json", "{name}");
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body:?}");
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got["apiVersion"], "admission.k8s.io/v1", "{name}");
        assert_eq!(got["kind"], "AdmissionReview", "{name}");
        let response = &got["response"];
        assert_eq!(response["uid"], sent["request"]["uid"], "{name}: the uid is echoed");
        match expect {
            Expect::Warn(warnings) => {
                assert_eq!(response["allowed"], true, "{name}: {response}");
                assert!(response.get("status").is_none(), "{name}: {response}");
                assert_eq!(response["warnings"], json!(warnings), "{name}");
            }
            Expect::Allow(warnings) => {
                assert_eq!(response["allowed"], true, "{name}: {response}");
                assert!(response.get("status").is_none(), "{name}: {response}");
                let got: Vec<&str> = response
                    .get("warnings")
                    .map(|w| w.as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect())
                    .unwrap_or_default();
                assert_eq!(got, warnings, "{name}");
            }
            Expect::Deny(message) => {
                assert_eq!(response["allowed"], false, "{name}: {response}");
                assert_eq!(response["status"]["code"], 403, "{name}");
                assert_eq!(response["status"]["reason"], "Forbidden", "{name}");
                assert_eq!(response["status"]["message"].as_str(), Some(message.as_str()), "{name}");
                assert!(response.get("warnings").is_none(), "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_reviews_are_answered_with_the_namespace_policies() {
    let pki = Pki::new("imagereview CA");
    let server = TestServer::ready(&pki, limits()).await;
    let config = client_config(&[&pki.ca], &[]);

    let (status, body) =
        send(server.addr, config.clone(), post("/imagereview", fixture("imagereview-allowed.json"))).await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview", "status": {"allowed": true}})
    );

    let (status, body) = send(server.addr, config, post("/imagereview", fixture("imagereview-denied.json"))).await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["status"]["allowed"], false);
    assert_eq!(
        got["status"]["reason"],
        format!(
            "image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust {TRUSTED}\n{MESSAGE}"
        )
    );
    assert!(server.metrics().contains(r#"trustgate_admission_requests_total{endpoint="imagereview",kind="ImageReview",operation="CREATE",decision="deny"} 1"#));
}

/// ImageReview carries no pull policy: the pull-policy rule does not apply, the digest rule does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_reviews_apply_registry_tag_rules_but_not_pull_policy_rules() {
    let pki = Pki::new("imagereview rules CA");
    let server = TestServer::ready(&pki, limits()).await;
    let config = client_config(&[&pki.ca], &[]);
    let (status, body) =
        send(server.addr, config, post("/imagereview", fixture("imagereview-registry-rules.json"))).await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["status"]["allowed"], false);
    assert_eq!(
        got["status"]["reason"],
        "image \"registry.my.com/mirror/nginx:1.25\" resolves to registry.my.com/mirror/nginx:1.25, but policy \"platform-rules\" requires images from registry.my.com/mirror to be pinned by digest (spec.registryRules[0] (registry.my.com/mirror)); write registry.my.com/mirror/nginx@sha256:<digest>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_http_errors_with_reasons() {
    let pki = Pki::new("bad input CA");
    let server = TestServer::ready(&pki, limits()).await;
    let config = client_config(&[&pki.ca], &[]);
    let v1beta1 = String::from_utf8(fixture("pod-create-denied.json"))
        .unwrap()
        .replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
    let cases: Vec<(Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            post("/validate", "garbage"),
            StatusCode::BAD_REQUEST,
            "body is not a valid AdmissionReview: expected value at line 1 column 1",
        ),
        (post("/validate", ""), StatusCode::BAD_REQUEST, "body is not a valid AdmissionReview: EOF while parsing"),
        (
            post("/validate", "\"a string\""),
            StatusCode::BAD_REQUEST,
            "body is not a valid AdmissionReview: invalid type: string",
        ),
        (
            post("/validate", v1beta1),
            StatusCode::BAD_REQUEST,
            "expected apiVersion \"admission.k8s.io/v1\" kind \"AdmissionReview\", got apiVersion \"admission.k8s.io/v1beta1\"",
        ),
        (
            post("/validate", fixture("imagereview-denied.json")),
            StatusCode::BAD_REQUEST,
            "got apiVersion \"imagepolicy.k8s.io/v1alpha1\" kind \"ImageReview\"",
        ),
        (
            post("/imagereview", fixture("pod-create-denied.json")),
            StatusCode::BAD_REQUEST,
            "expected apiVersion \"imagepolicy.k8s.io/v1alpha1\" kind \"ImageReview\"",
        ),
        (
            post("/validate", r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            StatusCode::BAD_REQUEST,
            "AdmissionReview has no request",
        ),
        (post("/nope", "{}"), StatusCode::NOT_FOUND, "no such path \"/nope\""),
        (
            Request::get("/").header("host", "localhost").body(Full::default()).unwrap(),
            StatusCode::NOT_FOUND,
            "no such path \"/\"",
        ),
        (
            Request::get("/validate").header("host", "localhost").body(Full::default()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /validate is not allowed: use POST",
        ),
        (
            Request::builder()
                .method(Method::PUT)
                .uri("/imagereview")
                .header("host", "localhost")
                .body(Full::default())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT /imagereview is not allowed",
        ),
    ];
    let mut h1: H1 = http1(tls_connect(server.addr, config).await.unwrap()).await;
    for (request, status, reason) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let response = exchange(&mut h1, request).await;
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(response.headers()["allow"], "POST", "{what}");
        }
        let (got, body) = read(response).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body:?} does not contain {reason:?}");
    }
    server.await_metric(r#"trustgate_admission_rejected_requests_total{code="400"} 7"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_4_mib_are_refused_with_413() {
    let pki = Pki::new("413 CA");
    let server = TestServer::ready(&pki, limits()).await;

    // Declared up front: refused before a byte of the body is read.
    let mut tls = tls_connect(server.addr, client_config(&[&pki.ca], &[])).await.unwrap();
    let head = format!("POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n", 4 * 1024 * 1024 + 1);
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0; 512];
    let n = tokio::time::timeout(PATIENCE, tls.read(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("the request body exceeds 4194304 bytes"), "{response}");

    // Streamed without a length (HTTP/2 DATA frames): cut off once past the limit.
    let h2tls = tls_connect(server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap();
    let (mut h2, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (chunks, body) = tokio::sync::mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b' '; 64 * 1024]);
        for _ in 0..80 {
            if chunks.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let request = Request::post("/validate").body(ChannelBody(body)).unwrap();
    let (status, _) = read(h2.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    feeder.abort();

    // Just under the limit is read in full (and then is not a review).
    let mut padded = fixture("pod-create-denied.json");
    padded.resize(4 * 1024 * 1024, b' ');
    let (status, body) = send(server.addr, client_config(&[&pki.ca], &[]), post("/validate", padded)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_first_snapshot_get_503() {
    let pki = Pki::new("503 CA");
    let store = Store::new();
    let server = TestServer::start(pki.server_cert().credentials(), store.clone(), limits()).await;
    let config = client_config(&[&pki.ca], &[]);
    let (status, body) = send(server.addr, config.clone(), post("/validate", fixture("pod-create-denied.json"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "policies are not loaded yet\n");
    let (status, _) = send(server.addr, config.clone(), post("/imagereview", fixture("imagereview-denied.json"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    store.publish(snapshot());
    let (status, _) = send(server.addr, config, post("/validate", fixture("pod-create-denied.json"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn_and_multiplexes() {
    let pki = Pki::new("h2 CA");
    let server = TestServer::ready(&pki, limits()).await;
    let tls = tls_connect(server.addr, client_config(&[&pki.ca], &[b"h2", b"http/1.1"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2 = http2(tls).await;
    let requests = (0..16).map(|i| {
        let mut h2 = h2.clone();
        let name = if i % 2 == 0 { "pod-create-denied.json" } else { "pod-create-allowed.json" };
        async move {
            let response = h2.send_request(post("/validate", fixture(name))).await.unwrap();
            assert_eq!(response.version(), http::Version::HTTP_2);
            let (status, body) = read(response).await;
            assert_eq!(status, StatusCode::OK);
            let got: Value = serde_json::from_slice(&body).unwrap();
            (i, got["response"]["allowed"].as_bool().unwrap())
        }
    });
    for (i, allowed) in futures::future::join_all(requests).await {
        assert_eq!(allowed, i % 2 == 1, "request {i}");
    }

    let tls = tls_connect(server.addr, client_config(&[&pki.ca], &[b"http/1.1"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_accepted() {
    let pki = Pki::new("tls12 CA");
    let server = TestServer::ready(&pki, limits()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tls = tls_connect(server.addr, std::sync::Arc::new(config)).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let mut h1: H1 = http1(tls).await;
    let (status, _) = read(exchange(&mut h1, post("/validate", fixture("pod-create-allowed.json"))).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out() {
    let pki = Pki::new("timeouts CA");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        ..limits()
    };
    let server = TestServer::ready(&pki, limits).await;
    let config = client_config(&[&pki.ca], &[]);

    // Headers that never finish: the connection is closed.
    let mut tls = tls_connect(server.addr, config.clone()).await.unwrap();
    tls.write_all(b"POST /validate HTTP/1.1\r\nhost: local").await.unwrap();
    let mut buf = vec![0; 512];
    let read = tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await.expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"));

    // A body that never finishes: 408.
    let mut tls = tls_connect(server.addr, config.clone()).await.unwrap();
    tls.write_all(b"POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{\"apiVersion\"")
        .await
        .unwrap();
    let n = tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await.unwrap().unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");

    // A TLS handshake that never starts: the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await.expect("the server drops a silent client");
    assert!(matches!(read, Ok(0) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let pki = Pki::new("idle CA");
    let server = TestServer::ready(&pki, Limits { idle_timeout: Duration::from_millis(300), ..limits() }).await;
    let tls = tls_connect(server.addr, client_config(&[&pki.ca], &[b"h2"])).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let (status, _) = read(h2.send_request(post("/validate", fixture("pod-create-allowed.json"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // The server sends GOAWAY once the connection has been idle; the client connection ends.
    tokio::time::timeout(PATIENCE, connection).await.expect("an idle HTTP/2 connection is closed").unwrap().unwrap();
}
