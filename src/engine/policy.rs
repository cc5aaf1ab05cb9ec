//! One TrustedRegistryPolicy validated and compiled for the hot path, and how it judges one image.
//!
//! Policies are compiled when they change ([`CompiledPolicy::compile`]); every problem is
//! reported with its field, and an invalid policy never half-applies.

use std::sync::Arc;

use jiff::Timestamp;

use crate::api::{Mode, RegistryPattern, TrustedRegistryPolicy, UnqualifiedImages};
use crate::engine::decision::{Violation, ViolationKind};
use crate::engine::pattern::Pattern;
use crate::engine::reference::{Reference, ReferenceError};
use crate::engine::selector::Label::{Known, Unknown};
use crate::engine::selector::{NAMESPACE_NAME_LABEL, Namespace, Requirement, Selector};
use crate::engine::workload::Container;

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

    /// The trusted patterns, in the order written.
    pub(crate) fn trusted(&self) -> &[Pattern] {
        &self.trusted
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
    pub(crate) fn named_namespaces(&self) -> Option<&[String]> {
        match self.selector.as_ref().map(|s| s.0.as_slice()) {
            Some([Requirement::In(key, names)]) if key == NAMESPACE_NAME_LABEL => Some(names),
            _ => None,
        }
    }

    /// Every reason `image` fails this policy in `namespace`, pushed onto `out`.
    pub(crate) fn check(
        &self,
        image: &Image<'_>,
        trusted: bool,
        namespace: &str,
        now: Timestamp,
        out: &mut Vec<Violation>,
    ) {
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

/// One container's image, parsed once and checked against every applicable policy.
pub(crate) struct Image<'a> {
    pub(crate) container: &'a Container<'a>,
    pub(crate) text: &'a str,
    pub(crate) parsed: Result<Reference<'a>, ReferenceError>,
}
