//! Image reference parsing and normalization, exactly as the container runtimes read them.
//!
//! Written by hand on purpose: containerd, Docker, CRI-O and kubelet all go through
//! `github.com/distribution/reference` (`ParseNormalizedNamed`, then `TagNameOnly`), and a policy
//! engine that reads a reference differently from the runtime is a bypass. The Rust crates we
//! evaluated disagree with the runtime on real inputs (an uppercase first component is a
//! registry host, IPv6 hosts in brackets, the `my_reg.com/x` quirk below), so this module
//! re-implements the grammar as a small scanner with no regex and at most one allocation.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [domain "/"] path
//! domain     := host [":" port]          host := domain-name | "[" ipv6 "]"
//! path       := component ("/" component)*      (at most 255 bytes after the domain)
//! component  := [a-z0-9]+ ( ("." | "_" | "__" | "-"+) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex           (sha256/384/512, lowercase hex of exact length)
//! ```

use std::borrow::Cow;
use std::fmt;

/// Docker Hub's canonical registry host.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// The legacy Docker Hub host that the runtimes rewrite to [`DOCKER_HUB`].
pub(crate) const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// The tag a runtime pulls when none is written.
pub(crate) const DEFAULT_TAG: &str = "latest";
/// The longest repository path (after the domain) a runtime accepts.
pub(crate) const MAX_PATH_LEN: usize = 255;
const OFFICIAL_PREFIX: &str = "library/";
const MAX_TAG_LEN: usize = 128;

/// Why a string is not an image reference. Messages follow the runtimes' wording so that users
/// recognise them from `docker pull` and kubelet events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: image reference is empty")]
    Empty,
    #[error("invalid reference format: {0}")]
    InvalidFormat(Detail),
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error("repository name must not be more than {MAX_PATH_LEN} characters (got {0})")]
    NameTooLong(usize),
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    #[error("invalid checksum digest format")]
    DigestFormat,
    #[error("invalid checksum digest length: {algorithm} needs {expected} hex characters, got {actual}")]
    DigestLength { algorithm: &'static str, expected: usize, actual: usize },
    #[error("unsupported digest algorithm {0:?} (expected sha256, sha384 or sha512)")]
    DigestUnsupported(String),
}

/// What part of a reference failed the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Whitespace,
    EmptyTag,
    Tag,
    Digest,
    Domain,
    Path,
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Detail::Whitespace => "contains whitespace or control characters",
            Detail::EmptyTag => "':' must be followed by a tag",
            Detail::Tag => "tag must be 1 to 128 of [A-Za-z0-9_.-] and must not start with '.' or '-'",
            Detail::Digest => "digest must be algorithm:hex with at least 32 hex characters",
            Detail::Domain => "registry host must be a host name, IPv4 or [IPv6] with an optional :port",
            Detail::Path => "repository path components must be lowercase [a-z0-9] separated by '.', '_', '__' or '-'",
        })
    }
}

/// A parsed, normalized image reference. Borrows from the input; the only allocation is the
/// `library/` prefix of Docker Hub official images.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference<'a> {
    domain: Cow<'a, str>,
    /// `path[:tag][@digest]` after the domain, normalized; the fields below index into it.
    rest: Cow<'a, str>,
    path_end: usize,
    tag: Option<(usize, usize)>,
    digest: Option<(usize, usize)>,
    written_domain: bool,
}

impl<'a> Reference<'a> {
    /// Parses `input` as `ParseNormalizedNamed` does.
    pub fn parse(input: &'a str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() == 64 && input.bytes().all(is_lower_hex) {
            return Err(ReferenceError::HexIdentifier(input.to_owned()));
        }

        // The runtime's domain split: the first component is a registry host only when it
        // looks like one; everything else is a Docker Hub repository.
        let (domain, remainder, written_domain): (Cow<'a, str>, Cow<'a, str>, bool) = match input.split_once('/') {
            None => (Cow::Borrowed(DOCKER_HUB), Cow::Owned(official(input)), false),
            Some((first, rest)) => {
                let (domain, remainder, written) = if first == "localhost" {
                    (first, rest, true)
                } else if first == LEGACY_DOCKER_HUB {
                    (DOCKER_HUB, rest, true)
                } else if first.bytes().any(|b| b == b'.' || b == b':') || has_uppercase(first) {
                    (first, rest, true)
                } else {
                    (DOCKER_HUB, input, false)
                };
                if domain == DOCKER_HUB && !remainder.contains('/') {
                    (Cow::Borrowed(domain), Cow::Owned(official(remainder)), written)
                } else {
                    (Cow::Borrowed(domain), Cow::Borrowed(remainder), written)
                }
            }
        };

        let remote = remainder.split_once(':').map_or(&*remainder, |(r, _)| r);
        if has_uppercase(remote) {
            return Err(ReferenceError::Uppercase(remote.to_owned()));
        }

        let parts = match split_reference(&domain, &remainder) {
            Ok(parts) => parts,
            Err(detail) => {
                // The runtime re-tries lowercased to tell "uppercase" apart from "malformed".
                let (ld, lr) = (go_lowercase(&domain), go_lowercase(&remainder));
                if (ld != *domain || lr != *remainder) && split_reference(&ld, &lr).is_ok() {
                    return Err(ReferenceError::Uppercase(remote.to_owned()));
                }
                return Err(ReferenceError::InvalidFormat(detail));
            }
        };
        let path_len = if parts.domain_matched { parts.path_len } else { domain.len() + 1 + parts.path_len };
        if path_len > MAX_PATH_LEN {
            return Err(ReferenceError::NameTooLong(path_len));
        }
        if let Some((start, end)) = parts.digest {
            validate_digest(&remainder[start..end])?;
        }

        if parts.domain_matched {
            let Parts { path_len: path_end, tag, digest, .. } = parts;
            return Ok(Reference { domain, rest: remainder, path_end, tag, digest, written_domain });
        }
        // The quirk: the runtime's grammar rejected the host (`my_reg.com`) but accepted it as
        // a path component, so the whole name is a path with no domain at all.
        let shift = domain.len() + 1;
        let mut rest = String::with_capacity(shift + remainder.len());
        rest.push_str(&domain);
        rest.push('/');
        rest.push_str(&remainder);
        let moved = |(start, end): (usize, usize)| (start + shift, end + shift);
        Ok(Reference {
            domain: Cow::Borrowed(""),
            rest: Cow::Owned(rest),
            path_end: parts.path_len + shift,
            tag: parts.tag.map(moved),
            digest: parts.digest.map(moved),
            written_domain,
        })
    }

    /// The registry host and optional port, in the case it was written (`docker.io` for
    /// familiar names; empty only for the `my_reg.com/x` quirk, which no pattern matches).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path after the domain (`library/nginx`).
    pub fn path(&self) -> &str {
        &self.rest[..self.path_end]
    }

    /// `domain/path`, the repository name.
    pub fn name(&self) -> String {
        if self.domain.is_empty() { self.path().to_owned() } else { format!("{}/{}", self.domain, self.path()) }
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.map(|(start, end)| &self.rest[start..end])
    }

    /// The digest (`sha256:...`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.map(|(start, end)| &self.rest[start..end])
    }

    /// No tag and no digest: the runtime pulls `:latest`.
    pub fn is_implicit_latest(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The tag the runtime resolves, or `None` when a digest pins the image whatever the tag.
    pub(crate) fn pulled_tag(&self) -> Option<&str> {
        match (self.digest, self.tag()) {
            (Some(_), _) => None,
            (None, Some(tag)) => Some(tag),
            (None, None) => Some(DEFAULT_TAG),
        }
    }

    /// Whether the input named a registry host (false for `nginx`, `myorg/app`).
    pub fn has_written_domain(&self) -> bool {
        self.written_domain
    }
}

/// The normalized form the runtime pulls: `docker.io/library/nginx:latest`.
impl fmt::Display for Reference<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.domain.is_empty() {
            write!(f, "{}/", self.domain)?;
        }
        f.write_str(&self.rest)?;
        if self.is_implicit_latest() {
            write!(f, ":{DEFAULT_TAG}")?;
        }
        Ok(())
    }
}

/// `library/<name>`, the path of a Docker Hub official image (`format!` costs twice as much).
fn official(name: &str) -> String {
    let mut path = String::with_capacity(OFFICIAL_PREFIX.len() + name.len());
    path.push_str(OFFICIAL_PREFIX);
    path.push_str(name);
    path
}

/// Splits `host[:port]` at the port colon, minding IPv6 brackets.
pub(crate) fn split_port(domain: &str) -> (&str, Option<&str>) {
    let host_end = if domain.starts_with('[') {
        domain.find(']').map_or(domain.len(), |i| i + 1)
    } else {
        domain.find(':').unwrap_or(domain.len())
    };
    match domain[host_end..].strip_prefix(':') {
        Some(port) => (&domain[..host_end], Some(port)),
        None => (domain, None),
    }
}

/// Byte ranges (into the remainder) found by [`split_reference`].
struct Parts {
    domain_matched: bool,
    path_len: usize,
    tag: Option<(usize, usize)>,
    digest: Option<(usize, usize)>,
}

/// The anchored reference grammar applied to `domain + "/" + remainder`, without building that
/// string. Mirrors the runtime's regular expression, including its preference for reading the
/// first component as a domain and its fallback to reading it as a path component.
fn split_reference(domain: &str, remainder: &str) -> Result<Parts, Detail> {
    // Whitespace fails the grammar anyway; looking for it only on failure words the error.
    split_grammar(domain, remainder).map_err(|detail| {
        let blank = |b: u8| b.is_ascii_whitespace() || b.is_ascii_control();
        if domain.bytes().chain(remainder.bytes()).any(blank) { Detail::Whitespace } else { detail }
    })
}

fn split_grammar(domain: &str, remainder: &str) -> Result<Parts, Detail> {
    // `@` cannot occur in a name or tag, and a digest never contains one.
    let (name_tag_end, digest) = match remainder.find('@') {
        Some(at) => {
            let digest = &remainder[at + 1..];
            if !is_digest_syntax(digest) {
                return Err(Detail::Digest);
            }
            (at, Some((at + 1, remainder.len())))
        }
        None => (remainder.len(), None),
    };
    let name_tag = &remainder[..name_tag_end];
    // A path has no ':' so a colon after the last '/' starts the tag.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (path_len, tag) = match name_tag[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            let tag = &name_tag[colon + 1..];
            if tag.is_empty() {
                return Err(Detail::EmptyTag);
            }
            if !is_tag(tag) {
                return Err(Detail::Tag);
            }
            (colon, Some((colon + 1, name_tag_end)))
        }
        None => (name_tag_end, None),
    };
    let path = &remainder[..path_len];
    if !is_path(path) {
        return Err(Detail::Path);
    }
    let domain_matched = if is_domain(domain) {
        true
    } else if is_path_component(domain) {
        false
    } else {
        return Err(Detail::Domain);
    };
    Ok(Parts { domain_matched, path_len, tag, digest })
}

/// Go's `strings.ToLower(s) != s`: any character that lowercasing changes (the Kelvin sign and
/// other non-ASCII capitals included, as the runtime sees them).
fn has_uppercase(s: &str) -> bool {
    // One pass over the bytes; characters are decoded only when a non-ASCII byte shows up.
    match s.bytes().position(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
        None => false,
        Some(i) if s.as_bytes()[i].is_ascii() => true,
        Some(_) => s.chars().any(|c| go_lower_char(c) != c),
    }
}

/// Go's `strings.ToLower`: simple, one-to-one case mapping per character.
fn go_lowercase(s: &str) -> String {
    s.chars().map(go_lower_char).collect()
}

fn go_lower_char(c: char) -> char {
    // Rust's full mapping turns U+0130 into "i\u{307}"; Go's simple mapping gives "i".
    if c == '\u{130}' {
        return 'i';
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+ ( ("." | "_" | "__" | "-"+) [a-z0-9]+ )*`
pub(crate) fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && is_lower_alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn is_path(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `[A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]`
pub(crate) fn is_domain_component(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// `host[:port]` where host is a dotted name or `[ipv6]` (hex digits and colons).
pub(crate) fn is_domain(s: &str) -> bool {
    let (host, port) = split_port(s);
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    match host.strip_prefix('[') {
        Some(inner) => match inner.strip_suffix(']') {
            Some(addr) => !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
            None => false,
        },
        None => host.split('.').all(is_domain_component),
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    b.len() <= MAX_TAG_LEN && b.first().is_some_and(word) && b.iter().all(|c| word(c) || *c == b'.' || *c == b'-')
}

/// The runtime's syntactic digest check, before the algorithm-specific one:
/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`
fn is_digest_syntax(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `[a-z0-9]+([.+_-][a-z0-9]+)*`
fn is_digest_algorithm_shape(s: &str) -> bool {
    s.split(['.', '+', '_', '-']).all(|part| !part.is_empty() && part.bytes().all(is_lower_alnum))
}

/// go-digest's validation: a registered algorithm, exact length, lowercase hex.
fn validate_digest(s: &str) -> Result<(), ReferenceError> {
    let (algorithm, hex) = s.split_once(':').unwrap_or((s, ""));
    let (algorithm, expected) = match algorithm {
        "sha256" => ("sha256", 64),
        "sha384" => ("sha384", 96),
        "sha512" => ("sha512", 128),
        // go-digest tells an unknown algorithm apart from a malformed digest by its own,
        // lowercase-only grammar.
        other
            if is_digest_algorithm_shape(other)
                && hex.bytes().all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b)) =>
        {
            return Err(ReferenceError::DigestUnsupported(other.to_owned()));
        }
        _ => return Err(ReferenceError::DigestFormat),
    };
    if hex.len() != expected {
        return Err(ReferenceError::DigestLength { algorithm, expected, actual: hex.len() });
    }
    if !hex.bytes().all(is_lower_hex) {
        return Err(ReferenceError::DigestFormat);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(input: &str) -> Reference<'_> {
        Reference::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"))
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn normalizes_like_the_runtime() {
        // (input, domain, path, tag, digest, normalized, written domain)
        let cases: &[(&str, &str, &str, Option<&str>, bool, &str, bool)] = &[
            ("nginx", "docker.io", "library/nginx", None, false, "docker.io/library/nginx:latest", false),
            ("nginx:1.25", "docker.io", "library/nginx", Some("1.25"), false, "docker.io/library/nginx:1.25", false),
            ("myorg/app", "docker.io", "myorg/app", None, false, "docker.io/myorg/app:latest", false),
            ("docker.io/nginx", "docker.io", "library/nginx", None, false, "docker.io/library/nginx:latest", true),
            (
                "index.docker.io/nginx",
                "docker.io",
                "library/nginx",
                None,
                false,
                "docker.io/library/nginx:latest",
                true,
            ),
            ("Index.docker.io/nginx", "Index.docker.io", "nginx", None, false, "Index.docker.io/nginx:latest", true),
            (
                "registry-1.docker.io/nginx",
                "registry-1.docker.io",
                "nginx",
                None,
                false,
                "registry-1.docker.io/nginx:latest",
                true,
            ),
            ("Evil/app", "Evil", "app", None, false, "Evil/app:latest", true),
            ("localhost/app", "localhost", "app", None, false, "localhost/app:latest", true),
            ("localhost:5000/app:v1", "localhost:5000", "app", Some("v1"), false, "localhost:5000/app:v1", true),
            ("localhost", "docker.io", "library/localhost", None, false, "docker.io/library/localhost:latest", false),
            (
                "foo.com:5000",
                "docker.io",
                "library/foo.com",
                Some("5000"),
                false,
                "docker.io/library/foo.com:5000",
                false,
            ),
            ("[fd00::1]:5000/app", "[fd00::1]:5000", "app", None, false, "[fd00::1]:5000/app:latest", true),
            ("[::1]/a/b:t", "[::1]", "a/b", Some("t"), false, "[::1]/a/b:t", true),
            ("docker.io.evil.com/x", "docker.io.evil.com", "x", None, false, "docker.io.evil.com/x:latest", true),
            ("my_reg.com/foo", "", "my_reg.com/foo", None, false, "my_reg.com/foo:latest", true),
        ];
        for &(input, domain, path, tag, digest, normalized, written) in cases {
            let r = ok(input);
            assert_eq!(r.domain(), domain, "{input}");
            assert_eq!(r.path(), path, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest().is_some(), digest, "{input}");
            assert_eq!(r.to_string(), normalized, "{input}");
            assert_eq!(r.has_written_domain(), written, "{input}");
        }
    }

    #[test]
    fn digest_pins_whatever_the_tag() {
        let input = format!("app:v1@{SHA}");
        let r = ok(&input);
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest(), Some(SHA));
        assert_eq!(r.pulled_tag(), None);
        assert!(!r.is_implicit_latest());
        assert_eq!(ok("app").pulled_tag(), Some("latest"));
        assert_eq!(ok("app:v2").pulled_tag(), Some("v2"));
    }

    #[test]
    fn rejects_what_the_runtime_rejects() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("nginx:", "must be followed by a tag"),
            (" nginx", "whitespace"),
            ("nginx ", "whitespace"),
            ("Nginx", "must be lowercase"),
            ("localhost/App", "must be lowercase"),
            ("EVIL_X/app", "must be lowercase"),
            ("a..b/c", "invalid reference format"),
            ("ghcr.io/org/", "invalid reference format"),
            ("app@sha256:abc", "invalid reference format"),
            ("app@md5:0123456789abcdef0123456789abcdef", "unsupported digest algorithm"),
        ];
        for &(input, want) in cases {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input:?}: {err:?} should contain {want:?}");
        }
        let upper = SHA.to_uppercase().replace("SHA256", "sha256");
        let err = Reference::parse(&format!("app@{upper}")).unwrap_err();
        assert_eq!(err, ReferenceError::DigestFormat);
        let short = &SHA[..SHA.len() - 1];
        assert!(matches!(
            Reference::parse(&format!("app@{short}")),
            Err(ReferenceError::DigestLength { expected: 64, actual: 63, .. })
        ));
        let hex = "a".repeat(64);
        assert!(matches!(Reference::parse(&hex), Err(ReferenceError::HexIdentifier(_))));
    }

    #[test]
    fn path_length_counts_the_library_prefix() {
        let fits = "a".repeat(MAX_PATH_LEN - OFFICIAL_PREFIX.len());
        assert_eq!(ok(&fits).path().len(), MAX_PATH_LEN);
        let over = "a".repeat(MAX_PATH_LEN - OFFICIAL_PREFIX.len() + 1);
        assert_eq!(Reference::parse(&over), Err(ReferenceError::NameTooLong(256)));
    }

    #[test]
    fn host_and_port_split_minds_brackets() {
        assert_eq!(split_port("[fd00::1]:5000"), ("[fd00::1]", Some("5000")));
        assert_eq!(split_port("[fd00::1]"), ("[fd00::1]", None));
        assert_eq!(split_port("reg.io:443"), ("reg.io", Some("443")));
        assert_eq!(split_port("reg.io"), ("reg.io", None));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn component() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,5}(([._]|__|-{1,3})[a-z0-9]{1,5}){0,2}"
        }

        fn reference() -> impl Strategy<Value = String> {
            let domain = prop_oneof![
                Just(String::new()),
                "[a-z]{1,8}\\.(io|com|dev)(:[0-9]{1,5})?/",
                "\\[[0-9a-f]{0,4}:[0-9a-f:]{1,10}\\](:[0-9]{2,5})?/",
                "[A-Z][a-zA-Z]{0,6}/",
                Just("localhost/".to_owned()),
            ];
            let tag = prop_oneof![Just(String::new()), ":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"];
            let digest = prop_oneof![Just(String::new()), "@sha256:[0-9a-f]{64}", "@sha512:[0-9a-f]{128}"];
            (domain, proptest::collection::vec(component(), 1..4), tag, digest)
                .prop_map(|(d, path, t, g)| format!("{d}{}{t}{g}", path.join("/")))
        }

        proptest! {
            #[test]
            fn normalized_form_is_a_fixed_point(input in reference()) {
                if let Ok(r) = Reference::parse(&input) {
                    let normalized = r.to_string();
                    let again = Reference::parse(&normalized).expect("normalized form parses");
                    prop_assert_eq!(&again.to_string(), &normalized);
                    prop_assert_eq!(again.domain(), r.domain());
                    prop_assert_eq!(again.path(), r.path());
                }
            }

            #[test]
            fn grammar_built_references_parse(input in reference()) {
                let r = Reference::parse(&input);
                prop_assert!(r.is_ok(), "{:?}: {:?}", input, r);
            }

            #[test]
            fn never_panics(input in "\\PC{0,80}") {
                let _ = Reference::parse(&input);
            }
        }
    }
}
