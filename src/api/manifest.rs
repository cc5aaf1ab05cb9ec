//! Reading Kubernetes manifests and policies from files: multi-document YAML, JSON, `List`
//! objects, directories walked recursively. Shared by `check` and the server's file source.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::{API_VERSION, TrustedRegistryPolicy};

/// File endings read from directories.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Why input could not be read. Every variant names the file, and the line where known.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: invalid JSON at line {line}, column {column}: {message}")]
    Json { path: String, line: usize, column: usize, message: String },
    #[error("{path}: document {document}: {message}")]
    Document { path: String, document: usize, message: String },
}

/// One object read from a file, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file path as given (or `-` for stdin).
    pub source: String,
    /// 1-based index among the file's non-empty documents (items of a `List` share it).
    pub document: usize,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
}

/// Lists the manifest files under `path` (itself if it is a file), sorted for stable output.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |source| ManifestError::Io { path: path.display().to_string(), source };
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(path).map_err(io)?.collect::<Result<Vec<_>, _>>().map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        // Hidden entries are skipped: a mounted ConfigMap shows each file again under `..data`
        // and `..<timestamp>`, and `.git` holds no manifests.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Streams every object from the files or directories in `paths` (`-` reads stdin) to `f`,
/// one document at a time, so that large streams never sit in memory as parsed trees.
pub(crate) fn each_in_paths<E: From<ManifestError>>(
    paths: &[PathBuf],
    mut f: impl FnMut(Document) -> Result<(), E>,
) -> Result<(), E> {
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| ManifestError::Io { path: "-".into(), source })?;
            each_document("-", &text, &mut f)?;
            continue;
        }
        for file in files(path)? {
            let (name, text) = read_text(&file)?;
            each_document(&name, &text, &mut f)?;
        }
    }
    Ok(())
}

/// A file's display name and text.
fn read_text(file: &Path) -> Result<(String, String), ManifestError> {
    let name = file.display().to_string();
    match fs::read_to_string(file) {
        Ok(text) => Ok((name, text)),
        Err(source) => Err(ManifestError::Io { path: name, source }),
    }
}

/// Parses a stream of YAML documents (or one JSON document), expanding `List` objects.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut out = Vec::new();
    each_document(source, text, |d| {
        out.push(d);
        Ok::<_, ManifestError>(())
    })?;
    Ok(out)
}

/// Streams the objects of one file's text to `f`, document by document.
pub(crate) fn each_document<E: From<ManifestError>>(
    source: &str,
    text: &str,
    mut f: impl FnMut(Document) -> Result<(), E>,
) -> Result<(), E> {
    let mut handle = |document: usize, value: Value| -> Result<(), E> {
        match value {
            Value::Null => Ok(()),
            Value::Object(_) => expand(source, document, value, &mut f),
            other => Err(ManifestError::Document {
                path: source.to_owned(),
                document,
                message: format!("expected a Kubernetes object, found {}", type_name(&other)),
            }
            .into()),
        }
    };
    if source.ends_with(".json") {
        let value = serde_json::from_str(text).map_err(|e| ManifestError::Json {
            path: source.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        return handle(1, value);
    }
    let mut reader = std::io::Cursor::new(text.as_bytes());
    for (i, value) in serde_saphyr::read_with_options::<_, Value>(&mut reader, yaml_options(text.len())).enumerate() {
        let value = value.map_err(|e| ManifestError::Yaml { path: source.to_owned(), message: e.to_string() })?;
        handle(i + 1, value)?;
    }
    Ok(())
}

fn expand<E: From<ManifestError>>(
    source: &str,
    document: usize,
    value: Value,
    out: &mut impl FnMut(Document) -> Result<(), E>,
) -> Result<(), E> {
    let is_list =
        value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) && value.get("items").is_some();
    if !is_list {
        return out(Document { source: source.to_owned(), document, value });
    }
    let items = match value {
        Value::Object(mut map) => map.remove("items"),
        _ => None,
    };
    let Some(Value::Array(items)) = items else {
        return Err(ManifestError::Document {
            path: source.to_owned(),
            document,
            message: "List items must be an array".into(),
        }
        .into());
    };
    for item in items {
        match item {
            Value::Object(_) => expand(source, document, item, out)?,
            other => {
                return Err(ManifestError::Document {
                    path: source.to_owned(),
                    document,
                    message: format!("List item is {}, not an object", type_name(&other)),
                }
                .into());
            }
        }
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The parser's resource budget, scaled to the input: big manifest streams (tens of MB of Helm
/// output) must parse, while alias bombs stay bounded by the parser's alias/anchor ratio rule.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = budget.max_documents.max(len / 16);
    budget.max_nodes = budget.max_nodes.max(len / 2);
    budget.max_events = budget.max_events.max(len);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len);
    budget.max_reader_input_bytes = None;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Reads TrustedRegistryPolicy objects from files or directories. Anything else in them, an
/// unknown field or a malformed value is an error naming the file, document and line.
pub(crate) fn read_policies(paths: &[PathBuf]) -> Result<Vec<(String, TrustedRegistryPolicy)>, ManifestError> {
    let mut out = Vec::new();
    for path in paths {
        for file in files(path)? {
            let (name, text) = read_text(&file)?;
            out.extend(parse_policies(&name, &text)?.into_iter().map(|p| (name.clone(), p)));
        }
    }
    Ok(out)
}

/// Parses policies from one file's text.
pub fn parse_policies(source: &str, text: &str) -> Result<Vec<TrustedRegistryPolicy>, ManifestError> {
    let documents = parse(source, text)?;
    for d in &documents {
        let api_version = d.value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if d.kind() != "TrustedRegistryPolicy" || api_version != API_VERSION {
            return Err(ManifestError::Document {
                path: source.to_owned(),
                document: d.document,
                message: format!(
                    "expected apiVersion {API_VERSION} kind TrustedRegistryPolicy, found apiVersion {api_version:?} kind {:?}",
                    d.kind()
                ),
            });
        }
    }
    // Deserialize straight from the YAML text when we can, so errors carry line numbers.
    let plain_yaml = !source.ends_with(".json") && documents.iter().all(|d| d.value.get("items").is_none());
    if plain_yaml {
        let policies: Vec<Option<TrustedRegistryPolicy>> =
            serde_saphyr::from_multiple_with_options(text, yaml_options(text.len()))
                .map_err(|e| ManifestError::Yaml { path: source.to_owned(), message: e.to_string() })?;
        return Ok(policies.into_iter().flatten().collect());
    }
    documents
        .into_iter()
        .map(|d| {
            serde_json::from_value(d.value).map_err(|e| ManifestError::Document {
                path: source.to_owned(),
                document: d.document,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object of the files or directories in `paths`, collected.
    fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
        let mut out = Vec::new();
        each_in_paths(paths, |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn multi_document_yaml_and_lists_are_flattened() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {kind: Pod, metadata: {name: b}}\n- kind: DeploymentList\n  items: [{kind: Deployment, metadata: {name: c}}]\n";
        let docs = parse("x.yaml", text).unwrap();
        let names: Vec<&str> = docs.iter().map(|d| d.value["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(docs.iter().map(|d| d.document).collect::<Vec<_>>(), [1, 2, 2]);
    }

    #[test]
    fn directories_are_walked_sorted_skipping_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, text) in [
            ("b.yaml", "kind: Pod\nmetadata: {name: b}\n"),
            ("a/c.yml", "kind: Pod\nmetadata: {name: c}\n"),
            ("a.json", r#"{"kind": "Pod", "metadata": {"name": "a"}}"#),
            ("notes.txt", "not yaml: ["),
            ("..data/b.yaml", "kind: Pod\nmetadata: {name: copy}\n"),
            (".git/x.yaml", "kind: Pod\nmetadata: {name: git}\n"),
        ] {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        let docs = read_paths(&[root.to_path_buf()]).unwrap();
        let names: Vec<&str> = docs.iter().map(|d| d.value["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }

    #[test]
    fn yaml_errors_name_file_and_line() {
        let err = parse("bad.yaml", "kind: Pod\nmetadata:\n  name: [unclosed\n").unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml: invalid YAML"), "{err}");
        assert!(err.contains("line"), "{err}");
        let err = parse("bad.json", "{\n\"kind\": }").unwrap_err().to_string();
        assert!(err.contains("bad.json: invalid JSON at line 2"), "{err}");
        let err = parse("s.yaml", "just a string\n").unwrap_err().to_string();
        assert!(err.contains("expected a Kubernetes object, found a string"), "{err}");
    }

    #[test]
    fn policy_errors_name_the_line_of_an_unknown_field() {
        let text = "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata:\n  name: p\nspec:\n  trustedRegistries: [a.io]\n  mdoe: Warn\n";
        let err = parse_policies("p.yaml", text).unwrap_err().to_string();
        assert!(err.contains("unknown field `mdoe`"), "{err}");
        assert!(err.contains("line 7"), "{err}");
        let not_policy = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n";
        let err = parse_policies("p.yaml", not_policy).unwrap_err().to_string();
        assert!(err.contains("expected apiVersion trustgate.dev/v1alpha1 kind TrustedRegistryPolicy"), "{err}");
    }

    #[test]
    fn large_streams_parse_in_linear_time() {
        let doc = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: registry.my.com/app:v1\n";
        let text = format!("{doc}---\n").repeat(5_000);
        let docs = parse("big.yaml", &text).unwrap();
        assert_eq!(docs.len(), 5_000);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
            text.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse("bomb.yaml", &text).is_err());
    }
}
