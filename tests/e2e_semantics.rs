//! End-to-end tests of existingImages and registryRules against a real API server: `just e2e`
//! runs them (with tests/e2e.rs) as `cargo test --test e2e --test e2e_semantics -- --ignored
//! --test-threads=1` against whatever `KUBECONFIG` points to.
//!
//! Each test starts its own webhook OUTSIDE the cluster, as tests/e2e.rs does by default: the
//! `trustgate` binary on 127.0.0.1 with a test CA, registered by URL for the test's own
//! namespace only, so the tests pass on a cluster that holds other objects. With
//! `TRUSTGATE_E2E_MODE=in-cluster` the Helm chart's webhook (and CRD) are used instead. The
//! helpers below are a copy of the few that tests/e2e.rs has, kept apart so that each file can
//! change on its own; what both must do alike (waits, the chart's logs) is in tests/e2e_support. Namespace, policies, webhook configuration, lease and process are removed
//! when a test ends, pass or fail.

mod e2e_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::{InARow, chart_pod_logs};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use trustgate_core::api::TrustedRegistryPolicy;

/// Field manager of everything the tests write.
const MANAGER: &str = "trustgate-e2e";
/// Name of the webhook in the configuration the tests register.
const WEBHOOK: &str = "validate.trustgate.dev";
/// The message every test policy appends to its denials.
const POLICY_MESSAGE: &str = "Use images from registry.my.com (trustgate e2e)";

async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        panic!(
            "the e2e tests need a Kubernetes API server: set KUBECONFIG to its kubeconfig \
             (`KUBECONFIG=~/.kube/config just e2e`); they are #[ignore]d so that `cargo test` does not need one"
        );
    }
    Client::try_default().await.expect("a client from KUBECONFIG")
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{:05x}", std::process::id() % 0x100, nanos % 0x100000)
}

fn resource(kind: &str) -> ApiResource {
    let (group, plural) = match kind {
        "Pod" => ("", "pods"),
        "Deployment" => ("apps", "deployments"),
        "CronJob" => ("batch", "cronjobs"),
        other => panic!("no resource for {other}"),
    };
    let version = "v1";
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A webhook process on 127.0.0.1 and what registers it.
struct LocalWebhook {
    child: Child,
    dir: tempfile::TempDir,
    config_name: String,
    lease_name: String,
}

impl LocalWebhook {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("webhook.log")).unwrap_or_default()
    }
}

/// One test's namespace, policies and webhook; cleans up on drop.
struct Harness {
    client: Client,
    namespace: String,
    policies: Vec<String>,
    webhook: Option<LocalWebhook>,
}

impl Harness {
    async fn start(test: &str) -> Self {
        let client = client().await;
        let namespace = format!("tg-sem-{test}-{}", unique_suffix());
        install_crd(&client).await;
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(BTreeMap::from([("trustgate.dev/e2e".to_owned(), "true".to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create the namespace");
        let mut harness = Harness { client, namespace, policies: Vec::new(), webhook: None };
        if !in_cluster() {
            harness.webhook = Some(harness.start_webhook().await);
        }
        harness
    }

    /// Starts `trustgate serve` on free ports with a fresh certificate, waits for it to be
    /// ready, and registers it for this namespace only.
    async fn start_webhook(&self) -> LocalWebhook {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, cert_pem, key_pem) = certificates();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let lease_name = format!("trustgate-e2e-{}", self.namespace);
        let identity = format!("e2e-{}", self.namespace);
        let log = std::fs::File::create(dir.path().join("webhook.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_trustgate"))
            .args(["serve", "--policy-source", "kubernetes", "--log-format", "text"])
            .args(["--addr", &format!("127.0.0.1:{port}"), "--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--audit-interval", "3s", "--lease-namespace", "default", "--lease-name", &lease_name])
            .args(["--identity", &identity])
            .env("RUST_LOG", "info,trustgate=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the trustgate binary");
        let mut webhook =
            LocalWebhook { child, dir, config_name: format!("trustgate-e2e-{}", self.namespace), lease_name };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(admin_port, "/readyz") != Some(200) {
            if let Ok(Some(status)) = webhook.child.try_wait() {
                panic!("the webhook exited ({status}):\n{}", webhook.log());
            }
            assert!(Instant::now() < deadline, "the webhook did not get ready in 30s:\n{}", webhook.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rule = |groups: &[&str], resources: &[&str]| RuleWithOperations {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            api_versions: Some(vec!["*".into()]),
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            scope: Some("Namespaced".into()),
        };
        let config = ValidatingWebhookConfiguration {
            metadata: ObjectMeta { name: Some(webhook.config_name.clone()), ..ObjectMeta::default() },
            webhooks: Some(vec![ValidatingWebhook {
                name: WEBHOOK.into(),
                admission_review_versions: vec!["v1".into()],
                side_effects: "None".into(),
                failure_policy: Some("Fail".into()),
                match_policy: Some("Equivalent".into()),
                timeout_seconds: Some(10),
                client_config: WebhookClientConfig {
                    url: Some(format!("https://127.0.0.1:{port}/validate")),
                    ca_bundle: Some(ByteString(ca_pem.into_bytes())),
                    service: None,
                },
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_owned(),
                        self.namespace.clone(),
                    )])),
                    ..LabelSelector::default()
                }),
                rules: Some(vec![
                    rule(&[""], &["pods", "pods/ephemeralcontainers", "podtemplates", "replicationcontrollers"]),
                    rule(&["apps"], &["deployments", "replicasets", "statefulsets", "daemonsets"]),
                    rule(&["batch"], &["jobs", "cronjobs"]),
                ]),
                ..ValidatingWebhook::default()
            }]),
        };
        Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .create(&PostParams::default(), &config)
            .await
            .expect("register the webhook");
        webhook
    }

    fn policy_name(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace)
    }

    /// Applies a policy that selects only this test's namespace; returns its full name.
    async fn apply_policy(&mut self, name: &str, mut spec: Value) -> String {
        let name = self.policy_name(name);
        spec["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": self.namespace}});
        spec["message"] = json!(POLICY_MESSAGE);
        let policy = json!({"apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
                            "metadata": {"name": name}, "spec": spec});
        Api::<TrustedRegistryPolicy>::all(self.client.clone())
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&policy))
            .await
            .expect("apply the policy");
        if !self.policies.contains(&name) {
            self.policies.push(name.clone());
        }
        name
    }

    fn api(&self, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource(kind))
    }

    async fn create(&self, object: &Value) -> Result<DynamicObject, kube::Error> {
        self.create_with(object, false).await
    }

    async fn create_with(&self, object: &Value, dry_run: bool) -> Result<DynamicObject, kube::Error> {
        let kind = object["kind"].as_str().expect("kind");
        let object: DynamicObject = serde_json::from_value(object.clone()).expect("a Kubernetes object");
        self.api(kind).create(&PostParams { dry_run, ..PostParams::default() }, &object).await
    }

    /// Dry-run creates `object` until `done` says the answer is the awaited one
    /// [`InARow::NEEDED`] times in a row: policies and webhook registrations reach the API
    /// server and the webhook (every replica of it) asynchronously. Returns when the first of
    /// those came back.
    async fn wait_for_answer(
        &self,
        what: &str,
        object: &Value,
        timeout: Duration,
        done: impl Fn(&Result<DynamicObject, kube::Error>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let mut in_a_row = InARow::default();
        loop {
            let result = self.create_with(object, true).await;
            let right = done(&result);
            if let Some(began) = in_a_row.record(right, start.elapsed()) {
                return began;
            }
            if right {
                continue;
            }
            assert!(
                start.elapsed() < timeout,
                "{what}: not within {timeout:?}; last answer: {result:?}{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_until_denied(&self, object: &Value) -> Duration {
        self.wait_for_answer("a denial", object, Duration::from_secs(30), |r| denial(r).is_some()).await
    }

    /// The webhook's log for a failure message: the local process's, or the chart's Pods'.
    fn logs(&self) -> String {
        match &self.webhook {
            Some(webhook) => format!("\nwebhook log:\n{}", webhook.log()),
            None if in_cluster() => chart_pod_logs(),
            None => String::new(),
        }
    }

    /// The whole denial message for these lines, as the API server relays it.
    fn expected_denial(&self, lines: &[String]) -> String {
        format!("denied the request: {}\n{POLICY_MESSAGE}", lines.join("\n"))
    }

    fn assert_denied(&self, result: Result<impl std::fmt::Debug, kube::Error>, lines: &[String]) {
        let Some(message) = denial(&result) else {
            panic!("expected a denial naming {lines:#?}, got {result:?}{}", self.logs());
        };
        let want = self.expected_denial(lines);
        assert!(message.ends_with(&want), "denial message:\n{message}\nexpected it to end with:\n{want}");
        assert_eq!(message, format!("admission webhook \"{WEBHOOK}\" {want}"));
    }
}

/// The message of a webhook denial, if `result` is one.
fn denial<T>(result: &Result<T, kube::Error>) -> Option<String> {
    match result {
        Err(kube::Error::Api(status)) if status.message.contains("denied the request") => Some(status.message.clone()),
        _ => None,
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(webhook) = &mut self.webhook {
            // SIGTERM first so that it releases its lease; then make sure it is gone.
            if webhook.child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill").args(["-TERM", &webhook.child.id().to_string()]).status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while webhook.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = webhook.child.kill();
            let _ = webhook.child.wait();
        }
        let namespace = self.namespace.clone();
        let policies = std::mem::take(&mut self.policies);
        let webhook = self.webhook.as_ref().map(|w| (w.config_name.clone(), w.lease_name.clone()));
        // A runtime of its own: the test's may be unwinding.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let client = Client::try_default().await.expect("a client from KUBECONFIG");
                let dp = DeleteParams::default();
                if let Some((config, lease)) = webhook {
                    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone()).delete(&config, &dp).await;
                    let _ = Api::<Lease>::namespaced(client.clone(), "default").delete(&lease, &dp).await;
                }
                for policy in policies {
                    let _ = Api::<TrustedRegistryPolicy>::all(client.clone()).delete(&policy, &dp).await;
                }
                let _ = Api::<Namespace>::all(client).delete(&namespace, &dp).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Installs (or updates) the CRD from `trustgate crd` and waits until it is served.
async fn install_crd(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = "trustedregistrypolicies.trustgate.dev";
    if !in_cluster() {
        let output = Command::new(env!("CARGO_BIN_EXE_trustgate")).arg("crd").output().expect("run `trustgate crd`");
        assert!(output.status.success(), "`trustgate crd` failed: {}", String::from_utf8_lossy(&output.stderr));
        let yaml = String::from_utf8(output.stdout).expect("UTF-8 YAML");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("`trustgate crd` prints a CRD");
        assert_eq!(crd.metadata.name.as_deref(), Some(name));
        api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd)).await.expect("apply the CRD");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let established = api.get_opt(name).await.expect("read the CRD").is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "the CRD {name} is not established after 30s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM: (ca, cert, key).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "trustgate e2e CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status code of a plain HTTP GET, or `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Whether to use the webhook the Helm chart installed instead of starting one.
fn in_cluster() -> bool {
    match std::env::var("TRUSTGATE_E2E_MODE").as_deref() {
        Err(_) | Ok("") | Ok("local") => false,
        Ok("in-cluster") => true,
        Ok(other) => panic!("TRUSTGATE_E2E_MODE={other:?}: expected \"local\" (the default) or \"in-cluster\""),
    }
}

/// A digest for images that must be pinned (the image never runs: Pods stay Pending or are
/// only dry-run).
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn pod(name: &str, image: &str, pull: Option<&str>) -> Value {
    let mut container = json!({"name": "web", "image": image});
    if let Some(pull) = pull {
        container["imagePullPolicy"] = json!(pull);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}})
}

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "web", "image": image}]}}}})
}

impl Harness {
    /// Merge-patches a Deployment with a raw request, to read the `Warning` headers kube's
    /// typed calls drop: (HTTP status, warnings, the Status message of a failure). Only this
    /// test's own warnings are kept (its policies are named after its namespace, and their
    /// message): other policies in a live cluster may warn about the same object too.
    async fn patch_deployment(&self, name: &str, patch: &Value) -> (u16, Vec<String>, String) {
        let url = format!("/apis/apps/v1/namespaces/{}/deployments", self.namespace);
        let request = kube::core::Request::new(url)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .unwrap()
            .map(kube::client::Body::from);
        let response = self.client.send(request).await.expect("the API server answers");
        let status = response.status().as_u16();
        let warnings = response
            .headers()
            .get_all(http::header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(warning_text)
            .filter(|w: &String| w.contains(&format!("policy \"{}-", self.namespace)) || w == POLICY_MESSAGE)
            .collect();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("a body").to_bytes();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (status, warnings, message)
    }
}

/// The text of a `Warning: 299 - "text"` header, unescaped.
fn warning_text(header: &str) -> String {
    let quoted = header.split_once(" - ").map_or(header, |(_, rest)| rest);
    let inner = quoted.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(quoted);
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn a_legacy_deployment_restarts_and_relabels_with_a_warning_but_cannot_change_to_another_untrusted_image() {
    let mut h = Harness::start("existing").await;
    // Created before any policy applies: admitted.
    h.create(&deployment("legacy", "nginx:1.25")).await.expect("no policy applies yet");
    let policy = h.apply_policy("corp", json!({"trustedRegistries": ["registry.my.com"]})).await;
    h.wait_until_denied(&pod("probe", "docker.io/library/probe:1", None)).await;
    let subject = format!("Deployment {}/legacy", h.namespace);
    let untrusted = |image: &str, normalized: &str| {
        format!(
            "{subject}: container \"web\" (spec.template.spec.containers[0]) image {image:?} resolves to {normalized}, which policy {policy:?} does not trust (trusted: registry.my.com)"
        )
    };
    let kept = format!(
        "{}; admitted because the object already had this image before this update (policy {policy:?} has existingImages: Allow)",
        untrusted("nginx:1.25", "docker.io/library/nginx:1.25")
    );

    // `kubectl rollout restart` patches the pod template's annotation.
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-12-02T00:00:00Z"}}}}});
    let (status, warnings, message) = h.patch_deployment("legacy", &restart).await;
    assert_eq!(status, 200, "restart: {message}{}", h.logs());
    assert_eq!(warnings, [kept.clone(), POLICY_MESSAGE.to_owned()]);

    // The new ReplicaSet the restart makes the Deployment controller create is a CREATE, and
    // CREATEs are checked in full (docs/operations.md says what to do about it): the
    // Deployment reports the denial instead of rolling.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let deployment = h.api("Deployment").get("legacy").await.expect("read the Deployment");
        let conditions = deployment.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if let Some(failure) = conditions.iter().find(|c| c["reason"] == "ReplicaSetCreateError") {
            let message = failure["message"].as_str().unwrap_or_default();
            assert!(message.contains("denied the request"), "{message}");
            assert!(message.contains("does not trust"), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "no ReplicaSetCreateError within 30s: {conditions:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // `kubectl label`.
    let (status, warnings, message) =
        h.patch_deployment("legacy", &json!({"metadata": {"labels": {"team": "legacy"}}})).await;
    assert_eq!(status, 200, "label: {message}{}", h.logs());
    assert_eq!(warnings, [kept, POLICY_MESSAGE.to_owned()]);

    // Another untrusted image is new: denied, with the usual message.
    let change = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "redis:7.2"}]}}}});
    let (status, warnings, message) = h.patch_deployment("legacy", &change).await;
    assert_eq!(status, 403, "change: {message}{}", h.logs());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        message,
        format!(
            "admission webhook \"{WEBHOOK}\" {}",
            h.expected_denial(&[untrusted("redis:7.2", "docker.io/library/redis:7.2")])
        )
    );

    // existingImages: Deny is the old behaviour: the restart is denied too.
    h.apply_policy("corp", json!({"trustedRegistries": ["registry.my.com"], "existingImages": "Deny"})).await;
    let relabel = json!({"metadata": {"labels": {"team": "strict"}}});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, message) = h.patch_deployment("legacy", &relabel).await;
        if status == 403 {
            assert!(message.contains(&untrusted("nginx:1.25", "docker.io/library/nginx:1.25")), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "existingImages: Deny not applied within 30s{}", h.logs());
        // Admitted while the edit propagates: undo so that the next try is an UPDATE again.
        h.patch_deployment("legacy", &json!({"metadata": {"labels": {"team": null}}})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn registry_rules_pin_docker_hub_images_and_pull_private_images_always() {
    let mut h = Harness::start("rules").await;
    let policy = h
        .apply_policy(
            "rules",
            json!({"trustedRegistries": ["docker.io", "registry.my.com"],
                   "registryRules": [
                       {"registries": ["docker.io"], "tags": {"requireDigest": true}},
                       {"registries": ["registry.my.com"], "imagePullPolicy": "Always"}]}),
        )
        .await;
    h.wait_until_denied(&pod("probe", "docker.io/library/probe:1", None)).await;
    let ns = &h.namespace;

    // Docker Hub without digest: denied by the rule; pinned: admitted.
    let result = h.create(&pod("hub", "nginx:1.25", None)).await;
    h.assert_denied(result, &[format!(
        "Pod {ns}/hub: container \"web\" (spec.containers[0]) image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, but policy {policy:?} requires images from docker.io to be pinned by digest (spec.registryRules[0] (docker.io)); write docker.io/library/nginx@sha256:<digest>"
    )]);
    h.create(&pod("hub-pinned", &format!("nginx:1.25@{DIGEST}"), Some("IfNotPresent")))
        .await
        .expect("a pinned Docker Hub image passes");

    // The internal tag passes with Always ...
    h.create(&pod("internal", "registry.my.com/team/app:1.0", Some("Always")))
        .await
        .expect("an internal tag pulled Always passes");
    // ... and is denied with IfNotPresent, whether written or defaulted by the API server.
    let pull_line = |name: &str| {
        format!(
            "Pod {ns}/{name}: container \"web\" (spec.containers[0]) image \"registry.my.com/team/app:1.0\" resolves to registry.my.com/team/app:1.0 (imagePullPolicy IfNotPresent), but policy {policy:?} requires imagePullPolicy Always for images from registry.my.com (spec.registryRules[1] (registry.my.com)), so that no Pod runs it from the node's cache without pull credentials; set spec.containers[0].imagePullPolicy: Always"
        )
    };
    let result = h.create(&pod("cached", "registry.my.com/team/app:1.0", Some("IfNotPresent"))).await;
    h.assert_denied(result, &[pull_line("cached")]);
    let result = h.create(&pod("defaulted", "registry.my.com/team/app:1.0", None)).await;
    h.assert_denied(result, &[pull_line("defaulted")]);
    // No tag: the API server defaults to Always, and the rule is satisfied.
    h.create(&pod("latest", "registry.my.com/team/app", None)).await.expect("implicit latest defaults to Always");
}
