//! The TrustedRegistryPolicy spec as users write it: the CRD's Rust types, whose doc comments
//! become `kubectl explain` text, and the CEL rules the API server checks patterns with.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::TrustedRegistryPolicyStatus;
use crate::pattern::MAX_PATTERN_LEN;

/// The API group of the CRD.
pub const GROUP: &str = "trustgate.dev";
/// The served version of the CRD.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of policy objects.
pub const API_VERSION: &str = "trustgate.dev/v1alpha1";

/// Which registries a cluster's workloads may pull images from.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    ),
    group = "trustgate.dev",
    version = "v1alpha1",
    kind = "TrustedRegistryPolicy",
    plural = "trustedregistrypolicies",
    shortname = "trp",
    category = "trustgate",
    status = "TrustedRegistryPolicyStatus",
    doc = "TrustedRegistryPolicy declares the registries that workloads may pull images from. Every applicable policy must trust every image of a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob or ephemeral container.",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode","description":"Enforce denies, Warn warns, Audit only reports"}"#,
    printcolumn = r#"{"name":"Registries","type":"string","jsonPath":".spec.trustedRegistries","description":"trusted registry patterns"}"#,
    printcolumn = r#"{"name":"Violations","type":"integer","jsonPath":".status.audit.violations","description":"running workloads this policy would deny, from the last audit"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedRegistryPolicySpec {
    /// What happens to a workload that violates this policy: `Enforce` (the default) denies it,
    /// `Warn` admits it with a warning that kubectl prints, `Audit` admits it silently and only
    /// reports it in logs, metrics and status.audit.
    #[serde(default)]
    pub mode: Mode,

    /// Registry patterns this policy trusts, written `host[:port][/path]`: `registry.my.com`
    /// trusts every repository on that host; `ghcr.io/my-org` trusts that repository and
    /// everything below it on '/' boundaries; `*.dkr.ecr.eu-west-1.amazonaws.com` trusts any
    /// subdomain; a path segment may be `*` for exactly one segment. Hosts compare
    /// case-insensitively, ports exactly. Docker Hub is `docker.io` (official images live in
    /// `docker.io/library`). Patterns never contain tags or digests.
    #[schemars(length(min = 1, max = 128))]
    pub trusted_registries: Vec<RegistryPattern>,

    /// `Allow` (the default) normalizes images without a registry host the way the container
    /// runtime does (`nginx` is `docker.io/library/nginx`); `Deny` rejects every image that does
    /// not name its registry host explicitly.
    #[serde(default)]
    pub unqualified_images: UnqualifiedImages,

    /// Rules on image tags and digests.
    #[serde(default)]
    pub tags: TagRules,

    /// Namespaces this policy applies to, selected by their labels. Empty or absent selects
    /// every namespace. Select on `kubernetes.io/metadata.name` to name namespaces: the API
    /// server sets that label and namespace owners cannot change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Names of namespaces this policy never applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 63)))]
    pub excluded_namespaces: Vec<String>,

    /// Narrow, expiring carve-outs: images matching an exception are trusted by this policy in
    /// the exception's namespaces until it expires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exceptions: Vec<Exception>,

    /// Appended to every denial and warning from this policy: tell developers where trusted
    /// images come from (a wiki page, a mirror, a team channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,

    /// What an UPDATE may do with images the object already had. `Allow` (the default): an
    /// image string that the old object already had in any container list (compared as
    /// written) is admitted even when it violates this policy, with a warning that names the
    /// policy, so `kubectl rollout restart`, label and resource changes of workloads created
    /// before the policy keep working; images new in the UPDATE are checked as usual, and the
    /// audit still counts the workload. `Deny` checks every image on every UPDATE. CREATE is
    /// always checked in full.
    #[serde(default)]
    pub existing_images: ExistingImages,

    /// Extra rules for the images of some registries, on top of the policy-wide tags: an image
    /// that matches any pattern of a rule must also satisfy that rule's tags and
    /// imagePullPolicy (for example: Docker Hub images pinned by digest, private images pulled
    /// with imagePullPolicy Always). A rule trusts nothing by itself: trust comes from
    /// trustedRegistries only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub registry_rules: Vec<RegistryRule>,
}

/// Whether an UPDATE may keep images that the object already had.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExistingImages {
    #[default]
    Allow,
    Deny,
}

/// Rules for the images of some registries. Set tags, imagePullPolicy or both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.imagePullPolicy) || (has(self.tags) && ((has(self.tags.requireDigest) && self.tags.requireDigest) || (has(self.tags.deny) && size(self.tags.deny) > 0)))",
    "message": "a registry rule must require something: set imagePullPolicy: Always, tags.requireDigest: true or tags.deny",
    "reason": "FieldValueInvalid"
}]))]
pub struct RegistryRule {
    /// The images this rule is for, in the grammar of trustedRegistries (`docker.io` is every
    /// Docker Hub image, `registry.my.com/team` that repository and everything below it).
    #[schemars(length(min = 1, max = 32))]
    pub registries: Vec<RegistryPattern>,

    /// Tag and digest rules for these images, checked in addition to the policy-wide tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "TagRules")]
    pub tags: Option<TagRules>,

    /// `Always`: containers running these images must set `imagePullPolicy: Always`, so the
    /// kubelet checks the pull credentials of every Pod instead of running a private image
    /// another Pod left in the node's cache. A container that does not set it gets the API
    /// server's default: `Always` for an image tagged `latest` or with neither tag nor digest,
    /// `IfNotPresent` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "RequiredPullPolicy")]
    pub image_pull_policy: Option<RequiredPullPolicy>,
}

/// The pull policy a registry rule requires.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RequiredPullPolicy {
    Always,
}

/// What happens to a violating workload.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
    Audit,
}

impl Mode {
    /// Every mode, in a stable order (metrics labels, summaries).
    pub const ALL: [Mode; 3] = [Mode::Enforce, Mode::Warn, Mode::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "Enforce",
            Mode::Warn => "Warn",
            Mode::Audit => "Audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether images without a written registry host are acceptable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UnqualifiedImages {
    #[default]
    Allow,
    Deny,
}

/// Rules on tags and digests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagRules {
    /// Require every image to be pinned by digest (`@sha256:...`).
    #[serde(default)]
    pub require_digest: bool,

    /// Tags that are never acceptable, compared exactly (tags are case-sensitive). An image
    /// written without tag or digest counts as `latest`, because that is what the runtime
    /// pulls; an image pinned by digest never counts, whatever tag it also carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")))]
    pub deny: Vec<String>,
}

/// A narrow, expiring carve-out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exception {
    /// Image patterns this exception covers, in the same grammar as trustedRegistries
    /// (`docker.io/library/busybox` covers every tag of that repository).
    #[schemars(length(min = 1, max = 16))]
    pub images: Vec<RegistryPattern>,

    /// Namespaces the exception applies in. Empty: every namespace the policy applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,

    /// When the exception stops applying (RFC 3339, e.g. `2026-12-31T00:00:00Z`). Required:
    /// exceptions that never expire become permanent holes.
    pub expires: Time,

    /// Why the exception exists (a ticket, an incident): shown in logs and audit output.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// A `host[:port][/path]` registry pattern, validated by the API server with CEL rules that
/// mirror [`Pattern`]'s parser. The list bounds above keep the rules' estimated CEL cost
/// (string length x regex length x enclosing maxItems) inside the API server's budget: a real
/// API server refused 64 exceptions x 32 images (1.18x over); 64 x 16 halves it. The same
/// server accepted 32 registryRules x 32 patterns and 16 x 64 and refused 64 x 32 and 32 x 64
/// (1.18x again); 16 x 32 keeps half of that room.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct RegistryPattern(pub String);

impl From<&str> for RegistryPattern {
    fn from(s: &str) -> Self {
        RegistryPattern(s.to_owned())
    }
}

impl JsonSchema for RegistryPattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RegistryPattern".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The rules run in order of likelihood; each one's message says how to fix the pattern.
        let [host, no_tag, grammar] = CEL_RULES;
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_PATTERN_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": format!("self.matches(r'{host}')"),
                    "messageExpression": r#"'"' + self + '" names no registry host (the runtime reads it as a Docker Hub repository); write "docker.io/' + (self.contains('/') ? '' : 'library/') + self + '"'"#,
                    "reason": "FieldValueInvalid"
                },
                {
                    "rule": format!("!self.contains('@') && !self.matches(r'{no_tag}')"),
                    "message": "patterns name registries and repositories only, never tags or digests",
                    "reason": "FieldValueInvalid"
                },
                {
                    "rule": format!("self.matches(r'{grammar}')"),
                    "message": "must be host[:port][/path]: a DNS name (optionally with a leading \"*.\"), IPv4 or [IPv6] host, a port of 1 to 5 digits, and lowercase path segments or \"*\"",
                    "reason": "FieldValueInvalid"
                }
            ]
        })
    }
}

/// The RE2 expressions of the CRD's CEL rules: the first component names a host; no tag after
/// a '/'; the grammar of [`Pattern`]. Tested against the parser in `tests`.
pub(crate) const CEL_RULES: [&str; 3] = [r"^(\[|localhost(:|/|$)|[^/]*[.:])", r"/[^/]*:", PATTERN_REGEX];

const PATTERN_REGEX: &str = concat!(
    r"^(\*\.)?[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*",
    r"(:[0-9]{1,5})?(/([a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*|\*))*$",
    r"|^\[[a-fA-F0-9:]+\](:[0-9]{1,5})?(/([a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*|\*))*$"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD's CEL rules run in the API server, which we cannot start here; check that their
    /// regular expressions (RE2 syntax, which the `regex` crate shares) accept exactly what the
    /// server's parser accepts, apart from the checks only the parser can make.
    #[test]
    fn cel_rules_agree_with_the_pattern_parser() {
        use crate::pattern::Pattern;
        let [host, no_tag, grammar] = CEL_RULES.map(|r| regex::Regex::new(r).expect("valid RE2"));
        let cel_accepts = |s: &str| host.is_match(s) && !s.contains('@') && !no_tag.is_match(s) && grammar.is_match(s);
        let samples = [
            "registry.my.com",
            "ghcr.io/my-org",
            "ghcr.io/my-org/app",
            "*.dkr.ecr.eu-west-1.amazonaws.com",
            "docker.io/library",
            "index.docker.io",
            "localhost",
            "localhost:5000",
            "localhost/x",
            "[fd00::1]:5000",
            "[fd00::1]/x",
            "10.0.0.1:5000/team",
            "ghcr.io/*/base",
            "ghcr.io/*",
            "Registry.MY.com",
            "a.b.c.d.e/f/g/h",
            "reg.io:1",
            "reg.io:65535/a__b/c.d/e-f/g---h",
            "nginx",
            "library/nginx",
            "myorg/app",
            "",
            "nginx:1.25",
            "ghcr.io/org/app:v1",
            "ghcr.io/app@sha256:abc",
            "reg*.io",
            "*.*.io",
            "*",
            "*.io",
            "reg.io:123456",
            "reg.io:abc/x",
            "ghcr.io/Org",
            "ghcr.io/org/",
            "ghcr.io//org",
            "ghcr.io/o*",
            "-bad.io",
            "bad-.io",
            "reg .io",
            " reg.io",
            "reg.io/a..b",
            "reg.io/a___b",
            "reg.io/-a",
            "[zz::1]",
            "[]:5",
            "reg.io:",
            ":5000",
            ".reg.io",
            "reg..io",
            "reg.io/a_",
            "localhostx/a",
            "Evil/app",
            "EVIL",
        ];
        for s in samples {
            assert_eq!(cel_accepts(s), s.parse::<Pattern>().is_ok(), "CEL and parser disagree on {s:?}");
        }
        // Only the parser knows IPv6 addresses and port ranges; the server reports these in status.
        for s in ["[1:2:3]", "[fd00::1::2]"] {
            assert!(cel_accepts(s) && s.parse::<Pattern>().is_err(), "{s}");
        }
    }
}
