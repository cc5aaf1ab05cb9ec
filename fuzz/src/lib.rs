//! The properties the fuzz targets check, one function per target. Each one panics (which
//! libFuzzer reports as a crash) only when trustgate is wrong: a reader that panics, a shortcut
//! that reads differently from the general reader, an answer that is not a valid response to its
//! request.

use std::sync::OnceLock;

use serde_json::Value;
use trustgate_admission::review::{AdmissionRequest, ImageRequest, Outcome};
use trustgate_manifest::manifest::{self, DocumentText, ManifestError, ObjectReader, Position};
use trustgate_manifest::workloads::WorkloadReader;
use trustgate_core::reference::Reference;
use trustgate_core::engine::{PolicySet, Snapshot, Verdict};

/// An image reference: parsing never panics, and a parsed reference written back in its
/// normalized form parses to the same fields (what the engine matches is stable). The domain is
/// empty only in the runtime's quirk where the first component looks like a host but is not a
/// valid one (`my_reg.com/x`: all of it is the path).
pub fn reference(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = Reference::parse(input) else { return };
    assert!(!parsed.path().is_empty(), "{input:?}: empty path");
    if parsed.domain().is_empty() {
        let first = input.split('/').next().unwrap_or_default();
        assert!(input.contains('/') && parsed.path().starts_with(first), "{input:?}: empty domain");
        return;
    }
    let mut written = parsed.name();
    if let Some(tag) = parsed.tag() {
        written.push(':');
        written.push_str(tag);
    }
    if let Some(digest) = parsed.digest() {
        written.push('@');
        written.push_str(digest);
    }
    let again = Reference::parse(&written).unwrap_or_else(|e| panic!("{input:?} -> {written:?}: {e}"));
    assert_eq!(
        (again.domain(), again.path(), again.tag(), again.digest()),
        (parsed.domain(), parsed.path(), parsed.tag(), parsed.digest()),
        "{input:?} -> {written:?}"
    );
    assert!(again.has_written_domain(), "{written:?}: the normalized form names its domain");
}

/// The policies of examples/policies, compiled once.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let files = [
            include_str!("../../examples/policies/audit-unqualified.yaml"),
            include_str!("../../examples/policies/corporate.yaml"),
            include_str!("../../examples/policies/prod-digests.yaml"),
            include_str!("../../examples/policies/shared-tenancy.yaml"),
        ];
        let policies: Vec<_> =
            files.iter().flat_map(|text| manifest::parse_policies("examples/policies", text).unwrap()).collect();
        let (policies, errors) = PolicySet::compile(&policies);
        assert!(errors.is_empty(), "{errors:?}");
        Snapshot { policies, namespaces: None }
    })
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

/// An AdmissionReview or ImageReview body: decoding never panics, and a decoded review gets a
/// response for its own uid that never allows what was decided as a denial (an unreadable
/// object is a denial).
pub fn review(data: &[u8]) {
    if let Ok(request) = AdmissionRequest::parse(data) {
        let answer = request.review(snapshot(), now());
        let body: Value = serde_json::from_slice(&answer.body).expect("the response is JSON");
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"].as_str(), Some(&*request.uid), "response for another uid");
        let allowed = body["response"]["allowed"].as_bool().expect("response.allowed is a boolean");
        let denied = answer.outcome.verdict() == Verdict::Deny;
        assert_eq!(allowed, !denied, "allowed={allowed} for {:?}", answer.outcome);
        if let Outcome::Unreadable(_) = answer.outcome {
            assert!(!allowed);
        }
    }
    if let Ok(request) = ImageRequest::parse(data) {
        let answer = request.review(snapshot(), now());
        let body: Value = serde_json::from_slice(&answer.body).expect("the response is JSON");
        let allowed = body["status"]["allowed"].as_bool().expect("status.allowed is a boolean");
        assert_eq!(allowed, answer.outcome.verdict() != Verdict::Deny, "{:?}", answer.outcome);
    }
}

/// Stops a read with the error as text, so that two reads can be compared.
#[derive(Debug, PartialEq)]
struct Stop(String);

impl From<ManifestError> for Stop {
    fn from(e: ManifestError) -> Self {
        Stop(e.to_string())
    }
}

/// Every item of a read (as debug text, with its document) and the error that ended it.
fn read(text: &str, threads: usize, batch: usize) -> (Vec<(usize, String)>, Result<(), Stop>) {
    let reader = WorkloadReader { locate: true };
    let mut items = Vec::new();
    let end = manifest::read_stream("fuzz.yaml", text, &reader, threads, batch, &mut |p: Position<'_>, item| {
        items.push((p.document, format!("{:?}", item.map_err(|e| e.at(p)))));
        Ok::<(), Stop>(())
    });
    (items, end)
}

/// A manifest stream, as `trustgate check` reads it: reading never panics; the parallel reader
/// (any batch size) gives exactly the items, document numbers and error of the sequential
/// one; and a document that the shortcut reads straight from its text reads the same through
/// the general reader.
pub fn manifest(data: &[u8]) {
    let Some((&batch, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let sequential = read(text, 1, usize::MAX);
    let parallel = read(text, 2, usize::from(batch) + 1);
    assert_eq!(sequential, parallel, "parallel read with batches of {} bytes", usize::from(batch) + 1);

    let reader = WorkloadReader { locate: false };
    let document = DocumentText { text, first_line: 1 };
    if let Some(shortcut) = reader.read_yaml(document) {
        let documents = manifest::parse("fuzz.yaml", text)
            .unwrap_or_else(|e| panic!("the shortcut read a document the general reader refuses: {e}"));
        assert_eq!(documents.len(), 1, "the shortcut read one object of {}", documents.len());
        let general = reader
            .read_value(&documents[0].value, Some(document))
            .unwrap_or_else(|e| panic!("the shortcut read an object the general reader refuses: {e:?}"));
        assert_eq!(shortcut.workload, general.workload);
    }
}
