//! TrustedRegistryPolicy: the CRD types, their compiled form, and `evaluate()`.
//!
//! Policies are validated and compiled when they change ([`CompiledPolicy::compile`]); admission
//! reads an immutable [`PolicySet`] and gets back a [`Decision`]: a denial is data, from which
//! the admission response, warnings, logs, metrics and the CLI's output are all built.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pattern::{MAX_PATTERN_LEN, Pattern};
use crate::reference::{Reference, ReferenceError};
use crate::workload::{Container, Workload};

/// The API group of the CRD.
pub const GROUP: &str = "trustgate.dev";
/// The served version of the CRD.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of policy objects.
pub const API_VERSION: &str = "trustgate.dev/v1alpha1";
/// The label the API server sets on every Namespace; no namespace owner can forge it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Which registries a cluster's workloads may pull images from.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
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
}

/// The CustomResourceDefinition, with doc-comment line wraps joined so that `kubectl explain`
/// reflows descriptions as paragraphs.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    fn reflow(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match v {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = text.split("\n\n").map(|p| p.replace('\n', " ")).collect::<Vec<_>>().join("\n\n");
                        }
                        other => reflow(other),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(reflow),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(TrustedRegistryPolicy::crd()).expect("a CRD serializes");
    reflow(&mut value);
    serde_json::from_value(value).expect("reflowing descriptions keeps a valid CRD")
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
/// API server refused 64 exceptions x 32 images (1.18x over); 64 x 16 halves it.
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

/// What the server observed of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedRegistryPolicyStatus {
    /// The metadata.generation the server last compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` is True once the server accepted and enforces the policy, False with the reason
    /// (`Invalid`) and the compile error otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// What the last audit of running workloads found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
}

/// The result of the periodic audit of workloads already in the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    /// When the audit last completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,

    /// Workloads (counted per top-level owner) that this policy would deny or warn about.
    #[serde(default)]
    pub violations: i64,

    /// Up to 20 violating workloads, reported per top-level owner (a Deployment, not its Pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<AuditSample>,
}

/// One violating workload found by the audit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSample {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub image: String,
    pub reason: String,
}

/// Why a policy could not be compiled: every problem, each with the field it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy:?} is invalid: {}", problems.join("; "))]
pub struct PolicyError {
    pub policy: String,
    pub problems: Vec<String>,
}

/// A policy validated and compiled for the hot path.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    name: Arc<str>,
    mode: Mode,
    generation: Option<i64>,
    trusted: Vec<Pattern>,
    trusted_display: Arc<str>,
    deny_unqualified: bool,
    require_digest: bool,
    denied_tags: Vec<String>,
    selector: Option<Selector>,
    excluded: Vec<String>,
    exceptions: Vec<CompiledException>,
    message: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct CompiledException {
    images: Vec<Pattern>,
    namespaces: Vec<String>,
    expires: Timestamp,
}

impl CompiledPolicy {
    /// Validates every field and compiles the patterns and selector.
    pub fn compile(policy: &TrustedRegistryPolicy) -> Result<Self, PolicyError> {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let spec = &policy.spec;
        let mut problems = Vec::new();
        if name.is_empty() {
            problems.push("metadata.name is empty".to_owned());
        }
        if spec.trusted_registries.is_empty() {
            problems.push("spec.trustedRegistries must list at least one registry".to_owned());
        }
        let trusted = compile_patterns("spec.trustedRegistries", &spec.trusted_registries, &mut problems);
        let selector = match &spec.namespace_selector {
            None => None,
            Some(s) => match Selector::compile(s) {
                Ok(s) => Some(s).filter(|s| !s.is_empty()),
                Err(e) => {
                    problems.push(format!("spec.namespaceSelector: {e}"));
                    None
                }
            },
        };
        let exceptions = spec
            .exceptions
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let field = format!("spec.exceptions[{i}]");
                if e.images.is_empty() {
                    problems.push(format!("{field}.images must list at least one image pattern"));
                }
                if e.reason.trim().is_empty() {
                    problems.push(format!("{field}.reason is required"));
                }
                CompiledException {
                    images: compile_patterns(&format!("{field}.images"), &e.images, &mut problems),
                    namespaces: e.namespaces.clone(),
                    expires: e.expires.0,
                }
            })
            .collect();
        for (i, tag) in spec.tags.deny.iter().enumerate() {
            if tag.is_empty() {
                problems.push(format!("spec.tags.deny[{i}] is empty"));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError { policy: name, problems });
        }
        Ok(CompiledPolicy {
            trusted_display: spec.trusted_registries.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", ").into(),
            name: name.into(),
            mode: spec.mode,
            generation: policy.metadata.generation,
            trusted,
            deny_unqualified: spec.unqualified_images == UnqualifiedImages::Deny,
            require_digest: spec.tags.require_digest,
            denied_tags: spec.tags.deny.clone(),
            selector,
            excluded: spec.excluded_namespaces.clone(),
            exceptions,
            message: spec.message.as_deref().filter(|m| !m.trim().is_empty()).map(Arc::from),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The `metadata.generation` that was compiled.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Whether this policy applies to workloads in `namespace`.
    pub fn applies_to(&self, namespace: &Namespace<'_>) -> bool {
        if self.excluded.iter().any(|n| n == namespace.name) {
            return false;
        }
        let Some(selector) = &self.selector else { return true };
        selector.matches(|key| match namespace.labels {
            Some(labels) => Known(namespace.label(labels, key)),
            // The name label is known without the Namespace object; other labels of a
            // namespace created a moment ago are not, and then the policy applies: adding a
            // policy may only restrict, so the safe side is to evaluate it.
            None if key == NAMESPACE_NAME_LABEL => Known(Some(namespace.name)),
            None => Unknown,
        })
    }

    /// The namespace names this policy is limited to, when its selector names them and
    /// selects on nothing else (`kubernetes.io/metadata.name In [...]`).
    fn named_namespaces(&self) -> Option<&[String]> {
        match self.selector.as_ref().map(|s| s.0.as_slice()) {
            Some([Requirement::In(key, names)]) if key == NAMESPACE_NAME_LABEL => Some(names),
            _ => None,
        }
    }

    /// Every reason `image` fails this policy in `namespace`, pushed onto `out`.
    fn check(&self, image: &Image<'_>, trusted: bool, namespace: &str, now: Timestamp, out: &mut Vec<Violation>) {
        let parsed = match &image.parsed {
            Ok(r) => r,
            Err(e) => {
                out.push(self.violation(
                    image,
                    None,
                    ViolationKind::Invalid,
                    format!("is not a valid image reference ({e}), so policy {:?} cannot trust it", &*self.name),
                ));
                return;
            }
        };
        let mut kinds = [None; 4];
        if !trusted {
            kinds[0] = Some(ViolationKind::Untrusted);
        }
        if self.deny_unqualified && !parsed.has_written_domain() {
            kinds[1] = Some(ViolationKind::Unqualified);
        }
        if self.require_digest && parsed.digest().is_none() {
            kinds[2] = Some(ViolationKind::DigestRequired);
        }
        if let Some(tag) = parsed.pulled_tag()
            && self.denied_tags.iter().any(|d| d == tag)
        {
            kinds[3] = Some(ViolationKind::DeniedTag);
        }
        if kinds.iter().all(Option::is_none) || self.excepted(parsed, namespace, now) {
            return;
        }
        let normalized = parsed.to_string();
        for kind in kinds.into_iter().flatten() {
            let p = &*self.name;
            let reason = match kind {
                ViolationKind::Untrusted => format!(
                    "resolves to {normalized}, which policy {p:?} does not trust (trusted: {})",
                    self.trusted_display
                ),
                ViolationKind::Unqualified => format!(
                    "resolves to {normalized}, but policy {p:?} requires images to name their registry (unqualifiedImages: Deny); write {normalized:?}"
                ),
                ViolationKind::DigestRequired => format!(
                    "resolves to {normalized}, but policy {p:?} requires images pinned by digest; write {}@sha256:<digest>",
                    parsed.name()
                ),
                ViolationKind::DeniedTag if parsed.is_implicit_latest() => format!(
                    "resolves to {normalized} (no tag written, so the runtime pulls \"latest\"), a tag policy {p:?} denies; pin a version tag or a digest"
                ),
                ViolationKind::DeniedTag => format!(
                    "resolves to {normalized}, whose tag {:?} policy {p:?} denies; pin another tag or a digest",
                    parsed.pulled_tag().unwrap_or_default()
                ),
                ViolationKind::Invalid => unreachable!("invalid references return early"),
            };
            out.push(self.violation(image, Some(normalized.clone()), kind, reason));
        }
    }

    fn excepted(&self, image: &Reference<'_>, namespace: &str, now: Timestamp) -> bool {
        self.exceptions.iter().any(|e| {
            e.expires > now
                && (e.namespaces.is_empty() || e.namespaces.iter().any(|n| n == namespace))
                && e.images.iter().any(|p| p.matches(image))
        })
    }

    fn violation(
        &self,
        image: &Image<'_>,
        normalized: Option<String>,
        kind: ViolationKind,
        reason: String,
    ) -> Violation {
        Violation {
            policy: self.name.clone(),
            mode: self.mode,
            container: image.container.name.to_string(),
            field: image.container.field.to_string(),
            image: image.text.to_owned(),
            normalized,
            reason,
            kind,
            policy_message: self.message.clone(),
        }
    }
}

fn compile_patterns(field: &str, patterns: &[RegistryPattern], problems: &mut Vec<String>) -> Vec<Pattern> {
    patterns
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p.0.parse::<Pattern>() {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("{field}[{i}]: {e}"));
                None
            }
        })
        .collect()
}

/// A compiled `LabelSelector`: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SelectorError {
    #[error("matchExpressions[{0}]: operator {1:?} must be In, NotIn, Exists or DoesNotExist")]
    Operator(usize, String),
    #[error("matchExpressions[{0}]: operator {1} needs at least one value")]
    NeedsValues(usize, &'static str),
    #[error("matchExpressions[{0}]: operator {1} takes no values")]
    TakesNoValues(usize, &'static str),
}

impl Selector {
    fn compile(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements: Vec<Requirement> =
            selector.match_labels.iter().flatten().map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()])).collect();
        for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            requirements.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::NeedsValues(i, if e.operator == "In" { "In" } else { "NotIn" }));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    let op = if e.operator == "Exists" { "Exists" } else { "DoesNotExist" };
                    return Err(SelectorError::TakesNoValues(i, op));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => return Err(SelectorError::Operator(i, other.to_owned())),
            });
        }
        Ok(Selector(requirements))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn matches<'a>(&self, label: impl Fn(&str) -> Label<'a>) -> bool {
        self.0.iter().all(|r| match label(r.key()) {
            Known(value) => r.holds(value),
            Unknown => true,
        })
    }
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether a label with this value (`None`: absent) satisfies the requirement.
    fn holds(&self, value: Option<&str>) -> bool {
        match self {
            Requirement::In(_, values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(_, values) => value.is_none_or(|v| values.iter().all(|x| x != v)),
            Requirement::Exists(_) => value.is_some(),
            Requirement::DoesNotExist(_) => value.is_none(),
        }
    }
}

/// A namespace label as far as it is known.
enum Label<'a> {
    Known(Option<&'a str>),
    /// The namespace's labels are not known yet: any requirement on them may hold.
    Unknown,
}
use Label::{Known, Unknown};

/// The namespace a workload is in, with its labels when they are known.
#[derive(Debug, Clone, Copy)]
pub struct Namespace<'a> {
    pub name: &'a str,
    /// `None` when the labels are not known (the namespace is not in the cache yet): policies
    /// with a selector then apply, since adding a policy may only ever restrict.
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Namespace<'a> {
    fn label(&self, labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
        match labels.get(key) {
            Some(v) => Some(v),
            // The API server always sets it; synthesize it for namespaces read from files.
            None if key == NAMESPACE_NAME_LABEL => Some(self.name),
            None => None,
        }
    }
}

/// Compiled policies, sorted by name: the immutable snapshot admission reads.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    /// Every distinct trusted pattern of the set, once: policies commonly share registries,
    /// and each image is matched against each distinct pattern at most once.
    patterns: Vec<Pattern>,
    /// For each policy, the indexes of its trusted patterns in `patterns`.
    trusted: Vec<Vec<usize>>,
    /// Policies whose selector only names namespaces, by namespace name: with many per-team
    /// policies, a review looks up its namespace instead of testing every selector.
    by_namespace: std::collections::HashMap<String, Vec<usize>>,
    /// The other policies, tested one by one.
    scanned: Vec<usize>,
}

impl PolicySet {
    pub fn new(mut policies: Vec<CompiledPolicy>) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let trusted = policies
            .iter()
            .map(|policy| {
                policy
                    .trusted
                    .iter()
                    .map(|p| {
                        let (host, port, path) = p.key();
                        *index.entry((host.clone(), port.map(str::to_owned), path.to_vec())).or_insert_with(|| {
                            patterns.push(p.clone());
                            patterns.len() - 1
                        })
                    })
                    .collect()
            })
            .collect();
        let mut by_namespace = std::collections::HashMap::<String, Vec<usize>>::new();
        let mut scanned = Vec::new();
        for (i, policy) in policies.iter().enumerate() {
            match policy.named_namespaces() {
                Some(names) => names.iter().for_each(|n| by_namespace.entry(n.clone()).or_default().push(i)),
                None => scanned.push(i),
            }
        }
        PolicySet { policies, patterns, trusted, by_namespace, scanned }
    }

    /// Indexes of the policies that apply in `namespace`, in policy order.
    fn applicable(&self, namespace: &Namespace<'_>) -> Vec<usize> {
        let mut applicable: Vec<usize> =
            self.scanned.iter().copied().filter(|&i| self.policies[i].applies_to(namespace)).collect();
        if let Some(named) = self.by_namespace.get(namespace.name) {
            // A name listed twice in one selector indexes the policy twice: dedup after sorting.
            applicable.extend(named.iter().copied().filter(|&i| self.policies[i].applies_to(namespace)));
            applicable.sort_unstable();
            applicable.dedup();
        }
        applicable
    }

    /// Compiles every policy; invalid ones are left out and returned as errors.
    pub fn compile<'p>(policies: impl IntoIterator<Item = &'p TrustedRegistryPolicy>) -> (Self, Vec<PolicyError>) {
        let mut compiled = Vec::new();
        let mut errors = Vec::new();
        for policy in policies {
            match CompiledPolicy::compile(policy) {
                Ok(p) => compiled.push(p),
                Err(e) => errors.push(e),
            }
        }
        (PolicySet::new(compiled), errors)
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// How many policies run in each mode.
    pub fn count_by_mode(&self, mode: Mode) -> usize {
        self.policies.iter().filter(|p| p.mode == mode).count()
    }

    /// Evaluates every container against every applicable policy.
    pub fn evaluate(&self, namespace: &Namespace<'_>, containers: &[Container<'_>], now: Timestamp) -> Decision {
        let mut violations = Vec::new();
        let applicable = self.applicable(namespace);
        if applicable.is_empty() {
            return Decision { violations };
        }
        // Per image: 0 = pattern not tried yet, 1 = no match, 2 = match.
        let mut memo = vec![0u8; self.patterns.len()];
        for container in containers {
            let text = container.image.as_deref().unwrap_or("");
            let image = Image { container, text, parsed: Reference::parse(text) };
            let parts = image.parsed.as_ref().ok().map(|r| {
                let (host, port) = crate::reference::split_port(r.domain());
                (host, port, r.path())
            });
            memo.fill(0);
            for &i in &applicable {
                let trusted = parts.is_some_and(|(host, port, path)| {
                    self.trusted[i].iter().any(|&p| match memo[p] {
                        0 => {
                            let hit = self.patterns[p].matches_parts(host, port, path);
                            memo[p] = 1 + u8::from(hit);
                            hit
                        }
                        seen => seen == 2,
                    })
                });
                self.policies[i].check(&image, trusted, namespace.name, now, &mut violations);
            }
        }
        Decision { violations }
    }

    /// Evaluates a whole workload in its namespace.
    pub fn evaluate_workload(&self, workload: &Workload<'_>, namespace: &Namespace<'_>, now: Timestamp) -> Decision {
        self.evaluate(namespace, &workload.containers, now)
    }
}

/// One container's image, parsed once and checked against every applicable policy.
struct Image<'a> {
    container: &'a Container<'a>,
    text: &'a str,
    parsed: Result<Reference<'a>, ReferenceError>,
}

/// Which rule a violation broke.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// The image string does not parse.
    Invalid,
    /// No trustedRegistries pattern matches.
    Untrusted,
    /// No registry host written, and unqualifiedImages is Deny.
    Unqualified,
    /// No digest, and tags.requireDigest is true.
    DigestRequired,
    /// The pulled tag is in tags.deny.
    DeniedTag,
}

/// One image that one policy does not accept, and why.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub policy: Arc<str>,
    pub mode: Mode,
    pub container: String,
    pub field: String,
    pub image: String,
    /// The normalized reference; `None` when the image does not parse.
    pub normalized: Option<String>,
    /// The sentence after the image: `resolves to ..., which policy "x" does not trust (...)`.
    pub reason: String,
    #[serde(skip)]
    pub kind: ViolationKind,
    #[serde(skip)]
    pub policy_message: Option<Arc<str>>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {:?} ({}) image {:?} {}", self.container, self.field, self.image, self.reason)
    }
}

/// Allow, warn or deny: the verdict of a [`Decision`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Warn,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Warn => "warn",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an object is named in messages: `Deployment default/web`.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub generate_name: &'a str,
}

impl<'a> Subject<'a> {
    pub fn of(workload: &'a Workload<'a>, namespace: &'a str) -> Self {
        Subject { kind: &workload.kind, namespace, name: &workload.name, generate_name: &workload.generate_name }
    }
}

impl Subject<'_> {
    /// The object's name, or `prefix*` for an object created with `generateName`; empty when
    /// it has neither.
    pub fn display_name(&self) -> std::borrow::Cow<'_, str> {
        match (self.name, self.generate_name) {
            ("", "") => "".into(),
            ("", prefix) => format!("{prefix}*").into(),
            (name, _) => name.into(),
        }
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.display_name() {
            name if name.is_empty() => write!(f, "{} {}/<unnamed>", self.kind, self.namespace),
            name => write!(f, "{} {}/{name}", self.kind, self.namespace),
        }
    }
}

/// Every violation of one object against every applicable policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub violations: Vec<Violation>,
}

impl Decision {
    /// Deny on any Enforce violation, warn on any Warn violation, else allow.
    pub fn verdict(&self) -> Verdict {
        let mut verdict = Verdict::Allow;
        for v in &self.violations {
            match v.mode {
                Mode::Enforce => return Verdict::Deny,
                Mode::Warn => verdict = Verdict::Warn,
                Mode::Audit => {}
            }
        }
        verdict
    }

    /// Violations of the given mode.
    pub fn in_mode(&self, mode: Mode) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.mode == mode)
    }

    /// The denial message: one line per Enforce violation, then each denying policy's message.
    pub fn denial(&self, subject: &Subject<'_>) -> Option<String> {
        self.lines(Mode::Enforce, subject).map(|lines| lines.join("\n"))
    }

    /// One warning per Warn violation, followed by the warning policies' messages.
    pub fn warnings(&self, subject: &Subject<'_>) -> Vec<String> {
        self.lines(Mode::Warn, subject).unwrap_or_default()
    }

    fn lines(&self, mode: Mode, subject: &Subject<'_>) -> Option<Vec<String>> {
        let mut lines: Vec<String> = self.in_mode(mode).map(|v| format!("{subject}: {v}")).collect();
        if lines.is_empty() {
            return None;
        }
        let mut seen: Vec<&str> = Vec::new();
        for v in self.in_mode(mode) {
            if let Some(message) = v.policy_message.as_deref()
                && !seen.contains(&message)
            {
                seen.push(message);
                lines.push(message.to_owned());
            }
        }
        Some(lines)
    }
}

#[cfg(test)]
mod tests;
