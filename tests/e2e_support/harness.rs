//! One admission test: its namespace, its policies (which select only that namespace), the
//! webhook that answers for it (a local `serve` registered by URL, or the chart's), the waits
//! until the webhook answers per a new policy, and how its answers read.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use trustgate_core::api::TrustedRegistryPolicy;

use super::chart::chart_pod_logs;
use super::cluster::{Cleanup, Cluster, apply_policy};
use super::serve::{LEASE_NAMESPACE, Serve, ServeOptions};
use super::{InARow, Mode, mode, unique_suffix};

/// Name of the webhook, in the configuration the tests register and in the chart's.
pub const WEBHOOK: &str = "validate.trustgate.dev";
/// The message every test policy appends to its denials.
pub const POLICY_MESSAGE: &str = "Use images from registry.my.com (trustgate e2e)";

/// Who answers the test's admission requests.
enum Webhook {
    /// `trustgate serve` on 127.0.0.1, registered by URL for the test's namespace only.
    Local(Serve),
    /// The chart's, installed before the tests run.
    Chart,
}

/// One test's namespace, policies and webhook; removed when dropped, pass or fail.
pub struct Harness {
    pub client: Client,
    pub namespace: String,
    // Dropped in this order: the webhook stops (and gives its Lease up) before its
    // registration, Lease, policies and namespace are deleted.
    webhook: Webhook,
    cleanup: Cleanup,
}

impl Harness {
    /// A namespace `tg-<test>-<suffix>` and a webhook for it, after refusing to run beside
    /// foreign Enforce policies that select it.
    pub async fn start(test: &str) -> Harness {
        let cluster = Cluster::from_env().await;
        cluster.install_trustgate_crd().await;
        let mut cleanup = Cleanup::new(&cluster);
        let namespace = format!("tg-{test}-{}", unique_suffix());
        cluster.create_namespace(&mut cleanup, &namespace, &[]).await;
        let webhook = match mode() {
            Mode::Local => Webhook::Local(start_local_webhook(&cluster, &mut cleanup, &namespace).await),
            Mode::InCluster => Webhook::Chart,
        };
        let harness = Harness { client: cluster.client, namespace, webhook, cleanup };
        // Until a webhook replica has seen the new namespace, its labels are unknown and every
        // policy with a namespaceSelector applies there (trustgate fails closed), a shared
        // cluster's foreign ones included. Wait until every replica admits a Pod from a
        // registry that only such policies could deny.
        let probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "namespace-probe"},
            "spec": {"containers": [{"name": "probe", "image": "registry.example.com/namespace-probe:1"}]}});
        harness
            .wait_for_answer("the webhook to know the new namespace", &probe, Duration::from_secs(30), |r| r.is_ok())
            .await;
        harness
    }

    /// The local webhook process (`None` in-cluster).
    pub fn local_webhook(&mut self) -> Option<&mut Serve> {
        match &mut self.webhook {
            Webhook::Local(serve) => Some(serve),
            Webhook::Chart => None,
        }
    }

    /// Has an object the test made by other means deleted with the rest.
    pub fn delete_when_done<K: kube::Resource<DynamicType = ()>>(&mut self, namespace: Option<&str>, name: &str) {
        self.cleanup.add::<K>(namespace, name);
    }

    pub fn policy_name(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace)
    }

    /// Applies a policy that selects only this test's namespace and appends
    /// [`POLICY_MESSAGE`]; returns its full name. Does not wait for the webhook to know it.
    pub async fn apply_policy(&mut self, name: &str, mut spec: Value) -> String {
        let name = self.policy_name(name);
        spec["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": self.namespace}});
        spec["message"] = json!(POLICY_MESSAGE);
        self.cleanup.add::<TrustedRegistryPolicy>(None, &name);
        apply_policy(&self.client, &name, spec).await.expect("apply the policy");
        name
    }

    pub fn api(&self, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource(kind))
    }

    pub async fn create(&self, object: &Value) -> Result<DynamicObject, kube::Error> {
        self.create_with(object, false).await
    }

    pub async fn create_with(&self, object: &Value, dry_run: bool) -> Result<DynamicObject, kube::Error> {
        let kind = object["kind"].as_str().expect("kind");
        let object: DynamicObject = serde_json::from_value(object.clone()).expect("a Kubernetes object");
        self.api(kind).create(&PostParams { dry_run, ..PostParams::default() }, &object).await
    }

    /// Asks `probe` until it says its answer is the awaited one [`InARow::NEEDED`] times in a
    /// row: policies and webhook registrations reach the API server and the webhook (every
    /// replica of it) asynchronously. Returns when the first of those came back, and the last
    /// answer.
    pub async fn wait_for<T: Debug>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> (bool, T),
    ) -> (Duration, T) {
        let start = Instant::now();
        let mut in_a_row = InARow::default();
        loop {
            let (right, answer) = probe().await;
            if let Some(began) = in_a_row.record(right, start.elapsed()) {
                return (began, answer);
            }
            if right {
                continue;
            }
            assert!(
                start.elapsed() < timeout,
                "{what}: not within {timeout:?}; last answer: {answer:?}{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Dry-run creates `object` until `done` says the answer is the awaited one, as
    /// [`Self::wait_for`] does.
    pub async fn wait_for_answer(
        &self,
        what: &str,
        object: &Value,
        timeout: Duration,
        done: impl Fn(&Result<DynamicObject, kube::Error>) -> bool,
    ) -> Duration {
        let probe = async || {
            let result = self.create_with(object, true).await;
            (done(&result), result)
        };
        self.wait_for(what, timeout, probe).await.0
    }

    pub async fn wait_until_denied(&self, object: &Value) -> Duration {
        self.wait_for_answer("a denial", object, Duration::from_secs(30), |r| denial(r).is_some()).await
    }

    /// The webhook's log for a failure message: the local process's, or the chart's Pods'.
    pub fn logs(&self) -> String {
        match &self.webhook {
            Webhook::Local(serve) => format!("\nwebhook log:\n{}", serve.log()),
            Webhook::Chart => chart_pod_logs(),
        }
    }

    /// The whole denial message for these lines, as the API server relays it after the
    /// webhook's name.
    pub fn expected_denial(&self, lines: &[String]) -> String {
        format!("denied the request: {}\n{POLICY_MESSAGE}", lines.join("\n"))
    }

    /// Asserts that `result` is this webhook's denial with exactly these lines and the policy
    /// message, and nothing else (in both modes: the chart's webhook has the same name).
    pub fn assert_denied(&self, result: Result<impl Debug, kube::Error>, lines: &[String]) {
        let Some(message) = denial(&result) else {
            panic!("expected a denial naming {lines:#?}, got {result:?}{}", self.logs());
        };
        let want = self.expected_denial(lines);
        assert!(message.ends_with(&want), "denial message:\n{message}\nexpected it to end with:\n{want}");
        assert_eq!(message, format!("admission webhook \"{WEBHOOK}\" {want}"));
    }

    /// Sends a request kube's typed calls would make, to read the `Warning` headers they drop.
    /// Only this test's own warnings are kept (its policies are named after its namespace, and
    /// their message): other policies in a live cluster may warn about the same object too.
    pub async fn send(&self, request: http::Request<Vec<u8>>) -> Answer {
        self.send_with(&self.client, request).await
    }

    /// [`Self::send`] through another client (one that impersonates someone, say).
    pub async fn send_with(&self, client: &Client, request: http::Request<Vec<u8>>) -> Answer {
        let response = client.send(request.map(kube::client::Body::from)).await.expect("the API server answers");
        let status = response.status().as_u16();
        let own = format!("policy \"{}-", self.namespace);
        let warnings = response
            .headers()
            .get_all(http::header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(warning_text)
            .filter(|w| w.contains(&own) || w == POLICY_MESSAGE)
            .collect();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("a body").to_bytes();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Answer { status, warnings, message }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The local webhook prints its own log.
        if std::thread::panicking() && matches!(self.webhook, Webhook::Chart) {
            eprintln!("{}", self.logs());
        }
    }
}

/// What the API server answered to a raw request.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The test's own `Warning` headers, unescaped.
    pub warnings: Vec<String>,
    /// The `message` of the Status a failure returns.
    pub message: String,
}

/// Starts `trustgate serve` for `namespace`, waits for it to be ready, and registers it for
/// that namespace only.
async fn start_local_webhook(cluster: &Cluster, cleanup: &mut Cleanup, namespace: &str) -> Serve {
    let name = format!("trustgate-e2e-{namespace}");
    cleanup.add::<Lease>(Some(LEASE_NAMESPACE), &name);
    let identity = format!("e2e-{namespace}");
    let options = ServeOptions {
        identity: &identity,
        lease: &name,
        audit_interval: "3s",
        log_filter: "info,trustgate=debug",
        args: &[],
    };
    let mut serve = Serve::start(cluster, options);
    serve.wait_ready().await;
    let rule = |groups: &[&str], resources: &[&str]| RuleWithOperations {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        api_versions: Some(vec!["*".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        scope: Some("Namespaced".into()),
    };
    let config = ValidatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
        webhooks: Some(vec![ValidatingWebhook {
            name: WEBHOOK.into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(10),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{}/validate", serve.port)),
                ca_bundle: Some(ByteString(serve.ca_pem().into_bytes())),
                service: None,
            },
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), namespace.to_owned())])),
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
    cleanup.add::<ValidatingWebhookConfiguration>(None, &name);
    Api::<ValidatingWebhookConfiguration>::all(cluster.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("register the webhook");
    serve
}

fn resource(kind: &str) -> ApiResource {
    let (group, plural) = match kind {
        "Pod" => ("", "pods"),
        "Deployment" => ("apps", "deployments"),
        "ReplicaSet" => ("apps", "replicasets"),
        "StatefulSet" => ("apps", "statefulsets"),
        "DaemonSet" => ("apps", "daemonsets"),
        "Job" => ("batch", "jobs"),
        "CronJob" => ("batch", "cronjobs"),
        other => panic!("no resource for {other}"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

/// The message of a webhook denial, if `result` is one.
pub fn denial<T>(result: &Result<T, kube::Error>) -> Option<String> {
    match result {
        Err(kube::Error::Api(status)) if status.message.contains("denied the request") => Some(status.message.clone()),
        _ => None,
    }
}

/// The text of a `Warning: 299 - "text"` header, unescaped.
pub fn warning_text(header: &str) -> String {
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
