//! A denial is data: the [`Decision`] of one object, its [`Violation`]s, and the messages,
//! warnings and verdict built from them for every output (admission, logs, metrics, `check`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::Mode;
use crate::workload::Workload;

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
    /// No digest, and a matching registry rule's tags.requireDigest is true.
    RuleDigestRequired,
    /// The pulled tag is in a matching registry rule's tags.deny.
    RuleDeniedTag,
    /// A matching registry rule requires imagePullPolicy Always, and the container's (as set,
    /// or as the API server defaults it) is not.
    PullPolicy,
}

/// How a report names and explains a [`ViolationKind`] (a SARIF rule, a JUnit failure type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo {
    /// Stable identifier: `TG` and a number, never reused.
    pub id: &'static str,
    /// PascalCase name.
    pub name: &'static str,
    /// One sentence: what the rule asks for.
    pub description: &'static str,
}

impl ViolationKind {
    /// Every kind, in rule-id order. A new kind is added here and in [`ViolationKind::rule`].
    pub const ALL: [ViolationKind; 8] = [
        ViolationKind::Invalid,
        ViolationKind::Untrusted,
        ViolationKind::Unqualified,
        ViolationKind::DigestRequired,
        ViolationKind::DeniedTag,
        ViolationKind::RuleDigestRequired,
        ViolationKind::RuleDeniedTag,
        ViolationKind::PullPolicy,
    ];

    /// The rule this kind of violation breaks, as reports name it.
    pub fn rule(self) -> RuleInfo {
        let (id, name, description) = match self {
            ViolationKind::Invalid => {
                ("TG001", "InvalidImageReference", "Container images must be valid image references.")
            }
            ViolationKind::Untrusted => {
                ("TG002", "UntrustedRegistry", "Container images must come from a registry the policy trusts.")
            }
            ViolationKind::Unqualified => (
                "TG003",
                "UnqualifiedImage",
                "Container images must name their registry host when the policy denies unqualified images.",
            ),
            ViolationKind::DigestRequired => {
                ("TG004", "DigestRequired", "Container images must be pinned by digest when the policy requires it.")
            }
            ViolationKind::DeniedTag => {
                ("TG005", "DeniedTag", "Container images must not use a tag the policy denies.")
            }
            ViolationKind::RuleDigestRequired => (
                "TG006",
                "RegistryRuleDigestRequired",
                "Container images from a registry with a registry rule that requires digests must be pinned by digest.",
            ),
            ViolationKind::RuleDeniedTag => (
                "TG007",
                "RegistryRuleDeniedTag",
                "Container images from a registry with a registry rule must not use a tag that rule denies.",
            ),
            ViolationKind::PullPolicy => (
                "TG008",
                "PullPolicyAlways",
                "Containers whose image comes from a registry with an imagePullPolicy: Always rule must set imagePullPolicy: Always.",
            ),
        };
        RuleInfo { id, name, description }
    }
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
    /// The old object of an UPDATE already had this image and the policy's existingImages is
    /// Allow: the violation is reported, but an Enforce one only as a warning (`mode` is then
    /// Warn).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
    /// A built-in controller created the object from the template of an owner trustgate
    /// checks, and the policy's existingImages is Allow: the object inherits the owner's
    /// admission, so an Enforce violation is reported only as a warning (`mode` is then Warn).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inherited: bool,
    #[serde(skip)]
    pub policy_message: Option<Arc<str>>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {:?} ({}) image {:?} {}", self.container, self.field, self.image, self.reason)
    }
}

/// A CREATE that a built-in controller made from the pod template of its owner (a Pod of a
/// ReplicaSet, a ReplicaSet of a Deployment, a Job of a CronJob): under existingImages: Allow
/// it inherits the admission of that template, which trustgate checked when the owner was
/// created or updated. The admission layer decides when a request is one (who sent it, which
/// owner it names); the engine only applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inheritance<'a> {
    /// The requester: a kube-controller-manager identity.
    pub controller: &'a str,
    /// The owner's kind and name (its controller ownerReference).
    pub owner_kind: &'a str,
    pub owner_name: &'a str,
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
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_rule_in_id_order() {
        let ids: Vec<&str> = ViolationKind::ALL.iter().map(|k| k.rule().id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ids, sorted, "ids are unique and ALL is in id order");
        let names: std::collections::HashSet<&str> = ViolationKind::ALL.iter().map(|k| k.rule().name).collect();
        assert_eq!(names.len(), ViolationKind::ALL.len());
        assert!(ViolationKind::ALL.iter().all(|k| k.rule().description.ends_with('.')));
    }
}
