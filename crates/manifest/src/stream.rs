//! A multi-document YAML stream cut into pieces at its marker lines, so that the documents of a
//! large stream can be parsed on several threads and still be numbered and located exactly.
//!
//! Why cutting there is safe: YAML 1.2 forbids, inside any document's content, a line that
//! starts at column 0 with `---` or `...` followed by a space, a tab or the end of the line
//! (production `l-bare-document`, "excluding c-forbidden content"). That holds for block
//! scalars, flow collections and multi-line quoted scalars alike: such a line always ends the
//! document before it, so a piece never splits a node. A `---` line starts the next piece; a
//! `...` line ends its piece. Directives (`%YAML`, `%TAG`) apply to the document after them and
//! a `%` line could also be content of a root block scalar, so a stream with any line starting
//! with `%` is not cut at all.

/// One piece of a stream: at most one document, with the line it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The piece's text, marker lines included, so that the parser sees exactly what it would
    /// see in the whole stream.
    pub text: &'a str,
    /// 1-based line number of the piece's first line in the stream.
    pub first_line: usize,
}

/// Cuts `text` at its document markers; `None` when the stream has directives and must be read
/// whole. Every piece holds at most one document; the pieces cover `text` exactly, in order.
pub fn pieces(text: &str) -> Option<Vec<Piece<'_>>> {
    let mut out = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let (mut pos, mut line) = (0, 1);
    while pos < text.len() {
        let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        let bytes = &text.as_bytes()[pos..end];
        if bytes.first() == Some(&b'%') {
            return None;
        }
        if marker(bytes, b"---") && pos > start {
            out.push(Piece { text: &text[start..pos], first_line: start_line });
            (start, start_line) = (pos, line);
        }
        (pos, line) = (end, line + 1);
        if marker(bytes, b"...") {
            out.push(Piece { text: &text[start..pos], first_line: start_line });
            (start, start_line) = (pos, line);
        }
    }
    if start < text.len() || out.is_empty() {
        out.push(Piece { text: &text[start..], first_line: start_line });
    }
    Some(out)
}

/// Whether a line (with its line break) is the marker `mark` followed by a space, a tab or the
/// end of the line.
fn marker(line: &[u8], mark: &[u8; 3]) -> bool {
    line.starts_with(mark) && matches!(line.get(3), None | Some(b' ' | b'\t' | b'\n' | b'\r'))
}

/// The lines of one document that set a container `image`, as `(line, value)` pairs in order:
/// block (`image: x`), flow (`{name: a, image: x}`) and JSON (`"image": "x"`) forms. This is a
/// text scan, not a parse: the YAML reader gives no positions once values are collected, and
/// the scan is only used to point a report at a line. Values are compared unquoted, so a line
/// is found for every image written on one line; an image spelled with escapes or folded
/// over lines is not located.
pub fn image_lines(text: &str, first_line: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("image") {
            let before = rest[..at].chars().next_back();
            let after = &rest[at + "image".len()..];
            rest = after;
            let (quote, after) = match (before, after.chars().next()) {
                (Some(q @ ('"' | '\'')), Some(c)) if c == q => (true, &after[1..]),
                _ => (false, after),
            };
            let key_start = match before {
                None => true,
                Some(c) => c.is_whitespace() || matches!(c, '{' | ',' | '-') || quote,
            };
            let Some(value) = after.strip_prefix(':').filter(|_| key_start) else { continue };
            if !value.is_empty() && !value.starts_with([' ', '\t']) {
                continue;
            }
            if let Some(v) = scalar(value.trim_start()) {
                out.push((first_line + i, v));
            }
        }
    }
    out
}

/// The scalar at the start of `s`: quoted, or plain up to a flow indicator or comment.
fn scalar(s: &str) -> Option<&str> {
    if let Some(q) = s.chars().next().filter(|c| matches!(c, '"' | '\'')) {
        let body = &s[1..];
        return body.find(q).map(|end| &body[..end]);
    }
    let end = s.find([',', '}', ']']).unwrap_or(s.len());
    let end = s[..end].find(" #").unwrap_or(end);
    let v = s[..end].trim_end();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str) -> Vec<(usize, &str)> {
        let pieces = pieces(text).expect("no directives");
        assert_eq!(pieces.iter().map(|p| p.text).collect::<String>(), text, "pieces cover the text");
        pieces.into_iter().map(|p| (p.first_line, p.text)).collect()
    }

    #[test]
    fn cuts_before_document_start_and_after_document_end_markers() {
        assert_eq!(cut("a: 1\n---\nb: 2\n"), [(1, "a: 1\n"), (2, "---\nb: 2\n")]);
        assert_eq!(cut("---\na: 1\n--- \nb: 2"), [(1, "---\na: 1\n"), (3, "--- \nb: 2")]);
        assert_eq!(cut("a: 1\n...\nb: 2\n"), [(1, "a: 1\n...\n"), (3, "b: 2\n")]);
        assert_eq!(cut("--- |\n  text\n---\t# c\n"), [(1, "--- |\n  text\n"), (3, "---\t# c\n")]);
        assert_eq!(cut("a: 1\r\n---\r\nb: 2\r\n"), [(1, "a: 1\r\n"), (2, "---\r\nb: 2\r\n")]);
        assert_eq!(cut(""), [(1, "")]);
        assert_eq!(cut("---\n---\n"), [(1, "---\n"), (2, "---\n")]);
    }

    #[test]
    fn lines_that_only_look_like_markers_are_content() {
        for text in ["a: ---\n", " ---\n", "----\n", "---x\n", "a: |\n  ---\n", "...x: 1\n", "k: '\n  --- '\n"] {
            assert_eq!(cut(text), [(1, text)], "{text:?}");
        }
    }

    #[test]
    fn streams_with_directives_are_not_cut() {
        assert_eq!(pieces("a: 1\n...\n%YAML 1.2\n---\nb: 2\n"), None);
    }

    #[test]
    fn image_lines_in_block_flow_and_json_forms() {
        let text = "spec:\n  containers:\n  - name: a\n    image: registry.my.com/a:v1 # pinned\n  - {name: b, image: 'nginx:1.25'}\n  - \"image\": \"x/y\"\n    imagePullPolicy: Always\n  - name: c\n    image:\n    images: [z]\n";
        assert_eq!(image_lines(text, 10), [(13, "registry.my.com/a:v1"), (14, "nginx:1.25"), (15, "x/y")]);
        assert_eq!(image_lines("myimage: x\nimage:x\n", 1), []);
    }
}
