//! The audit: workloads already running in the cluster, evaluated with the admission engine.
//!
//! Each object is reported once, as its top-level owner: an object whose controller is itself a
//! listed kind (a ReplicaSet of a Deployment, a Job of a CronJob, a Pod of any of them) is left
//! to that owner, whose template is what the runtime keeps recreating. The one thing only a Pod
//! carries is ephemeral containers (`kubectl debug`), so owned Pods are still checked for those.
//!
//! [`top_level`] is that roll-up and [`list_workloads`] the paging through the API server; both
//! are shared with `trustgate check --cluster`, so the what-if sees exactly what the audit sees.
//! [`Audit`] is the pure aggregation; [`run`] drives it (bounded memory: one page, at most
//! [`MAX_SAMPLES`] samples per policy are held at a time, plus what its [`Sink`] keeps: the
//! PolicyReports of `policy_report` hold at most their `MAX_RESULTS` results per namespace).
//! The audit knows the policy status it computes; other formats are sinks it feeds. Imports
//! `pager`; the leader's `auditor` and the sinks (`policy_report`) import this.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};

use crate::pager::{PageError, each_page};
use trustgate_core::api::{AuditSample, AuditStatus};
use trustgate_core::engine::Violation;
use trustgate_core::engine::snapshot::Snapshot;
use trustgate_core::workload::{ContainerList, Workload};

/// At most this many samples are kept per policy.
pub(crate) const MAX_SAMPLES: usize = 20;

/// A kind the audit lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl AuditedKind {
    const fn new(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> Self {
        AuditedKind { group, version, kind, plural }
    }

    /// The `apiVersion` of its objects: `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The kube-rs resource of this kind, for a dynamic `Api`.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(self.group, self.version, self.kind), self.plural)
    }
}

/// Every kind that runs containers. PodTemplates are left out: they run nothing (admission
/// still checks them).
pub(crate) const AUDITED_KINDS: [AuditedKind; 8] = [
    AuditedKind::new("apps", "v1", "Deployment", "deployments"),
    AuditedKind::new("apps", "v1", "StatefulSet", "statefulsets"),
    AuditedKind::new("apps", "v1", "DaemonSet", "daemonsets"),
    AuditedKind::new("apps", "v1", "ReplicaSet", "replicasets"),
    AuditedKind::new("batch", "v1", "CronJob", "cronjobs"),
    AuditedKind::new("batch", "v1", "Job", "jobs"),
    AuditedKind::new("", "v1", "ReplicationController", "replicationcontrollers"),
    AuditedKind::new("", "v1", "Pod", "pods"),
];

/// Whether `owner` is the controller of its object and is itself audited.
fn is_audited_controller(owner: &OwnerReference) -> bool {
    if owner.controller != Some(true) {
        return false;
    }
    let group = owner.api_version.rsplit_once('/').map_or("", |(group, _)| group);
    AUDITED_KINDS.iter().any(|k| k.kind == owner.kind && k.group == group)
}

/// Why one object could not be evaluated.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {namespace}/{name} has no readable pod spec")]
pub struct UnreadableWorkload {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: serde_json::Error,
}

/// What is left to evaluate of one listed object of `kind` once ownership is rolled up: `None`
/// when its controller (also listed) reports for it, else its workload, named from `metadata`
/// (a listed object's JSON carries its metadata apart). An owned Pod keeps only its ephemeral
/// containers, the one thing its owner's template cannot tell.
pub fn top_level<'a>(
    kind: &str,
    metadata: &'a ObjectMeta,
    object: &'a serde_json::Value,
) -> Result<Option<Workload<'a>>, UnreadableWorkload> {
    let owned = metadata.owner_references.iter().flatten().any(is_audited_controller);
    if owned && kind != "Pod" {
        return Ok(None);
    }
    let namespace = metadata.namespace.as_deref().unwrap_or_default();
    let name = metadata.name.as_deref().unwrap_or_default();
    let mut workload = Workload::read(Some(kind), object).map_err(|source| UnreadableWorkload {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    workload.name = Cow::Borrowed(name);
    workload.namespace = Some(Cow::Borrowed(namespace));
    if owned {
        workload.containers.retain(|c| c.field.list == ContainerList::EphemeralContainers);
        if workload.containers.is_empty() {
            return Ok(None);
        }
    }
    Ok(Some(workload))
}

#[derive(Debug, Default)]
struct Findings {
    violations: i64,
    /// The first samples in (namespace, kind, name, container) order, so that the status
    /// does not churn between runs that find the same things.
    samples: BTreeMap<(String, String, String, String), AuditSample>,
}

/// An audited object, as reports that point at objects name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner<'a> {
    pub api_version: String,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// Where else an audit sends what it finds, object by object (PolicyReports); the policy
/// status is the audit's own.
pub trait Sink {
    /// The violations of one evaluated top-level object (none: it passed).
    fn record(&mut self, owner: &Owner<'_>, violations: &[Violation]);
}

/// No other sink.
impl Sink for () {
    fn record(&mut self, _: &Owner<'_>, _: &[Violation]) {}
}

/// Two sinks, each fed every object.
impl<A: Sink, B: Sink> Sink for (A, B) {
    fn record(&mut self, owner: &Owner<'_>, violations: &[Violation]) {
        self.0.record(owner, violations);
        self.1.record(owner, violations);
    }
}

/// A sink that is there or not.
impl<S: Sink> Sink for Option<S> {
    fn record(&mut self, owner: &Owner<'_>, violations: &[Violation]) {
        if let Some(sink) = self {
            sink.record(owner, violations);
        }
    }
}

/// Violations found so far, per policy.
#[derive(Debug)]
pub struct Audit<S = ()> {
    now: Timestamp,
    findings: BTreeMap<Arc<str>, Findings>,
    evaluated: u64,
    sink: S,
}

impl Audit {
    /// Starts an audit of every policy in `snapshot`, judging exception expiry at `now`.
    pub fn new(snapshot: &Snapshot, now: Timestamp) -> Self {
        let findings = snapshot.policies.policies().map(|p| (Arc::from(p.name()), Findings::default())).collect();
        Audit { now, findings, evaluated: 0, sink: () }
    }
}

impl<S: Sink> Audit<S> {
    /// Also feeds every evaluated object to `sink`.
    pub fn with_sink<T: Sink>(self, sink: T) -> Audit<T> {
        Audit { now: self.now, findings: self.findings, evaluated: self.evaluated, sink }
    }

    /// Evaluates one listed object of `kind`; `object` is its JSON (metadata may be absent
    /// from it, it is read from `metadata`).
    pub fn record(
        &mut self,
        snapshot: &Snapshot,
        kind: &str,
        metadata: &ObjectMeta,
        object: &serde_json::Value,
    ) -> Result<(), UnreadableWorkload> {
        let Some(workload) = top_level(kind, metadata, object)? else {
            return Ok(());
        };
        let namespace = metadata.namespace.as_deref().unwrap_or_default();
        let name = metadata.name.as_deref().unwrap_or_default();
        self.evaluated += 1;
        let decision = snapshot.policies.evaluate(&snapshot.namespace(namespace), &workload.containers, self.now);
        let api_version = AUDITED_KINDS.iter().find(|k| k.kind == kind).map(AuditedKind::api_version);
        let owner = Owner {
            api_version: api_version.unwrap_or_default(),
            kind,
            namespace,
            name,
            uid: metadata.uid.as_deref().unwrap_or_default(),
        };
        self.sink.record(&owner, &decision.violations);
        let mut counted: Vec<&str> = Vec::new();
        for v in &decision.violations {
            if counted.contains(&&*v.policy) {
                continue;
            }
            counted.push(&v.policy);
            let findings = self.findings.entry(v.policy.clone()).or_default();
            findings.violations += 1;
            let key = (namespace.to_owned(), kind.to_owned(), name.to_owned(), v.container.clone());
            let full = findings.samples.len() >= MAX_SAMPLES;
            if full && findings.samples.last_key_value().is_some_and(|(last, _)| *last <= key) {
                continue;
            }
            findings.samples.insert(
                key,
                AuditSample {
                    kind: kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    container: v.container.clone(),
                    image: v.image.clone(),
                    reason: v.reason.clone(),
                },
            );
            if findings.samples.len() > MAX_SAMPLES {
                findings.samples.pop_last();
            }
        }
        Ok(())
    }

    /// How many objects were evaluated (owned ones skipped are not counted).
    pub fn evaluated(&self) -> u64 {
        self.evaluated
    }

    /// The audit status of every policy, and the sink.
    pub fn finish(self, last_run: Time) -> (BTreeMap<String, AuditStatus>, S) {
        let statuses = self
            .findings
            .into_iter()
            .map(|(policy, f)| {
                let status = AuditStatus {
                    last_run: Some(last_run.clone()),
                    violations: f.violations,
                    samples: f.samples.into_values().collect(),
                };
                (policy.to_string(), status)
            })
            .collect();
        (statuses, self.sink)
    }
}

/// A failed list.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to list {plural}")]
    List {
        plural: &'static str,
        #[source]
        source: PageError,
    },
}

/// What a run found.
#[derive(Debug)]
pub struct AuditReport<S> {
    pub statuses: BTreeMap<String, AuditStatus>,
    /// The sink the run fed, with what it kept.
    pub sink: S,
    /// Objects listed, per kind.
    pub listed: BTreeMap<&'static str, u64>,
    pub evaluated: u64,
    /// Objects that could not be read, skipped.
    pub unreadable: u64,
}

/// Lists every audited kind, cluster-wide or in `namespace` only, `page_size` objects at a
/// time (each page abandoned after `page_timeout`, if given), handing each page to `visit`;
/// returns how many objects of each kind were listed. Only the `list` verb is used, so a
/// read-only (`view`) identity is enough.
pub async fn list_workloads(
    client: &Client,
    namespace: Option<&str>,
    page_size: u32,
    page_timeout: Option<Duration>,
    mut visit: impl FnMut(&AuditedKind, &[DynamicObject]),
) -> Result<BTreeMap<&'static str, u64>, AuditError> {
    let mut listed = BTreeMap::new();
    for kind in &AUDITED_KINDS {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.api_resource()),
            None => Api::all_with(client.clone(), &kind.api_resource()),
        };
        let mut count = 0;
        each_page(&api, ListParams::default().limit(page_size), page_timeout, |page| {
            count += page.len() as u64;
            visit(kind, page);
        })
        .await
        .map_err(|source| AuditError::List { plural: kind.plural, source })?;
        listed.insert(kind.plural, count);
    }
    Ok(listed)
}

/// Lists every audited kind cluster-wide, `page_size` objects at a time (each page abandoned
/// after `page_timeout`, if given), and evaluates each, feeding `sink` too. A failed list fails
/// the run: a partial count would read as a real one.
pub async fn run<S: Sink>(
    client: &Client,
    snapshot: &Snapshot,
    page_size: u32,
    page_timeout: Option<Duration>,
    now: Timestamp,
    sink: S,
) -> Result<AuditReport<S>, AuditError> {
    let mut audit = Audit::new(snapshot, now).with_sink(sink);
    let mut unreadable = 0;
    let listed = list_workloads(client, None, page_size, page_timeout, |kind, page| {
        for object in page {
            if let Err(e) = audit.record(snapshot, kind.kind, &object.metadata, &object.data) {
                unreadable += 1;
                tracing::warn!(error = %e, source = %e.source, "audit skipped an object");
            }
        }
    })
    .await?;
    let evaluated = audit.evaluated();
    let last_run = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let (statuses, sink) = audit.finish(last_run);
    Ok(AuditReport { statuses, sink, listed, evaluated, unreadable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use trustgate_core::api::TrustedRegistryPolicy;
    use trustgate_core::engine::PolicySet;
    use trustgate_core::engine::snapshot::NamespaceLabels;

    fn snapshot(policies: Value) -> Snapshot {
        let policies: Vec<TrustedRegistryPolicy> = serde_json::from_value(policies).unwrap();
        let (set, errors) = PolicySet::compile(&policies);
        assert!(errors.is_empty(), "{errors:?}");
        let mut namespaces = NamespaceLabels::new();
        namespaces.insert("shop".into(), [("env".to_owned(), "prod".to_owned())].into());
        namespaces.insert("dev".into(), [("env".to_owned(), "dev".to_owned())].into());
        Snapshot { policies: set, namespaces: Some(namespaces) }
    }

    fn corporate() -> Snapshot {
        snapshot(json!([
            {"metadata": {"name": "corp"}, "spec": {"trustedRegistries": ["registry.my.com"]}},
            {"metadata": {"name": "prod-tags"}, "spec": {"trustedRegistries": ["registry.my.com", "docker.io"],
                "mode": "Audit", "tags": {"deny": ["latest"]},
                "namespaceSelector": {"matchLabels": {"env": "prod"}}}},
        ]))
    }

    fn owner(api_version: &str, kind: &str, controller: bool) -> Value {
        json!({"apiVersion": api_version, "kind": kind, "name": "owner", "uid": "u", "controller": controller})
    }

    /// A listed object: metadata apart, the rest as `data`, the way DynamicObject splits them.
    fn object(kind: &str, namespace: &str, name: &str, images: &[&str], owners: Vec<Value>) -> (ObjectMeta, Value) {
        let containers: Vec<Value> =
            images.iter().enumerate().map(|(i, im)| json!({"name": format!("c{i}"), "image": im})).collect();
        let pod = json!({"containers": containers});
        let data = match kind {
            "Pod" => json!({"spec": pod}),
            "CronJob" => json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}}),
            _ => json!({"spec": {"template": {"spec": pod}}}),
        };
        let meta =
            serde_json::from_value(json!({"name": name, "namespace": namespace, "ownerReferences": owners})).unwrap();
        (meta, data)
    }

    fn record(
        audit: &mut Audit,
        snapshot: &Snapshot,
        kind: &str,
        ns: &str,
        name: &str,
        images: &[&str],
        owners: Vec<Value>,
    ) {
        let (meta, data) = object(kind, ns, name, images, owners);
        audit.record(snapshot, kind, &meta, &data).unwrap();
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn finish(audit: Audit) -> BTreeMap<String, AuditStatus> {
        audit.finish(Time(now())).0
    }

    #[test]
    fn a_deployment_is_reported_once_not_as_its_replicaset_and_pods() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        record(&mut audit, &s, "Deployment", "shop", "web", &["nginx:1.25"], vec![]);
        record(
            &mut audit,
            &s,
            "ReplicaSet",
            "shop",
            "web-5d8",
            &["nginx:1.25"],
            vec![owner("apps/v1", "Deployment", true)],
        );
        for pod in ["web-5d8-a", "web-5d8-b"] {
            record(&mut audit, &s, "Pod", "shop", pod, &["nginx:1.25"], vec![owner("apps/v1", "ReplicaSet", true)]);
        }
        assert_eq!(audit.evaluated(), 1);
        let result = finish(audit);
        let corp = &result["corp"];
        assert_eq!(corp.violations, 1);
        assert_eq!(corp.last_run, Some(Time(now())));
        assert_eq!(
            corp.samples,
            [AuditSample {
                kind: "Deployment".into(),
                namespace: "shop".into(),
                name: "web".into(),
                container: "c0".into(),
                image: "nginx:1.25".into(),
                reason: "resolves to docker.io/library/nginx:1.25, which policy \"corp\" does not trust (trusted: registry.my.com)".into(),
            }]
        );
        assert_eq!(result["prod-tags"].violations, 0, "nginx:1.25 is on docker.io with a non-latest tag");
    }

    #[test]
    fn cronjob_owns_its_jobs_and_their_pods() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        record(&mut audit, &s, "CronJob", "dev", "nightly", &["busybox"], vec![]);
        record(&mut audit, &s, "Job", "dev", "nightly-1", &["busybox"], vec![owner("batch/v1", "CronJob", true)]);
        record(&mut audit, &s, "Pod", "dev", "nightly-1-x", &["busybox"], vec![owner("batch/v1", "Job", true)]);
        let result = finish(audit);
        assert_eq!(result["corp"].violations, 1);
        assert_eq!(result["corp"].samples[0].kind, "CronJob");
    }

    #[test]
    fn objects_without_a_listed_controller_are_reported_themselves() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        // Not the controller: does not count as an owner.
        record(&mut audit, &s, "Pod", "dev", "a", &["nginx"], vec![owner("apps/v1", "ReplicaSet", false)]);
        // A controller of a kind we do not list (Argo Rollouts): the ReplicaSet is the top level.
        record(
            &mut audit,
            &s,
            "ReplicaSet",
            "dev",
            "b",
            &["nginx"],
            vec![owner("argoproj.io/v1alpha1", "Rollout", true)],
        );
        // Same kind name, other group: not ours either.
        record(&mut audit, &s, "Pod", "dev", "c", &["nginx"], vec![owner("example.com/v1", "Deployment", true)]);
        record(&mut audit, &s, "Pod", "dev", "bare", &["nginx"], vec![]);
        record(&mut audit, &s, "Pod", "dev", "trusted", &["registry.my.com/app:1"], vec![]);
        let result = finish(audit);
        assert_eq!(result["corp"].violations, 4);
        let names: Vec<&str> = result["corp"].samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "bare", "c", "b"], "ordered by namespace, kind, name");
    }

    #[test]
    fn owned_pods_are_still_checked_for_ephemeral_containers() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        let (meta, mut data) =
            object("Pod", "shop", "web-5d8-a", &["nginx:1.25"], vec![owner("apps/v1", "ReplicaSet", true)]);
        data["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox:1.36"}]);
        audit.record(&s, "Pod", &meta, &data).unwrap();
        let result = finish(audit);
        let corp = &result["corp"];
        assert_eq!(corp.violations, 1);
        assert_eq!((corp.samples[0].kind.as_str(), corp.samples[0].container.as_str()), ("Pod", "debugger"));
    }

    #[test]
    fn one_workload_counts_once_per_policy_whatever_its_number_of_bad_containers() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        record(&mut audit, &s, "StatefulSet", "shop", "db", &["postgres", "quay.io/x:1", "redis:latest"], vec![]);
        let result = finish(audit);
        assert_eq!(result["corp"].violations, 1);
        assert_eq!(result["corp"].samples.len(), 1);
        assert_eq!(result["corp"].samples[0].image, "postgres");
        assert_eq!(result["prod-tags"].violations, 1, "Audit-mode policies count too");
        assert_eq!(result["prod-tags"].samples[0].container, "c0", "postgres is implicitly latest");
    }

    #[test]
    fn namespace_selection_and_exclusion_come_from_the_policies() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        record(&mut audit, &s, "Deployment", "dev", "a", &["docker.io/library/nginx:latest"], vec![]);
        record(&mut audit, &s, "Deployment", "shop", "b", &["docker.io/library/nginx:latest"], vec![]);
        let result = finish(audit);
        assert_eq!(result["corp"].violations, 2);
        assert_eq!(result["prod-tags"].violations, 1);
        assert_eq!(result["prod-tags"].samples[0].namespace, "shop");
    }

    #[test]
    fn samples_are_capped_at_twenty_and_the_count_is_not() {
        let s = corporate();
        let mut audit = Audit::new(&s, now());
        // Recorded in reverse: the kept samples must still be the first twenty by name.
        for i in (0..45).rev() {
            record(&mut audit, &s, "Pod", "dev", &format!("pod-{i:02}"), &["nginx"], vec![]);
        }
        let result = finish(audit);
        let corp = &result["corp"];
        assert_eq!(corp.violations, 45);
        assert_eq!(corp.samples.len(), MAX_SAMPLES);
        let names: Vec<String> = corp.samples.iter().map(|s| s.name.clone()).collect();
        let want: Vec<String> = (0..20).map(|i| format!("pod-{i:02}")).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn policies_without_findings_report_zero() {
        let s = corporate();
        let audit = Audit::new(&s, now());
        let result = finish(audit);
        assert_eq!(result.keys().collect::<Vec<_>>(), ["corp", "prod-tags"]);
        assert!(result.values().all(|a| a.violations == 0 && a.samples.is_empty()));
    }

    #[test]
    fn controller_detection() {
        let o = |v: Value| -> OwnerReference { serde_json::from_value(v).unwrap() };
        assert!(is_audited_controller(&o(owner("apps/v1", "ReplicaSet", true))));
        assert!(is_audited_controller(&o(owner("v1", "ReplicationController", true))));
        assert!(is_audited_controller(&o(owner("batch/v1", "Job", true))));
        assert!(!is_audited_controller(&o(owner("batch/v1", "Job", false))));
        assert!(!is_audited_controller(&o(owner("v1", "Node", true))), "mirror pods are their own top level");
        assert!(!is_audited_controller(&o(owner("apps/v1", "Job", true))));
    }
}
