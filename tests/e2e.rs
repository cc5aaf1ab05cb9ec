//! End-to-end tests against a real API server: `just e2e` runs them with
//! `cargo test --test e2e -- --ignored --test-threads=1` against whatever `KUBECONFIG` points to.
//!
//! The harness is tests/e2e_support (shared with the other e2e files). By default each test
//! starts its own webhook OUTSIDE the cluster: the `trustgate` binary with
//! `serve --policy-source kubernetes` on 127.0.0.1, with the kit's webhook certificate (beside
//! the kubeconfig; a self-signed one for 127.0.0.1 on another cluster), registered through a
//! ValidatingWebhookConfiguration with `clientConfig.url: https://127.0.0.1:PORT/validate` and
//! the CA as `caBundle` (the API server must run on this machine). With
//! `TRUSTGATE_E2E_MODE=in-cluster` no webhook is started: the Helm chart's is used, and the audit
//! timeout is `TRUSTGATE_E2E_AUDIT_TIMEOUT` seconds (default 400, above the chart's 5m interval).
//!
//! Every test runs in a namespace of its own, labelled `trustgate.dev/e2e=true`; its policies
//! select only that namespace; the namespace, the policies, the webhook configuration, the lease
//! and the webhook process are removed when the test ends, pass or fail.
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
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::chart::release;
use e2e_support::cluster::{Cleanup, Cluster, apply_policy, enforcers_of, refusal};
use e2e_support::harness::{Answer, Harness, POLICY_MESSAGE, denial, warning_text};
use e2e_support::serve::LEASE_NAMESPACE;
use e2e_support::{Mode, NAMESPACE_LABEL, mode, unique_suffix};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use trustgate_core::api::TrustedRegistryPolicy;

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

/// A test's harness whose webhook enforces the policy "corp" (trusting registry.my.com), and
/// that policy's name.
async fn enforcing_corporate(test: &str) -> (Harness, String) {
    let mut h = Harness::start(test).await;
    let policy = h.apply_policy("corp", json!({"trustedRegistries": ["registry.my.com"]})).await;
    h.wait_until_denied(&pod("probe", "docker.io/library/probe:1")).await;
    (h, policy)
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn untrusted_pod_is_denied_with_every_violation_and_a_trusted_one_admitted() {
    let (h, policy) = enforcing_corporate("pod").await;
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
    let (h, policy) = enforcing_corporate("workloads").await;
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
    let (h, policy) = enforcing_corporate("debug").await;
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
    // Wait until the webhook (every replica) knows the policy: a dry run then carries its
    // warning.
    let probe = async || {
        let answer = create_reading_warnings(&h, &object, true).await;
        (answer.warnings.contains(&want), answer)
    };
    let (_, dry_run) = h.wait_for("the Warn policy's warning", Duration::from_secs(30), probe).await;
    assert_eq!(dry_run.status, 201, "a dry run in Warn mode is admitted");
    let dry_run_warnings = dry_run.warnings;
    assert!(dry_run_warnings.contains(&want), "dry-run warnings {dry_run_warnings:#?} should contain {want:?}");
    let Answer { status, warnings, .. } = create_reading_warnings(&h, &object, false).await;
    assert_eq!(status, 201, "Warn mode admits");
    assert!(warnings.contains(&want), "warnings {warnings:#?} should contain {want:?}");
    assert!(warnings.iter().any(|w| w == POLICY_MESSAGE), "the policy message is a warning too: {warnings:#?}");
    // Other policies of the cluster may warn too; the test's own say exactly this.
    assert_eq!(warnings, [want, POLICY_MESSAGE.to_owned()], "the test's own warnings");
    assert!(h.api("Pod").get_opt("warned").await.unwrap().is_some());
}

/// Creates the Pod `object` with a raw request, to read the `Warning` headers.
async fn create_reading_warnings(h: &Harness, object: &Value, dry_run: bool) -> Answer {
    let url = format!("/api/v1/namespaces/{}/pods", h.namespace);
    let body = serde_json::to_vec(object).unwrap();
    let pp = PostParams { dry_run, ..PostParams::default() };
    h.send(kube::core::Request::new(url).create(&pp, body).unwrap()).await
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn policy_status_reports_ready_or_the_compile_error() {
    let mut h = Harness::start("status").await;
    let good = h.apply_policy("good", json!({"mode": "Warn", "trustedRegistries": ["registry.my.com"]})).await;
    // Valid for the CRD schema, rejected by the compiler: Near is no selector operator.
    let bad = h.policy_name("bad");
    let spec = json!({"trustedRegistries": ["registry.my.com"],
                      "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Near"}]}});
    h.delete_when_done::<TrustedRegistryPolicy>(None, &bad);
    apply_policy(&h.client, &bad, spec).await.expect("apply");
    let api = Api::<TrustedRegistryPolicy>::all(h.client.clone());

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
    let leases = Api::<Lease>::namespaced(h.client.clone(), LEASE_NAMESPACE);
    let (name, identity) = {
        let w = h.local_webhook().expect("a local webhook");
        (w.lease.clone(), w.identity.clone())
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
    let webhook = h.local_webhook().unwrap();
    webhook.terminate();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !webhook.exited() {
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

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn the_tests_refuse_to_run_beside_a_foreign_enforce_policy_that_selects_their_namespace() {
    let cluster = Cluster::from_env().await;
    cluster.install_trustgate_crd().await;
    let mut cleanup = Cleanup::new(&cluster);
    let namespace = format!("tg-refuse-{}", unique_suffix());
    // It selects, by name, a namespace that is never created: were it left behind, it would
    // change nothing for other tests.
    let foreign = format!("e2e-foreign-{namespace}");
    cleanup.add::<TrustedRegistryPolicy>(None, &foreign);
    let spec = json!({"trustedRegistries": ["registry.k8s.io"],
                      "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}});
    apply_policy(&cluster.client, &foreign, spec).await.expect("apply the foreign policy");
    let labels = |name: &str| {
        BTreeMap::from([
            (NAMESPACE_LABEL.0.to_owned(), NAMESPACE_LABEL.1.to_owned()),
            ("kubernetes.io/metadata.name".to_owned(), name.to_owned()),
        ])
    };

    let message = refusal(&cluster.client, &namespace, &labels(&namespace))
        .await
        .expect("a foreign Enforce policy selects the namespace: the tests refuse");
    assert!(message.starts_with("refusing to run"), "{message}");
    assert!(message.contains(&format!("{:?}", [&foreign])), "the message names the policy: {message}");

    // Any other e2e namespace: only the cluster's Warn and Audit policies, and Enforce policies
    // of other namespaces (.ci/e2e-foreign-policies.yaml), select it; no refusal.
    let other = format!("tg-refuse-other-{}", unique_suffix());
    let message = refusal(&cluster.client, &other, &labels(&other)).await;
    assert_eq!(message, None, "no refusal beside the cluster's other policies");
}

/// Pure: runs without a cluster, under plain `cargo test`.
#[test]
fn only_enforce_policies_selecting_the_test_namespace_make_the_tests_refuse() {
    let policy = |name: &str, spec: Value| -> TrustedRegistryPolicy {
        serde_json::from_value(e2e_support::cluster::policy(name, spec)).unwrap()
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
