//! What a policy's status should say, as pure functions: `observedGeneration` and the `Ready`
//! condition, and the merge patches that write them and the audit results.
//!
//! Merge patches replace lists whole and merge objects field by field, so each patch carries
//! every list it touches in full (`conditions`, `samples`) and writes only its own part of the
//! status: the condition writer and the audit never overwrite each other.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use crate::index::PolicyEntry;
use trustgate_core::api::{AuditStatus, TrustedRegistryPolicyStatus};

/// The condition type trustgate owns.
pub(crate) const READY: &str = "Ready";
/// Reason of `Ready=True`.
pub(crate) const ACCEPTED: &str = "Accepted";
/// Reason of `Ready=False`.
pub(crate) const INVALID: &str = "Invalid";

/// The part of the status the condition writer owns.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyStatus {
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

impl ReadyStatus {
    /// Reads the owned part out of a full status.
    pub fn of(status: &TrustedRegistryPolicyStatus) -> Self {
        ReadyStatus { observed_generation: status.observed_generation, conditions: status.conditions.clone() }
    }

    /// The merge patch that writes it through the status subresource.
    pub fn patch(&self) -> Value {
        json!({"status": {"observedGeneration": self.observed_generation, "conditions": self.conditions}})
    }
}

/// The `Ready` condition for a policy: `lastTransitionTime` moves only when the status flips.
pub(crate) fn ready_condition(entry: &PolicyEntry, previous: Option<&Condition>, now: &Time) -> Condition {
    let (status, reason, message) = match &entry.compiled {
        Ok(policy) => ("True", ACCEPTED, format!("the policy is valid and in effect in {} mode", policy.mode())),
        Err(error) => ("False", INVALID, error.clone()),
    };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: entry.generation,
        last_transition_time,
    }
}

/// What the owned part of the status should be, given what it is; conditions of other types
/// are kept as they are.
pub(crate) fn desired(entry: &PolicyEntry, current: Option<&ReadyStatus>, now: &Time) -> ReadyStatus {
    let existing = current.map(|c| c.conditions.as_slice()).unwrap_or_default();
    let previous = existing.iter().find(|c| c.type_ == READY);
    let ready = ready_condition(entry, previous, now);
    let mut conditions: Vec<Condition> = Vec::with_capacity(existing.len().max(1));
    let mut placed = false;
    for c in existing {
        if c.type_ == READY {
            if !placed {
                conditions.push(ready.clone());
                placed = true;
            }
        } else {
            conditions.push(c.clone());
        }
    }
    if !placed {
        conditions.push(ready);
    }
    ReadyStatus { observed_generation: entry.generation, conditions }
}

/// The status to write, or `None` when the current one already says it.
pub fn update(entry: &PolicyEntry, current: Option<&ReadyStatus>, now: &Time) -> Option<ReadyStatus> {
    let want = desired(entry, current, now);
    (current != Some(&want)).then_some(want)
}

/// The merge patch that records an audit result; `samples` is always written, so that samples
/// from an earlier run never linger beside a newer count.
pub(crate) fn audit_patch(audit: &AuditStatus) -> Value {
    json!({"status": {"audit": {
        "lastRun": audit.last_run,
        "violations": audit.violations,
        "samples": audit.samples,
    }}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::PolicyObject;
    use trustgate_core::api::AuditSample;

    fn entry(generation: i64, spec: Value) -> PolicyEntry {
        let object: PolicyObject =
            serde_json::from_value(json!({"metadata": {"name": "corp", "generation": generation}, "spec": spec}))
                .unwrap();
        PolicyEntry::new(object)
    }

    fn valid(generation: i64) -> PolicyEntry {
        entry(generation, json!({"trustedRegistries": ["registry.my.com"], "mode": "Warn"}))
    }

    fn invalid(generation: i64) -> PolicyEntry {
        entry(generation, json!({"trustedRegistries": ["nginx"]}))
    }

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn accepted_policy_gets_ready_true_with_generation() {
        let now = time("2026-01-01T00:00:00Z");
        let status = update(&valid(3), None, &now).expect("no status yet: write one");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            status.conditions,
            [Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: "the policy is valid and in effect in Warn mode".into(),
                observed_generation: Some(3),
                last_transition_time: now,
            }]
        );
        assert_eq!(
            status.patch(),
            json!({"status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True",
                "reason": "Accepted", "message": "the policy is valid and in effect in Warn mode",
                "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
        );
    }

    #[test]
    fn invalid_policy_gets_ready_false_with_the_compile_error() {
        let status = update(&invalid(2), None, &time("2026-01-01T00:00:00Z")).unwrap();
        let ready = &status.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Invalid"));
        assert!(
            ready.message.starts_with("policy \"corp\" is invalid: spec.trustedRegistries[0]"),
            "{}",
            ready.message
        );
        assert!(ready.message.contains("docker.io/library/nginx"), "{}", ready.message);
    }

    #[test]
    fn nothing_to_write_when_the_status_already_says_it() {
        let first = update(&valid(3), None, &time("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(update(&valid(3), Some(&first), &time("2026-02-01T00:00:00Z")), None);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-02T00:00:00Z");
        let t2 = time("2026-01-03T00:00:00Z");
        let s0 = update(&valid(1), None, &t0).unwrap();
        // A new generation, still valid: the generation changes, the transition time does not.
        let s1 = update(&valid(2), Some(&s0), &t1).expect("new generation must be recorded");
        assert_eq!(s1.observed_generation, Some(2));
        assert_eq!(s1.conditions[0].observed_generation, Some(2));
        assert_eq!(s1.conditions[0].last_transition_time, t0);
        // Now invalid: the status flips, and so does the time.
        let s2 = update(&invalid(3), Some(&s1), &t2).unwrap();
        assert_eq!(s2.conditions[0].status, "False");
        assert_eq!(s2.conditions[0].last_transition_time, t2);
    }

    #[test]
    fn other_conditions_are_kept_in_place() {
        let other = Condition {
            type_: "Reviewed".into(),
            status: "True".into(),
            reason: "Manual".into(),
            message: "by the platform team".into(),
            observed_generation: None,
            last_transition_time: time("2025-01-01T00:00:00Z"),
        };
        let current = ReadyStatus { observed_generation: Some(1), conditions: vec![other.clone()] };
        let status = update(&valid(1), Some(&current), &time("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(status.conditions.len(), 2);
        assert_eq!(status.conditions[0], other);
        assert_eq!(status.conditions[1].type_, "Ready");
    }

    #[test]
    fn audit_patch_always_carries_samples() {
        let empty = AuditStatus { last_run: Some(time("2026-01-01T00:00:00Z")), violations: 0, samples: vec![] };
        assert_eq!(
            audit_patch(&empty),
            json!({"status": {"audit": {"lastRun": "2026-01-01T00:00:00Z", "violations": 0, "samples": []}}})
        );
        let sample = AuditSample {
            kind: "Deployment".into(),
            namespace: "default".into(),
            name: "web".into(),
            container: "nginx".into(),
            image: "nginx:1.25".into(),
            reason: "r".into(),
        };
        let one = AuditStatus { violations: 1, samples: vec![sample], ..empty };
        assert_eq!(audit_patch(&one)["status"]["audit"]["samples"][0]["kind"], "Deployment");
    }
}
