//! Engine benchmarks: reference parsing, policy evaluation, and the whole offline path.
//! Run with `just bench` (or `cargo bench --bench engine`); numbers go in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use trustgate_core::api::TrustedRegistryPolicy;
use trustgate_core::engine::{Namespace, PolicySet};
use trustgate_core::reference::Reference;
use trustgate_core::workload::Workload;
use trustgate_manifest::manifest;

fn policies(n: usize) -> PolicySet {
    let policies: Vec<TrustedRegistryPolicy> = (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
                "metadata": {"name": format!("policy-{i:03}")},
                "spec": {
                    "trustedRegistries": [format!("registry-{i}.internal.example"), "registry.my.com",
                                          "ghcr.io/my-org", "*.dkr.ecr.eu-west-1.amazonaws.com"],
                    "tags": {"deny": ["latest"]},
                    "excludedNamespaces": ["kube-system"],
                    "exceptions": [{"images": ["docker.io/library/busybox"], "namespaces": ["debug"],
                                    "expires": "2030-01-01T00:00:00Z", "reason": "bench"}]
                }
            }))
            .expect("valid policy")
        })
        .collect();
    let (set, errors) = PolicySet::compile(&policies);
    assert!(errors.is_empty());
    set
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "registry.my.com/tools/migrate:2.0.1"}],
                "containers": [
                    {"name": "web", "image": "ghcr.io/my-org/web:1.4.2", "ports": [{"containerPort": 8080}]},
                    {"name": "proxy", "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/envoy:1.30"},
                    {"name": "metrics", "image": "registry.my.com/obs/agent:0.9@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
                ]}}}
    })
}

fn normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for image in [
        "nginx:1.25",
        "ghcr.io/my-org/web:1.4.2",
        "registry.my.com:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(image), image, |b, image| {
            b.iter(|| Reference::parse(black_box(image)).map(|r| r.path().len()))
        });
    }
    group.finish();
}

fn evaluate(c: &mut Criterion) {
    let object = deployment();
    let workload = Workload::read(None, &object).expect("workload");
    let labels = BTreeMap::new();
    let ns = Namespace { name: "default", labels: Some(&labels) };
    let now = jiff::Timestamp::now();
    let mut group = c.benchmark_group("evaluate_4_container_deployment");
    for n in [1, 10, 100] {
        let set = policies(n);
        assert_eq!(set.evaluate_workload(&workload, &ns, now).violations.len(), 0);
        group.bench_with_input(BenchmarkId::new("policies", n), &set, |b, set| {
            b.iter(|| set.evaluate_workload(black_box(&workload), &ns, now).violations.len())
        });
    }
    group.finish();
}

/// A large multi-team cluster: 3 cluster-wide policies and 997 that each select one team
/// namespace by `kubernetes.io/metadata.name`.
fn namespaced(c: &mut Criterion) {
    let policies: Vec<TrustedRegistryPolicy> = (0..1000)
        .map(|i| {
            let selector =
                (i >= 3).then(|| json!({"matchLabels": {"kubernetes.io/metadata.name": format!("team-{i}")}}));
            serde_json::from_value(json!({
                "apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
                "metadata": {"name": format!("policy-{i:04}")},
                "spec": {"trustedRegistries": [format!("registry-{i}.internal.example"), "registry.my.com",
                                               "ghcr.io/my-org", "*.dkr.ecr.eu-west-1.amazonaws.com"],
                         "namespaceSelector": selector}
            }))
            .expect("valid policy")
        })
        .collect();
    let (set, errors) = PolicySet::compile(&policies);
    assert!(errors.is_empty());
    let object = deployment();
    let workload = Workload::read(None, &object).expect("workload");
    let labels = BTreeMap::new();
    let ns = Namespace { name: "team-500", labels: Some(&labels) };
    let now = jiff::Timestamp::now();
    c.bench_function("evaluate_4_container_deployment/1000_namespaced_policies", |b| {
        b.iter(|| set.evaluate_workload(black_box(&workload), &ns, now).violations.len())
    });
}

fn offline_path(c: &mut Criterion) {
    let text = serde_json::to_string(&deployment()).expect("json");
    let yaml = format!("apiVersion: apps/v1\nkind: Deployment\n{}", yaml_body());
    let set = policies(10);
    let labels = BTreeMap::new();
    let now = jiff::Timestamp::now();
    c.bench_function("offline/yaml_document_10_policies", |b| {
        b.iter(|| {
            let docs = manifest::parse("deploy.yaml", black_box(&yaml)).expect("parses");
            let w = Workload::read(None, &docs[0].value).expect("workload");
            set.evaluate_workload(&w, &Namespace { name: "default", labels: Some(&labels) }, now).violations.len()
        })
    });
    c.bench_function("offline/json_request_body_10_policies", |b| {
        b.iter(|| {
            let mut de = serde_json::Deserializer::from_str(black_box(&text));
            let w = Workload::read(None, &mut de).expect("workload");
            set.evaluate_workload(&w, &Namespace { name: "default", labels: Some(&labels) }, now).violations.len()
        })
    });
}

fn yaml_body() -> &'static str {
    "metadata:\n  name: web\n  namespace: default\n  labels: {app: web}\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      initContainers:\n      - name: migrate\n        image: registry.my.com/tools/migrate:2.0.1\n      containers:\n      - name: web\n        image: ghcr.io/my-org/web:1.4.2\n        ports: [{containerPort: 8080}]\n      - name: proxy\n        image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/envoy:1.30\n      - name: metrics\n        image: registry.my.com/obs/agent:0.9@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
}

criterion_group!(benches, normalize, evaluate, namespaced, offline_path);
criterion_main!(benches);
