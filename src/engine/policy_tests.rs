use std::collections::BTreeMap;

use jiff::Timestamp;

use super::*;
use crate::api::*;
use crate::engine::workload::Workload;
use crate::engine::*;
use serde_json::{Value, json};

fn policy(name: &str, spec: Value) -> TrustedRegistryPolicy {
    serde_json::from_value(json!({
        "apiVersion": API_VERSION,
        "kind": "TrustedRegistryPolicy",
        "metadata": {"name": name, "generation": 3},
        "spec": spec,
    }))
    .expect("valid policy JSON")
}

fn set(policies: &[TrustedRegistryPolicy]) -> PolicySet {
    let (set, errors) = PolicySet::compile(policies);
    assert!(errors.is_empty(), "{errors:?}");
    set
}

fn now() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn deployment(images: &[&str]) -> Value {
    let containers: Vec<Value> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    json!({"kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"template": {"spec": {"containers": containers}}}})
}

fn decide(set: &PolicySet, object: &Value, ns: &str, labels: Option<&BTreeMap<String, String>>) -> Decision {
    let w = Workload::read(None, object).unwrap();
    set.evaluate_workload(&w, &Namespace { name: ns, labels }, now())
}

fn decide_images(set: &PolicySet, images: &[&str]) -> Decision {
    let empty = BTreeMap::new();
    decide(set, &deployment(images), "default", Some(&empty))
}

fn corporate() -> TrustedRegistryPolicy {
    policy(
        "corporate",
        json!({"trustedRegistries": ["registry.my.com", "ghcr.io/my-org"],
               "message": "Use images from registry.my.com; see https://wiki.example/registries"}),
    )
}

#[test]
fn denial_message_has_the_spec_shape() {
    let set = set(&[corporate()]);
    let d = decide_images(&set, &["nginx:1.25"]);
    assert_eq!(d.verdict(), Verdict::Deny);
    let object = deployment(&["nginx:1.25"]);
    let w = Workload::read(None, &object).unwrap();
    let message = d.denial(&Subject::of(&w, "default")).unwrap();
    assert_eq!(
        message,
        "Deployment default/web: container \"c0\" (spec.template.spec.containers[0]) image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com, ghcr.io/my-org)\nUse images from registry.my.com; see https://wiki.example/registries"
    );
}

#[test]
fn every_violation_is_listed_not_just_the_first() {
    let set = set(&[corporate()]);
    let d = decide_images(&set, &["nginx", "registry.my.com/ok:v1", "quay.io/x/y:v2", "Bad Image"]);
    let fields: Vec<&str> = d.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.template.spec.containers[0]", "spec.template.spec.containers[2]", "spec.template.spec.containers[3]"]
    );
    assert_eq!(d.violations[2].kind, ViolationKind::Invalid);
    assert_eq!(d.violations[2].normalized, None);
    assert!(d.violations[2].reason.contains("invalid reference format"), "{}", d.violations[2].reason);
}

#[test]
fn invalid_and_missing_images_are_never_trusted() {
    let set = set(&[policy("any-host", json!({"trustedRegistries": ["docker.io"]}))]);
    for image in ["", "Nginx", "nginx:", "nginx@sha256:abc", " nginx", "a".repeat(300).as_str()] {
        let d = decide_images(&set, &[image]);
        assert_eq!(d.verdict(), Verdict::Deny, "{image:?}");
        assert_eq!(d.violations[0].kind, ViolationKind::Invalid, "{image:?}");
    }
    let pod = json!({"kind": "Pod", "spec": {"containers": [{"name": "x"}]}});
    assert_eq!(decide(&set, &pod, "default", None).verdict(), Verdict::Deny);
}

#[test]
fn modes_map_to_verdicts() {
    let mk = |mode: &str| policy(mode, json!({"mode": mode, "trustedRegistries": ["registry.my.com"]}));
    let untrusted = &["nginx"];
    assert_eq!(decide_images(&set(&[mk("Enforce")]), untrusted).verdict(), Verdict::Deny);
    assert_eq!(decide_images(&set(&[mk("Warn")]), untrusted).verdict(), Verdict::Warn);
    assert_eq!(decide_images(&set(&[mk("Audit")]), untrusted).verdict(), Verdict::Allow);
    assert_eq!(decide_images(&set(&[mk("Audit")]), untrusted).violations.len(), 1);
    assert_eq!(decide_images(&set(&[mk("Warn"), mk("Enforce")]), untrusted).verdict(), Verdict::Deny);
    let default_mode = policy("d", json!({"trustedRegistries": ["registry.my.com"]}));
    assert_eq!(default_mode.spec.mode, Mode::Enforce);
}

#[test]
fn warnings_carry_lines_and_message() {
    let p = policy("soft", json!({"mode": "Warn", "trustedRegistries": ["registry.my.com"], "message": "see wiki"}));
    let set = set(&[p]);
    let d = decide_images(&set, &["nginx", "redis"]);
    let object = deployment(&["nginx", "redis"]);
    let w = Workload::read(None, &object).unwrap();
    let warnings = d.warnings(&Subject::of(&w, "default"));
    assert_eq!(warnings.len(), 3);
    assert!(warnings[0].starts_with("Deployment default/web: container \"c0\""));
    assert_eq!(warnings[2], "see wiki");
    assert_eq!(d.denial(&Subject::of(&w, "default")), None);
}

#[test]
fn every_applicable_policy_must_trust_every_image() {
    let a = policy("a", json!({"trustedRegistries": ["registry.my.com", "ghcr.io"]}));
    let b = policy("b", json!({"trustedRegistries": ["ghcr.io/my-org"]}));
    let set = set(&[a, b]);
    assert_eq!(decide_images(&set, &["ghcr.io/my-org/app:v1"]).verdict(), Verdict::Allow);
    let d = decide_images(&set, &["registry.my.com/app:v1"]);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!(&*d.violations[0].policy, "b");
    let d = decide_images(&set, &["nginx"]);
    let policies: Vec<&str> = d.violations.iter().map(|v| &*v.policy).collect();
    assert_eq!(policies, ["a", "b"]);
}

#[test]
fn no_applicable_policy_allows() {
    assert_eq!(decide_images(&PolicySet::default(), &["anything/at:all"]).verdict(), Verdict::Allow);
    let p = policy("p", json!({"trustedRegistries": ["registry.my.com"], "excludedNamespaces": ["default"]}));
    assert_eq!(decide_images(&set(&[p]), &["nginx"]).verdict(), Verdict::Allow);
}

#[test]
fn unqualified_images_deny_needs_a_written_host() {
    let p = policy("q", json!({"trustedRegistries": ["docker.io"], "unqualifiedImages": "Deny"}));
    let set = set(&[p]);
    let d = decide_images(&set, &["nginx:1.25"]);
    assert_eq!(d.violations.len(), 1);
    assert_eq!(d.violations[0].kind, ViolationKind::Unqualified);
    assert!(d.violations[0].reason.contains("write \"docker.io/library/nginx:1.25\""));
    assert!(decide_images(&set, &["myorg/app:v1"]).verdict() == Verdict::Deny);
    assert_eq!(decide_images(&set, &["docker.io/library/nginx:1.25"]).verdict(), Verdict::Allow);
    assert_eq!(decide_images(&set, &["index.docker.io/library/nginx:1.25"]).verdict(), Verdict::Allow);
}

#[test]
fn tags_implicit_latest_and_digest_pins() {
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let p = policy("t", json!({"trustedRegistries": ["docker.io"], "tags": {"deny": ["latest", "dev"]}}));
    let tagged = set(&[p]);
    let kinds = |image: &str| -> Vec<ViolationKind> {
        decide_images(&tagged, &[image]).violations.iter().map(|v| v.kind).collect()
    };
    assert_eq!(kinds("nginx"), [ViolationKind::DeniedTag]);
    assert_eq!(kinds("nginx:latest"), [ViolationKind::DeniedTag]);
    assert_eq!(kinds("nginx:dev"), [ViolationKind::DeniedTag]);
    assert_eq!(kinds("nginx:Latest"), []);
    assert_eq!(kinds("nginx:1.25"), []);
    assert_eq!(kinds(&format!("nginx:latest@{digest}")), []);
    assert_eq!(kinds(&format!("nginx@{digest}")), []);
    let implicit = &decide_images(&tagged, &["nginx"]).violations[0].reason;
    assert!(implicit.contains("no tag written"), "{implicit}");

    let p = policy("d", json!({"trustedRegistries": ["docker.io"], "tags": {"requireDigest": true}}));
    let pinned = set(&[p]);
    let d = decide_images(&pinned, &["nginx:1.25"]);
    assert_eq!(d.violations[0].kind, ViolationKind::DigestRequired);
    assert_eq!(decide_images(&pinned, &[&format!("nginx:1.25@{digest}")]).verdict(), Verdict::Allow);
}

#[test]
fn one_image_can_break_several_rules_of_one_policy() {
    let p = policy(
        "all",
        json!({"trustedRegistries": ["registry.my.com"], "unqualifiedImages": "Deny",
                                 "tags": {"requireDigest": true, "deny": ["latest"]}}),
    );
    let d = decide_images(&set(&[p]), &["nginx"]);
    let kinds: Vec<ViolationKind> = d.violations.iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        [ViolationKind::Untrusted, ViolationKind::Unqualified, ViolationKind::DigestRequired, ViolationKind::DeniedTag]
    );
}

#[test]
fn namespace_selector_and_exclusions() {
    let p = policy(
        "prod",
        json!({
            "trustedRegistries": ["registry.my.com"],
            "namespaceSelector": {"matchLabels": {"env": "prod"},
                                  "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["platform"]}]},
            "excludedNamespaces": ["prod-sandbox"]
        }),
    );
    let set = set(&[p]);
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let obj = deployment(&["nginx"]);
    let verdict = |ns: &str, l: Option<&BTreeMap<String, String>>| decide(&set, &obj, ns, l).verdict();
    assert_eq!(verdict("shop", Some(&labels(&[("env", "prod")]))), Verdict::Deny);
    assert_eq!(verdict("shop", Some(&labels(&[("env", "dev")]))), Verdict::Allow);
    assert_eq!(verdict("shop", Some(&labels(&[]))), Verdict::Allow);
    assert_eq!(verdict("shop", Some(&labels(&[("env", "prod"), ("team", "platform")]))), Verdict::Allow);
    assert_eq!(verdict("prod-sandbox", Some(&labels(&[("env", "prod")]))), Verdict::Allow);
    // Unknown labels: the policy applies (adding a policy only restricts).
    assert_eq!(verdict("shop", None), Verdict::Deny);
    assert_eq!(verdict("prod-sandbox", None), Verdict::Allow);
}

#[test]
fn selector_on_the_name_label_works_without_the_label_in_the_map() {
    let p = policy(
        "named",
        json!({
            "trustedRegistries": ["registry.my.com"],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["payments"]}]}
        }),
    );
    let set = set(&[p]);
    let empty = BTreeMap::new();
    let obj = deployment(&["nginx"]);
    assert_eq!(decide(&set, &obj, "payments", Some(&empty)).verdict(), Verdict::Deny);
    assert_eq!(decide(&set, &obj, "other", Some(&empty)).verdict(), Verdict::Allow);
}

#[test]
fn exceptions_are_narrow_and_expire() {
    let p = policy(
        "corp",
        json!({
            "trustedRegistries": ["registry.my.com"],
            "tags": {"deny": ["latest"]},
            "exceptions": [
                {"images": ["docker.io/library/busybox"], "namespaces": ["debug"], "expires": "2026-12-31T00:00:00Z", "reason": "INC-1234"},
                {"images": ["quay.io/old"], "expires": "2026-01-01T00:00:00Z", "reason": "expired"}
            ]
        }),
    );
    let set = set(&[p]);
    let empty = BTreeMap::new();
    let verdict = |image: &str, ns: &str| decide(&set, &deployment(&[image]), ns, Some(&empty)).verdict();
    assert_eq!(verdict("busybox:1.36", "debug"), Verdict::Allow);
    assert_eq!(verdict("busybox", "debug"), Verdict::Allow, "an exception covers every rule of its policy");
    assert_eq!(verdict("busybox:1.36", "default"), Verdict::Deny);
    assert_eq!(verdict("busybox-evil:1", "debug"), Verdict::Deny);
    assert_eq!(verdict("quay.io/old/app:v1", "default"), Verdict::Deny, "expired");
}

#[test]
fn compile_reports_every_problem_with_its_field() {
    let p = policy(
        "bad",
        json!({
            "trustedRegistries": ["nginx", "ghcr.io/org:v1", "registry.my.com"],
            "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "exceptions": [{"images": ["myorg/app"], "expires": "2026-12-31T00:00:00Z", "reason": " "}]
        }),
    );
    let err = CompiledPolicy::compile(&p).unwrap_err();
    assert_eq!(err.policy, "bad");
    assert_eq!(err.problems.len(), 5, "{err}");
    let text = err.to_string();
    for needle in [
        "spec.trustedRegistries[0]: pattern \"nginx\" names no registry host",
        "write \"docker.io/library/nginx\"",
        "spec.trustedRegistries[1]",
        "spec.namespaceSelector: matchExpressions[0]: operator \"Near\"",
        "spec.exceptions[0].reason is required",
        "spec.exceptions[0].images[0]: pattern \"myorg/app\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    let empty = policy("empty", json!({"trustedRegistries": []}));
    assert!(CompiledPolicy::compile(&empty).unwrap_err().to_string().contains("at least one registry"));
}

#[test]
fn unknown_fields_and_bad_dates_are_rejected_when_read() {
    let typo = serde_json::from_value::<TrustedRegistryPolicy>(json!({
        "apiVersion": API_VERSION, "kind": "TrustedRegistryPolicy", "metadata": {"name": "x"},
        "spec": {"trustedRegistries": ["a.io"], "trustedRegistry": ["b.io"]}
    }));
    assert!(typo.unwrap_err().to_string().contains("unknown field `trustedRegistry`"));
    let bad_date = serde_json::from_value::<TrustedRegistryPolicy>(json!({
        "apiVersion": API_VERSION, "kind": "TrustedRegistryPolicy", "metadata": {"name": "x"},
        "spec": {"trustedRegistries": ["a.io"], "exceptions": [{"images": ["a.io"], "expires": "2026-13-45", "reason": "r"}]}
    }));
    assert!(bad_date.is_err());
}

#[test]
fn ephemeral_and_init_containers_are_checked() {
    let set = set(&[corporate()]);
    let pod = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {
        "initContainers": [{"name": "i", "image": "busybox"}],
        "containers": [{"name": "c", "image": "registry.my.com/app:v1"}],
        "ephemeralContainers": [{"name": "debugger-x", "image": "busybox:1.36"}]}});
    let d = decide(&set, &pod, "default", None);
    let fields: Vec<&str> = d.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["spec.initContainers[0]", "spec.ephemeralContainers[0]"]);
}

#[test]
fn subject_names_generated_objects() {
    let s = Subject { kind: "Pod", namespace: "ns", name: "", generate_name: "web-7d9f-" };
    assert_eq!(s.to_string(), "Pod ns/web-7d9f-*");
}

#[test]
fn counts_policies_by_mode() {
    let set = set(&[
        corporate(),
        policy("w", json!({"mode": "Warn", "trustedRegistries": ["a.io"]})),
        policy("x", json!({"mode": "Warn", "trustedRegistries": ["a.io"]})),
    ]);
    assert_eq!(Mode::ALL.map(|m| set.count_by_mode(m)), [1, 2, 0]);
    let names: Vec<&str> = set.policies().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["corporate", "w", "x"]);
}

#[test]
fn shared_patterns_are_matched_per_image_and_per_policy() {
    // Same pattern spelled two ways, and a pattern that differs only by port.
    let a = policy("a", json!({"trustedRegistries": ["Registry.MY.com", "reg.io:5000"]}));
    let b = policy("b", json!({"trustedRegistries": ["registry.my.com", "reg.io"]}));
    let set = set(&[a, b]);
    assert_eq!(set.patterns.len(), 3, "the two spellings of registry.my.com share one pattern");
    let d = decide_images(&set, &["registry.my.com/x:1", "reg.io/y:1", "reg.io:5000/z:1", "registry.my.com/w:2"]);
    let got: Vec<(&str, &str)> = d.violations.iter().map(|v| (&*v.policy, v.image.as_str())).collect();
    assert_eq!(got, [("a", "reg.io/y:1"), ("b", "reg.io:5000/z:1")]);
}

#[test]
fn the_name_label_is_known_even_when_other_labels_are_not() {
    let named = policy(
        "named",
        json!({
            "trustedRegistries": ["registry.my.com"],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}
        }),
    );
    let mixed = policy(
        "mixed",
        json!({
            "trustedRegistries": ["registry.my.com"],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments", "env": "prod"}}
        }),
    );
    let set = set(&[named, mixed]);
    let obj = deployment(&["nginx"]);
    let policies = |ns: &str| -> Vec<String> {
        decide(&set, &obj, ns, None).violations.iter().map(|v| v.policy.to_string()).collect()
    };
    assert_eq!(policies("payments"), ["mixed", "named"], "env unknown: the mixed policy applies too");
    assert!(policies("other").is_empty(), "the name rules both policies out");
}

#[test]
fn the_namespace_index_selects_exactly_what_a_full_scan_does() {
    let selector = |s: Value| json!({"trustedRegistries": ["registry.my.com"], "namespaceSelector": s});
    let policies = [
        policy(
            "a-named",
            selector(
                json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "cart", "shop"]}]}),
            ),
        ),
        policy("b-label", selector(json!({"matchLabels": {"kubernetes.io/metadata.name": "cart"}}))),
        policy("c-env", selector(json!({"matchLabels": {"env": "prod"}}))),
        policy("d-all", json!({"trustedRegistries": ["registry.my.com"], "excludedNamespaces": ["cart"]})),
        policy(
            "e-named-excluded",
            json!({"trustedRegistries": ["registry.my.com"], "excludedNamespaces": ["shop"],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}),
        ),
        policy(
            "f-not-in",
            selector(
                json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["shop"]}]}),
            ),
        ),
    ];
    let set = set(&policies);
    assert_eq!(set.by_namespace.len(), 2, "shop and cart are indexed");
    let prod = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let empty = BTreeMap::new();
    for name in ["shop", "cart", "other", ""] {
        for labels in [None, Some(&empty), Some(&prod)] {
            let ns = Namespace { name, labels };
            let scan: Vec<usize> = (0..set.len()).filter(|&i| set.policies[i].applies_to(&ns)).collect();
            assert_eq!(set.applicable(&ns), scan, "namespace {name:?} labels {labels:?}");
        }
    }
    let shop = Namespace { name: "shop", labels: Some(&empty) };
    let names: Vec<&str> = set.applicable(&shop).into_iter().map(|i| set.policies[i].name()).collect();
    assert_eq!(names, ["a-named", "d-all"]);
}
