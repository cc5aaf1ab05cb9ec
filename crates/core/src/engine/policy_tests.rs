use std::collections::BTreeMap;

use jiff::Timestamp;

use super::*;
use crate::api::*;
use crate::engine::*;
use crate::workload::Workload;
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
    let names: Vec<&str> = set.policies().map(|p| p.name()).collect();
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
            let scan: Vec<&str> = set.policies().filter(|p| p.applies_to(&ns)).map(|p| p.name()).collect();
            let indexed: Vec<&str> = set.applicable(&ns).iter().map(|m| m.policy.name()).collect();
            assert_eq!(indexed, scan, "namespace {name:?} labels {labels:?}");
        }
    }
    let shop = Namespace { name: "shop", labels: Some(&empty) };
    let names: Vec<&str> = set.applicable(&shop).iter().map(|m| m.policy.name()).collect();
    assert_eq!(names, ["a-named", "d-all"]);
}

fn pod_with(containers: Value) -> Value {
    json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": containers}})
}

fn decide_update(set: &PolicySet, new: &Value, old: &Value) -> Decision {
    let new = Workload::read(None, new).unwrap();
    let old = Workload::read(None, old).unwrap();
    let empty = BTreeMap::new();
    set.evaluate_update(&Namespace { name: "default", labels: Some(&empty) }, &new.containers, &old.containers, now())
}

fn rules_policy() -> TrustedRegistryPolicy {
    policy(
        "rules",
        json!({"trustedRegistries": ["docker.io", "registry.my.com"],
               "registryRules": [
                   {"registries": ["docker.io"], "tags": {"requireDigest": true}},
                   {"registries": ["registry.my.com"], "imagePullPolicy": "Always"},
                   {"registries": ["registry.my.com/team"], "tags": {"deny": ["dev"]}}]}),
    )
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn registry_rule_tags_apply_only_to_their_registries() {
    let set = set(&[rules_policy()]);
    let pinned = format!("nginx:1.25@{DIGEST}");
    let internal = json!([{"name": "a", "image": "registry.my.com/app:v1", "imagePullPolicy": "Always"}]);
    assert_eq!(decide(&set, &pod_with(internal), "default", None).verdict(), Verdict::Allow);
    assert_eq!(decide_images(&set, &[&pinned]).verdict(), Verdict::Allow);
    let d = decide_images(&set, &["nginx:1.25"]);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!(d.violations.len(), 1);
    assert_eq!(d.violations[0].kind, ViolationKind::RuleDigestRequired);
    assert_eq!(
        d.violations[0].reason,
        "resolves to docker.io/library/nginx:1.25, but policy \"rules\" requires images from docker.io to be pinned by digest (spec.registryRules[0] (docker.io)); write docker.io/library/nginx@sha256:<digest>"
    );
    // A denied tag of one rule; the other rule of the same host also applies.
    let dev = json!([{"name": "a", "image": "registry.my.com/team/app:dev", "imagePullPolicy": "Always"}]);
    let d = decide(&set, &pod_with(dev), "default", None);
    let kinds: Vec<ViolationKind> = d.violations.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, [ViolationKind::RuleDeniedTag]);
    assert!(
        d.violations[0].reason.contains(
            "whose tag \"dev\" policy \"rules\" denies for images from registry.my.com/team (spec.registryRules[2]"
        ),
        "{}",
        d.violations[0].reason
    );
}

#[test]
fn registry_rules_trust_nothing_by_themselves() {
    let p = policy(
        "p",
        json!({"trustedRegistries": ["registry.my.com"],
               "registryRules": [{"registries": ["quay.io"], "tags": {"deny": ["latest"]}}]}),
    );
    let d = decide_images(&set(&[p]), &["quay.io/org/app:v1"]);
    let kinds: Vec<ViolationKind> = d.violations.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, [ViolationKind::Untrusted]);
}

#[test]
fn rule_and_policy_wide_tags_are_not_reported_twice() {
    let p = policy(
        "p",
        json!({"trustedRegistries": ["docker.io"], "tags": {"requireDigest": true, "deny": ["latest"]},
               "registryRules": [{"registries": ["docker.io"], "tags": {"requireDigest": true, "deny": ["latest"]}}]}),
    );
    let d = decide_images(&set(&[p]), &["nginx"]);
    let kinds: Vec<ViolationKind> = d.violations.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, [ViolationKind::DigestRequired, ViolationKind::DeniedTag]);
}

#[test]
fn pull_policy_rule_reads_the_field_or_the_api_server_default() {
    let set = set(&[rules_policy()]);
    let case = |image: &str, pull: Option<&str>| {
        let mut c = json!({"name": "a", "image": image});
        if let Some(p) = pull {
            c["imagePullPolicy"] = json!(p);
        }
        decide(&set, &pod_with(json!([c])), "default", None)
    };
    assert_eq!(case("registry.my.com/app:v1", Some("Always")).verdict(), Verdict::Allow);
    // The API server defaults to Always for latest (written or implicit), else IfNotPresent.
    assert_eq!(case("registry.my.com/app", None).verdict(), Verdict::Allow);
    assert_eq!(case("registry.my.com/app:latest", None).verdict(), Verdict::Allow);
    assert_eq!(case(&format!("registry.my.com/app:latest@{DIGEST}"), None).verdict(), Verdict::Allow);
    assert_eq!(case(&format!("registry.my.com/app@{DIGEST}"), None).verdict(), Verdict::Deny);
    let d = case("registry.my.com/app:v1", None);
    assert_eq!(d.violations[0].kind, ViolationKind::PullPolicy);
    assert_eq!(
        d.violations[0].reason,
        "resolves to registry.my.com/app:v1 (imagePullPolicy not set, defaults to IfNotPresent), but policy \"rules\" requires imagePullPolicy Always for images from registry.my.com (spec.registryRules[1] (registry.my.com)), so that no Pod runs it from the node's cache without pull credentials; set spec.containers[0].imagePullPolicy: Always"
    );
    for pull in ["IfNotPresent", "Never"] {
        let d = case("registry.my.com/app", Some(pull));
        assert_eq!(d.verdict(), Verdict::Deny, "{pull}");
        assert!(d.violations[0].reason.contains(&format!("(imagePullPolicy {pull})")), "{}", d.violations[0].reason);
    }
    // Docker Hub images are not under the pull-policy rule.
    assert_eq!(case(&format!("nginx@{DIGEST}"), Some("IfNotPresent")).verdict(), Verdict::Allow);
}

#[test]
fn pull_policy_rules_do_not_apply_without_a_pull_policy() {
    use crate::workload::{Container, ContainerList, FieldPath, PullPolicy, SpecPath};
    let set = set(&[rules_policy()]);
    let field = FieldPath { spec: SpecPath::Pod, list: ContainerList::Containers, index: 0 };
    let image =
        |pull| Container { name: "".into(), image: Some("registry.my.com/app:v1".into()), pull_policy: pull, field };
    let empty = BTreeMap::new();
    let ns = Namespace { name: "default", labels: Some(&empty) };
    assert_eq!(set.evaluate(&ns, &[image(PullPolicy::Unknown)], now()).verdict(), Verdict::Allow);
    assert_eq!(set.evaluate(&ns, &[image(PullPolicy::Unset)], now()).verdict(), Verdict::Deny);
}

#[test]
fn exceptions_cover_registry_rule_violations_too() {
    let p = policy(
        "p",
        json!({"trustedRegistries": ["docker.io"],
               "registryRules": [{"registries": ["docker.io"], "tags": {"requireDigest": true}}],
               "exceptions": [{"images": ["docker.io/library/busybox"], "expires": "2027-01-01T00:00:00Z", "reason": "INC-1"}]}),
    );
    let set = set(&[p]);
    assert_eq!(decide_images(&set, &["busybox:1.36"]).verdict(), Verdict::Allow);
    assert_eq!(decide_images(&set, &["nginx:1.25"]).verdict(), Verdict::Deny);
}

#[test]
fn registry_rules_are_validated_when_compiled() {
    let p = policy(
        "bad",
        json!({"trustedRegistries": ["docker.io"],
               "registryRules": [{"registries": ["nginx"], "tags": {"requireDigest": true}},
                                 {"registries": [], "tags": {}},
                                 {"registries": ["docker.io"], "tags": {"deny": [""]}}]}),
    );
    let err = CompiledPolicy::compile(&p).unwrap_err();
    let problems = err.problems.join("\n");
    for expected in [
        "spec.registryRules[0].registries[0]",
        "spec.registryRules[1].registries must list at least one",
        "spec.registryRules[1] requires nothing",
        "spec.registryRules[2].tags.deny[0] is empty",
    ] {
        assert!(problems.contains(expected), "{expected} not in {problems}");
    }
    let unknown: Result<TrustedRegistryPolicy, _> = serde_json::from_value(json!({
        "apiVersion": API_VERSION, "kind": "TrustedRegistryPolicy", "metadata": {"name": "x"},
        "spec": {"trustedRegistries": ["docker.io"], "registryRules": [{"registries": ["docker.io"], "imagePullPolicy": "IfNotPresent"}]}}));
    assert!(unknown.is_err(), "only Always can be required");
}

#[test]
fn existing_images_on_update_become_warnings_and_new_ones_are_checked() {
    let corp = policy("corporate", json!({"trustedRegistries": ["registry.my.com"]}));
    let set = set(&[corp]);
    let old = deployment(&["nginx:1.25", "registry.my.com/app:v1"]);
    // Unchanged images (a rollout restart, a label): admitted with a warning.
    let d = decide_update(&set, &old, &old);
    assert_eq!(d.verdict(), Verdict::Warn);
    assert_eq!(d.violations.len(), 1);
    let v = &d.violations[0];
    assert!(v.existing);
    assert_eq!(v.mode, Mode::Warn);
    assert!(
        v.reason.ends_with("; admitted because the object already had this image before this update (policy \"corporate\" has existingImages: Allow)"),
        "{}",
        v.reason
    );
    // A new untrusted image is denied; the old one still only warns.
    let d = decide_update(&set, &deployment(&["nginx:1.25", "redis:7"]), &old);
    assert_eq!(d.verdict(), Verdict::Deny);
    let modes: Vec<(Mode, bool)> = d.violations.iter().map(|v| (v.mode, v.existing)).collect();
    assert_eq!(modes, [(Mode::Warn, true), (Mode::Enforce, false)]);
    // Compared as written: the same image spelled differently is new.
    assert_eq!(decide_update(&set, &deployment(&["docker.io/library/nginx:1.25"]), &old).verdict(), Verdict::Deny);
    // An image of any old list counts, whichever list it moves to.
    let old_init = json!({"kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "nginx:1.25"}], "containers": []}}}});
    assert_eq!(decide_update(&set, &deployment(&["nginx:1.25"]), &old_init).verdict(), Verdict::Warn);
    // CREATE (no old object) is checked in full.
    assert_eq!(decide_images(&set, &["nginx:1.25"]).verdict(), Verdict::Deny);
}

#[test]
fn existing_images_deny_and_modes() {
    let mk = |name: &str, mode: &str, existing: &str| {
        policy(name, json!({"mode": mode, "existingImages": existing, "trustedRegistries": ["registry.my.com"]}))
    };
    let old = deployment(&["nginx:1.25"]);
    let verdict = |p| decide_update(&set(&[p]), &old, &old);
    assert_eq!(verdict(mk("e", "Enforce", "Deny")).verdict(), Verdict::Deny);
    assert!(!verdict(mk("e", "Enforce", "Deny")).violations[0].existing);
    // Warn stays a warning, Audit stays silent; both still report the violation.
    let warn = verdict(mk("w", "Warn", "Allow"));
    assert_eq!(
        (warn.verdict(), warn.violations[0].mode, warn.violations[0].existing),
        (Verdict::Warn, Mode::Warn, true)
    );
    let audit = verdict(mk("a", "Audit", "Allow"));
    assert_eq!(
        (audit.verdict(), audit.violations[0].mode, audit.violations[0].existing),
        (Verdict::Allow, Mode::Audit, true)
    );
    // Each policy decides for itself: one Deny policy still denies.
    let d = decide_update(&set(&[mk("soft", "Enforce", "Allow"), mk("strict", "Enforce", "Deny")]), &old, &old);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!(d.violations.len(), 2);
}

#[test]
fn existing_images_cover_registry_rule_violations_but_never_invalid_images() {
    let set = set(&[rules_policy()]);
    let old = deployment(&["nginx:1.25"]);
    let d = decide_update(&set, &old, &old);
    assert_eq!((d.verdict(), d.violations[0].kind), (Verdict::Warn, ViolationKind::RuleDigestRequired));
    let bad = deployment(&["Bad Image"]);
    let d = decide_update(&set, &bad, &bad);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert!(!d.violations[0].existing);
}

fn decide_inherited(set: &PolicySet, object: &Value) -> Decision {
    let workload = Workload::read(None, object).unwrap();
    let from = Inheritance {
        controller: "system:serviceaccount:kube-system:replicaset-controller",
        owner_kind: "ReplicaSet",
        owner_name: "legacy-5d4f",
    };
    let namespace = Namespace { name: "default", labels: None };
    set.evaluate_admission(&namespace, &workload.containers, &[], Some(&from), now())
}

#[test]
fn a_controllers_create_from_an_admitted_template_inherits_under_existing_images_allow() {
    let pod = json!({"kind": "Pod", "metadata": {"name": "legacy-5d4f-x"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}, {"name": "ok", "image": "registry.my.com/app:v1"}]}});
    let allow = set(&[policy("corporate", json!({"trustedRegistries": ["registry.my.com"]}))]);
    let d = decide_inherited(&allow, &pod);
    assert_eq!(d.verdict(), Verdict::Warn, "{d:?}");
    let v = &d.violations[0];
    assert_eq!((v.mode, v.inherited, v.existing), (Mode::Warn, true, false));
    assert!(
        v.reason.ends_with(
            "; admitted because system:serviceaccount:kube-system:replicaset-controller created it from the template of ReplicaSet \"legacy-5d4f\", which trustgate admitted (policy \"corporate\" has existingImages: Allow)"
        ),
        "{}",
        v.reason
    );
    // Without the inheritance the same CREATE is denied.
    assert_eq!(decide_images(&allow, &["nginx:1.25"]).verdict(), Verdict::Deny);
    // existingImages: Deny keeps the strict behaviour; one such policy denies on its own.
    let strict = policy("strict", json!({"existingImages": "Deny", "trustedRegistries": ["registry.my.com"]}));
    let d = decide_inherited(&set(std::slice::from_ref(&strict)), &pod);
    assert_eq!((d.verdict(), d.violations[0].inherited), (Verdict::Deny, false));
    let d =
        decide_inherited(&set(&[policy("corporate", json!({"trustedRegistries": ["registry.my.com"]})), strict]), &pod);
    assert_eq!(d.verdict(), Verdict::Deny);
    // Warn and Audit keep their modes; the violation is still reported.
    let audit = set(&[policy("a", json!({"mode": "Audit", "trustedRegistries": ["registry.my.com"]}))]);
    let d = decide_inherited(&audit, &pod);
    assert_eq!((d.verdict(), d.violations[0].mode, d.violations[0].inherited), (Verdict::Allow, Mode::Audit, true));
}

#[test]
fn an_inherited_create_never_admits_an_image_that_does_not_parse() {
    let allow = set(&[policy("corporate", json!({"trustedRegistries": ["registry.my.com"]}))]);
    let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "Bad Image"}]}});
    let d = decide_inherited(&allow, &pod);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!((d.violations[0].kind, d.violations[0].inherited), (ViolationKind::Invalid, false));
}

#[test]
fn updates_reuse_pattern_slots_and_removal_leaves_nothing_behind() {
    let compiled = |name: &str, own: &str, mode: &str| {
        let p = policy(name, json!({"mode": mode, "trustedRegistries": [own, "shared.io"]}));
        Arc::new(CompiledPolicy::compile(&p).unwrap())
    };
    let mut set = PolicySet::default();
    for i in 0..300 {
        set.insert(compiled(&format!("p{}", i % 3), &format!("r{i}.io"), "Warn"));
    }
    assert_eq!(set.len(), 3);
    assert_eq!(set.patterns.len(), 4, "three own patterns and the shared one");
    assert_eq!(set.slots, 4, "300 updates, never more than 4 distinct patterns at once");
    assert_eq!(Mode::ALL.map(|m| set.count_by_mode(m)), [0, 3, 0]);
    let d = decide_images(&set, &["r299.io/a:1", "r0.io/a:1", "shared.io/b:1"]);
    let denied: Vec<&str> = d.violations.iter().map(|v| v.image.as_str()).collect();
    // p2 trusts r299.io now; nothing trusts r0.io any more (p0's first version did).
    assert_eq!(denied, ["r299.io/a:1", "r299.io/a:1", "r0.io/a:1", "r0.io/a:1", "r0.io/a:1"]);

    let before = set.clone();
    assert!(set.remove("p1") && !set.remove("p1"));
    assert_eq!(before.len(), 3, "a clone taken before is unchanged");
    set.remove("p0");
    set.remove("p2");
    assert!(set.is_empty() && set.patterns.is_empty() && set.by_namespace.is_empty() && set.scanned.is_empty());
    assert_eq!(set.free.len(), set.slots);
    assert_eq!(Mode::ALL.map(|m| set.count_by_mode(m)), [0, 0, 0]);
}

#[test]
fn compile_reports_a_second_policy_of_one_name() {
    let (set, errors) = PolicySet::compile(&[corporate(), corporate()]);
    assert_eq!(set.len(), 1);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].to_string(), r#"policy "corporate" is invalid: metadata.name: another policy has this name"#);
}
