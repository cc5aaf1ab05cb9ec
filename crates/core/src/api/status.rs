//! What the server writes back: the policy's `status`, with its Ready condition and the last
//! audit's findings.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
