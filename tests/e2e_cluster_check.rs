//! End-to-end test of `trustgate check --cluster` against a real API server (`just e2e`, with
//! KUBECONFIG set; `#[ignore]` otherwise). The policies are files, never installed. The test
//! makes two namespaces of its own, a Deployment (whose ReplicaSet and Pod the
//! controller-manager creates) and a bare Pod, and asserts only about those namespaces, so other
//! objects in the cluster do not matter. It runs the what-if as cluster-admin, as a
//! ServiceAccount bound to the `view` ClusterRole, and as one that may only view one namespace.
//! The harness (namespaces, cleanup) is tests/e2e_support's.

mod e2e_support;

use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::cluster::{Cleanup, Cluster, apply};
use e2e_support::unique_suffix;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde_json::{Value, json};

/// What a run of `trustgate check` printed and returned.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_trustgate")).arg("check").args(args).output().expect("run trustgate");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// (kind, name, decision) of each object of a JSON report.
fn decisions(run: &Run) -> Vec<(String, String, String)> {
    let report: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}): {}\nstderr: {}", run.stdout, run.stderr));
    let mut out: Vec<(String, String, String)> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap().to_owned();
            (s("kind"), s("name"), s("decision"))
        })
        .collect();
    out.sort();
    out
}

/// A kubeconfig for a ServiceAccount token, with the current cluster's server and CA.
fn token_kubeconfig(dir: &std::path::Path, name: &str, token: &str) -> std::path::PathBuf {
    let current = Kubeconfig::read().expect("the current kubeconfig");
    let context = current.current_context.clone().expect("a current context");
    let cluster_name =
        current.contexts.iter().find(|c| c.name == context).unwrap().context.as_ref().unwrap().cluster.clone();
    let cluster = current.clusters.iter().find(|c| c.name == cluster_name).unwrap().cluster.clone().unwrap();
    let mut cluster_json = json!({"server": cluster.server});
    if let Some(data) = cluster.certificate_authority_data {
        cluster_json["certificate-authority-data"] = json!(data);
    }
    if let Some(file) = cluster.certificate_authority {
        cluster_json["certificate-authority"] = json!(file);
    }
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster_json}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
        "current-context": name,
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

async fn token(client: &Client, namespace: &str, name: &str) -> String {
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    apply(&sa, name, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})).await;
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() },
        ..Default::default()
    };
    let answer = sa.create_token_request(name, &PostParams::default(), &request).await.expect("a token");
    answer.status.expect("a token status").token
}

const POLICIES: &str = "\
apiVersion: trustgate.dev/v1alpha1
kind: TrustedRegistryPolicy
metadata: {name: e2e-corporate}
spec:
  trustedRegistries: [registry.my.com]
---
apiVersion: trustgate.dev/v1alpha1
kind: TrustedRegistryPolicy
metadata: {name: e2e-prod-digests}
spec:
  mode: Warn
  trustedRegistries: [registry.my.com]
  tags: {requireDigest: true}
  namespaceSelector: {matchLabels: {trustgate-e2e-env: prod}}
";

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn what_if_reports_top_level_owners_with_namespace_labels_and_works_read_only() {
    let cluster = Cluster::from_env().await;
    let client = cluster.client.clone();
    let mut cleanup = Cleanup::new(&cluster);
    let suffix = unique_suffix();
    let (prod, dev) = (format!("tg-whatif-prod-{suffix}"), format!("tg-whatif-dev-{suffix}"));
    for (ns, env) in [(&prod, "prod"), (&dev, "dev")] {
        cluster.create_namespace(&mut cleanup, ns, &[("trustgate-e2e-env", env)]).await;
    }
    let deployment = |name: &str, image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": image}]}}}})
    };
    let deployments = |ns: &str| Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns);
    apply(&deployments(&prod), "web", deployment("web", "nginx:1.25")).await;
    apply(&deployments(&dev), "api", deployment("api", "registry.my.com/api:1")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &prod);
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "app", "image": "registry.my.com/app:1"}]}});
    apply(&pods, "bare", bare).await;

    // The controller-manager makes web's ReplicaSet and its Pod (Pending: no scheduler needed):
    // they must be listed and rolled up into the Deployment, not reported themselves.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rs = Api::<ReplicaSet>::namespaced(client.clone(), &prod).list(&ListParams::default()).await.unwrap();
        let pod_count = pods.list(&ListParams::default()).await.unwrap().items.len();
        if !rs.items.is_empty() && pod_count >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "web's ReplicaSet and Pod did not appear within 60s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policies.yaml");
    std::fs::write(&policy_file, POLICIES).unwrap();
    let policy = policy_file.to_str().unwrap();

    // As the kubeconfig's own user.
    let run = check(&["--policy", policy, "--cluster", "--namespace", &prod, "--output", "json"]);
    assert_eq!(run.code, 1, "an Enforce violation exits 1; stderr: {}", run.stderr);
    let want_prod = vec![
        ("Deployment".to_owned(), "web".to_owned(), "deny".to_owned()),
        ("Pod".to_owned(), "bare".to_owned(), "warn".to_owned()),
    ];
    assert_eq!(decisions(&run), want_prod, "the ReplicaSet and the Deployment's Pod are rolled up");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let web = report["objects"].as_array().unwrap().iter().find(|o| o["name"] == "web").unwrap();
    let policies: Vec<&str> =
        web["violations"].as_array().unwrap().iter().map(|v| v["policy"].as_str().unwrap()).collect();
    assert!(policies.contains(&"e2e-prod-digests"), "the prod label selects the Warn policy: {policies:?}");
    assert_eq!(web["namespace"], json!(prod));

    // Text output: the same decisions, and the dev namespace's label does not select the Warn policy.
    let run = check(&["--policy", policy, "--cluster", "--namespace", &dev]);
    assert_eq!(run.code, 0, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&format!("ALLOW Deployment {dev}/api")), "{}", run.stdout);
    assert!(run.stdout.ends_with("1 objects: 1 allowed, 0 warned, 0 denied\n"), "{}", run.stdout);

    // Cluster-wide: our objects are among the others, with the same decisions.
    let run = check(&["--policy", policy, "--cluster", "--output", "json"]);
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    let all: Value = serde_json::from_str(&run.stdout).unwrap();
    let ours: Vec<(String, String)> = all["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["namespace"] == json!(prod) || o["namespace"] == json!(dev))
        .map(|o| {
            (
                format!("{}/{}", o["kind"].as_str().unwrap(), o["name"].as_str().unwrap()),
                o["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        ours,
        [
            ("Deployment/api".into(), "allow".into()),
            ("Deployment/web".into(), "deny".into()),
            ("Pod/bare".into(), "warn".into())
        ]
    );

    // As a ServiceAccount bound to the `view` ClusterRole only (no write verb at all).
    let viewer = token(&client, &prod, "viewer").await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = format!("tg-whatif-view-{suffix}");
    cleanup.add::<ClusterRoleBinding>(None, &binding);
    apply(
        &bindings,
        &binding,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": prod}]}),
    )
    .await;
    let viewer_config = token_kubeconfig(dir.path(), "viewer", &viewer);
    let viewer_config = viewer_config.to_str().unwrap();
    // RBAC bindings take effect at once in the authorizer's cache, but give it a few tries.
    let mut run = check(&["--policy", policy, "--cluster", "--kubeconfig", viewer_config, "--output", "json"]);
    for _ in 0..20 {
        if run.code != 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        run = check(&["--policy", policy, "--cluster", "--kubeconfig", viewer_config, "--output", "json"]);
    }
    assert_eq!(run.code, 1, "view is enough cluster-wide; stderr: {}", run.stderr);
    assert!(run.stderr.is_empty(), "no warning with view: {}", run.stderr);
    let viewed: Value = serde_json::from_str(&run.stdout).unwrap();
    let prod_objects = viewed["objects"].as_array().unwrap().iter().filter(|o| o["namespace"] == json!(prod)).count();
    assert_eq!(prod_objects, 2);

    // As a ServiceAccount that may view one namespace only: cluster-wide lists are refused (exit 2,
    // naming what failed); --namespace works, and reads that Namespace's labels.
    let narrow = token(&client, &dev, "narrow").await;
    let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &dev);
    apply(
        &role_bindings,
        "narrow-view",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "narrow-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": dev}]}),
    )
    .await;
    let narrow_config = token_kubeconfig(dir.path(), "narrow", &narrow);
    let narrow_config = narrow_config.to_str().unwrap();
    let mut run = check(&["--policy", policy, "--cluster", "--kubeconfig", narrow_config, "--namespace", &dev]);
    for _ in 0..20 {
        if run.code != 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        run = check(&["--policy", policy, "--cluster", "--kubeconfig", narrow_config, "--namespace", &dev]);
    }
    assert_eq!(run.code, 0, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    assert!(run.stderr.is_empty(), "RBAC lets a namespace's viewers get the Namespace itself: {}", run.stderr);
    assert!(run.stdout.contains(&format!("ALLOW Deployment {dev}/api")), "dev's label is read: {}", run.stdout);
    let run = check(&["--policy", policy, "--cluster", "--kubeconfig", narrow_config]);
    assert_eq!(run.code, 2, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("forbidden"), "{}", run.stderr);
}
