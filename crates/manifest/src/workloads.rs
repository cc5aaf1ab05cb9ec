//! Reading workloads out of manifest documents: the compact workload of each object, the
//! labels of Namespace objects, and where images are written (for SARIF). The block-YAML
//! shortcut is used here only, behind the guard that keeps `List` and `Namespace` objects on
//! the general path.

use std::collections::BTreeMap;

use serde_json::Value;
use trustgate_core::workload::Workload;

use crate::manifest::{DocumentText, ObjectReader, Position};

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

/// What is kept of one object: the compact workload, a Namespace's labels, and where its
/// images are written.
#[derive(Debug)]
pub struct Entry {
    pub workload: Workload<'static>,
    pub namespace_labels: Option<(String, BTreeMap<String, String>)>,
    pub lines: Lines,
}

/// Where an object and its images are written in its file (1-based lines), for reports that
/// point at code (SARIF). Found by a text scan of the object's document: see
/// [`crate::stream::image_lines`].
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

/// Reads the workloads of manifests (pod specs, and the labels of Namespace objects), on any
/// thread. `List` objects are never read as one workload: their items are.
#[derive(Debug, Default)]
pub struct WorkloadReader {
    /// Find the line of each image (only SARIF needs them).
    pub locate: bool,
}

impl WorkloadReader {
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
        let written = crate::stream::image_lines(document.text, document.first_line);
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

impl ObjectReader for WorkloadReader {
    type Item = Entry;
    type Error = ObjectError;

    fn read_yaml(&self, document: DocumentText<'_>) -> Option<Entry> {
        // Straight from the text, without a tree (most of the time a stream takes), with the
        // block-YAML reader: it reads most of what kubectl and Helm write and leaves the rest
        // to the general way. (Reading with serde-saphyr straight into the workload was the
        // shortcut before it, but the fuzzer found it inexact: it skips what the general reader
        // refuses, such as a null key in a field it ignores.) Namespaces (labels) and Lists
        // (items) always take the general way.
        let workload = crate::block_yaml::read_workload(document.text)?.into_owned();
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

/// Whether a document's text may hold a Namespace object (alone or in a `List`): the documents
/// that the first pass of `check` reads for their labels. The kind must then be written
/// `Namespace`, in the document itself (an alias points into the same document), unless it is
/// spelled with an escape (`\` in a double-quoted YAML or JSON string) or tagged (`!`): a text
/// with neither holds no Namespace, and a false yes costs only the reading of one document.
pub fn may_hold_namespace(text: &str) -> bool {
    text.contains("Namespace") || text.contains('\\') || text.contains('!')
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
    use crate::manifest;

    /// Found by the `manifest` fuzz target: a null key in a field `check` ignores. The general
    /// reader refuses the document (an object's keys are strings), so the fast reader must
    /// leave it to the general way and the document is reported as unreadable, not admitted.
    #[test]
    fn a_null_key_in_an_ignored_field_is_unreadable() {
        let text = "kind: Deployment\nmetadata:\n  n      containers:\n       :\n        g\n";
        let document = DocumentText { text, first_line: 1 };
        assert!(WorkloadReader::default().read_yaml(document).is_none());
        let error = manifest::parse("fuzz.yaml", text).unwrap_err().to_string();
        assert!(error.contains("invalid YAML"), "{error}");
    }

    #[test]
    fn the_yaml_shortcut_agrees_with_the_general_reader() {
        let reader = WorkloadReader { locate: true };
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
}
