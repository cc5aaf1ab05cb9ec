//! `trustgate check`: the offline evaluation of manifests, with the server's engine.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use trustgate_manifest::manifest::{Document, DocumentText, ObjectReader, Position};
use trustgate_core::workload::Workload;
use trustgate_core::engine::{Namespace, PolicySet, Subject, Verdict, Violation};

/// The JSON document `check --output json` prints.
#[derive(Debug, Serialize, PartialEq, Eq, Default)]
pub struct Report {
    pub objects: Vec<ObjectReport>,
    pub summary: Summary,
}

/// One object's decision.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ObjectReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub source: String,
    pub decision: Verdict,
    pub violations: Vec<Violation>,
    /// The denial message as the API server would show it (not part of the JSON contract).
    #[serde(skip)]
    pub denial: Option<String>,
    /// The warnings as kubectl would print them.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Where the object and its images are written (not part of the JSON contract).
    #[serde(skip)]
    pub lines: Lines,
}

#[derive(Debug, Serialize, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects: usize,
    pub allowed: usize,
    pub warned: usize,
    pub denied: usize,
}

impl Report {
    /// Whether any Enforce policy was violated (exit code 1).
    pub fn denied(&self) -> bool {
        self.summary.denied > 0
    }
}

/// A workload that cannot be read (say, an `image` that is not a string).
#[derive(Debug, thiserror::Error)]
#[error("{source_file}: document {document} ({kind} {name}): cannot read the pod spec: {message}")]
pub struct UnreadableObject {
    pub source_file: String,
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub message: String,
}

/// Why `check` could not read its input.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error(transparent)]
    Manifest(#[from] trustgate_manifest::manifest::ManifestError),
    #[error(transparent)]
    Unreadable(#[from] UnreadableObject),
}

/// What `check` keeps of one object: the compact workload, a Namespace's labels, and where its
/// images are written.
#[derive(Debug)]
pub struct Entry {
    pub workload: Workload<'static>,
    pub namespace_labels: Option<(String, BTreeMap<String, String>)>,
    pub lines: Lines,
}

/// Where an object and its images are written in its file (1-based lines), for reports that
/// point at code (SARIF). Found by a text scan of the object's document: see
/// [`trustgate_manifest::stream::image_lines`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    /// The document's first line of content.
    pub object: Option<usize>,
    /// The line of each container's image, by field path (`spec.containers[0]`).
    pub images: Vec<(String, usize)>,
}

impl Lines {
    /// The line of the image of the container at `field`, else the object's line.
    pub fn of(&self, field: &str) -> Option<usize> {
        self.images.iter().find(|(f, _)| f == field).map(|(_, l)| *l).or(self.object)
    }
}

/// Why one object cannot be read; [`UnreadableObject`] once its file and document are known.
#[derive(Debug)]
pub struct ObjectError {
    kind: String,
    name: String,
    message: String,
}

impl ObjectError {
    /// Names the file and document.
    pub fn at(self, position: Position<'_>) -> UnreadableObject {
        UnreadableObject {
            source_file: position.source.to_owned(),
            document: position.document,
            kind: self.kind,
            name: self.name,
            message: self.message,
        }
    }
}

/// Reads manifests for `check`, on any thread.
#[derive(Debug, Default)]
pub struct CheckReader {
    /// Find the line of each image (only SARIF needs them).
    pub locate: bool,
}

impl CheckReader {
    fn lines(&self, workload: &Workload<'_>, document: Option<DocumentText<'_>>) -> Lines {
        let Some(document) = document.filter(|_| self.locate) else { return Lines::default() };
        let object = document
            .text
            .lines()
            .position(|l| {
                let l = l.trim();
                !(l.is_empty() || l.starts_with('#') || l == "---" || l.starts_with("--- #"))
            })
            .map(|i| document.first_line + i);
        let written = trustgate_manifest::stream::image_lines(document.text, document.first_line);
        let images = workload
            .containers
            .iter()
            .filter_map(|c| {
                let image = c.image.as_deref()?;
                // Several containers may share an image: each points at its first line.
                let line = written.iter().find(|(_, v)| *v == image)?.0;
                Some((c.field.to_string(), line))
            })
            .collect();
        Lines { object, images }
    }
}

impl ObjectReader for CheckReader {
    type Item = Entry;
    type Error = ObjectError;

    fn read_yaml(&self, document: DocumentText<'_>) -> Option<Entry> {
        // Straight from the text, without a tree (most of the time a stream takes), with the
        // block-YAML reader: it reads most of what kubectl and Helm write and leaves the rest
        // to the general way. (Reading with serde-saphyr straight into the workload was the
        // shortcut before it, but the fuzzer found it inexact: it skips what the general reader
        // refuses, such as a null key in a field it ignores.) Namespaces (labels) and Lists
        // (items) always take the general way.
        let workload = trustgate_manifest::block_yaml::read_workload(document.text)?.into_owned();
        if workload.kind.is_empty() || workload.kind == "Namespace" || workload.kind.ends_with("List") {
            return None;
        }
        let lines = self.lines(&workload, Some(document));
        Some(Entry { workload, namespace_labels: None, lines })
    }

    fn read_value(&self, object: &Value, document: Option<DocumentText<'_>>) -> Result<Entry, ObjectError> {
        let kind = || object.get("kind").and_then(Value::as_str).unwrap_or("").to_owned();
        let workload = Workload::read(None, object).map_err(|e| ObjectError {
            kind: kind(),
            name: object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned(),
            message: e.to_string(),
        })?;
        let lines = self.lines(&workload, document);
        Ok(Entry { workload: workload.into_owned(), namespace_labels: namespace_labels(object), lines })
    }
}

/// Collects objects one document at a time, keeping only what evaluation needs (a Namespace
/// may come after the objects it labels, so evaluation waits for the last document).
#[derive(Default)]
pub struct Checker {
    pending: Vec<(Workload<'static>, String, Lines)>,
    labels: HashMap<String, BTreeMap<String, String>>,
}

impl Checker {
    /// Reads one document's pod spec (or Namespace labels).
    pub fn add(&mut self, doc: &Document) -> Result<(), UnreadableObject> {
        let entry = CheckReader::default()
            .read_value(&doc.value, None)
            .map_err(|e| e.at(Position { source: &doc.source, document: doc.document }))?;
        self.push(&doc.source, entry);
        Ok(())
    }

    /// Keeps one object read by [`CheckReader`].
    pub fn push(&mut self, source: &str, entry: Entry) {
        if let Some((name, labels)) = entry.namespace_labels {
            self.labels.insert(name, labels);
        }
        self.pending.push((entry.workload, source.to_owned(), entry.lines));
    }

    /// Evaluates everything read.
    pub fn finish(self, policies: &PolicySet, default_namespace: &str, now: Timestamp) -> Report {
        let no_labels = BTreeMap::new();
        let mut report = Report { objects: Vec::with_capacity(self.pending.len()), summary: Summary::default() };
        for (workload, source, lines) in self.pending {
            let namespace = workload.namespace.as_deref().unwrap_or(default_namespace);
            let ns = Namespace { name: namespace, labels: Some(self.labels.get(namespace).unwrap_or(&no_labels)) };
            report.add(policies, &workload, &ns, source, lines, now);
        }
        report
    }
}

impl Report {
    /// Evaluates one workload in namespace `ns` and adds its decision (offline check and
    /// `check --cluster` both report through here).
    pub(crate) fn add(
        &mut self,
        policies: &PolicySet,
        workload: &Workload<'_>,
        ns: &Namespace<'_>,
        source: String,
        lines: Lines,
        now: Timestamp,
    ) {
        let decision = policies.evaluate_workload(workload, ns, now);
        let verdict = decision.verdict();
        let subject = Subject::of(workload, ns.name);
        match verdict {
            Verdict::Allow => self.summary.allowed += 1,
            Verdict::Warn => self.summary.warned += 1,
            Verdict::Deny => self.summary.denied += 1,
        }
        self.objects.push(ObjectReport {
            kind: workload.kind.to_string(),
            namespace: ns.name.to_owned(),
            name: subject.display_name().into_owned(),
            source,
            decision: verdict,
            denial: decision.denial(&subject),
            warnings: decision.warnings(&subject),
            violations: decision.violations,
            lines,
        });
        self.summary.objects = self.objects.len();
    }
}

/// The name and labels of a Namespace object.
fn namespace_labels(object: &Value) -> Option<(String, BTreeMap<String, String>)> {
    if object.get("kind").and_then(Value::as_str) != Some("Namespace") {
        return None;
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str)?;
    let labels = object.pointer("/metadata/labels").and_then(Value::as_object)?;
    // Label values are strings; a non-string value is skipped like an absent label.
    let labels = labels.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect();
    Some((name.to_owned(), labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustgate_core::api::Mode;
    use trustgate_manifest::manifest;

    fn check(
        policies: &PolicySet,
        documents: &[Document],
        default_namespace: &str,
        now: Timestamp,
    ) -> Result<Report, UnreadableObject> {
        let mut checker = Checker::default();
        for doc in documents {
            checker.add(doc)?;
        }
        Ok(checker.finish(policies, default_namespace, now))
    }

    fn policies(yaml: &str) -> PolicySet {
        let (set, errors) = PolicySet::compile(&manifest::parse_policies("p.yaml", yaml).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
        set
    }

    const POLICIES: &str = "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: corporate}\nspec:\n  trustedRegistries: [registry.my.com]\n---\napiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: prod-warn}\nspec:\n  mode: Warn\n  trustedRegistries: [registry.my.com/prod]\n  namespaceSelector: {matchLabels: {env: prod}}\n";

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    /// Found by the `manifest` fuzz target: a null key in a field `check` ignores. The general
    /// reader refuses the document (an object's keys are strings), so the fast reader must
    /// leave it to the general way and the document is reported as unreadable, not admitted.
    #[test]
    fn a_null_key_in_an_ignored_field_is_unreadable() {
        let text = "kind: Deployment\nmetadata:\n  n      containers:\n       :\n        g\n";
        let document = DocumentText { text, first_line: 1 };
        assert!(CheckReader::default().read_yaml(document).is_none());
        let error = manifest::parse("fuzz.yaml", text).unwrap_err().to_string();
        assert!(error.contains("invalid YAML"), "{error}");
    }

    #[test]
    fn decisions_summary_and_namespace_labels_from_inputs() {
        let inputs = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/prod/app:v1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: warned, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {containers: [{name: nginx, image: 'nginx:1.25'}]}}}\n";
        let docs = manifest::parse("in.yaml", inputs).unwrap();
        let report = check(&policies(POLICIES), &docs, "default", now()).unwrap();
        let decisions: Vec<(&str, Verdict)> = report.objects.iter().map(|o| (o.name.as_str(), o.decision)).collect();
        assert_eq!(
            decisions,
            [
                ("shop", Verdict::Allow),
                ("ok", Verdict::Allow),
                ("warned", Verdict::Warn),
                ("plain", Verdict::Allow),
                ("web", Verdict::Deny)
            ]
        );
        assert_eq!(report.summary, Summary { objects: 5, allowed: 3, warned: 1, denied: 1 });
        assert!(report.denied());
        let web = &report.objects[4];
        assert_eq!(web.namespace, "default");
        assert_eq!(web.violations[0].mode, Mode::Enforce);
        assert!(web.denial.as_deref().unwrap().starts_with("Deployment default/web: container \"nginx\""));
        assert_eq!(report.objects[2].warnings.len(), 1);
    }

    #[test]
    fn a_namespace_may_come_after_the_objects_it_labels() {
        let inputs = "apiVersion: v1\nkind: Pod\nmetadata: {name: warned, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n";
        let docs = manifest::parse("in.yaml", inputs).unwrap();
        let report = check(&policies(POLICIES), &docs, "default", now()).unwrap();
        assert_eq!(report.objects[0].decision, Verdict::Warn);
    }

    #[test]
    fn json_matches_the_spec_shape() {
        let docs = manifest::parse(
            "deploy.yaml",
            "kind: Deployment\nmetadata: {name: web, namespace: default}\nspec: {template: {spec: {containers: [{name: nginx, image: 'nginx:1.25'}]}}}\n",
        )
        .unwrap();
        let report = check(&policies(POLICIES), &docs, "default", now()).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        let expected = serde_json::json!({
            "objects": [{"kind": "Deployment", "namespace": "default", "name": "web", "source": "deploy.yaml",
                "decision": "deny",
                "violations": [{"policy": "corporate", "mode": "Enforce", "container": "nginx",
                    "field": "spec.template.spec.containers[0]", "image": "nginx:1.25",
                    "normalized": "docker.io/library/nginx:1.25",
                    "reason": "resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com)"}]}],
            "summary": {"objects": 1, "allowed": 0, "warned": 0, "denied": 1}
        });
        assert_eq!(json, expected);
    }

    /// The shortcut straight from YAML reads what the general reader reads, or steps aside.
    #[test]
    fn the_yaml_shortcut_agrees_with_the_general_reader() {
        let reader = CheckReader { locate: true };
        let scalars = [
            "nginx",
            "'1.25'",
            "1.25",
            "5",
            "0x1F",
            "0o17",
            "1e3",
            ".5",
            "+1",
            ".inf",
            "true",
            "True",
            "yes",
            "on",
            "y",
            "null",
            "~",
            "Null",
            "''",
            "\"a\\u0041\"",
            "!!str 5",
            "2026-01-01",
            "1_000",
        ];
        let mut shortcut = 0;
        for scalar in scalars {
            for doc in [
                format!(
                    "kind: Pod\nmetadata: {{name: {scalar}, namespace: {scalar}}}\nspec:\n  containers:\n  - name: {scalar}\n    image: {scalar}\n"
                ),
                format!(
                    "kind: Deployment\nmetadata:\n  generateName: {scalar}\nspec:\n  template:\n    spec:\n      initContainers: [{{name: i, image: {scalar}}}]\n      containers: [{{name: c, image: {scalar}}}]\n"
                ),
                format!(
                    "kind: {scalar}\nspec: {{jobTemplate: {{spec: {{template: {{spec: {{containers: [{{image: {scalar}}}]}}}}}}}}}}\n"
                ),
                format!(
                    "base: &b {{name: a, image: {scalar}}}\nkind: Pod\nspec:\n  containers:\n  - <<: *b\n    name: merged\n"
                ),
                // Block style, as kubectl and Helm write: what the block-YAML reader reads.
                format!(
                    "kind: Pod\nmetadata:\n  name: {scalar}\n  namespace: {scalar}\nspec:\n  containers:\n  - name: {scalar}\n    image: {scalar}\n"
                ),
                format!(
                    "kind: CronJob\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          initContainers:\n          - image: {scalar}\n          containers:\n            - name: c\n              image: {scalar} # comment\n"
                ),
            ] {
                let document = DocumentText { text: &doc, first_line: 1 };
                let general = manifest::parse("x.yaml", &doc)
                    .ok()
                    .and_then(|d| d.into_iter().next())
                    .map(|d| reader.read_value(&d.value, Some(document)).map(|e| (e.workload, e.lines)));
                if let Some(fast) = reader.read_yaml(document) {
                    shortcut += 1;
                    let Some(Ok(general)) = general else {
                        panic!("shortcut read {doc:?}, the general reader did not")
                    };
                    assert_eq!((fast.workload, fast.lines), general, "{doc}");
                }
            }
        }
        // At least the strings (`nginx`, `'1.25'`, `''`) in both block-style documents; what a
        // schema could type, flow mappings, anchors and escapes go the general way.
        assert!(shortcut >= 6, "the shortcut is taken for ordinary documents ({shortcut})");
        for doc in [
            "kind: Namespace\nmetadata: {name: a, labels: {x: y}}\n",
            "kind: List\nitems: []\n",
            "5\n",
            "",
            "# c\n",
            "---\n",
            "{}\n",
        ] {
            assert!(reader.read_yaml(DocumentText { text: doc, first_line: 1 }).is_none(), "{doc:?}");
        }
    }

    #[test]
    fn unreadable_pod_spec_is_an_error_naming_the_object() {
        let docs =
            manifest::parse("x.yaml", "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: 5}]}\n")
                .unwrap();
        let err = check(&policies(POLICIES), &docs, "default", now()).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml: document 1 (Pod p): cannot read the pod spec"), "{err}");
    }
}
