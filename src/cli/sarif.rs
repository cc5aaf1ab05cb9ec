//! `check --output sarif`: the report as SARIF 2.1.0, the format GitHub code scanning and other
//! CI tools read, so that findings show on the lines of a change.
//!
//! One rule per [`ViolationKind`], one result per violation. A result points at the manifest
//! file (a relative URI under the `SRCROOT` base, the checkout root for GitHub) and the line of
//! the image when it was found, else the object's first line.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::cli::check::Report;
use trustgate_core::api::Mode;
use trustgate_core::engine::ViolationKind;

/// The `uriBaseId` of every location: the directory `check` ran in.
const BASE: &str = "SRCROOT";

/// The SARIF log of a report.
pub fn log(report: &Report) -> Value {
    let rules: Vec<Value> = ViolationKind::ALL
        .iter()
        .map(|kind| {
            let rule = kind.rule();
            json!({
                "id": rule.id,
                "name": rule.name,
                "shortDescription": {"text": rule.description},
                "fullDescription": {"text": rule.description},
                "help": {"text": format!("{} Run `trustgate normalize IMAGE` to see how the runtime reads an image reference.", rule.description)},
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": ["security", "supply-chain"]}
            })
        })
        .collect();
    let mut results = Vec::new();
    for object in &report.objects {
        let subject = format!("{} {}/{}", object.kind, object.namespace, object.name);
        for v in &object.violations {
            let rule = v.kind.rule();
            let mut message = format!("{subject}: {v}");
            if let Some(m) = v.policy_message.as_deref() {
                let _ = write!(message, " {m}");
            }
            let mut location = json!({
                "logicalLocations": [{
                    "fullyQualifiedName": format!("{}/{}/{}/{}", object.kind, object.namespace, object.name, v.field),
                    "kind": "object"
                }]
            });
            // Stdin has no file to point at: the result keeps its logical location only.
            if object.source != "-" {
                let mut physical = json!({"artifactLocation": {"uri": uri(&object.source), "uriBaseId": BASE}});
                if let Some(line) = object.lines.of(&v.field) {
                    physical["region"] = json!({"startLine": line});
                }
                location["physicalLocation"] = physical;
            }
            let mut result = json!({
                "ruleId": rule.id,
                "level": level(v.mode),
                "message": {"text": message},
                "locations": [location],
                // Stable across edits that move lines: the same finding on the same object.
                "partialFingerprints": {"trustgateFinding/v1": fingerprint(&[
                    &v.policy, rule.id, &object.kind, &object.namespace, &object.name, &v.field, &v.image,
                ])},
                "properties": {"policy": &*v.policy, "mode": v.mode.to_string(), "image": &v.image, "normalized": &v.normalized}
            });
            if let Some(index) = ViolationKind::ALL.iter().position(|k| *k == v.kind) {
                result["ruleIndex"] = json!(index);
            }
            results.push(result);
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "trustgate",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules
            }},
            "columnKind": "unicodeCodePoints",
            "results": results
        }]
    })
}

/// SARIF's level for a policy mode: Enforce denies, Warn warns, Audit only records.
fn level(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "error",
        Mode::Warn => "warning",
        Mode::Audit => "note",
    }
}

/// A file path as a relative URI reference: `./` dropped, `\` as `/`, and every byte outside
/// the unreserved set and `/` percent-encoded (a space, `#` or `%` in a file name would
/// otherwise change what the URI means).
fn uri(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut path = path.as_str();
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    // An absolute path gets the `file` scheme: it is not relative to the checkout.
    if out.starts_with('/') { format!("file://{out}") } else { out }
}

/// FNV-1a (64 bit) of the parts, hex: a stable fingerprint that needs no crate; it identifies
/// a finding, it is not a security boundary.
fn fingerprint(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_relative_references_percent_encoded() {
        assert_eq!(uri("./k8s/app.yaml"), "k8s/app.yaml");
        assert_eq!(uri("deploy/my app#1.yaml"), "deploy/my%20app%231.yaml");
        assert_eq!(uri("/abs/x.yaml"), "file:///abs/x.yaml");
        assert_eq!(uri("ünï.yaml"), "%C3%BCn%C3%AF.yaml");
    }

    #[test]
    fn levels_follow_the_mode() {
        assert_eq!([Mode::Enforce, Mode::Warn, Mode::Audit].map(level), ["error", "warning", "note"]);
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&[]), "cbf29ce484222325");
    }
}
