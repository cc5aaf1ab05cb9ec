//! End-to-end tests against a real API server: `just e2e` runs them with
//! `cargo test --test e2e -- --ignored --test-threads=1` against whatever `KUBECONFIG` points to.
//!
//! By default each test starts its own webhook OUTSIDE the cluster: the `trustgate` binary with
//! `serve --policy-source kubernetes` on 127.0.0.1, with a test CA and a certificate for
//! 127.0.0.1, registered through a ValidatingWebhookConfiguration with
//! `clientConfig.url: https://127.0.0.1:PORT/validate` and the CA as `caBundle` (the API server
//! must run on this machine). With `TRUSTGATE_E2E_MODE=in-cluster` no webhook is started: the
//! Helm chart's is used, and the audit timeout is `TRUSTGATE_E2E_AUDIT_TIMEOUT` seconds (default
//! 400, above the chart's 5m interval).
//!
//! Every test runs in a namespace of its own; its policies select only that namespace; the
//! namespace, the policies, the webhook configuration, the lease and the webhook process are
//! removed when the test ends, pass or fail.
//!
//! The cluster may hold other objects, including other TrustedRegistryPolicies: the tests assert
//! only what their own policies produce in their own namespaces. Audit and Warn policies of
//! others, and Enforce policies that do not select the test namespaces, change nothing. An
//! Enforce policy that selects them would add its own denials, so a test refuses to run then,
//! naming the policies. Writes that race with controllers (the kubelet updates a Pod's status)
//! are retried on `409 Conflict` after a fresh read, as kubectl does.
//!
//! Pods may really run (in-cluster on a real node): every container has
//! `imagePullPolicy: Never`, so nothing is ever pulled; Pods whose image is not on the node stay
//! in `ErrImageNeverPull`, which is fine, since admission is what is tested.
//!
//! `high_availability_...` runs in-cluster only: it restarts and upgrades the chart's Deployment
//! while admissions keep coming. For the `helm upgrade` step it needs `TRUSTGATE_E2E_HELM` (the
//! helm binary); the release is `TRUSTGATE_E2E_RELEASE` (`namespace/name`, default
//! `trustgate-system/trustgate`).

mod e2e_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::{InARow, chart_pod_logs, release};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use trustgate_core::api::{Mode as PolicyMode, TrustedRegistryPolicy};
use trustgate_core::engine::{CompiledPolicy, Namespace as PolicyNamespace};

/// Field manager of everything the tests write.
const MANAGER: &str = "trustgate-e2e";
/// Name of the webhook in the configuration the tests register.
const WEBHOOK: &str = "validate.trustgate.dev";
/// The message every test policy appends to its denials.
const POLICY_MESSAGE: &str = "Use images from registry.my.com (trustgate e2e)";
/// The label every test namespace carries (besides its name label).
const NAMESPACE_LABEL: (&str, &str) = ("trustgate.dev/e2e", "true");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Start the webhook on 127.0.0.1 and register it by URL.
    Local,
    /// Use the webhook the Helm chart installed.
    InCluster,
}

fn mode() -> Mode {
    match std::env::var("TRUSTGATE_E2E_MODE").as_deref() {
        Err(_) | Ok("") | Ok("local") => Mode::Local,
        Ok("in-cluster") => Mode::InCluster,
        Ok(other) => panic!("TRUSTGATE_E2E_MODE={other:?}: expected \"local\" (the default) or \"in-cluster\""),
    }
}

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
    identity: String,
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
        let namespace = format!("tg-{test}-{}", unique_suffix());
        install_crd(&client).await;
        let labels = BTreeMap::from([
            (NAMESPACE_LABEL.0.to_owned(), NAMESPACE_LABEL.1.to_owned()),
            ("kubernetes.io/metadata.name".to_owned(), namespace.clone()),
        ]);
        refuse_foreign_enforce_policies(&client, &namespace, &labels).await;
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(NAMESPACE_LABEL.0.to_owned(), NAMESPACE_LABEL.1.to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create the namespace");
        let mut harness = Harness { client, namespace, policies: Vec::new(), webhook: None };
        if mode() == Mode::Local {
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
            LocalWebhook { child, dir, config_name: format!("trustgate-e2e-{}", self.namespace), lease_name, identity };
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
            None if mode() == Mode::InCluster => chart_pod_logs(),
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
        if mode() == Mode::Local {
            assert_eq!(message, format!("admission webhook \"{WEBHOOK}\" {want}"));
        }
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
    if mode() == Mode::Local {
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

/// Panics, naming them, when Enforce policies other than the tests' own select a test namespace
/// with these labels: their denials would be mixed into every answer the tests check, and
/// Pods the tests expect to be admitted could be denied. Audit and Warn policies, and Enforce
/// policies that select other namespaces, are fine.
async fn refuse_foreign_enforce_policies(client: &Client, namespace: &str, labels: &BTreeMap<String, String>) {
    let policies = Api::<TrustedRegistryPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list TrustedRegistryPolicies");
    let names = enforcers_of(&policies.items, namespace, labels);
    assert!(
        names.is_empty(),
        "refusing to run: the cluster has Enforce TrustedRegistryPolicies that select the e2e \
         namespaces ({namespace}, labels {labels:?}): {names:?}. Their denials would mix with the \
         tests' own. Exclude the e2e namespaces from them (for example a namespaceSelector \
         requirement `{key} DoesNotExist`), switch them to Audit or Warn, or use another cluster.",
        key = NAMESPACE_LABEL.0,
    );
}

/// The names of the Enforce policies in `policies` that apply to `namespace` with `labels`.
/// Policies trustgate cannot compile are left out: trustgate ignores them too.
fn enforcers_of(policies: &[TrustedRegistryPolicy], namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let ns = PolicyNamespace { name: namespace, labels: Some(labels) };
    policies
        .iter()
        .filter_map(|p| CompiledPolicy::compile(p).ok())
        .filter(|p| p.mode() == PolicyMode::Enforce && p.applies_to(&ns))
        .map(|p| p.name().to_owned())
        .collect()
}

/// Runs `attempt` again while it fails with `409 Conflict` (the object changed between its read
/// and its write), as kubectl does; `attempt` must read the object afresh. At most 10 tries.
async fn retry_on_conflict<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict" && tries < 10 => {
                eprintln!("{what}: conflict on try {tries} ({}); reading again", status.message);
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            other => return other,
        }
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

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "web", "image": image, "imagePullPolicy": "Never"}],
                    "terminationGracePeriodSeconds": 0}})
}

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "web", "image": image, "imagePullPolicy": "Never"}],
                                          "terminationGracePeriodSeconds": 0}}}})
}

fn cronjob(name: &str, image: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
           "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
               "restartPolicy": "Never",
               "containers": [{"name": "job", "image": image, "imagePullPolicy": "Never"}]}}}}}})
}

/// The line a denial or warning carries for one container.
fn line(
    subject: &str,
    container: &str,
    field: &str,
    image: &str,
    normalized: &str,
    policy: &str,
    trusted: &str,
) -> String {
    format!(
        "{subject}: container {container:?} ({field}) image {image:?} resolves to {normalized}, which policy {policy:?} does not trust (trusted: {trusted})"
    )
}

async fn enforce_corporate(h: &mut Harness) -> String {
    let policy = h.apply_policy("corp", json!({"trustedRegistries": ["registry.my.com"]})).await;
    h.wait_until_denied(&pod("probe", "docker.io/library/probe:1")).await;
    policy
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn untrusted_pod_is_denied_with_every_violation_and_a_trusted_one_admitted() {
    let mut h = Harness::start("pod").await;
    let policy = enforce_corporate(&mut h).await;
    let ns = h.namespace.clone();

    let object = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"initContainers": [{"name": "init", "image": "busybox:1.36", "imagePullPolicy": "Never"}],
                 "containers": [{"name": "web", "image": "nginx:1.25", "imagePullPolicy": "Never"},
                                {"name": "ok", "image": "registry.my.com/app:1", "imagePullPolicy": "Never"}]}});
    let result = h.create(&object).await;
    // Every violation, in the order the containers run: init containers first.
    h.assert_denied(
        result,
        &[
            line(
                &format!("Pod {ns}/web"),
                "init",
                "spec.initContainers[0]",
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                &policy,
                "registry.my.com",
            ),
            line(
                &format!("Pod {ns}/web"),
                "web",
                "spec.containers[0]",
                "nginx:1.25",
                "docker.io/library/nginx:1.25",
                &policy,
                "registry.my.com",
            ),
        ],
    );
    assert!(h.api("Pod").get_opt("web").await.unwrap().is_none(), "a denied Pod is not stored");

    let trusted = h.create(&pod("trusted", "registry.my.com/team/app:1.0")).await;
    assert!(trusted.is_ok(), "a trusted Pod is admitted: {trusted:?}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn untrusted_deployment_and_cronjob_are_denied_at_their_pod_template() {
    let mut h = Harness::start("workloads").await;
    let policy = enforce_corporate(&mut h).await;
    let ns = h.namespace.clone();

    let result = h.create(&deployment("web", "nginx:1.25")).await;
    h.assert_denied(
        result,
        &[line(
            &format!("Deployment {ns}/web"),
            "web",
            "spec.template.spec.containers[0]",
            "nginx:1.25",
            "docker.io/library/nginx:1.25",
            &policy,
            "registry.my.com",
        )],
    );
    let result = h.create(&cronjob("nightly", "ghcr.io/evil/miner")).await;
    h.assert_denied(
        result,
        &[line(
            &format!("CronJob {ns}/nightly"),
            "job",
            "spec.jobTemplate.spec.template.spec.containers[0]",
            "ghcr.io/evil/miner",
            "ghcr.io/evil/miner:latest",
            &policy,
            "registry.my.com",
        )],
    );
    assert!(h.create(&deployment("ok", "registry.my.com/web:2")).await.is_ok());
    assert!(h.create(&cronjob("ok", "registry.my.com/batch:2")).await.is_ok());
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn kubectl_debug_ephemeral_containers_are_checked() {
    let mut h = Harness::start("debug").await;
    let policy = enforce_corporate(&mut h).await;
    let ns = h.namespace.clone();
    h.create(&pod("target", "registry.my.com/app:1")).await.expect("a trusted Pod");
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &ns);
    let expected = [line(
        &format!("Pod {ns}/target"),
        "debugger",
        "spec.ephemeralContainers[0]",
        "busybox:1.36",
        "docker.io/library/busybox:1.36",
        &policy,
        "registry.my.com",
    )];
    let debugger = |image: &str| json!({"name": "debugger", "image": image, "imagePullPolicy": "Never", "stdin": true, "tty": true});

    // What `kubectl debug` sends: a patch of the pods/ephemeralcontainers subresource.
    let patch = json!({"spec": {"ephemeralContainers": [debugger("busybox:1.36")]}});
    let result = pods.patch_ephemeral_containers("target", &PatchParams::default(), &Patch::Strategic(&patch)).await;
    h.assert_denied(result, &expected);

    // The same through a replace (PUT) of the subresource. On a real node the kubelet updates
    // the Pod's status between the read and the write: re-read and replace again on a conflict.
    let result = retry_on_conflict("replace pods/ephemeralcontainers", || async {
        let mut target = pods.get_ephemeral_containers("target").await?;
        let spec = target.spec.as_mut().expect("a Pod has a spec");
        spec.ephemeral_containers = Some(vec![serde_json::from_value(debugger("busybox:1.36")).unwrap()]);
        pods.replace_ephemeral_containers("target", &PostParams::default(), &target).await
    })
    .await;
    h.assert_denied(result, &expected);

    // A trusted debugging image is admitted.
    let patch = json!({"spec": {"ephemeralContainers": [debugger("registry.my.com/debug:1")]}});
    let admitted = pods.patch_ephemeral_containers("target", &PatchParams::default(), &Patch::Strategic(&patch)).await;
    let pod = admitted.expect("a trusted ephemeral container is admitted");
    let names: Vec<String> =
        pod.spec.unwrap().ephemeral_containers.unwrap_or_default().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["debugger"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn warn_mode_admits_with_warnings() {
    let mut h = Harness::start("warn").await;
    let policy = h.apply_policy("warn", json!({"mode": "Warn", "trustedRegistries": ["registry.my.com"]})).await;
    let ns = h.namespace.clone();
    let object = pod("warned", "nginx:1.25");
    let want = line(
        &format!("Pod {ns}/warned"),
        "web",
        "spec.containers[0]",
        "nginx:1.25",
        "docker.io/library/nginx:1.25",
        &policy,
        "registry.my.com",
    );
    // Wait until the webhook knows the policy: a dry run then carries its warning (other Warn
    // policies in the cluster may add theirs before).
    let start = Instant::now();
    let (status, dry_run_warnings) = loop {
        let (status, warnings) = create_reading_warnings(&h, &object, true).await;
        if warnings.contains(&want) {
            break (status, warnings);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no warning within 30s (status {status}){}", h.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 201, "a dry run in Warn mode is admitted");
    assert!(dry_run_warnings.contains(&want), "dry-run warnings {dry_run_warnings:#?} should contain {want:?}");
    let (status, warnings) = create_reading_warnings(&h, &object, false).await;
    assert_eq!(status, 201, "Warn mode admits");
    assert!(warnings.contains(&want), "warnings {warnings:#?} should contain {want:?}");
    assert!(warnings.iter().any(|w| w == POLICY_MESSAGE), "the policy message is a warning too: {warnings:#?}");
    assert!(h.api("Pod").get_opt("warned").await.unwrap().is_some());
}

/// Creates `object` with a raw request, to read the `Warning` headers kube's typed calls drop.
async fn create_reading_warnings(h: &Harness, object: &Value, dry_run: bool) -> (u16, Vec<String>) {
    let url = format!("/api/v1/namespaces/{}/pods", h.namespace);
    let body = serde_json::to_vec(object).unwrap();
    let pp = PostParams { dry_run, ..PostParams::default() };
    let request = kube::core::Request::new(url).create(&pp, body).unwrap().map(kube::client::Body::from);
    let response = h.client.send(request).await.expect("the API server answers");
    let warnings = response
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(warning_text)
        .collect();
    (response.status().as_u16(), warnings)
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
async fn policy_status_reports_ready_or_the_compile_error() {
    let mut h = Harness::start("status").await;
    let good = h.apply_policy("good", json!({"mode": "Warn", "trustedRegistries": ["registry.my.com"]})).await;
    // Valid for the CRD schema, rejected by the compiler: Near is no selector operator.
    let bad = h.policy_name("bad");
    let policy = json!({"apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
        "metadata": {"name": bad},
        "spec": {"trustedRegistries": ["registry.my.com"],
                 "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Near"}]}}});
    let api = Api::<TrustedRegistryPolicy>::all(h.client.clone());
    api.patch(&bad, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&policy)).await.expect("apply");
    h.policies.push(bad.clone());

    let ready = |name: String| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let p = api.get(&name).await.unwrap();
                let generation = p.metadata.generation;
                let status = p.status.unwrap_or_default();
                if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Ready")
                    && status.observed_generation == generation
                {
                    return c.clone();
                }
                assert!(Instant::now() < deadline, "no Ready condition on {name} within 60s");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let c = ready(good.clone()).await;
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Accepted"), "{c:?}");
    let c = ready(bad.clone()).await;
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"), "{c:?}");
    assert!(c.message.contains("spec.namespaceSelector"), "{}", c.message);
    assert!(c.message.contains("Near"), "{}", c.message);

    // A new generation is observed; still Ready, so the transition time stays.
    let first = ready(good.clone()).await.last_transition_time;
    h.apply_policy("good", json!({"mode": "Warn", "trustedRegistries": ["registry.my.com", "quay.io"]})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = api.get(&good).await.unwrap();
        let status = p.status.unwrap_or_default();
        if status.observed_generation == p.metadata.generation && p.metadata.generation == Some(2) {
            let c = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
            assert_eq!(c.observed_generation, Some(2));
            assert_eq!(c.last_transition_time, first);
            break;
        }
        assert!(Instant::now() < deadline, "generation 2 not observed within 60s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn audit_counts_workloads_by_top_level_owner_and_kubectl_shows_it() {
    let mut h = Harness::start("audit").await;
    let policy = h.apply_policy("audit", json!({"mode": "Audit", "trustedRegistries": ["registry.my.com"]})).await;
    // Audit mode admits everything; the audit finds what it would deny.
    h.create(&deployment("web", "nginx:1.25")).await.expect("Audit mode admits");
    h.create(&pod("bare", "busybox:1.36")).await.expect("Audit mode admits");
    h.create(&pod("fine", "registry.my.com/app:1")).await.expect("trusted");

    let timeout = match mode() {
        Mode::Local => Duration::from_secs(60),
        Mode::InCluster => Duration::from_secs(
            std::env::var("TRUSTGATE_E2E_AUDIT_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(400),
        ),
    };
    let api = Api::<TrustedRegistryPolicy>::all(h.client.clone());
    let start = Instant::now();
    let audit = loop {
        let audit = api.get(&policy).await.unwrap().status.and_then(|s| s.audit);
        if let Some(a) = audit.filter(|a| a.violations == 2) {
            break a;
        }
        assert!(start.elapsed() < timeout, "no audit with 2 violations within {timeout:?}{}", h.logs());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let samples: Vec<(&str, &str, &str)> =
        audit.samples.iter().map(|s| (s.kind.as_str(), s.name.as_str(), s.image.as_str())).collect();
    assert_eq!(samples, [("Deployment", "web", "nginx:1.25"), ("Pod", "bare", "busybox:1.36")]);
    assert!(audit.last_run.is_some());

    // `kubectl get trp` prints the CRD's columns: read them as the Table kubectl gets.
    let url = "/apis/trustgate.dev/v1alpha1/trustedregistrypolicies";
    let mut request = kube::core::Request::new(url).get(&policy, &Default::default()).unwrap();
    request
        .headers_mut()
        .insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"));
    let table: Value = h.client.request(request).await.expect("a Table");
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Mode", "Registries", "Violations", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!((&cells[1], &cells[3], &cells[4]), (&json!("Audit"), &json!(2), &json!("True")), "{cells}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn a_policy_edit_takes_effect_within_seconds() {
    let mut h = Harness::start("edit").await;
    h.apply_policy("edit", json!({"trustedRegistries": ["registry.my.com"]})).await;
    let object = pod("quay", "quay.io/team/app:1");
    h.wait_until_denied(&object).await;

    h.apply_policy("edit", json!({"trustedRegistries": ["registry.my.com", "quay.io/team"]})).await;
    let took = h.wait_for_answer("admission after the edit", &object, Duration::from_secs(10), Result::is_ok).await;
    eprintln!("the edit took effect after {took:?}");

    h.apply_policy("edit", json!({"trustedRegistries": ["registry.my.com"]})).await;
    let took = h.wait_until_denied(&object).await;
    assert!(took < Duration::from_secs(10), "denied again after {took:?}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn the_leader_renews_its_lease_and_releases_it_on_sigterm() {
    if mode() == Mode::InCluster {
        eprintln!("not applicable in-cluster: this test signals the webhook process it started");
        return;
    }
    let mut h = Harness::start("lease").await;
    let leases = Api::<Lease>::namespaced(h.client.clone(), "default");
    let (name, identity) = {
        let w = h.webhook.as_ref().expect("a local webhook");
        (w.lease_name.clone(), w.identity.clone())
    };
    let spec = |lease: Option<Lease>| lease.and_then(|l| l.spec).unwrap_or_default();
    let start = Instant::now();
    let first = loop {
        let s = spec(leases.get_opt(&name).await.unwrap());
        if s.holder_identity.as_deref() == Some(identity.as_str()) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the lease was not taken within 30s{}", h.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first.lease_duration_seconds, Some(15));
    // Renewed every 5s while leading.
    loop {
        let s = spec(leases.get_opt(&name).await.unwrap());
        if s.renew_time > first.renew_time {
            assert_eq!(s.holder_identity, first.holder_identity);
            assert_eq!(s.acquire_time, first.acquire_time, "a renewal is no new acquisition");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "the lease was not renewed{}", h.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // SIGTERM: the webhook drains, exits, and gives the lease up for the next replica.
    let webhook = h.webhook.as_mut().unwrap();
    Command::new("kill").args(["-TERM", &webhook.child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while webhook.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the webhook did not exit within 20s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let released = spec(leases.get_opt(&name).await.unwrap());
    assert_eq!(
        (released.holder_identity.as_deref(), released.lease_duration_seconds),
        (None, Some(1)),
        "the lease must be released on shutdown: {released:?}{}",
        h.logs()
    );
}

/// What the admissions sent during one phase of the HA test came back as.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    denied: u64,
    /// Every answer that was not the expected one (an error, or the wrong decision).
    failures: Vec<String>,
}

/// The admissions a worker sends, and what it counts.
struct Load {
    started: Instant,
    phase: AtomicUsize,
    stop: AtomicBool,
    tallies: Mutex<Vec<Tally>>,
}

/// Dry-run creates `allowed` and `denied` Pods one after the other until told to stop, counting
/// each answer in the current phase: `allowed` must be admitted and `denied` denied with
/// `denial_line`; anything else is a failure.
async fn send_admissions(api: Api<DynamicObject>, load: Arc<Load>, allowed: Value, denied: Value, denial_line: String) {
    let objects: [(DynamicObject, bool); 2] =
        [(serde_json::from_value(allowed).unwrap(), true), (serde_json::from_value(denied).unwrap(), false)];
    let pp = PostParams { dry_run: true, ..PostParams::default() };
    while !load.stop.load(Ordering::Relaxed) {
        for (object, admit) in &objects {
            let phase = load.phase.load(Ordering::Relaxed);
            let result = api.create(&pp, object).await;
            let right = match (&result, admit) {
                (Ok(_), true) => true,
                (Err(_), false) => denial(&result).is_some_and(|m| m.contains(&denial_line)),
                _ => false,
            };
            let mut tallies = load.tallies.lock().expect("no worker panics holding the lock");
            let tally = &mut tallies[phase];
            match (right, admit) {
                (true, true) => tally.admitted += 1,
                (true, false) => tally.denied += 1,
                (false, _) => tally.failures.push(format!(
                    "at {:.1}s, {} expected {}: {:?}",
                    load.started.elapsed().as_secs_f64(),
                    object.metadata.name.as_deref().unwrap_or_default(),
                    if *admit { "admission" } else { "denial" },
                    result.map(|_| "admitted")
                )),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `matchLabels` of a Deployment's selector as a label selector string.
fn selector_of(deployment: &Deployment) -> String {
    let labels = deployment.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn pod_is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the Deployment has rolled out completely: every replica updated, ready and
/// available, and no old or terminating Pod left. Returns the names of its Pods.
async fn wait_for_rollout(deployments: &Api<Deployment>, pods: &Api<Pod>, name: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let d = deployments.get(name).await.expect("read the Deployment");
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let listed = pods.list(&ListParams::default().labels(&selector_of(&d))).await.expect("list the Pods");
        let done = status.observed_generation >= d.metadata.generation
            && [
                status.updated_replicas,
                status.ready_replicas,
                status.available_replicas,
                Some(status.replicas.unwrap_or(0)),
            ]
            .iter()
            .all(|n| *n == Some(want))
            && listed.items.len() == want as usize
            && listed.items.iter().all(pod_is_ready);
        if done {
            return listed.items.into_iter().filter_map(|p| p.metadata.name).collect();
        }
        let summary: Vec<(Option<String>, bool, bool)> = listed
            .items
            .iter()
            .map(|p| (p.metadata.name.clone(), p.metadata.deletion_timestamp.is_some(), pod_is_ready(p)))
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the rollout of {name} is not complete after 180s: {status:?}; Pods (name, terminating, ready): {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the Lease is held by a ready, not terminating Pod other than `not`; returns it.
async fn wait_for_live_leader(leases: &Api<Lease>, pods: &Api<Pod>, lease: &str, not: Option<&str>) -> String {
    let start = Instant::now();
    loop {
        let holder = leases.get_opt(lease).await.expect("read the Lease").and_then(|l| l.spec?.holder_identity);
        if let Some(holder) = holder.filter(|h| Some(h.as_str()) != not)
            && pods.get_opt(&holder).await.expect("read the holder").is_some_and(|p| pod_is_ready(&p))
        {
            return holder;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Lease {lease} is not held by a live replica (other than {not:?}) after 60s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `kubectl rollout restart` of a Deployment: a new template annotation.
async fn rollout_restart(deployments: &Api<Deployment>, name: &str) {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": jiff::Timestamp::now().to_string()}}}}});
    deployments.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("restart the Deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn high_availability_restarts_leader_loss_and_upgrade_fail_no_admission() {
    if mode() != Mode::InCluster {
        eprintln!("in-cluster only: this test restarts the chart's Deployment (TRUSTGATE_E2E_MODE=in-cluster)");
        return;
    }
    let (release_namespace, release) = release();
    let mut h = Harness::start("ha").await;
    let ns = h.namespace.clone();
    let deployments = Api::<Deployment>::namespaced(h.client.clone(), &release_namespace);
    let pods = Api::<Pod>::namespaced(h.client.clone(), &release_namespace);
    let leases = Api::<Lease>::namespaced(h.client.clone(), &release_namespace);
    let instance = format!("app.kubernetes.io/instance={release}");
    let found = deployments.list(&ListParams::default().labels(&instance)).await.expect("list Deployments");
    assert_eq!(found.items.len(), 1, "expected one Deployment labelled {instance} in {release_namespace}");
    let deployment = found.items[0].metadata.name.clone().expect("a name");
    let args = found.items[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    let lease = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("the chart passes --lease-name (policySource kubernetes)")
        .to_owned();
    let replicas = wait_for_rollout(&deployments, &pods, &deployment).await;
    assert!(replicas.len() >= 2, "HA needs at least 2 replicas: {replicas:?}");
    wait_for_live_leader(&leases, &pods, &lease, None).await;

    let policy = h.apply_policy("ha", json!({"trustedRegistries": ["registry.k8s.io"]})).await;
    let allowed = pod("allowed", "registry.k8s.io/pause:3.10");
    let denied = pod("denied", "nginx:1.25");
    let denial_line = line(
        &format!("Pod {ns}/denied"),
        "web",
        "spec.containers[0]",
        "nginx:1.25",
        "docker.io/library/nginx:1.25",
        &policy,
        "registry.k8s.io",
    );
    // Every replica must know the policy before counting starts: 20 right answers in a row.
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 20 {
        let ok = h.create_with(&allowed, true).await.is_ok()
            && denial(&h.create_with(&denied, true).await).is_some_and(|m| m.contains(&denial_line));
        in_a_row = if ok { in_a_row + 1 } else { 0 };
        assert!(start.elapsed() < Duration::from_secs(30), "the replicas do not all enforce {policy} after 30s");
    }

    let phases =
        ["steady", "rollout restart 1", "rollout restart 2", "leader Pod deleted", "helm upgrade", "steady after"];
    let load = Arc::new(Load {
        started: Instant::now(),
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        tallies: Mutex::new(phases.iter().map(|_| Tally::default()).collect()),
    });
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(send_admissions(
                h.api("Pod"),
                load.clone(),
                allowed.clone(),
                denied.clone(),
                denial_line.clone(),
            ))
        })
        .collect();
    let enter = |phase: usize| {
        eprintln!("{:6.1}s: {}", load.started.elapsed().as_secs_f64(), phases[phase]);
        load.phase.store(phase, Ordering::Relaxed);
    };

    enter(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for phase in [1, 2] {
        enter(phase);
        rollout_restart(&deployments, &deployment).await;
        let now = wait_for_rollout(&deployments, &pods, &deployment).await;
        assert!(now.iter().all(|p| !replicas.contains(p)), "every replica was replaced: {replicas:?} -> {now:?}");
        wait_for_live_leader(&leases, &pods, &lease, None).await;
    }

    enter(3);
    let leader = wait_for_live_leader(&leases, &pods, &lease, None).await;
    pods.delete(&leader, &DeleteParams::default()).await.expect("delete the leader Pod");
    let successor = wait_for_live_leader(&leases, &pods, &lease, Some(&leader)).await;
    eprintln!("the Lease moved from {leader} to {successor}");
    wait_for_rollout(&deployments, &pods, &deployment).await;

    enter(4);
    match std::env::var("TRUSTGATE_E2E_HELM") {
        Ok(helm) if !helm.is_empty() => {
            let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/trustgate");
            let value = format!("podAnnotations.e2e-upgrade={}", unique_suffix());
            let args = ["upgrade", &release, chart, "-n", &release_namespace, "--reuse-values"];
            let mut command = Command::new(&helm);
            command.args(args).args(["--set-string", &value, "--wait", "--timeout", "5m"]);
            let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("run helm");
            assert!(
                output.status.success(),
                "helm upgrade failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let after = wait_for_rollout(&deployments, &pods, &deployment).await;
            let annotated = pods.get(&after[0]).await.unwrap().metadata.annotations.unwrap_or_default();
            assert!(annotated.contains_key("e2e-upgrade"), "the upgraded value reached the Pods: {annotated:?}");
            wait_for_live_leader(&leases, &pods, &lease, None).await;
        }
        _ => eprintln!("TRUSTGATE_E2E_HELM is not set: no helm upgrade (.ci/e2e.sh sets it)"),
    }

    enter(5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("a worker ends without panicking");
    }

    let tallies = std::mem::take(&mut *load.tallies.lock().unwrap());
    let sent: u64 = tallies.iter().map(|t| t.admitted + t.denied + t.failures.len() as u64).sum();
    eprintln!("{sent} admissions sent in {:.0}s:", load.started.elapsed().as_secs_f64());
    for (phase, t) in phases.iter().zip(&tallies) {
        eprintln!("  {phase:20} admitted {:6}  denied {:6}  failed {:4}", t.admitted, t.denied, t.failures.len());
    }
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    assert!(failures.is_empty(), "{} of {sent} admissions failed:\n{failures:#?}", failures.len());
    let helm = std::env::var("TRUSTGATE_E2E_HELM").is_ok_and(|h| !h.is_empty());
    for (phase, t) in phases.iter().zip(&tallies) {
        if *phase == "helm upgrade" && !helm {
            continue;
        }
        assert!(t.admitted > 0 && t.denied > 0, "admissions kept coming during {phase}: {t:?}");
    }
}

/// Pure: runs without a cluster, under plain `cargo test`.
#[test]
fn only_enforce_policies_selecting_the_test_namespace_make_the_tests_refuse() {
    let policy = |name: &str, spec: Value| -> TrustedRegistryPolicy {
        serde_json::from_value(json!({"apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
                                      "metadata": {"name": name}, "spec": spec}))
        .unwrap()
    };
    let policies = [
        policy("audit-all", json!({"mode": "Audit", "trustedRegistries": ["registry.k8s.io"]})),
        policy("warn-all", json!({"mode": "Warn", "trustedRegistries": ["registry.k8s.io"]})),
        policy(
            "enforce-payments",
            json!({"trustedRegistries": ["registry.k8s.io"], "namespaceSelector": {"matchLabels": {"team": "payments"}}}),
        ),
        policy(
            "enforce-excluding",
            json!({"trustedRegistries": ["registry.k8s.io"], "excludedNamespaces": ["tg-x-1"]}),
        ),
        policy(
            "enforce-not-e2e",
            json!({"trustedRegistries": ["a.io"],
                   "namespaceSelector": {"matchExpressions": [{"key": "trustgate.dev/e2e", "operator": "DoesNotExist"}]}}),
        ),
        policy("enforce-all", json!({"trustedRegistries": ["registry.k8s.io"]})),
        policy(
            "enforce-e2e",
            json!({"trustedRegistries": ["a.io"], "namespaceSelector": {"matchLabels": {"trustgate.dev/e2e": "true"}}}),
        ),
    ];
    let labels = BTreeMap::from([
        ("trustgate.dev/e2e".to_owned(), "true".to_owned()),
        ("kubernetes.io/metadata.name".to_owned(), "tg-x-1".to_owned()),
    ]);
    assert_eq!(enforcers_of(&policies, "tg-x-1", &labels), ["enforce-all", "enforce-e2e"]);
    assert_eq!(enforcers_of(&policies[..5], "tg-x-1", &labels), Vec::<String>::new());
}

/// Pure: runs without a cluster, under plain `cargo test`.
#[test]
fn warning_headers_are_unescaped() {
    assert_eq!(warning_text(r#"299 - "Pod a/b: container \"web\" x""#), r#"Pod a/b: container "web" x"#);
    assert_eq!(warning_text(r#"299 - "back\\slash""#), r#"back\slash"#);
}
