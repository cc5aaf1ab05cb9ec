//! One TrustedRegistryPolicy validated and compiled for the hot path, and how it judges one image.
//!
//! Policies are compiled when they change ([`CompiledPolicy::compile`]); every problem is
//! reported with its field, and an invalid policy never half-applies.

use std::sync::Arc;

use jiff::Timestamp;

use crate::api::{ExistingImages, Mode, RegistryPattern, RequiredPullPolicy, TrustedRegistryPolicy, UnqualifiedImages};
use crate::engine::decision::{Inheritance, Violation, ViolationKind};
use crate::pattern::Pattern;
use crate::reference::{Reference, ReferenceError};
use crate::selector::Label::{Known, Unknown};
use crate::selector::{NAMESPACE_NAME_LABEL, Namespace, Requirement, Selector};
use crate::workload::{Container, PullPolicy};

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
    /// existingImages: Allow.
    keep_existing: bool,
    rules: Vec<CompiledRule>,
}

/// One registry rule: what images of its registries must also satisfy.
#[derive(Debug, Clone)]
struct CompiledRule {
    /// `spec.registryRules[i]`, for messages.
    field: String,
    patterns: Vec<Pattern>,
    require_digest: bool,
    denied_tags: Vec<String>,
    pull_always: bool,
}

impl CompiledRule {
    /// The first pattern of this rule that matches `image`.
    fn matching(&self, image: &Reference<'_>) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.matches(image))
    }

    /// What this rule finds wrong with an image it matches, in a fixed order; rules the
    /// policy-wide tags already report (`wide_digest`, `wide_tag`) are not reported twice.
    fn kinds(
        &self,
        image: &Reference<'_>,
        pull: &PullPolicy<'_>,
        wide_digest: bool,
        wide_tag: bool,
    ) -> [Option<ViolationKind>; 3] {
        let mut kinds = [None; 3];
        if self.require_digest && !wide_digest && image.digest().is_none() {
            kinds[0] = Some(ViolationKind::RuleDigestRequired);
        }
        if !wide_tag
            && let Some(tag) = image.pulled_tag()
            && self.denied_tags.iter().any(|d| d == tag)
        {
            kinds[1] = Some(ViolationKind::RuleDeniedTag);
        }
        if self.pull_always && effective_pull_policy(image, pull).is_some_and(|(p, _)| p != "Always") {
            kinds[2] = Some(ViolationKind::PullPolicy);
        }
        kinds
    }
}

/// The pull policy the kubelet will use, and whether the API server defaulted it: as set, or
/// the API server's default (`SetDefaults_Container`: `Always` when the tag as parsed is
/// `latest`, which includes no tag and no digest; else `IfNotPresent`). `None` when the source
/// carries no pull policy (ImageReview).
fn effective_pull_policy<'p>(image: &Reference<'_>, pull: &'p PullPolicy<'_>) -> Option<(&'p str, bool)> {
    match pull {
        PullPolicy::Set(p) => Some((p, false)),
        PullPolicy::Unset if image.tag() == Some("latest") || image.is_implicit_latest() => Some(("Always", true)),
        PullPolicy::Unset => Some(("IfNotPresent", true)),
        PullPolicy::Unknown => None,
    }
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
        let rules = spec
            .registry_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("spec.registryRules[{i}]");
                if r.registries.is_empty() {
                    problems.push(format!("{field}.registries must list at least one registry pattern"));
                }
                let tags = r.tags.clone().unwrap_or_default();
                for (t, tag) in tags.deny.iter().enumerate() {
                    if tag.is_empty() {
                        problems.push(format!("{field}.tags.deny[{t}] is empty"));
                    }
                }
                let pull_always = r.image_pull_policy == Some(RequiredPullPolicy::Always);
                if !pull_always && !tags.require_digest && tags.deny.is_empty() {
                    problems.push(format!(
                        "{field} requires nothing: set imagePullPolicy: Always, tags.requireDigest: true or tags.deny"
                    ));
                }
                CompiledRule {
                    patterns: compile_patterns(&format!("{field}.registries"), &r.registries, &mut problems),
                    field,
                    require_digest: tags.require_digest,
                    denied_tags: tags.deny,
                    pull_always,
                }
            })
            .collect();
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
            keep_existing: spec.existing_images == ExistingImages::Allow,
            rules,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.name.clone()
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

    /// Every reason `image` fails this policy in `namespace`, pushed onto `out`. `existing`:
    /// the old object of an UPDATE already had this image string; `inherited`: the object is a
    /// controller's CREATE from an admitted template.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &self,
        image: &Image<'_>,
        trusted: bool,
        existing: bool,
        inherited: Option<&Inheritance<'_>>,
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
        let pull = &image.container.pull_policy;
        let (wide_digest, wide_tag) = (kinds[2].is_some(), kinds[3].is_some());
        let rule_hit = self.rules.iter().any(|r| {
            r.matching(parsed).is_some() && r.kinds(parsed, pull, wide_digest, wide_tag).iter().any(Option::is_some)
        });
        if (!rule_hit && kinds.iter().all(Option::is_none)) || self.excepted(parsed, namespace, now) {
            return;
        }
        // An image the object already had keeps running whatever this UPDATE says: deny it and
        // `kubectl rollout restart` of a workload older than the policy fails. Reported still.
        let existing = existing && self.keep_existing;
        let inherited = inherited.filter(|_| self.keep_existing);
        let start = out.len();
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
                _ => unreachable!("invalid references return early; rule kinds come below"),
            };
            out.push(self.violation(image, Some(normalized.clone()), kind, reason));
        }
        for rule in &self.rules {
            let Some(pattern) = rule.matching(parsed) else { continue };
            for kind in rule.kinds(parsed, pull, wide_digest, wide_tag).into_iter().flatten() {
                let reason = self.rule_reason(rule, pattern, kind, parsed, &normalized, image);
                out.push(self.violation(image, Some(normalized.clone()), kind, reason));
            }
        }
        if existing {
            for v in &mut out[start..] {
                v.existing = true;
                if v.mode == Mode::Enforce {
                    v.mode = Mode::Warn;
                }
                v.reason.push_str(&format!(
                    "; admitted because the object already had this image before this update (policy {:?} has existingImages: Allow)",
                    &*self.name
                ));
            }
        } else if let Some(from) = inherited {
            for v in &mut out[start..] {
                v.inherited = true;
                if v.mode == Mode::Enforce {
                    v.mode = Mode::Warn;
                }
                v.reason.push_str(&format!(
                    "; admitted because {} created it from the template of {} {:?}, which trustgate admitted (policy {:?} has existingImages: Allow)",
                    from.controller, from.owner_kind, from.owner_name, &*self.name
                ));
            }
        }
    }

    fn rule_reason(
        &self,
        rule: &CompiledRule,
        pattern: &Pattern,
        kind: ViolationKind,
        parsed: &Reference<'_>,
        normalized: &str,
        image: &Image<'_>,
    ) -> String {
        let p = &*self.name;
        let rule_name = format!("{} ({pattern})", rule.field);
        match kind {
            ViolationKind::RuleDigestRequired => format!(
                "resolves to {normalized}, but policy {p:?} requires images from {pattern} to be pinned by digest ({rule_name}); write {}@sha256:<digest>",
                parsed.name()
            ),
            ViolationKind::RuleDeniedTag if parsed.is_implicit_latest() => format!(
                "resolves to {normalized} (no tag written, so the runtime pulls \"latest\"), a tag policy {p:?} denies for images from {pattern} ({rule_name}); pin a version tag or a digest"
            ),
            ViolationKind::RuleDeniedTag => format!(
                "resolves to {normalized}, whose tag {:?} policy {p:?} denies for images from {pattern} ({rule_name}); pin another tag or a digest",
                parsed.pulled_tag().unwrap_or_default()
            ),
            _ => {
                let how = match effective_pull_policy(parsed, &image.container.pull_policy) {
                    Some((policy, true)) => format!("imagePullPolicy not set, defaults to {policy}"),
                    Some((policy, false)) => format!("imagePullPolicy {policy}"),
                    None => "no imagePullPolicy".to_owned(),
                };
                format!(
                    "resolves to {normalized} ({how}), but policy {p:?} requires imagePullPolicy Always for images from {pattern} ({rule_name}), so that no Pod runs it from the node's cache without pull credentials; set {}.imagePullPolicy: Always",
                    image.container.field
                )
            }
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
            existing: false,
            inherited: false,
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
