//! The manifests of one run, read in bounded memory, twice: a first pass reads the few
//! documents that every object may depend on (a Namespace supplies labels to the objects
//! before it too), the second reads every object in input order. Both read one window of text
//! at a time (see [`crate::window`]).
//!
//! Stdin cannot be read twice: up to one window of it is kept in memory, a longer stream is
//! copied to an anonymous temporary file (in `$TMPDIR`, deleted when the run ends) and read
//! from there. JSON files (one document) and YAML streams with a line starting with `%`
//! (directives, which the cutter does not cut) are read whole, as before.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::manifest::{
    ManifestError, ObjectReader, PARALLEL_MIN_BYTES, Position, files, read_batch, read_pieces, read_stream,
};
use crate::window::{Window, Windows};

/// The YAML text read at a time, and handed to the threads as one batch: memory holds a
/// window, the compact items of its documents and the tree each thread is building, never the
/// trees of a whole window.
pub const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// Opens an input for one pass.
type Open = Box<dyn Fn() -> io::Result<Box<dyn Read>>>;

/// One manifest file, or stdin.
pub struct Input {
    /// The name errors and reports give: the path as given, or `-` for stdin.
    name: String,
    /// Its size, which decides whether threads are worth starting.
    len: u64,
    /// Read whole rather than a window at a time: JSON, or YAML with directives.
    whole: bool,
    open: Open,
}

impl Input {
    /// An input named `name`, `len` bytes long, that `open` reads from its start (once per pass).
    pub fn new(name: impl Into<String>, len: u64, open: impl Fn() -> io::Result<Box<dyn Read>> + 'static) -> Self {
        let name = name.into();
        Input { whole: name.ends_with(".json"), name, len, open: Box::new(open) }
    }

    fn error(&self, source: io::Error) -> ManifestError {
        ManifestError::Io { path: self.name.clone(), source }
    }

    fn reader(&self) -> Result<Box<dyn Read>, ManifestError> {
        (self.open)().map_err(|e| self.error(e))
    }

    fn text(&self) -> Result<String, ManifestError> {
        let mut text = String::new();
        self.reader()?.read_to_string(&mut text).map_err(|e| self.error(e))?;
        Ok(text)
    }

    fn threads(&self) -> usize {
        if self.len < PARALLEL_MIN_BYTES as u64 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }
    }
}

/// Every input of a run, in order.
pub struct Inputs {
    inputs: Vec<Input>,
    window: usize,
    /// Whether the first pass ran (it finds the inputs to read whole).
    scanned: bool,
}

impl Inputs {
    /// Inputs read `window` bytes at a time.
    pub fn new(inputs: Vec<Input>, window: usize) -> Self {
        Inputs { inputs, window, scanned: false }
    }

    /// The files of `paths` (directories walked as [`files`] does), `-` for stdin.
    pub fn open(paths: &[PathBuf], window: usize) -> Result<Self, ManifestError> {
        let mut inputs = Vec::new();
        for path in paths {
            if path.as_os_str() == "-" {
                inputs.push(spill(io::stdin().lock(), window)?);
                continue;
            }
            for file in files(path)? {
                let name = file.display().to_string();
                let len = fs::metadata(&file).map_err(|source| ManifestError::Io { path: name.clone(), source })?.len();
                inputs.push(Input::new(name, len, move || Ok(Box::new(fs::File::open(&file)?) as Box<dyn Read>)));
            }
        }
        Ok(Inputs { inputs, window, scanned: false })
    }

    /// The first pass: reads with `reader` the documents whose text `select` picks and hands
    /// their objects to `found`, in input order. It reads every input to its end, so that a
    /// file that cannot be read (or is not UTF-8) is an error before the second pass starts;
    /// a document that does not parse is left to the second pass, which meets it in order.
    pub fn prescan<R: ObjectReader>(
        &mut self,
        reader: &R,
        select: impl Fn(&str) -> bool,
        mut found: impl FnMut(R::Item),
    ) -> Result<(), ManifestError> {
        self.scanned = true;
        for input in &mut self.inputs {
            if !input.whole {
                let threads = input.threads();
                let mut windows = Windows::new(input.reader()?, self.window);
                while let Some(window) = windows.next_window().map_err(|e| input.error(e))? {
                    let Window::Pieces(pieces) = window else {
                        input.whole = true;
                        break;
                    };
                    let selected: Vec<_> = pieces.into_iter().filter(|p| select(p.text)).collect();
                    for output in read_batch(&selected, reader, threads, false) {
                        output.items.into_iter().filter_map(|(_, item)| item.ok()).for_each(&mut found);
                    }
                }
            }
            if input.whole {
                let text = input.text()?;
                if select(&text) {
                    // An error here is met again, in order, by the second pass.
                    let _ =
                        read_stream::<_, ManifestError>(&input.name, &text, reader, 1, usize::MAX, &mut |_, item| {
                            if let Ok(item) = item {
                                found(item);
                            }
                            Ok(())
                        });
                }
            }
        }
        Ok(())
    }

    /// The second pass: every object of every input, read with `reader` on every core for
    /// large inputs, handed to `consume` in input order with exactly the document numbers and
    /// errors of a sequential read of each whole file.
    pub fn read_objects<R: ObjectReader, E: From<ManifestError>>(
        &mut self,
        reader: &R,
        mut consume: impl FnMut(Position<'_>, Result<R::Item, R::Error>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.scanned {
            self.prescan(reader, |_| false, |_| {})?;
        }
        for input in &self.inputs {
            let threads = input.threads();
            if input.whole {
                read_stream(&input.name, &input.text()?, reader, threads, self.window, &mut consume)?;
                continue;
            }
            let mut windows = Windows::new(input.reader()?, self.window);
            let mut base = 0;
            while let Some(window) = windows.next_window().map_err(|e| input.error(e))? {
                let Window::Pieces(pieces) = window else {
                    let changed = io::Error::other("changed while it was read (a line starting with % appeared)");
                    return Err(input.error(changed).into());
                };
                read_pieces(&input.name, &pieces, &mut base, reader, threads, self.window, &mut consume)?;
            }
        }
        Ok(())
    }
}

/// Stdin, kept in memory up to `window` bytes, else copied to an anonymous temporary file.
fn spill(mut stdin: impl Read, window: usize) -> Result<Input, ManifestError> {
    let read_error = |source| ManifestError::Io { path: "-".into(), source };
    let mut head = Vec::new();
    (&mut stdin).take(window as u64 + 1).read_to_end(&mut head).map_err(read_error)?;
    if head.len() <= window {
        let text: Arc<[u8]> = head.into();
        return Ok(Input::new("-", text.len() as u64, move || Ok(Box::new(io::Cursor::new(text.clone())))));
    }
    let spill_error = |source| ManifestError::Spill { source };
    let mut file = tempfile::tempfile().map_err(spill_error)?;
    let mut len = 0;
    loop {
        file.write_all(&head).map_err(spill_error)?;
        len += head.len() as u64;
        head.clear();
        (&mut stdin).take(window as u64).read_to_end(&mut head).map_err(read_error)?;
        if head.is_empty() {
            break;
        }
    }
    Ok(Input::new("-", len, move || {
        let mut file = file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Box::new(file))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::Value;

    use crate::manifest::{DocumentText, parse};

    /// Keeps every object, to compare reads.
    struct Values;

    impl ObjectReader for Values {
        type Item = Value;
        type Error = String;
        fn read_value(&self, object: &Value, _: Option<DocumentText<'_>>) -> Result<Value, String> {
            Ok(object.clone())
        }
    }

    /// Reads `text`, counting in `read` the bytes read since the input was last opened.
    struct Counted {
        inner: io::Cursor<Arc<[u8]>>,
        read: Arc<AtomicUsize>,
    }

    impl Read for Counted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.fetch_add(n, Ordering::SeqCst);
            Ok(n)
        }
    }

    fn counted(name: &str, text: &str) -> (Input, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let bytes: Arc<[u8]> = text.as_bytes().into();
        let count = read.clone();
        let input = Input::new(name, bytes.len() as u64, move || {
            count.store(0, Ordering::SeqCst);
            Ok(Box::new(Counted { inner: io::Cursor::new(bytes.clone()), read: count.clone() }))
        });
        (input, read)
    }

    /// Every (document, object) of `text` read through [`Inputs`] `window` bytes at a time, and
    /// the error that stopped the read.
    fn windowed(
        name: &str,
        text: &str,
        window: usize,
        threads_len: Option<u64>,
    ) -> (Vec<(usize, Value)>, Option<String>) {
        let (mut input, _) = counted(name, text);
        if let Some(len) = threads_len {
            input.len = len;
        }
        let mut inputs = Inputs::new(vec![input], window);
        let mut out = Vec::new();
        let result = inputs.read_objects(&Values, |at: Position<'_>, item: Result<Value, String>| {
            out.push((at.document, item.expect("Values reads every object")));
            Ok::<_, ManifestError>(())
        });
        (out, result.err().map(|e| e.to_string()))
    }

    /// The same, read whole and sequentially as `check` read every file before windows.
    fn whole(name: &str, text: &str) -> (Vec<(usize, Value)>, Option<String>) {
        match parse(name, text) {
            Ok(docs) => (docs.into_iter().map(|d| (d.document, d.value)).collect(), None),
            Err(e) => {
                // The objects before the error are read all the same; the error ends the read.
                let mut out = Vec::new();
                let _ = crate::manifest::each_document(name, text, |d| {
                    out.push((d.document, d.value));
                    Ok::<_, ManifestError>(())
                });
                (out, Some(e.to_string()))
            }
        }
    }

    fn pod(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: a\n    image: x/{name}:v1\n"
        )
    }

    #[test]
    fn reading_in_windows_reads_what_reading_whole_files_read() {
        let many: String = (0..60).map(|i| format!("---\n{}", pod(&format!("p{i}")))).collect();
        let big = format!(
            "---\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  k: |\n{}",
            "    line of text\n".repeat(200)
        );
        let cases = [
            ("many.yaml", many.clone()),
            ("larger-than-a-window.yaml", format!("{many}{big}{many}")),
            (
                "crlf.yaml",
                format!("{}---\nkind: Pod\nmetadata: {{name: crlf}}\n---\n{}", pod("a"), pod("b"))
                    .replace('\n', "\r\n"),
            ),
            ("no-newline.yaml", format!("{many}---\nkind: Pod\nmetadata: {{name: last}}")),
            (
                "block-scalar.yaml",
                format!(
                    "{many}---\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  k: |\n    ---\n    ...\n    --- x\n---\n{}",
                    pod("after")
                ),
            ),
            ("root-scalar.yaml", format!("{many}--- |\n  text\n---\n{}", pod("after"))),
            ("error.yaml", format!("{many}---\nkind: Pod\nmetadata:\n  name: [unclosed\n---\n{}", pod("after"))),
            ("string.yaml", format!("{many}---\njust a string\n")),
            (
                "list.yaml",
                format!(
                    "{many}---\nkind: List\nitems:\n- {{kind: Namespace, metadata: {{name: n}}}}\n- {}",
                    "{kind: Pod, metadata: {name: i}}\n"
                ),
            ),
            ("directives.yaml", format!("{many}...\n%YAML 1.2\n---\n{}", pod("b"))),
            ("empty-documents.yaml", format!("---\n---\n# only a comment\n---\n~\n{many}...\n")),
            ("objects.json", r#"{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "j"}}]}"#.to_owned()),
            ("empty.yaml", String::new()),
        ];
        for (name, text) in &cases {
            let expected = whole(name, text);
            assert!(!expected.0.is_empty() || text.is_empty() || name.starts_with("error"), "{name}");
            for window in [1, 64, 333, 4096, usize::MAX / 4] {
                for threads_len in [None, Some(u64::MAX)] {
                    assert_eq!(windowed(name, text, window, threads_len), expected, "{name}, window {window}");
                }
            }
        }
        // The error names the line of the whole file.
        let (_, error) = windowed("error.yaml", &cases[6].1, 64, None);
        let line = cases[6].1.lines().position(|l| l.contains("[unclosed")).unwrap() + 1;
        assert!(error.as_deref().unwrap().contains(&format!("line {line}")), "{error:?} (line {line})");
    }

    #[test]
    fn an_input_of_many_windows_is_read_a_window_at_a_time() {
        let window = 4096;
        let mut text = String::new();
        let mut starts = Vec::new();
        while text.len() < 64 * window {
            starts.push(text.len());
            text.push_str(&format!("---\n{}", pod(&format!("p{}", starts.len()))));
        }
        let (input, read) = counted("big.yaml", &text);
        let mut inputs = Inputs::new(vec![input], window);
        let mut objects = 0;
        let mut ahead_most = 0;
        inputs
            .read_objects(&Values, |at: Position<'_>, item: Result<Value, String>| {
                assert_eq!(item.unwrap()["metadata"]["name"], format!("p{}", at.document));
                // What was read and not yet handed out: the rest of this object's window, at
                // most, and the start of the next document.
                let ahead = read.load(Ordering::SeqCst) - starts[at.document - 1];
                ahead_most = ahead_most.max(ahead);
                assert!(ahead <= window + 200, "document {}: {ahead} bytes read ahead", at.document);
                objects += 1;
                Ok::<_, ManifestError>(())
            })
            .unwrap();
        assert_eq!(objects, starts.len());
        assert!(ahead_most > window / 2, "the windows are used: {ahead_most}");
    }

    #[test]
    fn a_document_larger_than_the_window_is_read_whole() {
        let window = 256;
        let big = format!("kind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  k: |\n{}", "    text\n".repeat(1000));
        let text = format!("{}---\n{big}---\n{}", pod("a"), pod("b"));
        let (out, error) = windowed("big.yaml", &text, window, None);
        assert_eq!(error, None);
        let names: Vec<&str> = out.iter().map(|(_, v)| v["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "big", "b"]);
    }

    #[test]
    fn the_first_pass_reads_only_what_it_selects_and_finds_unreadable_text() {
        let text = format!("{}---\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{}", pod("a"), pod("b"));
        let (input, _) = counted("in.yaml", &text);
        let mut inputs = Inputs::new(vec![input], 64);
        let mut found = Vec::new();
        inputs.prescan(&Values, |t| t.contains("Namespace"), |v| found.push(v["metadata"]["name"].clone())).unwrap();
        assert_eq!(found, ["shop"]);

        let bytes: Arc<[u8]> = [pod("a").as_bytes(), b"---\nk: \xff\n"].concat().into();
        let input = Input::new("bad.yaml", bytes.len() as u64, move || Ok(Box::new(io::Cursor::new(bytes.clone()))));
        let err = Inputs::new(vec![input], 64).prescan(&Values, |_| false, |_| {}).unwrap_err();
        assert_eq!(err.to_string(), "bad.yaml: stream did not contain valid UTF-8");
    }

    #[test]
    fn stdin_longer_than_a_window_is_spilled_and_read_back() {
        let text = format!("---\n{}", pod("p")).repeat(100);
        for window in [16, text.len(), text.len() + 1, 10 * text.len()] {
            let input = spill(text.as_bytes(), window).unwrap();
            for _pass in 0..2 {
                let mut back = String::new();
                (input.open)().unwrap().read_to_string(&mut back).unwrap();
                assert_eq!(back, text, "window {window}");
            }
            assert_eq!(input.len, text.len() as u64);
        }
    }
}
