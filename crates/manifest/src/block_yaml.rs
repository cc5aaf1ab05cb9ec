//! A fast reader for the block-style YAML that kubectl, Helm and people write, for the large
//! streams of `trustgate check`: it reads one document straight into a [`Workload`], in one pass
//! over its lines, without a YAML event stream or tree (BENCHMARKS.md, "Offline check").
//!
//! It reads a strict subset of YAML and gives up (`None`) on anything outside it; the caller
//! then reads the document with the general YAML parser. What it accepts it must read exactly as
//! the general reader does, and every document it accepts the general reader must accept too
//! (the `manifest` fuzz target and the tests below check both). The subset:
//!
//! - printable ASCII, `\n` line ends, indentation by spaces, one document (`---` first, `...`
//!   last, no directives);
//! - block mappings whose keys are plain words (`[A-Za-z0-9_][A-Za-z0-9_./-]*`, not a null,
//!   boolean or number), each key once; block sequences (`- `, also not indented under their key);
//! - values on one line: plain scalars, single- and double-quoted scalars, flow sequences of
//!   scalars and empty flow mappings; block scalars (`|`, `>`, with chomping) over several lines;
//! - comments and blank lines.
//!
//! Anchors, aliases, tags, complex keys, multi-line plain, quoted or flow scalars, and any value
//! a schema could type as other than a string where a string is read (`image: 1.25`) are outside
//! it. Why by hand: the general parser (serde-saphyr) builds an event stream for every node and
//! reads about 6 MB/s per core; no YAML crate offers a "read these few paths, validate the rest"
//! mode, and a YAML subset this narrow is small enough to read exactly.

use std::borrow::Cow;

use trustgate_core::workload::{
    RawContainer, RawJobSpec, RawJobTemplate, RawMeta, RawObject, RawSpec, RawTemplate, Text, Workload,
};

/// Nesting deeper than this is left to the general parser (and its budget).
const MAX_DEPTH: usize = 64;
/// YAML limits implicit keys to 1,024 characters.
const MAX_KEY_LEN: usize = 1000;

/// Reads one document of the subset into a workload; `None` when the document is outside the
/// subset (read it the general way) or empty.
pub fn read_workload(text: &str) -> Option<Workload<'_>> {
    if !text.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)) {
        return None;
    }
    let mut reader = Reader::new(text)?;
    let root = reader.document()?;
    Some(Workload::from_raw(None, object(root)?))
}

/// One line: its indentation and its text without the indentation and trailing spaces (empty
/// for a blank line, whose `indent` is then its number of spaces).
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

impl Line<'_> {
    /// Neither blank nor a comment.
    fn is_content(&self) -> bool {
        !self.text.is_empty() && !self.text.starts_with('#')
    }
}

/// Which fields of the object a node is (what [`RawObject`] and its parts read): the only
/// nodes kept; everything else is only checked to be in the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Nothing,
    /// Whether a non-null value is there (`metadata.deletionTimestamp`).
    Present,
    Str,
    Root,
    Meta,
    Spec,
    Template,
    JobTemplate,
    JobSpec,
    Containers,
    Container,
}

impl Want {
    /// What the value of `key` is, in a mapping that is `self`.
    fn key(self, key: &str) -> Want {
        use Want::*;
        match (self, key) {
            (Root, "kind") | (Meta, "name" | "generateName" | "namespace") => Str,
            (Container, "name" | "image" | "imagePullPolicy") => Str,
            (Root, "metadata") => Meta,
            (Root, "spec") | (Template, "spec") => Spec,
            (JobTemplate, "spec") => JobSpec,
            (Root | Spec | JobSpec, "template") => Template,
            (Meta, "deletionTimestamp") => Present,
            (Spec, "containers" | "initContainers" | "ephemeralContainers") => Containers,
            (Spec, "jobTemplate") => JobTemplate,
            _ => Nothing,
        }
    }

    /// Kept as a tree (as opposed to checked only).
    fn keeps(self) -> bool {
        !matches!(self, Want::Nothing | Want::Present)
    }
}

/// A node of a kept part. `Other` is a present value that is not kept (or has the wrong type
/// for its field, which the conversion below refuses).
#[derive(Debug)]
enum Node<'a> {
    Null,
    Other,
    Str(Cow<'a, str>),
    Map(Vec<(&'a str, Node<'a>)>),
    Seq(Vec<Node<'a>>),
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    /// The next line to read.
    pos: usize,
    /// The keys of every open mapping, innermost last (to refuse duplicates).
    keys: Vec<&'a str>,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// Splits the document into lines; `None` for directives, a second document, or content
    /// after a document marker on its line.
    fn new(text: &'a str) -> Option<Self> {
        let mut lines = Vec::with_capacity(text.len() / 20 + 1);
        let (mut started, mut ended) = (false, false);
        for raw in text.split('\n') {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            let text = raw[indent..].trim_end_matches(' ');
            let line = Line { indent: if text.is_empty() { raw.len() } else { indent }, text };
            if indent == 0 && (is_marker(text, "---") || is_marker(text, "...")) {
                // `---` only before the content (with at most a comment), `...` only after it.
                let start = text.starts_with('-');
                let rest = text[3..].trim_start_matches(' ');
                if ended || (start && (started || !(rest.is_empty() || rest.starts_with('#')))) {
                    return None;
                }
                if !start {
                    if !rest.is_empty() && !rest.starts_with('#') {
                        return None;
                    }
                    ended = true;
                }
                lines.push(Line { indent: 0, text: "" });
                continue;
            }
            if line.is_content() {
                if ended || (!started && text.starts_with('%')) {
                    return None;
                }
                started = true;
            }
            lines.push(line);
        }
        Some(Reader { lines, pos: 0, keys: Vec::new(), depth: 0 })
    }

    /// The next content line, skipping blank lines and comments (not consumed).
    fn peek(&mut self) -> Option<Line<'a>> {
        while let Some(&line) = self.lines.get(self.pos) {
            if line.is_content() {
                return Some(line);
            }
            self.pos += 1;
        }
        None
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn document(&mut self) -> Option<Node<'a>> {
        // An empty document is no object (the general reader skips it).
        let first = self.peek()?;
        split_key(first.text)?;
        let root = self.mapping(first.indent, None, Want::Root)?;
        // Nothing may follow the root mapping (a less indented line would be a second node).
        self.peek().is_none().then_some(root)
    }

    /// A block mapping whose keys are at column `indent`. `first` is the text of its first
    /// entry when that entry shares a line with a sequence's `- `.
    fn mapping(&mut self, indent: usize, mut first: Option<&'a str>, want: Want) -> Option<Node<'a>> {
        self.enter()?;
        let keys_start = self.keys.len();
        let mut out = Vec::new();
        loop {
            let text = match first.take() {
                Some(text) => text,
                None => {
                    let Some(line) = self.peek() else { break };
                    if line.indent < indent {
                        break;
                    }
                    // A deeper line here would continue a value, and a `- ` at this column
                    // cannot follow a key's value on its line: both are outside the subset.
                    if line.indent > indent || is_seq_entry(line.text) {
                        return None;
                    }
                    self.pos += 1;
                    line.text
                }
            };
            let (key, rest) = split_key(text)?;
            if self.keys[keys_start..].contains(&key) {
                return None;
            }
            self.keys.push(key);
            let field = want.key(key);
            let value = self.value(indent, rest, field)?;
            if field != Want::Nothing {
                out.push((key, value));
            }
        }
        self.keys.truncate(keys_start);
        self.depth -= 1;
        Some(if want.keeps() { Node::Map(out) } else { Node::Other })
    }

    /// A block sequence whose `-` are at column `indent`.
    fn sequence(&mut self, indent: usize, want: Want) -> Option<Node<'a>> {
        let item_want = match want {
            Want::Containers => Want::Container,
            Want::Nothing | Want::Present => Want::Nothing,
            // A sequence where a mapping or a string is read: the general reader decides.
            _ => return None,
        };
        self.enter()?;
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent || (line.indent == indent && !is_seq_entry(line.text)) {
                break;
            }
            if line.indent > indent {
                return None;
            }
            self.pos += 1;
            let after_dash = &line.text[1..];
            let spaces = after_dash.len() - after_dash.trim_start_matches(' ').len();
            let rest = &after_dash[spaces..];
            let item = if rest.is_empty() || rest.starts_with('#') {
                match self.peek() {
                    Some(next) if next.indent > indent => self.block_node(next, item_want)?,
                    _ => Node::Null,
                }
            } else if is_seq_entry(rest) {
                return None;
            } else if split_key(rest).is_some() {
                self.mapping(indent + 1 + spaces, Some(rest), item_want)?
            } else {
                self.one_line_value(indent, rest, item_want)?
            };
            if item_want.keeps() {
                items.push(item);
            }
        }
        self.depth -= 1;
        Some(if item_want.keeps() { Node::Seq(items) } else { Node::Other })
    }

    /// The value after a key (`rest`: what follows its `:`) of a mapping at column `indent`.
    fn value(&mut self, indent: usize, rest: &'a str, want: Want) -> Option<Node<'a>> {
        let rest = rest.trim_start_matches(' ');
        if !rest.is_empty() && !rest.starts_with('#') {
            return self.one_line_value(indent, rest, want);
        }
        match self.peek() {
            Some(next) if next.indent > indent => self.block_node(next, want),
            Some(next) if next.indent == indent && is_seq_entry(next.text) => self.sequence(indent, want),
            _ => Some(if want == Want::Nothing { Node::Other } else { Node::Null }),
        }
    }

    /// A collection starting on its own line `first`.
    fn block_node(&mut self, first: Line<'a>, want: Want) -> Option<Node<'a>> {
        if is_seq_entry(first.text) {
            self.sequence(first.indent, want)
        } else if split_key(first.text).is_some() {
            self.mapping(first.indent, None, want)
        } else {
            // A scalar on the lines after its key.
            None
        }
    }

    /// A value written on its key's (or `- `'s) line; `indent` is the parent's column.
    fn one_line_value(&mut self, indent: usize, text: &'a str, want: Want) -> Option<Node<'a>> {
        let node = match text.as_bytes()[0] {
            b'\'' => {
                let (value, after) = single_quoted(text)?;
                comment_only(after)?;
                string(value, want)
            }
            b'"' => {
                let (value, after) = double_quoted(text, want == Want::Str)?;
                comment_only(after)?;
                string(value, want)
            }
            b'[' | b'{' if !want.keeps() => {
                comment_only(flow(text, 0)?)?;
                Node::Other
            }
            b'|' | b'>' if !want.keeps() => {
                block_scalar_header(&text[1..])?;
                self.skip_block_scalar(indent)?;
                Node::Other
            }
            b'-' if text.len() == 1 || text.as_bytes()[1] == b' ' => return None,
            b'[' | b'{' | b'|' | b'>' | b'?' | b':' | b',' | b']' | b'}' | b'#' | b'&' | b'*' | b'!' | b'%' | b'@'
            | b'`' => return None,
            _ => plain(text, want)?,
        };
        // A deeper line after a one-line value would continue it (or be an error).
        match self.peek() {
            Some(next) if next.indent > indent => None,
            _ => Some(node),
        }
    }

    /// Skips the lines of a block scalar whose parent is at column `indent`.
    fn skip_block_scalar(&mut self, indent: usize) -> Option<()> {
        let (mut content, mut widest_blank) = (None, 0);
        while let Some(&line) = self.lines.get(self.pos) {
            if line.text.is_empty() {
                if content.is_none() {
                    widest_blank = widest_blank.max(line.indent);
                }
            } else {
                match content {
                    None if line.indent <= indent => break,
                    // Leading blank lines may not be wider than the first content line.
                    None if widest_blank > line.indent => return None,
                    None => content = Some(line.indent),
                    Some(c) if line.indent < c => break,
                    Some(_) => {}
                }
            }
            self.pos += 1;
        }
        Some(())
    }
}

/// `---` or `...`, alone or followed by a space.
fn is_marker(text: &str, marker: &str) -> bool {
    text.starts_with(marker) && text.as_bytes().get(3).is_none_or(|&b| b == b' ')
}

fn is_seq_entry(text: &str) -> bool {
    text.starts_with('-') && text.as_bytes().get(1).is_none_or(|&b| b == b' ')
}

/// `key:` then the end of the line or a space: the key and what follows the `:`.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    if !bytes.first().is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return None;
    }
    let end = bytes.iter().position(|b| !(b.is_ascii_alphanumeric() || b"_./-".contains(b)))?;
    if bytes[end] != b':' || bytes.get(end + 1).is_some_and(|&b| b != b' ') {
        return None;
    }
    let key = &text[..end];
    (key.len() <= MAX_KEY_LEN && !looks_typed(key)).then_some((key, &text[end + 1..]))
}

/// Whether some YAML schema (1.2 core, or 1.1 as other tools read it) could resolve this plain
/// scalar to a null, a boolean or a number. Deliberately broad: the words, and anything that
/// starts like a number (after a sign, a digit or a `.`) and holds only characters a number of
/// some schema can hold (`1_000`, `0x1F`, `1:30`, `.inf`, `1e5`).
fn looks_typed(value: &str) -> bool {
    const WORDS: &[&str] = &[
        "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "yes", "Yes", "YES", "no",
        "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
    ];
    let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
    let special = unsigned.strip_prefix('.').unwrap_or(unsigned);
    value.is_empty()
        || WORDS.contains(&value)
        || ["inf", "infinity", "nan"].iter().any(|w| special.eq_ignore_ascii_case(w))
        || (unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && unsigned.bytes().all(|b| b.is_ascii_hexdigit() || b"+-._:oOxX".contains(&b)))
}

fn is_null(value: &str) -> bool {
    matches!(value, "~" | "null" | "Null" | "NULL")
}

/// What is left after a one-line value: nothing, or a comment.
fn comment_only(after: &str) -> Option<()> {
    (after.is_empty() || (after.starts_with(' ') && after.trim_start_matches(' ').starts_with('#'))).then_some(())
}

/// A quoted scalar read where `want` is.
fn string(value: Cow<'_, str>, want: Want) -> Node<'_> {
    match want {
        Want::Str => Node::Str(value),
        _ => Node::Other,
    }
}

/// A plain scalar on one line, up to a comment.
fn plain(text: &str, want: Want) -> Option<Node<'_>> {
    let value = text.find(" #").map_or(text, |end| text[..end].trim_end_matches(' '));
    // `: ` or a final `:` would make it a key (an error on a value's line).
    if value.contains(": ") || value.ends_with(':') {
        return None;
    }
    Some(match want {
        Want::Str if looks_typed(value) => return None,
        Want::Str => Node::Str(Cow::Borrowed(value)),
        _ if is_null(value) => Node::Null,
        _ => Node::Other,
    })
}

/// `'...'` on one line (`''` is a quote): the value and what follows the closing quote.
fn single_quoted(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut owned: Option<String> = None;
    let (mut from, mut segment) = (1, 1);
    loop {
        let quote = from + text[from..].find('\'')?;
        if text.as_bytes().get(quote + 1) == Some(&b'\'') {
            owned.get_or_insert_with(String::new).push_str(&text[segment..=quote]);
            from = quote + 2;
            segment = from;
            continue;
        }
        let value = match owned {
            None => Cow::Borrowed(&text[1..quote]),
            Some(mut s) => {
                s.push_str(&text[segment..quote]);
                Cow::Owned(s)
            }
        };
        return Some((value, &text[quote + 1..]));
    }
}

/// `"..."` on one line: the value and what follows the closing quote. Escapes are checked;
/// with `keep` (a string that is read) any escape is left to the general reader.
fn double_quoted(text: &str, keep: bool) -> Option<(Cow<'_, str>, &str)> {
    let bytes = text.as_bytes();
    let mut i = 1;
    loop {
        match *bytes.get(i)? {
            b'"' => return Some((Cow::Borrowed(&text[1..i]), &text[i + 1..])),
            b'\\' if keep => return None,
            b'\\' => {
                let escape = *bytes.get(i + 1)?;
                let digits = match escape {
                    b'x' => 2,
                    b'u' => 4,
                    b'U' => 8,
                    _ if b"0abtnvfre \"/\\N_LP".contains(&escape) => 0,
                    _ => return None,
                };
                if digits > 0 {
                    let hex = text.get(i + 2..i + 2 + digits)?;
                    let code =
                        u32::from_str_radix(hex, 16).ok().filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))?;
                    char::from_u32(code)?;
                }
                i += 2 + digits;
            }
            _ => i += 1,
        }
    }
}

/// Flow collections nested deeper than this on one line are left to the general reader.
const MAX_FLOW_DEPTH: usize = 16;

/// A flow collection on one line (`[...]`, `{...}`, nested, of plain words and quoted scalars,
/// mappings with plain keys, each once): what follows it.
fn flow(text: &str, depth: usize) -> Option<&str> {
    let (close, is_map) = match text.as_bytes()[0] {
        b'[' => (']', false),
        b'{' => ('}', true),
        _ => return None,
    };
    if depth > MAX_FLOW_DEPTH {
        return None;
    }
    let mut rest = text[1..].trim_start_matches(' ');
    if let Some(after) = rest.strip_prefix(close) {
        return Some(after);
    }
    let mut keys: Vec<&str> = Vec::new();
    loop {
        if is_map {
            let end =
                rest.bytes().position(|b| !(b.is_ascii_alphanumeric() || b"_./-".contains(&b))).unwrap_or(rest.len());
            let key = &rest[..end];
            let first = *key.as_bytes().first()?;
            if !(first.is_ascii_alphanumeric() || first == b'_') || looks_typed(key) || keys.contains(&key) {
                return None;
            }
            keys.push(key);
            rest = rest[end..].strip_prefix(": ")?.trim_start_matches(' ');
        }
        rest = match *rest.as_bytes().first()? {
            b'[' | b'{' => flow(rest, depth + 1)?,
            b'\'' => single_quoted(rest)?.1,
            b'"' => double_quoted(rest, false)?.1,
            _ => {
                let end = rest
                    .bytes()
                    .position(|b| !(b.is_ascii_alphanumeric() || b" ._/=+-".contains(&b)))
                    .unwrap_or(rest.len());
                let word = rest[..end].trim_end_matches(' ');
                let ok = match word.as_bytes() {
                    [] => false,
                    [b'-'] => false,
                    [b'-', second, ..] => *second != b' ',
                    [first, ..] => first.is_ascii_alphanumeric() || b"._/".contains(first),
                };
                if !ok {
                    return None;
                }
                &rest[end..]
            }
        }
        .trim_start_matches(' ');
        rest = match rest.chars().next()? {
            ',' => rest[1..].trim_start_matches(' '),
            c if c == close => return Some(&rest[1..]),
            _ => return None,
        };
        // `[a,]`: a trailing comma is valid YAML but left to the general reader.
        if rest.starts_with(close) {
            return None;
        }
    }
}

/// What follows `|` or `>`: an optional chomping indicator and a comment (no indentation
/// indicator).
fn block_scalar_header(rest: &str) -> Option<()> {
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    comment_only(rest)
}

// ---------------------------------------------------------------------------------------------
// Kept nodes to the object's fields, with serde's types: null is an absent field, and a value of
// another type than the field's is refused (the general reader reports it).

fn object(root: Node<'_>) -> Option<RawObject<'_>> {
    let mut object = RawObject::default();
    for (key, value) in map(root)?.into_iter().flatten() {
        match key {
            "kind" => object.kind = text(value)?,
            "metadata" => object.metadata = field(value, meta)?,
            "spec" => object.spec = field(value, spec)?,
            "template" => object.template = field(value, template)?,
            _ => {}
        }
    }
    Some(object)
}

/// `Some(None)` for null, `None` for another type.
fn map(node: Node<'_>) -> Option<Option<Vec<(&str, Node<'_>)>>> {
    match node {
        Node::Null => Some(None),
        Node::Map(entries) => Some(Some(entries)),
        _ => None,
    }
}

/// A field read as a struct: `Some(None)` for null, `None` for another type or a refused part.
fn field<'a, T>(node: Node<'a>, read: impl FnOnce(Vec<(&'a str, Node<'a>)>) -> Option<T>) -> Option<Option<T>> {
    match map(node)? {
        None => Some(None),
        Some(entries) => read(entries).map(Some),
    }
}

fn text(node: Node<'_>) -> Option<Option<Text<'_>>> {
    match node {
        Node::Null => Some(None),
        Node::Str(s) => Some(Some(Text(s))),
        _ => None,
    }
}

fn meta<'a>(entries: Vec<(&'a str, Node<'a>)>) -> Option<RawMeta<'a>> {
    let mut meta = RawMeta::default();
    for (key, value) in entries {
        match key {
            "name" => meta.name = text(value)?,
            "generateName" => meta.generate_name = text(value)?,
            "namespace" => meta.namespace = text(value)?,
            "deletionTimestamp" => {
                meta.deletion_timestamp = (!matches!(value, Node::Null)).then_some(serde::de::IgnoredAny);
            }
            _ => {}
        }
    }
    Some(meta)
}

fn spec<'a>(entries: Vec<(&'a str, Node<'a>)>) -> Option<RawSpec<'a>> {
    let mut spec = RawSpec::default();
    for (key, value) in entries {
        match key {
            "containers" => spec.containers = containers(value)?,
            "initContainers" => spec.init_containers = containers(value)?,
            "ephemeralContainers" => spec.ephemeral_containers = containers(value)?,
            "template" => spec.template = field(value, template)?.map(Box::new),
            "jobTemplate" => {
                let job_template = |entries: Vec<(&'a str, Node<'a>)>| {
                    let mut job_template = RawJobTemplate::default();
                    for (key, value) in entries {
                        if key == "spec" {
                            job_template.spec = field(value, job_spec)?;
                        }
                    }
                    Some(job_template)
                };
                spec.job_template = field(value, job_template)?.map(Box::new);
            }
            _ => {}
        }
    }
    Some(spec)
}

fn job_spec<'a>(entries: Vec<(&'a str, Node<'a>)>) -> Option<RawJobSpec<'a>> {
    let mut job_spec = RawJobSpec::default();
    for (key, value) in entries {
        if key == "template" {
            job_spec.template = field(value, template)?;
        }
    }
    Some(job_spec)
}

fn template<'a>(entries: Vec<(&'a str, Node<'a>)>) -> Option<RawTemplate<'a>> {
    let mut template = RawTemplate::default();
    for (key, value) in entries {
        if key == "spec" {
            template.spec = field(value, spec)?;
        }
    }
    Some(template)
}

fn containers(node: Node<'_>) -> Option<Option<Vec<RawContainer<'_>>>> {
    let items = match node {
        Node::Null => return Some(None),
        Node::Seq(items) => items,
        _ => return None,
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut container = RawContainer::default();
        for (key, value) in map(item)?? {
            match key {
                "name" => container.name = text(value)?,
                "image" => container.image = text(value)?,
                "imagePullPolicy" => container.image_pull_policy = text(value)?,
                _ => {}
            }
        }
        out.push(container);
    }
    Some(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general reader: serde-saphyr to a value, then the workload; `None` when it refuses
    /// the document or it holds another number of objects than one.
    fn general(text: &str) -> Option<Workload<'static>> {
        let documents = crate::manifest::parse("t.yaml", text).ok()?;
        let [document] = documents.as_slice() else { return None };
        Workload::read(None, &document.value).ok().map(Workload::into_owned)
    }

    /// Read by the block reader, and exactly as the general reader reads it.
    #[track_caller]
    fn same(text: &str) -> Workload<'static> {
        let fast = read_workload(text).unwrap_or_else(|| panic!("outside the subset:\n{text}")).into_owned();
        assert_eq!(Some(&fast), general(text).as_ref(), "\n{text}");
        fast
    }

    /// Left to the general reader.
    #[track_caller]
    fn refused(text: &str) {
        assert!(read_workload(text).is_none(), "read by the block reader:\n{text}");
    }

    fn images(w: &Workload<'_>) -> Vec<(String, Option<String>)> {
        w.containers.iter().map(|c| (c.field.to_string(), c.image.as_deref().map(str::to_owned))).collect()
    }

    const KUBECTL_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{},"name":"web"}}

    note: 'it''s "quoted"'
    escaped: "tab\there \u00e9 \x41 \" \\"
  creationTimestamp: "2026-12-01T10:00:00Z"
  labels:
    app.kubernetes.io/name: web
    tier: frontend # a comment
  name: web
  namespace: shop
  uid: 0f8e7a2c-1111-2222-3333-444455556666
spec:
  containers:
  - args:
    - --config
    - /etc/app.yaml
    command: ["/app", "--verbose", 'x']
    env:
    - name: NODE
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: spec.nodeName
    image: registry.my.com/shop/web:1.2.3
    imagePullPolicy: IfNotPresent
    name: web
    ports:
    - containerPort: 8080
      protocol: TCP
    resources: {}
  -   name: proxy
      image: 'ghcr.io/my-org/envoy:1.30'
  initContainers:
    - name: init
      image: "busybox:1.36"
      securityContext: {runAsNonRoot: true, capabilities: {drop: [ALL]}}
  restartPolicy: Always
  tolerations: []
status:
  phase: Running
"#;

    #[test]
    fn reads_kubectl_output_as_the_general_reader() {
        let w = same(KUBECTL_POD);
        assert_eq!((&*w.kind, &*w.name, w.namespace.as_deref()), ("Pod", "web", Some("shop")));
        assert_eq!(
            images(&w),
            [
                ("spec.initContainers[0]".into(), Some("busybox:1.36".into())),
                ("spec.containers[0]".into(), Some("registry.my.com/shop/web:1.2.3".into())),
                ("spec.containers[1]".into(), Some("ghcr.io/my-org/envoy:1.30".into())),
            ]
        );
        assert_eq!(w.containers[0].pull_policy, trustgate_core::workload::PullPolicy::Unset);
        assert_eq!(w.containers[1].pull_policy, trustgate_core::workload::PullPolicy::Set("IfNotPresent".into()));
    }

    #[test]
    fn reads_every_example_workload_document() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workloads");
        let mut refused = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for piece in crate::stream::pieces(&text).unwrap() {
                let Some(fast) = read_workload(piece.text) else {
                    refused.push(piece.text.to_owned());
                    continue;
                };
                // `check` reads Lists the general way, which expands their items.
                if !fast.kind.ends_with("List") {
                    assert_eq!(Some(fast.into_owned()), general(piece.text), "\n{}", piece.text);
                }
            }
        }
        // Every example, the benchmark's document among them, is in the subset.
        assert!(refused.is_empty(), "left to the general reader: {refused:#?}");
        same(include_str!("../../../examples/workloads/api-deployment.yaml"));
    }

    #[test]
    fn reads_templates_of_every_kind() {
        let cron = same(
            "---\nkind: CronJob\nmetadata:\n  name: nightly\nspec:\n  schedule: '0 3 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - name: job\n            image: registry.my.com/job:1\n...\n",
        );
        assert_eq!(
            images(&cron),
            [("spec.jobTemplate.spec.template.spec.containers[0]".into(), Some("registry.my.com/job:1".into()))]
        );
        let template =
            same("kind: PodTemplate\ntemplate:\n  spec:\n    containers:\n    -\n      name: a\n      image: a/b\n");
        assert_eq!(images(&template), [("template.spec.containers[0]".into(), Some("a/b".into()))]);
        let deleting =
            same("kind: Pod\nmetadata:\n  deletionTimestamp: 2026-12-01T10:00:00Z\nspec:\n  containers: ~\n");
        assert!(deleting.deleting && deleting.containers.is_empty());
        assert!(!same("kind: Pod\nmetadata:\n  deletionTimestamp: null\n").deleting);
        let no_image = same("kind: Pod\nspec:\n  containers:\n  - name: a\n    image:\n  - name: b\n    image: ''\n");
        assert_eq!(
            images(&no_image),
            [("spec.containers[0]".into(), None), ("spec.containers[1]".into(), Some(String::new()))]
        );
    }

    #[test]
    fn refuses_what_a_schema_would_type() {
        for value in
            ["1.25", "0x1F", "1_000", "1:30", ".inf", "-.5", "1e5", "true", "No", "on", "~", "null", "NaN", "+inf"]
        {
            refused(&format!("kind: Pod\nspec:\n  containers:\n  - image: {value}\n"));
        }
        // Strings that only look a little like numbers are read.
        for value in ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1", "nginx", "cafe", "0.9-alpine"] {
            let w = same(&format!("kind: Pod\nspec:\n  containers:\n  - image: {value}\n"));
            assert_eq!(w.containers[0].image.as_deref(), Some(value));
        }
    }

    #[test]
    fn refuses_yaml_outside_the_subset() {
        let pod = |image_line: &str| format!("kind: Pod\nspec:\n  containers:\n  - name: a\n    {image_line}\n");
        for line in [
            "image: &a nginx",
            "image: *a",
            "image: !!str nginx",
            "image: \"nginx\\t\"",
            "image: [nginx]",
            "image: |\n      nginx",
            "image: nginx\n      :latest",
            "image: 'nginx\n      '",
            "? image\n    : nginx",
            "\"image\": nginx",
            "image : nginx",
            "image: nginx\timage",
            "image: ngïnx",
        ] {
            refused(&pod(line));
        }
        refused("%YAML 1.2\n---\nkind: Pod\n");
        refused("kind: Pod\n---\nkind: Pod\n");
        refused("kind: Pod\n...\nkind: Pod\n");
        refused("--- {kind: Pod}\n");
        refused("{\"kind\": \"Pod\"}\n");
        refused("- kind: Pod\n");
        refused("kind: Pod\r\nmetadata: {}\r\n");
        refused("kind: Pod\nmetadata:\n  labels:\n    a: |2\n       x\n");
        refused("kind: Pod\nspec:\n  containers:\n  - - a\n");
        refused("kind: Pod\nspec:\n  containers: []\n");
        // serde reads a sequence as a struct's fields in order: left to it.
        refused("kind: Pod\nmetadata:\n- a\n");
        refused("kind: Pod\nmetadata: {name: a}\n");
        refused("kind: Pod\nspec:\n  tolerations: [a,]\n");
        refused("kind: Pod\nspec:\n  nodeSelector: {a: 1, a: 2}\n");
    }

    #[test]
    fn refuses_what_the_general_reader_refuses() {
        for text in [
            "kind: Pod\nmetadata:\n  labels:\n    a: 1\n    a: 2\n",
            "kind: Pod\nkind: Pod\n",
            "kind: Pod\nmetadata:\n  name: a: b\n",
            "kind: Pod\nmetadata:\n  annotations:\n    a: \"\\q\"\n",
            "kind: Pod\nmetadata:\n  annotations:\n    a: \"unterminated\n",
            "kind: Pod\nmetadata: web\n",
            "kind: Pod\nspec:\n  containers: web\n",
            "kind: Pod\nspec:\n  containers:\n  - web\n",
            "kind: Pod\nspec:\n  containers:\n  -\n",
            "kind: Pod\nmetadata:\n  name:\n    first: a\n",
            "kind: Pod\n  name: a\n",
            "kind: Pod\nmetadata:\n  annotations:\n    a: |\n\n        \n      x\n",
            "kind: Pod\nmetadata:\n  annotations:\n    a: |\n        x\n      y\n",
            "kind: Pod\nspec:\n  a: 1\n  - b\n",
            "kind: Pod\nspec:\n  a: [b] c\n",
            "kind: Pod\nspec:\n  a: 'b' c\n",
        ] {
            assert!(general(text).is_none(), "the general reader reads:\n{text}");
            refused(text);
        }
    }

    #[test]
    fn empty_documents_are_not_objects() {
        for text in ["", "\n", "# only a comment\n", "---\n", "---\n...\n"] {
            assert!(read_workload(text).is_none(), "{text:?}");
        }
    }
}
