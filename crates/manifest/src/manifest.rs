//! Reading Kubernetes manifests and policies from files: multi-document YAML, JSON, `List`
//! objects, directories walked recursively. Shared by `check` and the server's file source.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use trustgate_core::api::{API_VERSION, TrustedRegistryPolicy};

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
    #[error("-: stdin is longer than a window and cannot be kept in a temporary file: {source}")]
    Spill { source: std::io::Error },
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

/// Where one document of a stream is: its own text and first line, when the stream could be cut
/// into documents (see [`crate::stream`]).
#[derive(Debug, Clone, Copy)]
pub struct DocumentText<'a> {
    pub text: &'a str,
    pub first_line: usize,
}

/// Turns the documents of a stream into compact items, on any thread.
pub trait ObjectReader: Sync {
    /// What one object becomes.
    type Item: Send;
    /// Why an object cannot be read; the caller adds the file and document.
    type Error: Send;
    /// Reads one YAML document straight from its text, without building a tree. `None` means
    /// "read it the general way": the document is then parsed to a value and given to
    /// [`ObjectReader::read_value`], so this is only a shortcut and decides nothing itself.
    fn read_yaml(&self, _document: DocumentText<'_>) -> Option<Self::Item> {
        None
    }
    /// Reads one object (a `List` is expanded first).
    fn read_value(&self, object: &Value, document: Option<DocumentText<'_>>) -> Result<Self::Item, Self::Error>;
}

/// Which object a consumer is given: the file as given and the 1-based document number.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub source: &'a str,
    pub document: usize,
}

/// Streams below this size are read on the calling thread: threads would cost more than they
/// save.
pub(crate) const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// What one piece of a stream gave: its items by document number within the piece, how many
/// documents it held, and the error that ended it.
pub(crate) struct PieceOutput<T, X> {
    pub(crate) items: Vec<(usize, Result<T, X>)>,
    documents: usize,
    error: Option<PieceError>,
}

enum PieceError {
    Yaml(String),
    Document { document: usize, message: String },
}

/// Reads one file's text on `threads` threads, `batch_bytes` of YAML at a time (the fuzz
/// targets compare thread counts and batch sizes with the sequential read).
pub fn read_stream<R: ObjectReader, E: From<ManifestError>>(
    source: &str,
    text: &str,
    reader: &R,
    threads: usize,
    batch_bytes: usize,
    consume: &mut impl FnMut(Position<'_>, Result<R::Item, R::Error>) -> Result<(), E>,
) -> Result<(), E> {
    let pieces = if source.ends_with(".json") { None } else { crate::stream::pieces(text) };
    let Some(pieces) = pieces else {
        // JSON, or a YAML stream with directives: one document (JSON) or read whole, in order.
        let whole = source.ends_with(".json").then_some(DocumentText { text, first_line: 1 });
        return each_document(source, text, |d| {
            let item = reader.read_value(&d.value, whole);
            consume(Position { source, document: d.document }, item)
        });
    };
    read_pieces(source, &pieces, &mut 0, reader, threads, batch_bytes, consume)
}

/// Reads consecutive pieces of one stream, `batch_bytes` of them at a time on `threads`
/// threads; `base` counts the documents of the stream before them, and after them on return.
pub(crate) fn read_pieces<R: ObjectReader, E: From<ManifestError>>(
    source: &str,
    pieces: &[crate::stream::Piece<'_>],
    base: &mut usize,
    reader: &R,
    threads: usize,
    batch_bytes: usize,
    consume: &mut impl FnMut(Position<'_>, Result<R::Item, R::Error>) -> Result<(), E>,
) -> Result<(), E> {
    let mut rest = pieces;
    while !rest.is_empty() {
        let mut bytes = 0;
        // At least one piece per batch, then pieces until the batch holds `batch_bytes`.
        let take = rest
            .iter()
            .take_while(|p| {
                let more = bytes < batch_bytes;
                bytes += p.text.len();
                more
            })
            .count();
        let (batch, tail) = rest.split_at(take);
        rest = tail;
        for output in read_batch(batch, reader, threads, true) {
            for (document, item) in output.items {
                consume(Position { source, document: *base + document }, item)?;
            }
            match output.error {
                None => {}
                Some(PieceError::Yaml(message)) => {
                    return Err(ManifestError::Yaml { path: source.to_owned(), message }.into());
                }
                Some(PieceError::Document { document, message }) => {
                    return Err(ManifestError::Document {
                        path: source.to_owned(),
                        document: *base + document,
                        message,
                    }
                    .into());
                }
            }
            *base += output.documents;
        }
    }
    Ok(())
}

/// Reads a batch of pieces on up to `threads` threads, each taking a run of consecutive pieces
/// of about the same size; the outputs come back in input order. With `stop`, a run ends at
/// its first error (the consumer stops there: what follows would be wasted work).
pub(crate) fn read_batch<R: ObjectReader>(
    batch: &[crate::stream::Piece<'_>],
    reader: &R,
    threads: usize,
    stop: bool,
) -> Vec<PieceOutput<R::Item, R::Error>> {
    let run = |pieces: &[crate::stream::Piece<'_>]| {
        let mut out = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let output = read_piece(*piece, reader);
            let failed = output.error.is_some();
            out.push(output);
            if failed && stop {
                break;
            }
        }
        out
    };
    if threads <= 1 || batch.len() < 2 {
        return run(batch);
    }
    let total: usize = batch.iter().map(|p| p.text.len()).sum();
    let share = total.div_ceil(threads);
    let mut runs = Vec::with_capacity(threads);
    let (mut start, mut bytes) = (0, 0);
    for (i, piece) in batch.iter().enumerate() {
        bytes += piece.text.len();
        if bytes >= share && runs.len() + 1 < threads {
            runs.push(&batch[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < batch.len() {
        runs.push(&batch[start..]);
    }
    std::thread::scope(|scope| {
        let (first, others) = runs.split_first().expect("a batch of two or more pieces has a run");
        let handles: Vec<_> = others.iter().map(|r| scope.spawn(|| run(r))).collect();
        let mut out = run(first);
        for handle in handles {
            // A panic in a reader is a bug; carry it to the caller as it would be carried
            // without threads.
            out.extend(handle.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// Reads one piece (at most one document): straight from the text when the reader can, else
/// through a value tree, exactly as [`each_document`] reads a stream.
fn read_piece<R: ObjectReader>(piece: crate::stream::Piece<'_>, reader: &R) -> PieceOutput<R::Item, R::Error> {
    let document = DocumentText { text: piece.text, first_line: piece.first_line };
    if let Some(item) = reader.read_yaml(document) {
        return PieceOutput { items: vec![(1, Ok(item))], documents: 1, error: None };
    }
    let mut options = yaml_options(piece.text.len());
    options.with_snippet = false;
    let values: Vec<Value> = match serde_saphyr::from_multiple_with_options(piece.text, options) {
        Ok(values) => values,
        Err(_) => return PieceOutput { items: Vec::new(), documents: 0, error: Some(yaml_error_at(piece)) },
    };
    let mut out = PieceOutput { items: Vec::new(), documents: values.len(), error: None };
    for (i, value) in values.into_iter().enumerate() {
        let result = match value {
            Value::Null => Ok(()),
            Value::Object(_) => expand("", i + 1, value, &mut |d: Document| -> Result<(), ManifestError> {
                out.items.push((i + 1, reader.read_value(&d.value, Some(document))));
                Ok(())
            }),
            other => Err(ManifestError::Document {
                path: String::new(),
                document: i + 1,
                message: format!("expected a Kubernetes object, found {}", type_name(&other)),
            }),
        };
        if let Err(ManifestError::Document { document, message, .. }) = result {
            out.error = Some(PieceError::Document { document, message });
            break;
        }
    }
    out
}

/// The error a sequential read of the whole stream reports for a piece that does not parse:
/// the piece is read again the sequential way, after as many empty lines as precede it, so
/// the message and its line and column are exactly those of the whole stream.
fn yaml_error_at(piece: crate::stream::Piece<'_>) -> PieceError {
    let mut text = "\n".repeat(piece.first_line - 1);
    text.push_str(piece.text);
    let mut cursor = std::io::Cursor::new(text.as_bytes());
    let message = serde_saphyr::read_with_options::<_, Value>(&mut cursor, yaml_options(text.len()))
        .find_map(Result::err)
        .map_or_else(|| "the document does not parse".to_owned(), |e| e.to_string());
    PieceError::Yaml(message)
}

/// Reads TrustedRegistryPolicy objects from files or directories. Anything else in them, an
/// unknown field or a malformed value is an error naming the file, document and line.
pub fn read_policies(paths: &[PathBuf]) -> Result<Vec<(String, TrustedRegistryPolicy)>, ManifestError> {
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
    use std::io::Read;

    /// Streams every object from the files or directories in `paths` (`-` reads stdin) to `f`,
    /// one document at a time, so that large streams never sit in memory as parsed trees.
    fn each_in_paths<E: From<ManifestError>>(
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

    /// Keeps every object with its document's first line, to compare the parallel reader with
    /// the sequential one.
    struct Values;

    impl ObjectReader for Values {
        type Item = Value;
        type Error = String;
        fn read_value(&self, object: &Value, document: Option<DocumentText<'_>>) -> Result<Value, String> {
            if object.get("fail").is_some() {
                return Err(format!("fail at line {:?}", document.map(|d| d.first_line)));
            }
            Ok(object.clone())
        }
    }

    /// Every (document, object) read sequentially, and the error that stopped the read.
    fn sequential(text: &str) -> (Vec<(usize, Value)>, Option<String>) {
        let mut out = Vec::new();
        let result = each_document("s.yaml", text, |d| {
            if d.value.get("fail").is_some() {
                return Err(ErrorOrMessage(format!("object error in document {}", d.document)));
            }
            out.push((d.document, d.value));
            Ok(())
        });
        (out, result.err().map(|e| e.0))
    }

    fn parallel(text: &str, threads: usize, batch: usize) -> (Vec<(usize, Value)>, Option<String>) {
        let mut out = Vec::new();
        let result = read_stream("s.yaml", text, &Values, threads, batch, &mut |at: Position<'_>, item| match item {
            Ok(v) => {
                out.push((at.document, v));
                Ok(())
            }
            Err(_) => Err(ErrorOrMessage(format!("object error in document {}", at.document))),
        });
        (out, result.err().map(|e| e.0))
    }

    #[derive(Debug)]
    struct ErrorOrMessage(String);

    impl From<ManifestError> for ErrorOrMessage {
        fn from(e: ManifestError) -> Self {
            ErrorOrMessage(e.to_string())
        }
    }

    #[test]
    fn the_parallel_reader_reads_exactly_what_the_sequential_one_reads() {
        let pod = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: a\n    image: x/{name}:v1\n"
            )
        };
        let many: String = (0..40).map(|i| format!("---\n{}", pod(&format!("p{i}")))).collect();
        let cases = [
            many.clone(),
            format!("{many}---\nkind: Pod\nmetadata:\n  name: [unclosed\n---\n{}", pod("after")),
            format!("{many}---\nfail: true\n---\n{}", pod("after")),
            format!("{many}---\njust a string\n"),
            format!(
                "# leading comment\n{}---\n---\n# only a comment\n---\n~\n---\n{}...\n{}",
                pod("a"),
                pod("b"),
                pod("c")
            ),
            format!("{}---\nkind: List\nitems:\n- {{kind: Pod, metadata: {{name: i1}}}}\n- 5\n", pod("a")),
            format!(
                "{}---\nkind: List\nitems:\n- {{kind: Pod, metadata: {{name: i1}}}}\n- {{kind: Pod, metadata: {{name: i2}}}}\n",
                pod("a")
            ),
            format!("a: |\n  text\n---\n{}", pod("b")),
            "a: |\n  text\n---  \n  more\n".to_owned(),
            format!("{}\r\n---\r\nkind: Pod\r\nmetadata: {{name: crlf}}\r\n", pod("a")),
            format!("{}---\nk: \"open\n---\nx\"\n", pod("a")),
            format!("{}...\n%YAML 1.2\n---\n{}", pod("a"), pod("b")),
            format!("{many}---\nkind: Pod\nmetadata: {{name: dup, name: again}}\n"),
            String::new(),
        ];
        for (i, text) in cases.iter().enumerate() {
            let expected = sequential(text);
            for (threads, batch) in [(1, usize::MAX), (2, 1), (3, 200), (4, usize::MAX)] {
                assert_eq!(parallel(text, threads, batch), expected, "case {i}, {threads} threads, batch {batch}");
            }
        }
        // The error cases do fail, with the line of the whole stream.
        let (_, error) = parallel(&cases[1], 2, 1);
        let line = cases[1].lines().position(|l| l.contains("[unclosed")).unwrap() + 1;
        assert!(error.as_deref().unwrap().contains(&format!("line {line}")), "{error:?} (line {line})");
        assert_eq!(parallel(&cases[2], 2, 1).1.as_deref(), Some("object error in document 41"));
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
