//! Independent oracle for `trustgate_core::reference`.
//!
//! Every row in these tables states what Go's `github.com/distribution/reference`
//! (v0.6.0) `ParseNormalizedNamed`, followed by kubelet's `TagNameOnly` (implicit
//! `:latest`), does with the input, with digests validated by
//! `github.com/opencontainers/go-digest` v1.0.0 (the released version, which registers
//! sha256, sha384 and sha512). The expectations were derived from the grammar in
//! `reference.go`/`regexp.go`, the `splitDockerDomain` rules in `normalize.go` and
//! `Digest.Validate`/`Algorithm.Validate` in go-digest, and cross-checked row by row
//! against those Go packages.
//!
//! The order of checks in Go, which decides *which* error an input gets:
//!
//! 1. the whole input is exactly 64 lowercase hex characters -> "cannot specify 64-byte
//!    hexadecimal strings";
//! 2. `splitDockerDomain` (first `/`-separated component is a host if it is `localhost`,
//!    `index.docker.io` (rewritten to `docker.io`), contains `.` or `:`, or is not
//!    lowercase; no `/` at all means Docker Hub; single-component Docker Hub paths get
//!    `library/`);
//! 3. the remainder up to its first `:` must equal its (Unicode) lowercase form ->
//!    "invalid reference format: repository name (...) must be lowercase";
//! 4. `Parse(domain + "/" + remainder)`: anchored regexp (failure -> "repository name must
//!    be lowercase" when the lowercased input would match, else "invalid reference
//!    format"), then path length <= 255 ("repository name must not be more than 255
//!    characters"), then go-digest validation of the digest ("unsupported digest
//!    algorithm", "invalid checksum digest length", "invalid checksum digest format").
//!
//! Each table test runs every row and reports all mismatches in one panic.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

use trustgate_core::reference::{Reference, ReferenceError};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// sha256("") — 64 lowercase hex.
const H64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Another 64 lowercase hex string (sha256("trustgate")).
const H64B: &str = "47dce53ee8707091a7c0d1cf8d5479f7b765e0488f1b6a00eb2cc3b73a3b150c";
/// The same as `H64` in uppercase.
const H64_UPPER: &str = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
/// sha384("") — 96 lowercase hex.
const H96: &str = "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b";
/// sha512("") — 128 lowercase hex.
const H128: &str = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

const D256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const D256B: &str = "sha256:47dce53ee8707091a7c0d1cf8d5479f7b765e0488f1b6a00eb2cc3b73a3b150c";
const D384: &str =
    "sha384:38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b";
const D512: &str = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
/// The digest from distribution/reference's own `TestParseReferenceWithTagAndDigest`.
const D_BUSYBOX: &str = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";

// Error kinds: a substring of the Display text (see `error_matches`).
/// Generic grammar failure. Matching requires that none of the more specific markers
/// below appear, because Go's lowercase error also starts with "invalid reference format".
const FORMAT: &str = "invalid reference format";
const LOWER: &str = "must be lowercase";
const TOO_LONG: &str = "must not be more than 255 characters";
const UNSUPPORTED: &str = "unsupported digest algorithm";
const DIGEST_LEN: &str = "invalid checksum digest length";
const DIGEST_FMT: &str = "invalid checksum digest format";
const HEX64: &str = "cannot specify 64-byte hexadecimal strings";

const SPECIFIC_MARKERS: [&str; 6] = [LOWER, TOO_LONG, UNSUPPORTED, DIGEST_LEN, DIGEST_FMT, HEX64];

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn rep(s: &str, n: usize) -> String {
    s.repeat(n)
}

// ---------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Valid {
    input: &'static str,
    domain: &'static str,
    path: &'static str,
    tag: Option<&'static str>,
    digest: Option<&'static str>,
    /// `to_string()`: name + (":" + tag | ":latest" when no tag and no digest) + ("@" + digest)
    normalized: &'static str,
    written_domain: bool,
}

#[derive(Debug, Clone)]
struct Invalid {
    input: &'static str,
    error_contains: &'static str,
}

fn ok(
    input: &'static str,
    domain: &'static str,
    path: &'static str,
    tag: Option<&'static str>,
    digest: Option<&'static str>,
    normalized: &'static str,
    written_domain: bool,
) -> Valid {
    Valid { input, domain, path, tag, digest, normalized, written_domain }
}

/// Same as `ok` for generated (owned) strings.
fn ok_s(
    input: String,
    domain: &'static str,
    path: String,
    tag: Option<String>,
    digest: Option<&'static str>,
    normalized: String,
    written_domain: bool,
) -> Valid {
    Valid {
        input: leak(input),
        domain,
        path: leak(path),
        tag: tag.map(leak),
        digest,
        normalized: leak(normalized),
        written_domain,
    }
}

fn bad(input: &'static str, error_contains: &'static str) -> Invalid {
    Invalid { input, error_contains }
}

fn bad_s(input: String, error_contains: &'static str) -> Invalid {
    Invalid { input: leak(input), error_contains }
}

#[rustfmt::skip]
fn valid_vectors() -> Vec<Valid> {
    let hub = "docker.io";
    let mut v = vec![
        // --- Docker Hub familiar names -------------------------------------------------
        ok("nginx", hub, "library/nginx", None, None, "docker.io/library/nginx:latest", false),
        ok("nginx:1.25", hub, "library/nginx", Some("1.25"), None, "docker.io/library/nginx:1.25", false),
        ok("nginx:latest", hub, "library/nginx", Some("latest"), None, "docker.io/library/nginx:latest", false),
        ok("a", hub, "library/a", None, None, "docker.io/library/a:latest", false),
        ok("0", hub, "library/0", None, None, "docker.io/library/0:latest", false),
        ok("ubuntu-12.04-base", hub, "library/ubuntu-12.04-base", None, None, "docker.io/library/ubuntu-12.04-base:latest", false),
        ok("library/nginx", hub, "library/nginx", None, None, "docker.io/library/nginx:latest", false),
        ok("library/nginx:stable-alpine", hub, "library/nginx", Some("stable-alpine"), None, "docker.io/library/nginx:stable-alpine", false),
        ok("library/foo/bar", hub, "library/foo/bar", None, None, "docker.io/library/foo/bar:latest", false),
        ok("myorg/app", hub, "myorg/app", None, None, "docker.io/myorg/app:latest", false),
        ok("myorg/app:v2", hub, "myorg/app", Some("v2"), None, "docker.io/myorg/app:v2", false),
        ok("myorg/team/app", hub, "myorg/team/app", None, None, "docker.io/myorg/team/app:latest", false),
        ok("other/library", hub, "other/library", None, None, "docker.io/other/library:latest", false),
        ok("store/foo/bar", hub, "store/foo/bar", None, None, "docker.io/store/foo/bar:latest", false),
        ok("a/b/c/d/e/f", hub, "a/b/c/d/e/f", None, None, "docker.io/a/b/c/d/e/f:latest", false),
        ok("docker/docker", hub, "docker/docker", None, None, "docker.io/docker/docker:latest", false),
        ok("d/docker", hub, "d/docker", None, None, "docker.io/d/docker:latest", false),
        ok("jess/t", hub, "jess/t", None, None, "docker.io/jess/t:latest", false),
        ok("0/1", hub, "0/1", None, None, "docker.io/0/1:latest", false),
        // "docker.io" is not a component of its own when there is no slash: a familiar name.
        ok("docker.io", hub, "library/docker.io", None, None, "docker.io/library/docker.io:latest", false),
        ok("docker.io:5000", hub, "library/docker.io", Some("5000"), None, "docker.io/library/docker.io:5000", false),

        // --- Docker Hub written explicitly ----------------------------------------------
        ok("docker.io/nginx", hub, "library/nginx", None, None, "docker.io/library/nginx:latest", true),
        ok("docker.io/nginx:1.25", hub, "library/nginx", Some("1.25"), None, "docker.io/library/nginx:1.25", true),
        ok("docker.io/library/nginx", hub, "library/nginx", None, None, "docker.io/library/nginx:latest", true),
        ok("docker.io/myorg/app", hub, "myorg/app", None, None, "docker.io/myorg/app:latest", true),
        ok("docker.io/a/b/c", hub, "a/b/c", None, None, "docker.io/a/b/c:latest", true),
        ok("docker.io/library/foo/bar", hub, "library/foo/bar", None, None, "docker.io/library/foo/bar:latest", true),
        // index.docker.io is rewritten (exact, case-sensitive comparison).
        ok("index.docker.io/nginx", hub, "library/nginx", None, None, "docker.io/library/nginx:latest", true),
        ok("index.docker.io/library/nginx", hub, "library/nginx", None, None, "docker.io/library/nginx:latest", true),
        ok("index.docker.io/myorg/app:v1", hub, "myorg/app", Some("v1"), None, "docker.io/myorg/app:v1", true),
        ok("index.docker.io/docker/docker", hub, "docker/docker", None, None, "docker.io/docker/docker:latest", true),
        ok("Index.docker.io/x", "Index.docker.io", "x", None, None, "Index.docker.io/x:latest", true),
        ok("INDEX.DOCKER.IO/x", "INDEX.DOCKER.IO", "x", None, None, "INDEX.DOCKER.IO/x:latest", true),
        ok("index.docker.io:443/nginx", "index.docker.io:443", "nginx", None, None, "index.docker.io:443/nginx:latest", true),
        // Hosts that merely look like Docker Hub stay their own hosts, without library/.
        ok("registry-1.docker.io/nginx", "registry-1.docker.io", "nginx", None, None, "registry-1.docker.io/nginx:latest", true),
        ok("registry-1.docker.io/library/nginx:1", "registry-1.docker.io", "library/nginx", Some("1"), None, "registry-1.docker.io/library/nginx:1", true),
        ok("docker.io.evil.com/x", "docker.io.evil.com", "x", None, None, "docker.io.evil.com/x:latest", true),
        ok("docker.io.evil.com/library/nginx", "docker.io.evil.com", "library/nginx", None, None, "docker.io.evil.com/library/nginx:latest", true),
        ok("Docker.io/nginx", "Docker.io", "nginx", None, None, "Docker.io/nginx:latest", true),
        ok("DOCKER.IO/nginx", "DOCKER.IO", "nginx", None, None, "DOCKER.IO/nginx:latest", true),
        ok("docker.io:443/nginx", "docker.io:443", "nginx", None, None, "docker.io:443/nginx:latest", true),
        ok("evil.com/docker.io/library/nginx", "evil.com", "docker.io/library/nginx", None, None, "evil.com/docker.io/library/nginx:latest", true),

        // --- localhost ---------------------------------------------------------------------
        ok("localhost/app", "localhost", "app", None, None, "localhost/app:latest", true),
        ok("localhost/library/debian", "localhost", "library/debian", None, None, "localhost/library/debian:latest", true),
        ok("localhost:5000/app", "localhost:5000", "app", None, None, "localhost:5000/app:latest", true),
        ok("localhost:5000/app:v1", "localhost:5000", "app", Some("v1"), None, "localhost:5000/app:v1", true),
        ok("localhost:5000/app:5000", "localhost:5000", "app", Some("5000"), None, "localhost:5000/app:5000", true),
        ok("LOCALHOST/app", "LOCALHOST", "app", None, None, "LOCALHOST/app:latest", true),
        ok("localhost.localdomain/app", "localhost.localdomain", "app", None, None, "localhost.localdomain/app:latest", true),
        ok("LOCALDOMAIN/fooo/bar", "LOCALDOMAIN", "fooo/bar", None, None, "LOCALDOMAIN/fooo/bar:latest", true),
        // No slash: never a domain.
        ok("localhost", hub, "library/localhost", None, None, "docker.io/library/localhost:latest", false),
        ok("localhost:5000", hub, "library/localhost", Some("5000"), None, "docker.io/library/localhost:5000", false),
        ok("foo.com", hub, "library/foo.com", None, None, "docker.io/library/foo.com:latest", false),
        ok("foo.com:5000", hub, "library/foo.com", Some("5000"), None, "docker.io/library/foo.com:5000", false),
        ok("test.com:tag", hub, "library/test.com", Some("tag"), None, "docker.io/library/test.com:tag", false),
        ok("test_com", hub, "library/test_com", None, None, "docker.io/library/test_com:latest", false),
        ok("foo_bar.com:8080", hub, "library/foo_bar.com", Some("8080"), None, "docker.io/library/foo_bar.com:8080", false),
        ok("192.168.1.1", hub, "library/192.168.1.1", None, None, "docker.io/library/192.168.1.1:latest", false),
        ok("192.168.1.1:5000", hub, "library/192.168.1.1", Some("5000"), None, "docker.io/library/192.168.1.1:5000", false),

        // --- uppercase first component is a registry host ---------------------------------
        ok("Evil/app", "Evil", "app", None, None, "Evil/app:latest", true),
        ok("EVIL/app:v1", "EVIL", "app", Some("v1"), None, "EVIL/app:v1", true),
        ok("eVIL/app", "eVIL", "app", None, None, "eVIL/app:latest", true),
        ok("Foo/bar/baz", "Foo", "bar/baz", None, None, "Foo/bar/baz:latest", true),
        ok("FOO/bar", "FOO", "bar", None, None, "FOO/bar:latest", true),
        ok("Docker/docker", "Docker", "docker", None, None, "Docker/docker:latest", true),
        ok("Evil-Host/app", "Evil-Host", "app", None, None, "Evil-Host/app:latest", true),
        ok("Evil/app:TAG", "Evil", "app", Some("TAG"), None, "Evil/app:TAG", true),

        // --- registries, ports, IPv4 --------------------------------------------------------
        ok("gcr.io/project/app:v1", "gcr.io", "project/app", Some("v1"), None, "gcr.io/project/app:v1", true),
        ok("registry.example.com/app", "registry.example.com", "app", None, None, "registry.example.com/app:latest", true),
        ok("registry.example.com:443/app", "registry.example.com:443", "app", None, None, "registry.example.com:443/app:latest", true),
        ok("Registry.Example.COM/app", "Registry.Example.COM", "app", None, None, "Registry.Example.COM/app:latest", true),
        ok("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", None, None, "sub-dom1.foo.com/bar/baz/quux:latest", true),
        ok("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", Some("some-long-tag"), None, "sub-dom1.foo.com/bar/baz/quux:some-long-tag", true),
        ok("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app", Some("test.example.com"), None, "b.gcr.io/test.example.com/my-app:test.example.com", true),
        ok("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", Some("xn--n3h.com"), None, "xn--n3h.com/myimage:xn--n3h.com", true),
        ok("a.b/c", "a.b", "c", None, None, "a.b/c:latest", true),
        ok("a-b.example.com/x", "a-b.example.com", "x", None, None, "a-b.example.com/x:latest", true),
        ok("a--b.com/x", "a--b.com", "x", None, None, "a--b.com/x:latest", true),
        ok("1.2.3.4.5/app", "1.2.3.4.5", "app", None, None, "1.2.3.4.5/app:latest", true),
        ok("999.999.999.999/app", "999.999.999.999", "app", None, None, "999.999.999.999/app:latest", true),
        ok("test:5000/repo", "test:5000", "repo", None, None, "test:5000/repo:latest", true),
        ok("a:5000/b", "a:5000", "b", None, None, "a:5000/b:latest", true),
        ok("example.com:0/x", "example.com:0", "x", None, None, "example.com:0/x:latest", true),
        ok("example.com:99999/x", "example.com:99999", "x", None, None, "example.com:99999/x:latest", true),
        ok("example.com:8000/private/moonbase", "example.com:8000", "private/moonbase", None, None, "example.com:8000/private/moonbase:latest", true),
        ok("127.0.0.1:5000/app", "127.0.0.1:5000", "app", None, None, "127.0.0.1:5000/app:latest", true),
        ok("127.0.0.1/app:v1", "127.0.0.1", "app", Some("v1"), None, "127.0.0.1/app:v1", true),
        ok("10.0.0.1/app", "10.0.0.1", "app", None, None, "10.0.0.1/app:latest", true),
        ok("192.168.0.1:8/debian", "192.168.0.1:8", "debian", None, None, "192.168.0.1:8/debian:latest", true),
        ok("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", Some("5050"), None, "192.168.1.1:5000/repo:5050", true),
        ok("foo.com/bar:Tag", "foo.com", "bar", Some("Tag"), None, "foo.com/bar:Tag", true),
        ok("foo.com/a.b/c_d", "foo.com", "a.b/c_d", None, None, "foo.com/a.b/c_d:latest", true),

        // --- IPv6 ----------------------------------------------------------------------------
        ok("[fd00::1]:5000/app", "[fd00::1]:5000", "app", None, None, "[fd00::1]:5000/app:latest", true),
        ok("[::1]/app", "[::1]", "app", None, None, "[::1]/app:latest", true),
        ok("[::1]:5000/repo", "[::1]:5000", "repo", None, None, "[::1]:5000/repo:latest", true),
        ok("[::]/app", "[::]", "app", None, None, "[::]/app:latest", true),
        ok("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None, "[2001:db8::]:5000/repo:latest", true),
        ok("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", Some("tag"), None, "[2001:db8:1:2:3:4:5:6]/repo:tag", true),
        ok("[FD00::1]/app", "[FD00::1]", "app", None, None, "[FD00::1]/app:latest", true),
        ok("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", None, None, "[fc00::1]:5000/docker/docker:latest", true),

        // --- first component with '.' (so taken as a host) that is not a valid domain:
        //     Parse matches it as a plain path, domain "" ---------------------------------------
        ok("my_reg.com/foo", "", "my_reg.com/foo", None, None, "my_reg.com/foo:latest", true),
        ok("my_reg.com/foo:v1", "", "my_reg.com/foo", Some("v1"), None, "my_reg.com/foo:v1", true),
        ok("a_b.c/d/e", "", "a_b.c/d/e", None, None, "a_b.c/d/e:latest", true),
        ok("my__reg.io/x", "", "my__reg.io/x", None, None, "my__reg.io/x:latest", true),

        // --- path component separators ----------------------------------------------------
        ok("a.b", hub, "library/a.b", None, None, "docker.io/library/a.b:latest", false),
        ok("a_b", hub, "library/a_b", None, None, "docker.io/library/a_b:latest", false),
        ok("a__b", hub, "library/a__b", None, None, "docker.io/library/a__b:latest", false),
        ok("a-b", hub, "library/a-b", None, None, "docker.io/library/a-b:latest", false),
        ok("a---b", hub, "library/a---b", None, None, "docker.io/library/a---b:latest", false),
        ok("a.b.c", hub, "library/a.b.c", None, None, "docker.io/library/a.b.c:latest", false),
        ok("myorg/a.b_c__d-e---f", hub, "myorg/a.b_c__d-e---f", None, None, "docker.io/myorg/a.b_c__d-e---f:latest", false),
        ok("a_b/c", hub, "a_b/c", None, None, "docker.io/a_b/c:latest", false),
        ok("a__b/c", hub, "a__b/c", None, None, "docker.io/a__b/c:latest", false),
        ok("docker-rules/docker", hub, "docker-rules/docker", None, None, "docker.io/docker-rules/docker:latest", false),
        ok("docker---rules/docker", hub, "docker---rules/docker", None, None, "docker.io/docker---rules/docker:latest", false),
        ok("dock__er/docker", hub, "dock__er/docker", None, None, "docker.io/dock__er/docker:latest", false),
        ok("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", hub, "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", None, None, "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest", false),

        // --- tags -----------------------------------------------------------------------------
        ok("nginx:TAG", hub, "library/nginx", Some("TAG"), None, "docker.io/library/nginx:TAG", false),
        ok("nginx:_tag", hub, "library/nginx", Some("_tag"), None, "docker.io/library/nginx:_tag", false),
        ok("nginx:v1.0-rc_1", hub, "library/nginx", Some("v1.0-rc_1"), None, "docker.io/library/nginx:v1.0-rc_1", false),
        ok("nginx:A", hub, "library/nginx", Some("A"), None, "docker.io/library/nginx:A", false),
        ok("nginx:0", hub, "library/nginx", Some("0"), None, "docker.io/library/nginx:0", false),
        ok("nginx:x.-_", hub, "library/nginx", Some("x.-_"), None, "docker.io/library/nginx:x.-_", false),
        ok("nginx:1..2--3__4", hub, "library/nginx", Some("1..2--3__4"), None, "docker.io/library/nginx:1..2--3__4", false),
        ok("lowercase:Uppercase", hub, "library/lowercase", Some("Uppercase"), None, "docker.io/library/lowercase:Uppercase", false),

        // --- digests --------------------------------------------------------------------------
        ok("busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa", hub, "library/busybox", Some("latest"), Some(D_BUSYBOX), "docker.io/library/busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa", false),
    ];

    // Rows that embed the digest constants.
    // (input, domain, path, tag, digest, normalized, written)
    type DigestRow = (String, &'static str, String, Option<&'static str>, &'static str, String, bool);
    let digest_rows: Vec<DigestRow> = vec![
        // (input, domain, path, tag, digest, normalized, written)
        (format!("nginx@{D256}"), hub, "library/nginx".into(), None, D256, format!("docker.io/library/nginx@{D256}"), false),
        (format!("nginx:1.25@{D256}"), hub, "library/nginx".into(), Some("1.25"), D256, format!("docker.io/library/nginx:1.25@{D256}"), false),
        (format!("app@{D256}"), hub, "library/app".into(), None, D256, format!("docker.io/library/app@{D256}"), false),
        (format!("app:v1@{D256}"), hub, "library/app".into(), Some("v1"), D256, format!("docker.io/library/app:v1@{D256}"), false),
        (format!("app:latest@{D256B}"), hub, "library/app".into(), Some("latest"), D256B, format!("docker.io/library/app:latest@{D256B}"), false),
        (format!("app@{D384}"), hub, "library/app".into(), None, D384, format!("docker.io/library/app@{D384}"), false),
        (format!("app@{D512}"), hub, "library/app".into(), None, D512, format!("docker.io/library/app@{D512}"), false),
        (format!("docker.io/nginx:1.25@{D256}"), hub, "library/nginx".into(), Some("1.25"), D256, format!("docker.io/library/nginx:1.25@{D256}"), true),
        (format!("index.docker.io/myorg/app@{D256}"), hub, "myorg/app".into(), None, D256, format!("docker.io/myorg/app@{D256}"), true),
        (format!("Evil/app@{D256}"), "Evil", "app".into(), None, D256, format!("Evil/app@{D256}"), true),
        (format!("registry.example.com:5000/team/app:1.0@{D256}"), "registry.example.com:5000", "team/app".into(), Some("1.0"), D256, format!("registry.example.com:5000/team/app:1.0@{D256}"), true),
        (format!("quay.io/org/app@{D512}"), "quay.io", "org/app".into(), None, D512, format!("quay.io/org/app@{D512}"), true),
        (format!("example.com/app:latest@{D384}"), "example.com", "app".into(), Some("latest"), D384, format!("example.com/app:latest@{D384}"), true),
        (format!("localhost:5000/app@{D256}"), "localhost:5000", "app".into(), None, D256, format!("localhost:5000/app@{D256}"), true),
        (format!("test:5000/repo:tag@{D256}"), "test:5000", "repo".into(), Some("tag"), D256, format!("test:5000/repo:tag@{D256}"), true),
        (format!("[2001:db8::1]:5000/repo:tag@{D256}"), "[2001:db8::1]:5000", "repo".into(), Some("tag"), D256, format!("[2001:db8::1]:5000/repo:tag@{D256}"), true),
        (format!("xn--7o8h.com/myimage:xn--7o8h.com@{D256}"), "xn--7o8h.com", "myimage".into(), Some("xn--7o8h.com"), D256, format!("xn--7o8h.com/myimage:xn--7o8h.com@{D256}"), true),
        (format!("my_reg.com/foo@{D256}"), "", "my_reg.com/foo".into(), None, D256, format!("my_reg.com/foo@{D256}"), true),
        // A 64-hex *name* is fine when it is not the whole input.
        (format!("{H64}@{D256}"), hub, format!("library/{H64}"), None, D256, format!("docker.io/library/{H64}@{D256}"), false),
    ];
    for (input, domain, path, tag, digest, normalized, written) in digest_rows {
        v.push(ok_s(input, domain, path, tag.map(String::from), Some(digest), normalized, written));
    }

    // --- 64-hex identifiers: only the exact 64-lowercase-hex input is rejected ------------
    let h63 = &H64[..63];
    let h65 = format!("{H64}a");
    v.push(ok_s(format!("{H64}:v1"), hub, format!("library/{H64}"), Some("v1".into()), None, format!("docker.io/library/{H64}:v1"), false));
    v.push(ok_s(format!("docker.io/{H64}"), hub, format!("library/{H64}"), None, None, format!("docker.io/library/{H64}:latest"), true));
    v.push(ok_s(format!("myorg/{H64}"), hub, format!("myorg/{H64}"), None, None, format!("docker.io/myorg/{H64}:latest"), false));
    v.push(ok_s(format!("{H64B}/app"), hub, format!("{H64B}/app"), None, None, format!("docker.io/{H64B}/app:latest"), false));
    v.push(ok_s(h63.to_string(), hub, format!("library/{h63}"), None, None, format!("docker.io/library/{h63}:latest"), false));
    v.push(ok_s(h65.clone(), hub, format!("library/{h65}"), None, None, format!("docker.io/library/{h65}:latest"), false));
    // "sha256:<hex>" on its own is NOT a digest for ParseNormalizedNamed (only
    // ParseAnyReference special-cases it): it is the repository "sha256" with a 64-char tag.
    v.push(ok_s(format!("sha256:{H64}"), hub, "library/sha256".into(), Some(H64.into()), None, format!("docker.io/library/sha256:{H64}"), false));
    v.push(ok_s(format!("sha256:{h63}"), hub, "library/sha256".into(), Some(h63.into()), None, format!("docker.io/library/sha256:{h63}"), false));

    // --- tag length: 128 is the maximum ------------------------------------------------------
    let t128 = rep("t", 128);
    v.push(ok_s(format!("nginx:{t128}"), hub, "library/nginx".into(), Some(t128.clone()), None, format!("docker.io/library/nginx:{t128}"), false));
    let t128b = format!("V{}", rep("a.-_9", 127).chars().take(127).collect::<String>());
    assert_eq!(t128b.len(), 128);
    v.push(ok_s(format!("foo.com/app:{t128b}"), "foo.com", "app".into(), Some(t128b.clone()), None, format!("foo.com/app:{t128b}"), true));

    // --- path length: at most 255 characters after the domain (library/ counts) -------------
    let a247 = rep("a", 247);
    v.push(ok_s(a247.clone(), hub, format!("library/{a247}"), None, None, format!("docker.io/library/{a247}:latest"), false));
    v.push(ok_s(format!("{a247}:v1"), hub, format!("library/{a247}"), Some("v1".into()), None, format!("docker.io/library/{a247}:v1"), false));
    v.push(ok_s(format!("docker.io/{a247}"), hub, format!("library/{a247}"), None, None, format!("docker.io/library/{a247}:latest"), true));
    let a249 = rep("a", 249);
    v.push(ok_s(format!("myorg/{a249}"), hub, format!("myorg/{a249}"), None, None, format!("docker.io/myorg/{a249}:latest"), false));
    let a255 = rep("a", 255);
    v.push(ok_s(format!("foo.com/{a255}"), "foo.com", a255.clone(), None, None, format!("foo.com/{a255}:latest"), true));
    v.push(ok_s(format!("example.com/{a255}:{t128}@{D512}"), "example.com", a255.clone(), Some(t128.clone()), Some(D512), format!("example.com/{a255}:{t128}@{D512}"), true));
    let slashes = format!("{}a", rep("a/", 127));
    assert_eq!(slashes.len(), 255);
    v.push(ok_s(format!("{slashes}:tag-puts-this-over-max"), hub, slashes.clone(), Some("tag-puts-this-over-max".into()), None, format!("docker.io/{slashes}:tag-puts-this-over-max"), false));
    // The domain does not count towards the limit.
    let long_host = format!("{}.com", rep("h", 300));
    v.push(ok_s(format!("{long_host}/{a255}"), leak(long_host.clone()), a255.clone(), None, None, format!("{long_host}/{a255}:latest"), true));

    v
}

#[rustfmt::skip]
fn invalid_vectors() -> Vec<Invalid> {
    let mut v = vec![
        // --- empty, whitespace, control characters -----------------------------------------
        bad("", FORMAT),
        bad(" ", FORMAT),
        bad(" nginx", FORMAT),
        bad("nginx ", FORMAT),
        bad("ngi nx", FORMAT),
        bad("nginx :1", FORMAT),
        bad("nginx: 1", FORMAT),
        bad("nginx:1.25 ", FORMAT),
        bad("nginx\t", FORMAT),
        bad("nginx\n", FORMAT),
        bad("\nnginx", FORMAT),
        bad("nginx\r\n", FORMAT),
        bad("nginx\0", FORMAT),
        bad("foo.com /app", FORMAT),
        bad("foo.com/ app", FORMAT),
        bad("nginx:la test", FORMAT),

        // --- non-ASCII (the grammar is ASCII only) ------------------------------------------
        bad("ñginx", FORMAT),
        bad("nginx:tagé", FORMAT),
        bad("regístry.com/app", FORMAT),
        bad("xn--n3h.com/☃", FORMAT),
        bad("nginx:１", FORMAT),
        bad("ＮＧＩＮＸ", LOWER),       // fullwidth capitals: strings.ToLower changes them
        bad("nginx\u{212A}", LOWER),   // KELVIN SIGN lowercases to ASCII 'k'
        bad("\u{212A}/app", LOWER),    // taken as a host (not lowercase); Parse's lowercase retry matches "k/app"
        // Go lowercases with Unicode rules (strings.ToLower), not ASCII rules.
        bad("nginx\u{130}", LOWER),    // LATIN CAPITAL LETTER I WITH DOT ABOVE
        bad("\u{130}/app", LOWER),     // host-like; lowercased "i/app" parses
        bad("Émile", LOWER),
        bad("myorg/Ñ", LOWER),
        bad("É/app", FORMAT),          // taken as a host, but "é/app" does not parse either
        bad("café", FORMAT),           // nothing to lowercase: plain grammar error
        bad("Nginx ", LOWER),          // the lowercase check runs before the grammar
        bad("Nginx\t:v1", LOWER),
        bad("myorg/App name", LOWER),

        // --- uppercase repository path ------------------------------------------------------
        bad("Nginx", LOWER),
        bad("NGINX", LOWER),
        bad("NGINX:1.25", LOWER),
        bad("Uppercase:tag", LOWER),
        bad("nginx/App", LOWER),
        bad("myorg/App:v1", LOWER),
        bad("library/Nginx", LOWER),
        bad("docker/Docker", LOWER),
        bad("docker.io/Nginx", LOWER),
        bad("docker.io/docker/Docker", LOWER),
        bad("index.docker.io/Nginx", LOWER),
        bad("Evil/App", LOWER),
        bad("Foo/Bar", LOWER),
        bad("foo.com/Bar", LOWER),
        bad("foo.com/bar/BAZ:v1", LOWER),
        bad("localhost/App", LOWER),
        bad("localhost:5000/App", LOWER),
        bad("test:5000/Uppercase/lowercase:tag", LOWER),
        bad("[::1]/App", LOWER),
        bad("my_reg.com/Foo", LOWER),
        // First component taken as a host but not a valid one; lowercased it would parse.
        bad("My_reg.com/foo", LOWER),
        bad("FOO_BAR/app", LOWER),
        bad("a_B.com/x", LOWER),

        // --- 64-hex identifiers ----------------------------------------------------------------
        bad("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", HEX64),
        bad(H64, HEX64),
        bad(H64B, HEX64),
        bad(H64_UPPER, LOWER),

        // --- path component separators ----------------------------------------------------------
        bad("a..b", FORMAT),
        bad("a___b", FORMAT),
        bad("a._b", FORMAT),
        bad("a_.b", FORMAT),
        bad("a-.b", FORMAT),
        bad("a.-b", FORMAT),
        bad("a-_b", FORMAT),
        bad("-a", FORMAT),
        bad("a-", FORMAT),
        bad("_a", FORMAT),
        bad("a_", FORMAT),
        bad(".a", FORMAT),
        bad("a.", FORMAT),
        bad("-foo", FORMAT),
        bad("____/____", FORMAT),
        bad("_docker/_docker", FORMAT),
        bad("-docker/docker", FORMAT),
        bad("docker-/docker", FORMAT),
        bad("-docker-/docker", FORMAT),
        bad("dock..er/docker", FORMAT),
        bad("dock_.er/docker", FORMAT),
        bad("dock-.er/docker", FORMAT),
        bad("myorg/a..b", FORMAT),
        bad("myorg/a___b", FORMAT),
        bad("foo.com/-app", FORMAT),
        bad("foo.com/app-", FORMAT),
        bad("foo.com/_app", FORMAT),
        bad("aa/asdf$$^/aa", FORMAT),
        bad("nginx#1", FORMAT),
        bad("nginx;rm", FORMAT),
        bad("nginx%20", FORMAT),
        bad("foo.com\\bar", FORMAT),
        bad("a+b", FORMAT),

        // --- slashes ----------------------------------------------------------------------------
        bad("/", FORMAT),
        bad("/nginx", FORMAT),
        bad("nginx/", FORMAT),
        bad("myorg/app/", FORMAT),
        bad("myorg//app", FORMAT),
        bad("docker///docker", FORMAT),
        bad("docker.io/", FORMAT),
        bad("docker.io//app", FORMAT),
        bad("docker.io/docker///docker", FORMAT),
        bad("foo.com/", FORMAT),
        bad("foo.com/bar/", FORMAT),
        bad("localhost/", FORMAT),
        bad("https://github.com/docker/docker", FORMAT),
        bad("http://foo.com/bar", FORMAT),
        bad("a/b:c/d", FORMAT),
        bad("nginx:ta/g", FORMAT),

        // --- bad hosts and ports ------------------------------------------------------------------
        bad("-a.com/x", FORMAT),
        bad("-docker.io/docker/docker", FORMAT),
        bad("a-.com/x", FORMAT),
        bad("a..com/x", FORMAT),
        bad(".com/x", FORMAT),
        bad("a.com./x", FORMAT),
        bad("exa mple.com/x", FORMAT),
        bad("example.com:/x", FORMAT),
        bad("example.com:abc/x", FORMAT),
        bad("example.com:5000:6000/x", FORMAT),
        bad("example.com:-1/x", FORMAT),
        bad("example.com:+5000/x", FORMAT),
        bad("localhost:/app", FORMAT),
        bad("foo:bar/baz", FORMAT),
        bad("my_reg.com:5000/foo", FORMAT),
        bad("user@foo.com/app", FORMAT),

        // --- IPv6 ------------------------------------------------------------------------------------
        bad("[fd00::1]", FORMAT),
        bad("[fd00::1]:5000", FORMAT),
        bad("[fc00::1]", FORMAT),
        bad("[2001:db8::1]:tag", FORMAT),
        bad("[]/app", FORMAT),
        bad("[::1/app", FORMAT),
        bad("::1]/app", FORMAT),
        bad("::1/app", FORMAT),
        bad("fc00::1:5000/debian", FORMAT),
        bad("[fe80::1%eth0]:5000/debian", FORMAT),
        bad("[fe80::1%@invalidzone]:5000/repo", FORMAT),
        bad("[2001:db8:3:4::192.0.2.33]:5000/debian", FORMAT),
        bad("[gg::1]/app", FORMAT),
        bad("[::1]:/app", FORMAT),
        bad("[::1]x/app", FORMAT),
        bad("[[::1]]/app", FORMAT),
        bad("[::1].com/app", FORMAT),

        // --- tags ----------------------------------------------------------------------------------
        bad("nginx:", FORMAT),
        bad("nginx:.tag", FORMAT),
        bad("nginx:-tag", FORMAT),
        bad("nginx::1", FORMAT),
        bad("nginx:a:b", FORMAT),
        bad("nginx:tag+1", FORMAT),
        bad("nginx:tag!", FORMAT),
        bad(":justtag", FORMAT),
        bad(":latest", FORMAT),
        bad(":", FORMAT),
        bad("foo.com/app:", FORMAT),
        bad("localhost:5000/app:", FORMAT),

        // --- digests -------------------------------------------------------------------------------
        bad("@", FORMAT),
        bad("nginx@", FORMAT),
        bad("nginx:tag@", FORMAT),
        bad("nginx@sha256:", FORMAT),
        bad("nginx@sha256", FORMAT),
        bad("nginx@sha256:abc", FORMAT),
        bad("nginx@@sha256", FORMAT),
        bad("repo@sha256:ffffffffffffffffffffffffffffffffff", DIGEST_LEN),
        bad("validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", UNSUPPORTED),
    ];

    let h31 = &H64[..31];
    let h32 = &H64[..32];
    let h63 = &H64[..63];
    let g64 = rep("g", 64);
    let mixed = format!("{}{}", &H64_UPPER[..32], &H64[32..]);
    let generated: Vec<(String, &'static str)> = vec![
        (format!("@{D256}"), FORMAT),
        (format!("nginx:@{D256}"), FORMAT),
        (format!("nginx@{D256}@{D256}"), FORMAT),
        (format!("nginx@{D256}:v1"), FORMAT),
        (format!("nginx@{D256} "), FORMAT),
        (format!("nginx@sha256:{h31}"), FORMAT),       // fewer than 32 hex: grammar failure
        (format!("nginx@sha256:{g64}"), FORMAT),       // not hex at all
        (format!("nginx@sha256{H64}"), FORMAT),        // no colon
        (format!("nginx@:{H64}"), FORMAT),             // no algorithm
        (format!("nginx@sha-256:{H64}"), FORMAT),      // algorithm component must start with a letter
        (format!("nginx@1sha:{H64}"), FORMAT),
        (format!("nginx@sha256:{H64}é"), FORMAT),
        (format!("nginx@sha256:{h32}"), DIGEST_LEN),   // 32 hex: grammar ok, length wrong
        (format!("nginx@sha256:{h63}"), DIGEST_LEN),
        (format!("nginx@sha256:{H64}a"), DIGEST_LEN),
        (format!("nginx@sha256:{H128}"), DIGEST_LEN),
        (format!("nginx@sha256:{H96}"), DIGEST_LEN),
        (format!("nginx@sha384:{H64}"), DIGEST_LEN),
        (format!("nginx@sha384:{H128}"), DIGEST_LEN),
        (format!("nginx@sha512:{H64}"), DIGEST_LEN),
        (format!("nginx@sha512:{H96}"), DIGEST_LEN),
        (format!("foo.com/app:v1@sha256:{h63}"), DIGEST_LEN),
        (format!("nginx@sha256:{H64_UPPER}"), DIGEST_FMT), // uppercase hex
        (format!("nginx@sha256:{mixed}"), DIGEST_FMT),
        (format!("nginx@sha512:{}", H128.to_uppercase()), DIGEST_FMT),
        (format!("nginx@sha384:{}", H96.to_uppercase()), DIGEST_FMT),
        (format!("foo.com/app:v1@sha256:{H64_UPPER}"), DIGEST_FMT),
        // Uppercase algorithm: with a tag before it, it reaches go-digest, whose algorithm
        // grammar is lowercase -> format error.
        (format!("foo.com/bar:v1@SHA256:{H64}"), DIGEST_FMT),
        (format!("nginx:v1@Sha256:{H64}"), DIGEST_FMT),
        (format!("foo.com/bar:v1@shaFOO256:{H64}"), DIGEST_FMT),
        (format!("nginx:v1@Md5:{h32}"), DIGEST_FMT),
        (format!("nginx:v1@sha256+B64:{H64}"), DIGEST_FMT),
        // An unsupported (lowercase) algorithm with uppercase hex is still "unsupported".
        (format!("nginx@md5:{}", &H64_UPPER[..32]), UNSUPPORTED),
        // ... without a tag, "@SHA256" is part of the remainder before the first ':' and
        // fails ParseNormalizedNamed's lowercase check first.
        (format!("nginx@SHA256:{H64}"), LOWER),
        (format!("foo.com/bar@SHA256:{H64}"), LOWER),
        (format!("nginx@md5:{h32}"), UNSUPPORTED),
        (format!("nginx@sha1:{}", &H64[..40]), UNSUPPORTED),
        (format!("nginx@sha224:{}", &H64[..56]), UNSUPPORTED),
        (format!("nginx@sha256+b64:{H64}"), UNSUPPORTED),
        (format!("nginx@sha256.x:{H64}"), UNSUPPORTED),
        (format!("nginx@blake3:{H64}"), UNSUPPORTED),
        (format!("nginx:v1@md5:{h32}"), UNSUPPORTED),
        (format!("foo.com/app@sha3-256:{H64}"), FORMAT), // "3-256": component after '-' must start with a letter
        (format!("foo.com/app@sha3_x:{H64}"), UNSUPPORTED),
        // --- tag length -----------------------------------------------------------------------
        (format!("nginx:{}", rep("t", 129)), FORMAT),
        (format!("nginx:{}@{D256}", rep("t", 129)), FORMAT),
        // --- path length -------------------------------------------------------------------------
        (rep("a", 248), TOO_LONG),
        (format!("{}:v1", rep("a", 248)), TOO_LONG),
        (format!("docker.io/{}", rep("a", 248)), TOO_LONG),
        (format!("myorg/{}", rep("a", 250)), TOO_LONG),
        (format!("foo.com/{}", rep("a", 256)), TOO_LONG),
        (format!("domain/{}:tag", rep("a", 256)), TOO_LONG),
        (format!("{}aa", rep("a/", 127)), TOO_LONG),
        (format!("foo.com/{}/{}", rep("b", 200), rep("c", 55)), TOO_LONG),
        ("this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker".to_string(), TOO_LONG),
        // Length is checked before the digest is validated ...
        (format!("{}@md5:{h32}", rep("a", 248)), TOO_LONG),
        (format!("foo.com/{}@sha256:{H64_UPPER}", rep("a", 256)), TOO_LONG),
        // ... but after the lowercase check.
        (rep("A", 300), LOWER),
        (format!("foo.com/{}", rep("A", 300)), LOWER),
    ];
    for (input, kind) in generated {
        v.push(bad_s(input, kind));
    }
    v
}

// ---------------------------------------------------------------------------------------
// Runners
// ---------------------------------------------------------------------------------------

/// Go's two uppercase errors are "invalid reference format: repository name (X) must be
/// lowercase" (ParseNormalizedNamed) and "repository name must be lowercase" (Parse): both
/// name the *repository name*. Requiring that keeps an implementation's extra detail on a
/// plain grammar error (say, "path components must be lowercase [a-z0-9] ...") from being
/// mistaken for the uppercase error, and vice versa.
fn is_lowercase_error(msg: &str) -> bool {
    msg.contains(LOWER) && msg.contains("repository name")
}

fn error_matches(msg: &str, want: &str) -> bool {
    match want {
        FORMAT => {
            msg.contains(FORMAT)
                && !is_lowercase_error(msg)
                && !SPECIFIC_MARKERS.iter().filter(|m| **m != LOWER).any(|m| msg.contains(m))
        }
        LOWER => is_lowercase_error(msg),
        _ => msg.contains(want),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic>".to_string()
    }
}

/// Short, readable form of an input for failure reports.
fn show(input: &str) -> String {
    let dbg = format!("{input:?}");
    if dbg.chars().count() > 110 {
        let head: String = dbg.chars().take(60).collect();
        let tail: String = dbg.chars().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        format!("{head}…{tail} (len {})", input.len())
    } else {
        dbg
    }
}

fn check_valid(row: &Valid) -> Vec<String> {
    let mut errs = Vec::new();
    let parsed: Result<Reference<'_>, ReferenceError> = Reference::parse(row.input);
    let r = match parsed {
        Ok(r) => r,
        Err(e) => {
            errs.push(format!("expected valid, got error: {e}"));
            return errs;
        }
    };
    let expect_name = if row.domain.is_empty() { row.path.to_string() } else { format!("{}/{}", row.domain, row.path) };
    if r.domain() != row.domain {
        errs.push(format!("domain: got {:?}, want {:?}", r.domain(), row.domain));
    }
    if r.path() != row.path {
        errs.push(format!("path: got {:?}, want {:?}", r.path(), row.path));
    }
    if r.name() != expect_name {
        errs.push(format!("name: got {:?}, want {:?}", r.name(), expect_name));
    }
    if r.tag() != row.tag {
        errs.push(format!("tag: got {:?}, want {:?}", r.tag(), row.tag));
    }
    if r.digest() != row.digest {
        errs.push(format!("digest: got {:?}, want {:?}", r.digest(), row.digest));
    }
    let implicit = row.tag.is_none() && row.digest.is_none();
    if r.is_implicit_latest() != implicit {
        errs.push(format!("is_implicit_latest: got {}, want {implicit}", r.is_implicit_latest()));
    }
    if r.has_written_domain() != row.written_domain {
        errs.push(format!("has_written_domain: got {}, want {}", r.has_written_domain(), row.written_domain));
    }
    let s = r.to_string();
    if s != row.normalized {
        errs.push(format!("to_string: got {:?}, want {:?}", s, row.normalized));
    }
    errs
}

fn check_invalid(row: &Invalid) -> Option<String> {
    let parsed: Result<Reference<'_>, ReferenceError> = Reference::parse(row.input);
    match parsed {
        Ok(r) => Some(format!(
            "expected error containing {:?}, but parsed OK: domain={:?} path={:?} tag={:?} digest={:?} -> {}",
            row.error_contains,
            r.domain(),
            r.path(),
            r.tag(),
            r.digest(),
            r
        )),
        Err(e) => {
            let msg = e.to_string();
            if error_matches(&msg, row.error_contains) {
                None
            } else {
                Some(format!("wrong error kind: got {msg:?}, want one containing {:?}", row.error_contains))
            }
        }
    }
}

#[test]
fn valid_reference_vectors() {
    let rows = valid_vectors();
    let mut report = String::new();
    let mut failed = 0;
    for row in &rows {
        let errs = match catch_unwind(AssertUnwindSafe(|| check_valid(row))) {
            Ok(errs) => errs,
            Err(p) => vec![format!("PANIC: {}", panic_text(&*p))],
        };
        if !errs.is_empty() {
            failed += 1;
            let _ = writeln!(report, "  {}:", show(row.input));
            for e in errs {
                let _ = writeln!(report, "      {e}");
            }
        }
    }
    assert!(failed == 0, "{failed} of {} valid vectors failed:\n{report}", rows.len());
}

#[test]
fn invalid_reference_vectors() {
    let rows = invalid_vectors();
    let mut report = String::new();
    let mut failed = 0;
    for row in &rows {
        let err = match catch_unwind(AssertUnwindSafe(|| check_invalid(row))) {
            Ok(e) => e,
            Err(p) => Some(format!("PANIC: {}", panic_text(&*p))),
        };
        if let Some(e) = err {
            failed += 1;
            let _ = writeln!(report, "  {}: {e}", show(row.input));
        }
    }
    assert!(failed == 0, "{failed} of {} invalid vectors failed:\n{report}", rows.len());
}

/// Parsing the normalized form again must give the same normalized form (and the same
/// name and digest): what the policy checks is what the runtime pulls.
#[test]
fn normalized_form_round_trips() {
    let rows = valid_vectors();
    let mut report = String::new();
    let mut failed = 0;
    for row in &rows {
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            let first = Reference::parse(row.input).map_err(|e| format!("first parse failed: {e}"))?;
            let once = first.to_string();
            let second = Reference::parse(&once).map_err(|e| format!("re-parse of {once:?} failed: {e}"))?;
            let twice = second.to_string();
            if twice != once {
                return Err(format!("to_string not stable: {once:?} -> {twice:?}"));
            }
            if second.name() != first.name() {
                return Err(format!("name changed: {:?} -> {:?}", first.name(), second.name()));
            }
            if second.digest() != first.digest() {
                return Err(format!("digest changed: {:?} -> {:?}", first.digest(), second.digest()));
            }
            if second.is_implicit_latest() {
                return Err("normalized form still reports implicit latest".to_string());
            }
            Ok(())
        }));
        let err = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(p) => Some(format!("PANIC: {}", panic_text(&*p))),
        };
        if let Some(e) = err {
            failed += 1;
            let _ = writeln!(report, "  {}: {e}", show(row.input));
        }
    }
    assert!(failed == 0, "{failed} of {} round trips failed:\n{report}", rows.len());
}

/// Guard against the tables silently shrinking.
#[test]
fn tables_are_large_and_unique() {
    let valid = valid_vectors();
    let invalid = invalid_vectors();
    assert!(valid.len() >= 120, "only {} valid vectors", valid.len());
    assert!(invalid.len() >= 150, "only {} invalid vectors", invalid.len());
    let mut seen = std::collections::HashSet::new();
    let mut dups = Vec::new();
    for input in valid.iter().map(|r| r.input).chain(invalid.iter().map(|r| r.input)) {
        if !seen.insert(input) {
            dups.push(show(input));
        }
    }
    assert!(dups.is_empty(), "duplicate inputs in the tables: {dups:?}");
    // Every expected normalized form is consistent with the row's own fields.
    for r in &valid {
        let name = if r.domain.is_empty() { r.path.to_string() } else { format!("{}/{}", r.domain, r.path) };
        let mut n = name;
        match (r.tag, r.digest) {
            (None, None) => n.push_str(":latest"),
            (Some(t), _) => {
                n.push(':');
                n.push_str(t);
            }
            _ => {}
        }
        if let Some(d) = r.digest {
            n.push('@');
            n.push_str(d);
        }
        assert_eq!(n, r.normalized, "row {:?} is internally inconsistent", show(r.input));
    }
}
