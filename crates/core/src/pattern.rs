//! Trusted-registry patterns: `host[:port][/path]`, compiled once, matched on the hot path.
//!
//! - the host must be written (`nginx` or `myorg/app` are Docker Hub repositories, not hosts);
//! - hosts compare case-insensitively, ports exactly (`reg.io` is not `reg.io:443`);
//! - `*.example.com` matches one or more labels below example.com, never example.com itself;
//! - the path matches on `/` boundaries (`ghcr.io/org` never matches `ghcr.io/org-evil`), and a
//!   segment may be `*` for exactly one segment;
//! - `index.docker.io` means `docker.io`, as it does for the runtime.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::reference::{self, DOCKER_HUB, LEGACY_DOCKER_HUB, Reference};

/// The longest pattern accepted; the CRD schema enforces the same bound.
pub(crate) const MAX_PATTERN_LEN: usize = 255;

/// Why a string is not a registry pattern. Each message says how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is longer than {MAX_PATTERN_LEN} characters")]
    TooLong,
    #[error("pattern {0:?} contains whitespace")]
    Whitespace(String),
    #[error("pattern {0:?} names no registry host (the runtime reads it as a Docker Hub repository); write {1:?}")]
    NoHost(String, String),
    #[error("pattern {0:?} contains a tag or digest; patterns name registries and repositories only")]
    TagOrDigest(String),
    #[error("pattern {0:?} has an invalid host {1:?}: write a DNS name, an IPv4 address or a [IPv6] address")]
    Host(String, String),
    #[error(
        "pattern {0:?} has an invalid wildcard: only a leading \"*.\" is allowed in the host, as in \"*.example.com\""
    )]
    Wildcard(String),
    #[error("pattern {0:?} has an invalid port {1:?}: a port is 1 to 5 digits (patterns never contain tags)")]
    Port(String, String),
    #[error(
        "pattern {0:?} has an invalid path segment {1:?}: segments are lowercase [a-z0-9] joined by '.', '_', '__' or '-', or a lone '*'"
    )]
    Path(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Host {
    /// Lowercased DNS name or IPv4 address.
    Exact(String),
    /// Lowercased suffix including the leading dot: `.example.com`.
    Subdomains(String),
    Ipv6(Ipv6Addr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Segment {
    Literal(String),
    Any,
}

/// What a pattern matches, without its spelling: two patterns with equal keys match exactly
/// the same images.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PatternKey {
    host: Host,
    port: Option<String>,
    path: Vec<Segment>,
}

/// A compiled `host[:port][/path]` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    host: Host,
    port: Option<String>,
    path: Vec<Segment>,
}

impl Pattern {
    /// Whether `image` is on this pattern's registry and at or below its path.
    pub fn matches(&self, image: &Reference<'_>) -> bool {
        let (host, port) = reference::split_port(image.domain());
        self.matches_parts(host, port, image.path())
    }

    /// [`Self::matches`] on a reference already split into host, port and path, for callers
    /// that match one image against many patterns.
    pub(crate) fn matches_parts(&self, host: &str, port: Option<&str>, path: &str) -> bool {
        self.port.as_deref() == port && self.host_matches(host) && self.path_matches(path)
    }

    /// Two patterns with the same key match exactly the same images.
    pub(crate) fn key(&self) -> PatternKey {
        PatternKey { host: self.host.clone(), port: self.port.clone(), path: self.path.clone() }
    }

    fn host_matches(&self, host: &str) -> bool {
        match &self.host {
            Host::Exact(h) => host.eq_ignore_ascii_case(h),
            Host::Subdomains(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
            Host::Ipv6(addr) => host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<Ipv6Addr>().ok())
                .is_some_and(|a| a == *addr),
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        let mut image = path.split('/');
        self.path.iter().all(|segment| match (segment, image.next()) {
            (_, None) => false,
            (Segment::Any, Some(_)) => true,
            (Segment::Literal(want), Some(got)) => want == got,
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err_text = || text.to_owned();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::Whitespace(err_text()));
        }
        if text.contains('@') {
            return Err(PatternError::TagOrDigest(err_text()));
        }
        let (first, path) = match text.split_once('/') {
            Some((first, path)) => (first, Some(path)),
            None => (text, None),
        };
        if !names_a_host(first) {
            return Err(match Reference::parse(text) {
                Ok(r) if r.tag().is_none() => PatternError::NoHost(err_text(), r.name()),
                Ok(_) => PatternError::TagOrDigest(err_text()),
                Err(_) => PatternError::NoHost(err_text(), format!("{DOCKER_HUB}/{text}")),
            });
        }
        let (host_text, port) = reference::split_port(first);
        let port = match port {
            None => None,
            Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.to_owned()),
            Some(p) => {
                return Err(if path.is_none() && !host_text.starts_with('[') && !host_text.contains('.') {
                    PatternError::TagOrDigest(err_text())
                } else {
                    PatternError::Port(err_text(), p.to_owned())
                });
            }
        };
        let host = parse_host(text, host_text)?;
        let path = match path {
            None => Vec::new(),
            Some(path) => path
                .split('/')
                .map(|segment| match segment {
                    "*" => Ok(Segment::Any),
                    s if reference::is_path_component(s) => Ok(Segment::Literal(s.to_owned())),
                    s if s.contains(':') => Err(PatternError::TagOrDigest(err_text())),
                    s => Err(PatternError::Path(err_text(), s.to_owned())),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Pattern { text: text.to_owned(), host, port, path })
    }
}

/// A pattern's first component is a host only when the runtime would read it as one, minus the
/// uppercase rule: a bare uppercase word is a confusing way to name a host, so we ask for a dot
/// or a port instead.
fn names_a_host(first: &str) -> bool {
    first == "localhost" || first.starts_with('[') || first.contains(['.', ':'])
}

fn parse_host(pattern: &str, host: &str) -> Result<Host, PatternError> {
    let invalid = || PatternError::Host(pattern.to_owned(), host.to_owned());
    if let Some(inner) = host.strip_prefix('[') {
        return inner.strip_suffix(']').and_then(|a| a.parse::<Ipv6Addr>().ok()).map(Host::Ipv6).ok_or_else(invalid);
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    if name.contains('*') {
        return Err(PatternError::Wildcard(pattern.to_owned()));
    }
    if !name.split('.').all(reference::is_domain_component) {
        return Err(invalid());
    }
    let name = name.to_ascii_lowercase();
    Ok(if wildcard {
        Host::Subdomains(format!(".{name}"))
    } else if name == LEGACY_DOCKER_HUB {
        Host::Exact(DOCKER_HUB.to_owned())
    } else {
        Host::Exact(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> Pattern {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should compile: {e}"))
    }

    fn matches(p: &str, image: &str) -> bool {
        let r = Reference::parse(image).unwrap_or_else(|e| panic!("{image:?}: {e}"));
        pattern(p).matches(&r)
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            // host only: any repository on the host
            ("registry.my.com", "registry.my.com/app:v1", true),
            ("registry.my.com", "registry.my.com/a/b/c", true),
            ("registry.my.com", "REGISTRY.My.com/app", true),
            ("Registry.MY.com", "registry.my.com/app", true),
            ("registry.my.com", "registry.my.com:443/app", false),
            ("registry.my.com:443", "registry.my.com/app", false),
            ("registry.my.com:443", "registry.my.com:443/app", true),
            ("registry.my.com", "registry.my.com.evil.io/app", false),
            ("registry.my.com", "evilregistry.my.com/app", false),
            // the classic prefix bypasses
            ("docker.io", "docker.io.evil.com/x", false),
            ("docker.io", "nginx", true),
            ("docker.io/library", "nginx", true),
            ("docker.io/library", "docker.io/library/nginx:1.25", true),
            ("docker.io/library", "myorg/nginx", false),
            ("docker.io/library", "Evil/nginx", false),
            ("docker.io", "Evil/app", false),
            ("index.docker.io", "nginx", true),
            ("index.docker.io/library", "index.docker.io/library/nginx", true),
            ("docker.io", "registry-1.docker.io/library/nginx", false),
            // path prefix on '/' boundaries
            ("ghcr.io/my-org", "ghcr.io/my-org/app", true),
            ("ghcr.io/my-org", "ghcr.io/my-org", true),
            ("ghcr.io/my-org", "ghcr.io/my-org/team/app:v1", true),
            ("ghcr.io/my-org", "ghcr.io/my-org-evil/app", false),
            ("ghcr.io/my-org", "ghcr.io/my/org", false),
            ("ghcr.io/my-org/app", "ghcr.io/my-org", false),
            // single-segment wildcard
            ("ghcr.io/*/base", "ghcr.io/team-a/base/img", true),
            ("ghcr.io/*/base", "ghcr.io/team-a/other", false),
            ("ghcr.io/*", "ghcr.io/x", true),
            // subdomain wildcard
            ("*.dkr.ecr.eu-west-1.amazonaws.com", "123.dkr.ecr.eu-west-1.amazonaws.com/app", true),
            ("*.example.com", "a.b.example.com/app", true),
            ("*.example.com", "example.com/app", false),
            ("*.example.com", "example.com.evil.io/app", false),
            ("*.example.com", "evilexample.com/app", false),
            ("*.example.com", "A.EXAMPLE.COM/app", true),
            ("*.example.com:5000", "a.example.com:5000/app", true),
            ("*.example.com:5000", "a.example.com/app", false),
            // IPv6 compares by address, ports exactly
            ("[fd00::1]:5000", "[fd00::1]:5000/app", true),
            ("[fd00::1]:5000", "[fd00:0:0::1]:5000/app", true),
            ("[fd00::1]:5000", "[FD00::1]:5000/app", true),
            ("[fd00::1]:5000", "[fd00::1]/app", false),
            ("[fd00::1]:5000", "[fd00::2]:5000/app", false),
            ("[fd00::1]", "[fd00::1]/app", true),
            ("localhost:5000", "localhost:5000/app", true),
            ("localhost", "localhost:5000/app", false),
            ("10.0.0.1:5000/team", "10.0.0.1:5000/team/app", true),
            // the empty-domain quirk never matches
            ("*.com", "my_reg.com/app", false),
        ];
        let mut failures = Vec::new();
        for &(p, image, want) in table {
            if matches(p, image) != want {
                failures.push(format!("{p:?} vs {image:?}: want {want}"));
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    }

    #[test]
    fn rejects_bad_patterns_with_a_fix() {
        let err = |s: &str| s.parse::<Pattern>().expect_err(s);
        assert_eq!(err("nginx"), PatternError::NoHost("nginx".into(), "docker.io/library/nginx".into()));
        assert_eq!(
            err("library/nginx"),
            PatternError::NoHost("library/nginx".into(), "docker.io/library/nginx".into())
        );
        assert_eq!(err("myorg/app"), PatternError::NoHost("myorg/app".into(), "docker.io/myorg/app".into()));
        assert!(err("nginx").to_string().contains("write \"docker.io/library/nginx\""));
        assert_eq!(err(""), PatternError::Empty);
        assert!(matches!(err("ghcr.io/org/app:v1"), PatternError::TagOrDigest(_)));
        assert!(matches!(err("nginx:1.25"), PatternError::TagOrDigest(_)));
        assert!(matches!(err("ghcr.io/app@sha256:abc"), PatternError::TagOrDigest(_)));
        assert!(matches!(err("reg*.io"), PatternError::Wildcard(_)));
        assert!(matches!(err("*.*.io"), PatternError::Wildcard(_)));
        assert!(matches!(err("*"), PatternError::NoHost(..)));
        assert!(matches!(err("reg.io:99999999"), PatternError::Port(..)));
        assert!(matches!(err("reg.io:abc/x"), PatternError::Port(..)));
        assert!(matches!(err("ghcr.io/Org"), PatternError::Path(..)));
        assert!(matches!(err("ghcr.io/org/"), PatternError::Path(..)));
        assert!(matches!(err("ghcr.io//org"), PatternError::Path(..)));
        assert!(matches!(err("ghcr.io/o*"), PatternError::Path(..)));
        assert!(matches!(err("-bad.io"), PatternError::Host(..)));
        assert!(matches!(err("[zz::1]:5000"), PatternError::Host(..)));
        assert!(matches!(err("reg .io"), PatternError::Whitespace(_)));
        assert!(matches!(err(&"a".repeat(300)), PatternError::TooLong));
    }
}
