//! The `trustgate` binary as CI pipelines and people use it: exit codes, outputs, errors.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn trustgate(args: &[&str]) -> Output {
    trustgate_with_stdin(args, None)
}

fn trustgate_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("the binary exits")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write temp file");
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn check_examples_reports_every_decision_and_exits_1() {
    let out = trustgate(&["check", "--policy", "examples/policies", "examples/workloads"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DENY  Deployment default/web (examples/workloads/web-deployment.yaml)"), "{text}");
    assert!(text.contains(
        "container \"nginx\" (spec.template.spec.containers[0]) image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com, ghcr.io/my-org, *.dkr.ecr.eu-west-1.amazonaws.com)"
    ));
    assert!(text.contains("WARN  Deployment shop/checkout"), "{text}");
    assert!(text.contains("ALLOW Pod debug/api-7d9f8"), "{text}");
    assert!(text.contains("spec.jobTemplate.spec.template.spec.containers[1]"), "{text}");
    assert!(text.trim_end().ends_with("11 objects: 6 allowed, 1 warned, 4 denied"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour when stdout is not a terminal");
}

#[test]
fn check_json_has_the_spec_shape() {
    let out = trustgate(&["check", "-p", "examples/policies", "-o", "json", "examples/workloads/web-deployment.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    let object = &json["objects"][0];
    assert_eq!(object["kind"], "Deployment");
    assert_eq!(object["namespace"], "default");
    assert_eq!(object["name"], "web");
    assert_eq!(object["source"], "examples/workloads/web-deployment.yaml");
    assert_eq!(object["decision"], "deny");
    let corporate = object["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["policy"] == "corporate")
        .expect("a corporate violation");
    assert_eq!(corporate["mode"], "Enforce");
    assert_eq!(corporate["container"], "nginx");
    assert_eq!(corporate["field"], "spec.template.spec.containers[0]");
    assert_eq!(corporate["image"], "nginx:1.25");
    assert_eq!(corporate["normalized"], "docker.io/library/nginx:1.25");
    assert_eq!(json["summary"], serde_json::json!({"objects": 1, "allowed": 0, "warned": 0, "denied": 1}));
}

#[test]
fn check_reads_stdin_and_applies_the_namespace_flag() {
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: registry.my.com/app:v1}]\n";
    for args in [
        &["check", "-p", "examples/policies", "-o", "json", "-n", "team-a"][..],
        &["check", "-p", "examples/policies", "-o", "json", "-n", "team-a", "-"],
    ] {
        let out = trustgate_with_stdin(args, Some(manifest));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["objects"][0]["namespace"], "team-a");
        assert_eq!(json["objects"][0]["source"], "-");
        assert_eq!(json["objects"][0]["decision"], "allow");
    }
}

#[test]
fn warnings_alone_exit_0() {
    let out = trustgate(&["check", "-p", "examples/policies", "examples/workloads/shop.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 warned"));
}

#[test]
fn unreadable_input_exits_2_naming_file_and_line() {
    let (_dir, bad) = temp_file("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n");
    let out = trustgate(&["check", "-p", "examples/policies", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&bad) && err.contains("invalid YAML") && err.contains("line"), "{err}");

    let out = trustgate(&["check", "-p", "examples/policies", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does/not/exist.yaml"), "{}", stderr(&out));

    let out = trustgate(&["check", "examples/workloads"]);
    assert_eq!(out.status.code(), Some(2), "--policy is required");
}

#[test]
fn bad_policies_exit_2_with_the_reason() {
    let (_dir, typo) = temp_file(
        "p.yaml",
        "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: p}\nspec:\n  trustedRegistries: [registry.my.com]\n  mdoe: Warn\n",
    );
    let out = trustgate(&["check", "-p", &typo, "examples/workloads"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown field `mdoe`") && stderr(&out).contains("line 6"), "{}", stderr(&out));

    let (_dir, pattern) = temp_file(
        "p.yaml",
        "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: p}\nspec:\n  trustedRegistries: [nginx]\n",
    );
    let out = trustgate(&["check", "-p", &pattern, "examples/workloads"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&pattern) && err.contains("write \"docker.io/library/nginx\""), "{err}");
}

#[test]
fn invalid_images_are_denied_not_skipped() {
    let manifest = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: 'Registry.my.com/App'}\n  - {name: b}\n";
    let out = trustgate_with_stdin(&["check", "-p", "examples/policies/corporate.yaml"], Some(manifest));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("image \"Registry.my.com/App\" is not a valid image reference (invalid reference format: repository name (App) must be lowercase)"), "{text}");
    assert!(text.contains("image \"\" is not a valid image reference"), "{text}");
}

#[test]
fn normalize_text_json_and_exit_codes() {
    let out = trustgate(&["normalize", "Evil/app", "[fd00::1]:5000/x", "nginx", "docker.io.evil.com/x"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for line in [
        "  domain:     Evil",
        "  domain:     [fd00::1]:5000",
        "  normalized: docker.io/library/nginx:latest",
        "  domain:     docker.io.evil.com",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }

    let out = trustgate(&["normalize", "-o", "json", "nginx", "nginx:"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json[0]["input"], "nginx");
    assert_eq!(json[0]["valid"], true);
    assert_eq!(json[0]["name"], "docker.io/library/nginx");
    assert_eq!(json[0]["domain"], "docker.io");
    assert_eq!(json[0]["path"], "library/nginx");
    assert_eq!(json[0]["tag"], "latest");
    assert_eq!(json[0]["digest"], Value::Null);
    assert_eq!(json[1]["valid"], false);
    assert!(json[1]["error"].as_str().unwrap().contains("invalid reference format"));
}

#[test]
fn crd_prints_the_committed_file() {
    let out = trustgate(&["crd"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/trustedregistrypolicies.trustgate.dev.yaml"
    ))
    .unwrap();
    assert_eq!(stdout(&out).trim_end(), committed.trim_end());
}

#[test]
fn every_command_has_help() {
    for command in [&["--help"][..], &["check", "--help"], &["normalize", "--help"], &["crd", "--help"]] {
        let out = trustgate(command);
        assert_eq!(out.status.code(), Some(0), "{command:?}");
        assert!(stdout(&out).contains("Usage: trustgate"), "{command:?}");
    }
}

#[test]
fn check_reads_pull_policies_as_the_api_server_defaults_them() {
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: tenant-a, labels: {tenancy: shared}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: cached, namespace: tenant-a}\nspec:\n  containers: [{name: a, image: registry.my.com/app:1.0}]\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: fresh, namespace: tenant-a}\nspec:\n  containers: [{name: a, image: registry.my.com/app:1.0, imagePullPolicy: Always}]\n";
    let out = trustgate_with_stdin(&["check", "-p", "examples/policies"], Some(manifest));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DENY  Pod tenant-a/cached"), "{text}");
    assert!(
        text.contains("image \"registry.my.com/app:1.0\" resolves to registry.my.com/app:1.0 (imagePullPolicy not set, defaults to IfNotPresent), but policy \"shared-tenancy\" requires imagePullPolicy Always for images from registry.my.com (spec.registryRules[1] (registry.my.com))"),
        "{text}"
    );
    assert!(text.contains("set spec.containers[0].imagePullPolicy: Always"), "{text}");
    assert!(text.contains("ALLOW Pod tenant-a/fresh"), "{text}");
}
