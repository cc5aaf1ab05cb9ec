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

/// The SARIF schema published by OASIS (tests/sarif/LICENSE.md says where it comes from).
fn sarif_validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("sarif/sarif-schema-2.1.0.json")).expect("the vendored schema is JSON");
    jsonschema::draft4::new(&schema).expect("the SARIF schema compiles")
}

fn assert_valid_sarif(log: &Value) {
    let validator = sarif_validator();
    let errors: Vec<String> = validator.iter_errors(log).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "SARIF schema errors: {errors:#?}");
}

#[test]
fn check_sarif_is_valid_and_points_at_the_image_line() {
    let out = trustgate(&["check", "-p", "examples/policies", "-o", "sarif", "examples/workloads"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    assert_valid_sarif(&log);
    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 8, "one rule per violation kind");
    let results = run["results"].as_array().unwrap();
    let web = results
        .iter()
        .find(|r| {
            r["level"] == "error"
                && r["message"]["text"].as_str().unwrap().starts_with("Deployment default/web: container \"nginx\"")
        })
        .expect("the web Deployment's violation");
    assert_eq!(web["ruleId"], "TG002");
    assert_eq!(rules[web["ruleIndex"].as_u64().unwrap() as usize]["name"], "UntrustedRegistry");
    assert_eq!(web["level"], "error");
    let physical = &web["locations"][0]["physicalLocation"];
    assert_eq!(physical["artifactLocation"]["uri"], "examples/workloads/web-deployment.yaml");
    assert_eq!(physical["artifactLocation"]["uriBaseId"], "SRCROOT");
    let text = std::fs::read_to_string("examples/workloads/web-deployment.yaml").unwrap();
    let line = text.lines().position(|l| l.trim() == "image: nginx:1.25").unwrap() + 1;
    assert_eq!(physical["region"]["startLine"], line);
    // Warn and Audit findings are results too, at their own levels.
    let levels: Vec<&str> = results.iter().map(|r| r["level"].as_str().unwrap()).collect();
    assert!(levels.contains(&"warning") && levels.contains(&"note"), "{levels:?}");
    let checkout = results
        .iter()
        .find(|r| r["message"]["text"].as_str().unwrap().starts_with("Deployment shop/checkout"))
        .expect("the checkout warning");
    let shop = std::fs::read_to_string("examples/workloads/shop.yaml").unwrap();
    let line = shop.lines().position(|l| l.contains("image: registry.my.com/shop/checkout:3.1.0")).unwrap() + 1;
    assert_eq!(checkout["locations"][0]["physicalLocation"]["region"]["startLine"], line, "a later document's line");
    assert_eq!(checkout["level"], "warning");
}

#[test]
fn check_sarif_from_stdin_has_no_file_and_allowed_input_has_no_results() {
    let manifest = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: 'nginx:1.25'}]\n";
    let out = trustgate_with_stdin(&["check", "-p", "examples/policies/corporate.yaml", "-o", "sarif"], Some(manifest));
    assert_eq!(out.status.code(), Some(1));
    let log: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_valid_sarif(&log);
    let location = &log["runs"][0]["results"][0]["locations"][0];
    assert!(location.get("physicalLocation").is_none(), "{location}");
    assert_eq!(location["logicalLocations"][0]["fullyQualifiedName"], "Pod/default/p/spec.containers[0]");

    let allowed = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: registry.my.com/a:v1}]\n";
    let out = trustgate_with_stdin(&["check", "-p", "examples/policies/corporate.yaml", "-o", "sarif"], Some(allowed));
    assert_eq!(out.status.code(), Some(0));
    let log: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_valid_sarif(&log);
    assert_eq!(log["runs"][0]["results"], serde_json::json!([]));
}

#[test]
fn the_schema_check_rejects_broken_sarif() {
    // The validation above proves something only if a wrong log fails it.
    let broken =
        serde_json::json!({"version": "2.1.0", "runs": [{"tool": {"driver": {}}, "results": [{"level": "fatal"}]}]});
    assert!(!sarif_validator().is_valid(&broken));
}

/// One JUnit test case: suite, case name, failure message, failure text, system-out.
type Case = (String, String, Option<String>, String, String);

/// The JUnit document's cases, and the (tests, failures) counts of its root.
fn junit_cases(xml: &str) -> (Vec<Case>, Vec<(String, String)>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut cases, mut roots) = (Vec::new(), Vec::new());
    let (mut suite, mut text, mut in_failure, mut in_out) = (String::new(), String::new(), false, false);
    let attr = |e: &quick_xml::events::BytesStart<'_>, name: &str| {
        e.try_get_attribute(name)
            .unwrap()
            .map(|a| a.normalized_value(quick_xml::XmlVersion::default()).unwrap().into_owned())
            .unwrap_or_default()
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == "testsuites" => {
                roots.push((attr(&e, "tests"), attr(&e, "failures")));
            }
            Event::Start(e) if e.name().as_ref() == "testsuite" => suite = attr(&e, "name"),
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == "testcase" => {
                cases.push((suite.clone(), attr(&e, "name"), None, String::new(), String::new()));
            }
            Event::Start(e) if e.name().as_ref() == "failure" => {
                cases.last_mut().unwrap().2 = Some(attr(&e, "message"));
                (in_failure, text) = (true, String::new());
            }
            Event::Start(e) if e.name().as_ref() == "system-out" => (in_out, text) = (true, String::new()),
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let name = r.into_inner();
                let c = match &*name {
                    "amp" => "&".to_owned(),
                    "lt" => "<".to_owned(),
                    "gt" => ">".to_owned(),
                    "quot" => "\"".to_owned(),
                    "apos" => "'".to_owned(),
                    n => char::from_u32(n.strip_prefix("#").unwrap().parse().unwrap()).unwrap().to_string(),
                };
                text.push_str(&c);
            }
            Event::End(e) if e.name().as_ref() == "failure" || e.name().as_ref() == "system-out" => {
                let case = cases.last_mut().unwrap();
                if in_failure {
                    case.3 = std::mem::take(&mut text);
                } else if in_out {
                    case.4 = std::mem::take(&mut text);
                }
                (in_failure, in_out) = (false, false);
            }
            Event::Eof => break,
            _ => text.clear(),
        }
    }
    (cases, roots)
}

#[test]
fn check_junit_has_a_case_per_object_and_a_failure_per_denial() {
    let out = trustgate(&["check", "-p", "examples/policies", "-o", "junit", "examples/workloads"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let xml = stdout(&out);
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"), "{xml}");
    let (cases, roots) = junit_cases(&xml);
    assert_eq!(roots, [("11".to_owned(), "4".to_owned())]);
    assert_eq!(cases.len(), 11, "one case per object");
    assert_eq!(cases.iter().filter(|c| c.2.is_some()).count(), 4, "one failure per denied object");
    let web = cases.iter().find(|c| c.1 == "Deployment default/web").unwrap();
    assert_eq!(web.0, "examples/workloads/web-deployment.yaml");
    assert!(web.2.as_deref().unwrap().starts_with("denied by policy corporate"), "{web:?}");
    assert!(web.3.contains("container \"nginx\" (spec.template.spec.containers[0]) image \"nginx:1.25\""), "{web:?}");
    let checkout = cases.iter().find(|c| c.1 == "Deployment shop/checkout").unwrap();
    assert_eq!(checkout.2, None, "a warning is not a failure");
    assert!(checkout.4.starts_with("[Warn] container \"checkout\""), "{checkout:?}");
}

#[test]
fn check_junit_escapes_what_it_quotes() {
    let manifest =
        "kind: Pod\nmetadata: {name: \"a<b>&'c\\\"\\u0007\"}\nspec:\n  containers: [{name: x, image: 'nginx:1.25'}]\n";
    let out = trustgate_with_stdin(&["check", "-p", "examples/policies/corporate.yaml", "-o", "junit"], Some(manifest));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (cases, _) = junit_cases(&stdout(&out));
    assert_eq!(cases[0].1, "Pod default/a<b>&'c\"\u{FFFD}");
    assert!(cases[0].3.starts_with("Pod default/a<b>&'c\"\u{FFFD}: container \"x\""), "{:?}", cases[0]);
}
