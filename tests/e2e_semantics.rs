//! End-to-end tests of existingImages and registryRules against a real API server: `just e2e`
//! runs them (with tests/e2e.rs) as `cargo test --test e2e --test e2e_semantics -- --ignored
//! --test-threads=1` against whatever `KUBECONFIG` points to.
//!
//! The harness is tests/e2e.rs's (tests/e2e_support): by default each test starts its own
//! webhook OUTSIDE the cluster, on 127.0.0.1, registered by URL for the test's own namespace
//! only, so the tests pass on a cluster that holds other objects (and refuse to run beside
//! foreign Enforce policies that select their namespaces). With `TRUSTGATE_E2E_MODE=in-cluster`
//! the Helm chart's webhook (and CRD) are used instead. Namespace, policies, webhook
//! configuration, lease and process are removed when a test ends, pass or fail.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::cluster::eventually;
use e2e_support::harness::{Answer, Harness, POLICY_MESSAGE, WEBHOOK};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

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

/// Merge-patches a Deployment with a raw request, to read the `Warning` headers kube's typed
/// calls drop (the test's own: [`Harness::send`]).
async fn patch_deployment(h: &Harness, name: &str, patch: &Value) -> Answer {
    let url = format!("/apis/apps/v1/namespaces/{}/deployments", h.namespace);
    h.send(kube::core::Request::new(url).patch(name, &PatchParams::default(), &Patch::Merge(patch)).unwrap()).await
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn a_legacy_deployment_restarts_and_relabels_with_a_warning_but_cannot_change_to_another_untrusted_image() {
    let mut h = Harness::start("sem-existing").await;
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
    let Answer { status, warnings, message } = patch_deployment(&h, "legacy", &restart).await;
    assert_eq!(status, 200, "restart: {message}{}", h.logs());
    assert_eq!(warnings, [kept.clone(), POLICY_MESSAGE.to_owned()]);

    // The new ReplicaSet the restart makes the Deployment controller create is a CREATE by
    // the deployment controller from the template trustgate just admitted: it inherits that
    // admission (existingImages: Allow), so the rollout goes on instead of failing with
    // ReplicaSetCreateError, and the webhook says so in its log.
    let replicasets = h.api("ReplicaSet");
    eventually("a second ReplicaSet of the restarted Deployment", Duration::from_secs(60), || async {
        let list = replicasets.list(&ListParams::default()).await.ok()?;
        let owned = list
            .items
            .iter()
            .filter(|rs| {
                rs.metadata.owner_references.iter().flatten().any(|o| o.kind == "Deployment" && o.name == "legacy")
            })
            .count();
        (owned >= 2).then_some(owned)
    })
    .await;
    let deployment = h.api("Deployment").get("legacy").await.expect("read the Deployment");
    let conditions = deployment.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(!conditions.iter().any(|c| c["reason"] == "ReplicaSetCreateError"), "{conditions:?}");
    eventually("the inheritance in the webhook's log", Duration::from_secs(20), || async {
        let logs = h.logs();
        (logs.contains("allowed by inheritance") && logs.contains("Deployment/legacy")).then_some(())
    })
    .await;

    // `kubectl label`.
    let Answer { status, warnings, message } =
        patch_deployment(&h, "legacy", &json!({"metadata": {"labels": {"team": "legacy"}}})).await;
    assert_eq!(status, 200, "label: {message}{}", h.logs());
    assert_eq!(warnings, [kept, POLICY_MESSAGE.to_owned()]);

    // Another untrusted image is new: denied, with the usual message.
    let change = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "redis:7.2"}]}}}});
    let Answer { status, warnings, message } = patch_deployment(&h, "legacy", &change).await;
    assert_eq!(status, 403, "change: {message}{}", h.logs());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        message,
        format!(
            "admission webhook \"{WEBHOOK}\" {}",
            h.expected_denial(&[untrusted("redis:7.2", "docker.io/library/redis:7.2")])
        )
    );

    // existingImages: Deny is the strict behaviour: the restart is denied too.
    h.apply_policy("corp", json!({"trustedRegistries": ["registry.my.com"], "existingImages": "Deny"})).await;
    let relabel = json!({"metadata": {"labels": {"team": "strict"}}});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Answer { status, message, .. } = patch_deployment(&h, "legacy", &relabel).await;
        if status == 403 {
            assert!(message.contains(&untrusted("nginx:1.25", "docker.io/library/nginx:1.25")), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "existingImages: Deny not applied within 30s{}", h.logs());
        // Admitted while the edit propagates: undo so that the next try is an UPDATE again.
        patch_deployment(&h, "legacy", &json!({"metadata": {"labels": {"team": null}}})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And nothing inherits: with its ReplicaSets gone (a DELETE is never checked), the
    // Deployment controller's CREATE of a new one is denied, and the Deployment reports it.
    replicasets
        .delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=legacy"))
        .await
        .expect("delete the ReplicaSets");
    let failure = eventually("ReplicaSetCreateError under existingImages: Deny", Duration::from_secs(60), || async {
        let deployment = h.api("Deployment").get("legacy").await.ok()?;
        let conditions = deployment.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions.into_iter().find(|c| c["reason"] == "ReplicaSetCreateError")
    })
    .await;
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.contains("denied the request"), "{message}");
    assert!(message.contains("does not trust"), "{message}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn registry_rules_pin_docker_hub_images_and_pull_private_images_always() {
    let mut h = Harness::start("sem-rules").await;
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
