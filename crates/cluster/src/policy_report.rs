//! The audit's findings as `wgpolicyk8s.io/v1alpha2` `PolicyReport` objects, the format that
//! Policy Reporter and other dashboards read for Kyverno, Kubewarden and others.
//!
//! One report per namespace with findings, named after the [`Installation`] (`--instance`) and
//! labelled `app.kubernetes.io/managed-by: trustgate` and `app.kubernetes.io/instance: NAME`, so
//! that two installations on one cluster each keep and delete only their own; one result per top-level owner, policy and rule
//! (violation kind). Enforce findings are `fail` (severity `high`): admission would reject the
//! workload today. Warn and Audit findings are `warn` (severity `medium` and `low`): the workload
//! would still be admitted, and Audit is the weaker of the two. Only findings are reported, so
//! `summary.pass` stays 0. A report keeps at most [`MAX_RESULTS`] results (the first ones in
//! kind, name, policy, rule order, like `status.audit.samples`); its summary counts them all.
//!
//! [`PolicyReports`] is the pure construction (an audit [`Sink`]); [`ReportWriter`] creates,
//! updates and deletes the objects so the cluster holds exactly one report per namespace with
//! findings, as a [`Publisher`] of the leader's audit. Imports `audit`, `auditor` and `pager`;
//! only `watch` imports this.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::{Value, json};

use crate::MANAGER;
use crate::audit::{Owner, Sink};
use crate::auditor::Publisher;
use crate::pager::{PAGE_SIZE, PageError, each_page};
use trustgate_core::api::{AuditStatus, Mode};
use trustgate_core::engine::Violation;

/// The label that tells one installation's reports from another's.
pub(crate) const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The label that marks trustgate's reports; stale ones are found by it.
pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// At most this many results per report.
pub(crate) const MAX_RESULTS: usize = 200;
/// How long one page of the list of trustgate's reports may take: up to [`PAGE_SIZE`] reports
/// of up to [`MAX_RESULTS`] results each, megabytes read from etcd. 60 s is the API server's
/// own default `--request-timeout`: it gives up on a list by then itself.
pub(crate) const REPORT_LIST_PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one create, replace or delete of a report may take. A report is tens of
/// kilobytes, and PolicyReports are what other policy engines' admission webhooks look at;
/// the API server waits for each webhook up to its `timeoutSeconds`, at most 30 s. An answer
/// later than that is not coming; the write is retried at the next audit.
pub(crate) const REPORT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The PolicyReport resource (`wgpolicyk8s.io/v1alpha2`, plural `policyreports`).
pub(crate) fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    )
}

/// One `results[]` entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct ReportResult {
    source: &'static str,
    policy: String,
    rule: String,
    result: &'static str,
    severity: &'static str,
    message: String,
    resources: Vec<ObjectReference>,
    properties: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct ObjectReference {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
}

#[derive(Debug, Default)]
struct NamespaceResults {
    fail: u64,
    warn: u64,
    /// Keyed by (kind, name, policy, rule): the kept results do not churn between runs.
    results: BTreeMap<(String, String, String, String), ReportResult>,
}

/// Results collected so far, per namespace.
#[derive(Debug, Default)]
pub struct PolicyReports {
    namespaces: BTreeMap<String, NamespaceResults>,
}

/// The `rule` of a violation: its kind, spelled as trustgate's JSON spells it.
fn rule(v: &Violation) -> String {
    match serde_json::to_value(v.kind) {
        Ok(Value::String(s)) => s,
        _ => format!("{:?}", v.kind),
    }
}

fn result_and_severity(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Enforce => ("fail", "high"),
        Mode::Warn => ("warn", "medium"),
        Mode::Audit => ("warn", "low"),
    }
}

impl Sink for PolicyReports {
    fn record(&mut self, owner: &Owner<'_>, violations: &[Violation]) {
        PolicyReports::record(self, owner, violations);
    }
}

impl PolicyReports {
    /// Records the violations of one top-level owner (none: nothing is recorded).
    pub fn record(&mut self, owner: &Owner<'_>, violations: &[Violation]) {
        // Group by (policy, rule), keeping the engine's order within a group.
        let mut groups: BTreeMap<(&str, String), Vec<&Violation>> = BTreeMap::new();
        for v in violations {
            groups.entry((&v.policy, rule(v))).or_default().push(v);
        }
        if groups.is_empty() {
            return;
        }
        let ns = self.namespaces.entry(owner.namespace.to_owned()).or_default();
        for ((policy, rule), group) in groups {
            let mode = group[0].mode;
            let (result, severity) = result_and_severity(mode);
            match result {
                "fail" => ns.fail += 1,
                _ => ns.warn += 1,
            }
            let key = (owner.kind.to_owned(), owner.name.to_owned(), policy.to_owned(), rule.clone());
            let full = ns.results.len() >= MAX_RESULTS;
            if full && ns.results.last_key_value().is_some_and(|(last, _)| *last <= key) {
                continue;
            }
            let message = group.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ");
            let mut images: Vec<&str> = group.iter().map(|v| v.image.as_str()).collect();
            images.dedup();
            let properties = BTreeMap::from([("mode", mode.as_str().to_owned()), ("images", images.join(", "))]);
            ns.results.insert(
                key,
                ReportResult {
                    source: MANAGER,
                    policy: policy.to_owned(),
                    rule,
                    result,
                    severity,
                    message,
                    resources: vec![ObjectReference {
                        api_version: owner.api_version.clone(),
                        kind: owner.kind.to_owned(),
                        namespace: owner.namespace.to_owned(),
                        name: owner.name.to_owned(),
                        uid: owner.uid.to_owned(),
                    }],
                    properties,
                },
            );
            if ns.results.len() > MAX_RESULTS {
                ns.results.pop_last();
            }
        }
    }

    /// The report objects of `installation`, by namespace; every result is stamped with `now`.
    pub fn into_objects(self, installation: &Installation, now: Timestamp) -> BTreeMap<String, DynamicObject> {
        let timestamp = json!({"seconds": now.as_second(), "nanos": now.subsec_nanosecond()});
        let resource = api_resource();
        self.namespaces
            .into_iter()
            .map(|(namespace, ns)| {
                let results: Vec<Value> = ns
                    .results
                    .into_values()
                    .map(|r| {
                        let mut value = serde_json::to_value(r).expect("a report result serializes to JSON");
                        value["timestamp"] = timestamp.clone();
                        value
                    })
                    .collect();
                let mut object =
                    DynamicObject::new(installation.report_name(), &resource).within(&namespace).data(json!({
                        "summary": {"pass": 0, "fail": ns.fail, "warn": ns.warn, "error": 0, "skip": 0},
                        "results": results,
                    }));
                object.metadata.labels = Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
                    (INSTANCE_LABEL.to_owned(), installation.report_name().to_owned()),
                ]));
                (namespace, object)
            })
            .collect()
    }
}

/// The report's content as compared between runs: timestamps say when a result was found,
/// which alone is no reason to write the object again.
fn content(data: &Value) -> Value {
    let mut data = json!({"summary": data.get("summary"), "results": data.get("results")});
    if let Some(results) = data["results"].as_array_mut() {
        for r in results {
            if let Some(r) = r.as_object_mut() {
                r.remove("timestamp");
            }
        }
    }
    data
}

/// The installation that owns a set of reports (`--instance`; the chart passes
/// `FULLNAME.RELEASE-NAMESPACE`): its reports are named after it and labelled with it, and its
/// sync lists, updates and deletes only those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation(String);

/// Why a name cannot name an installation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} cannot name an installation: use at most 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (it names and labels its PolicyReports)"
)]
pub struct InvalidInstallation(String);

impl Installation {
    /// The name of a single installation that was given none.
    pub const DEFAULT: &'static str = "trustgate";

    pub fn new(name: &str) -> Result<Self, InvalidInstallation> {
        let bytes = name.as_bytes();
        let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.first().is_some_and(edge)
            && bytes.last().is_some_and(edge)
            && bytes.iter().all(|b| edge(b) || *b == b'-' || *b == b'.');
        if valid { Ok(Installation(name.to_owned())) } else { Err(InvalidInstallation(name.to_owned())) }
    }

    /// The name of this installation's report in each namespace.
    pub fn report_name(&self) -> &str {
        &self.0
    }

    /// The label selector of this installation's reports.
    fn selector(&self) -> String {
        format!("{MANAGED_BY_LABEL}={MANAGER},{INSTANCE_LABEL}={}", self.0)
    }
}

impl Default for Installation {
    fn default() -> Self {
        Installation(Self::DEFAULT.to_owned())
    }
}

/// What one [`ReportWriter::sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub created: u32,
    pub updated: u32,
    pub unchanged: u32,
    pub deleted: u32,
    /// Writes that failed (each is logged); the next run tries again.
    pub failed: u32,
}

/// A failed sync.
#[derive(Debug, thiserror::Error)]
pub enum PolicyReportError {
    /// The `policyreports.wgpolicyk8s.io` CRD is not installed.
    #[error("the PolicyReport CRD (policyreports.wgpolicyk8s.io/v1alpha2) is not installed")]
    CrdMissing,
    #[error("failed to list the PolicyReports labelled {selector}")]
    List {
        selector: String,
        #[source]
        source: PageError,
    },
}

/// A write of one report that failed or got no answer.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Api(kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `write`, abandoned after [`REPORT_WRITE_TIMEOUT`].
async fn within_timeout<T>(write: impl Future<Output = Result<T, kube::Error>>) -> Result<T, WriteError> {
    match tokio::time::timeout(REPORT_WRITE_TIMEOUT, write).await {
        Ok(result) => result.map_err(WriteError::Api),
        Err(_) => Err(WriteError::Timeout(REPORT_WRITE_TIMEOUT)),
    }
}

/// Writes the reports of each audit run; remembers whether it said the CRD is missing.
pub struct ReportWriter {
    client: Client,
    installation: Installation,
    said_missing: bool,
}

impl ReportWriter {
    /// Writes the reports of `installation`, and touches no other's.
    pub fn new(client: Client, installation: Installation) -> Self {
        ReportWriter { client, installation, said_missing: false }
    }

    /// Makes the cluster hold exactly `desired` (by namespace) among trustgate's reports:
    /// creates the missing ones, updates those that changed, deletes the rest. A missing CRD is
    /// logged once (again once if it comes back and goes again), never an error to the caller.
    pub async fn sync(&mut self, desired: BTreeMap<String, DynamicObject>) -> Result<Synced, PolicyReportError> {
        match self.write(desired).await {
            Err(PolicyReportError::CrdMissing) => {
                if !self.said_missing {
                    tracing::warn!(
                        "PolicyReports are on but the policyreports.wgpolicyk8s.io CRD is not installed; \
                         not writing them (audit status is still written)"
                    );
                    self.said_missing = true;
                }
                Ok(Synced::default())
            }
            other => {
                if other.is_ok() && self.said_missing {
                    tracing::info!("the PolicyReport CRD is installed now; writing PolicyReports");
                    self.said_missing = false;
                }
                other
            }
        }
    }

    async fn write(&self, mut desired: BTreeMap<String, DynamicObject>) -> Result<Synced, PolicyReportError> {
        let resource = api_resource();
        let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let mut existing = Vec::new();
        // Only this installation's: another's reports are never listed, so never deleted.
        let selector = self.installation.selector();
        let params = ListParams::default().labels(&selector).limit(PAGE_SIZE);
        let listed = each_page(&all, params, Some(REPORT_LIST_PAGE_TIMEOUT), |page| existing.extend_from_slice(page));
        listed.await.map_err(|e| match e {
            PageError::Api(kube::Error::Api(s)) if s.code == 404 => PolicyReportError::CrdMissing,
            source => PolicyReportError::List { selector: selector.clone(), source },
        })?;
        let post = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
        let mut synced = Synced::default();
        for old in existing {
            let (Some(namespace), Some(name)) = (old.metadata.namespace.clone(), old.metadata.name.clone()) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, &resource);
            let wanted = if name == self.installation.report_name() { desired.remove(&namespace) } else { None };
            let result = match wanted {
                Some(new) if content(&new.data) == content(&old.data) => {
                    synced.unchanged += 1;
                    continue;
                }
                Some(mut new) => {
                    new.metadata.resource_version = old.metadata.resource_version.clone();
                    within_timeout(api.replace(&name, &post, &new)).await.map(|_| synced.updated += 1)
                }
                None => within_timeout(api.delete(&name, &DeleteParams::default())).await.map(|_| synced.deleted += 1),
            };
            if let Err(error) = result {
                // Gone meanwhile is what a delete wanted; anything else is retried next run.
                if !matches!(&error, WriteError::Api(kube::Error::Api(s)) if s.code == 404) {
                    synced.failed += 1;
                    tracing::warn!(%namespace, %name, %error, "failed to write a PolicyReport");
                }
            }
        }
        for (namespace, new) in desired {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, &resource);
            match within_timeout(api.create(&post, &new)).await {
                Ok(_) => synced.created += 1,
                Err(error) => {
                    synced.failed += 1;
                    tracing::warn!(%namespace, %error, "failed to create a PolicyReport");
                }
            }
        }
        Ok(synced)
    }
}

/// The leader's audit writes its findings as reports.
impl Publisher for ReportWriter {
    type Findings = PolicyReports;

    fn start(&self) -> PolicyReports {
        PolicyReports::default()
    }

    async fn publish(&mut self, _: &BTreeMap<String, AuditStatus>, reports: PolicyReports) {
        match self.sync(reports.into_objects(&self.installation, Timestamp::now())).await {
            Ok(synced) => tracing::debug!(?synced, "PolicyReports written"),
            Err(error) => {
                let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
                tracing::warn!(%error, %source, "failed to write PolicyReports; retrying at the next audit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use trustgate_core::engine::ViolationKind;

    fn violation(policy: &str, mode: Mode, kind: ViolationKind, container: &str, image: &str) -> Violation {
        Violation {
            policy: Arc::from(policy),
            mode,
            container: container.to_owned(),
            field: "spec.template.spec.containers[0]".to_owned(),
            image: image.to_owned(),
            normalized: None,
            reason: format!("breaks {policy}"),
            kind,
            policy_message: None,
            existing: false,
            inherited: false,
        }
    }

    fn owner<'a>(kind: &'a str, namespace: &'a str, name: &'a str) -> Owner<'a> {
        Owner { api_version: "apps/v1".to_owned(), kind, namespace, name, uid: "uid-1" }
    }

    fn now() -> Timestamp {
        "2026-03-01T12:00:00.5Z".parse().unwrap()
    }

    #[test]
    fn one_report_per_namespace_with_one_result_per_owner_policy_and_rule() {
        let mut reports = PolicyReports::default();
        reports.record(
            &owner("Deployment", "shop", "web"),
            &[
                violation("corp", Mode::Enforce, ViolationKind::Untrusted, "a", "nginx:1"),
                violation("corp", Mode::Enforce, ViolationKind::Untrusted, "b", "redis:7"),
                violation("tags", Mode::Warn, ViolationKind::DeniedTag, "a", "nginx:1"),
            ],
        );
        reports.record(
            &owner("StatefulSet", "dev", "db"),
            &[violation("watch", Mode::Audit, ViolationKind::DigestRequired, "pg", "postgres")],
        );
        reports.record(&owner("Deployment", "quiet", "fine"), &[]);
        let objects = reports.into_objects(&Installation::default(), now());
        assert_eq!(objects.keys().collect::<Vec<_>>(), ["dev", "shop"], "no report without findings");
        let shop = serde_json::to_value(&objects["shop"]).unwrap();
        let ts = json!({"seconds": now().as_second(), "nanos": 500_000_000});
        let web = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web", "uid": "uid-1"}]);
        assert_eq!(
            shop,
            json!({
                "apiVersion": "wgpolicyk8s.io/v1alpha2",
                "kind": "PolicyReport",
                "metadata": {"name": "trustgate", "namespace": "shop",
                    "labels": {"app.kubernetes.io/managed-by": "trustgate", "app.kubernetes.io/instance": "trustgate"}},
                "summary": {"pass": 0, "fail": 1, "warn": 1, "error": 0, "skip": 0},
                "results": [
                    {"source": "trustgate", "policy": "corp", "rule": "Untrusted", "result": "fail", "severity": "high",
                     "message": "container \"a\" (spec.template.spec.containers[0]) image \"nginx:1\" breaks corp; container \"b\" (spec.template.spec.containers[0]) image \"redis:7\" breaks corp",
                     "resources": web, "properties": {"mode": "Enforce", "images": "nginx:1, redis:7"}, "timestamp": ts},
                    {"source": "trustgate", "policy": "tags", "rule": "DeniedTag", "result": "warn", "severity": "medium",
                     "message": "container \"a\" (spec.template.spec.containers[0]) image \"nginx:1\" breaks tags",
                     "resources": web, "properties": {"mode": "Warn", "images": "nginx:1"}, "timestamp": ts},
                ],
            })
        );
        let dev = serde_json::to_value(&objects["dev"]).unwrap();
        assert_eq!(
            (dev["results"][0]["result"].as_str(), dev["results"][0]["severity"].as_str()),
            (Some("warn"), Some("low"))
        );
        assert_eq!(dev["summary"]["warn"], 1);
    }

    #[test]
    fn results_are_capped_and_the_summary_counts_them_all() {
        let mut reports = PolicyReports::default();
        // In reverse: the kept results must still be the first ones by name.
        for i in (0..250).rev() {
            let name = format!("pod-{i:03}");
            reports.record(
                &owner("Pod", "dev", &name),
                &[violation("corp", Mode::Enforce, ViolationKind::Untrusted, "c", "nginx")],
            );
        }
        let dev = serde_json::to_value(&reports.into_objects(&Installation::default(), now())["dev"]).unwrap();
        assert_eq!(dev["summary"]["fail"], 250);
        let results = dev["results"].as_array().unwrap();
        assert_eq!(results.len(), MAX_RESULTS);
        assert_eq!(results[0]["resources"][0]["name"], "pod-000");
        assert_eq!(results[MAX_RESULTS - 1]["resources"][0]["name"], "pod-199");
    }

    #[test]
    fn content_ignores_timestamps_only() {
        let a = json!({"summary": {"fail": 1}, "results": [{"policy": "p", "timestamp": {"seconds": 1, "nanos": 0}}]});
        let b = json!({"summary": {"fail": 1}, "results": [{"policy": "p", "timestamp": {"seconds": 9, "nanos": 0}}]});
        let c = json!({"summary": {"fail": 2}, "results": [{"policy": "p", "timestamp": {"seconds": 1, "nanos": 0}}]});
        assert_eq!(content(&a), content(&b));
        assert_ne!(content(&a), content(&c));
    }

    #[test]
    fn each_installation_names_and_labels_its_own_reports() {
        let second = Installation::new("trustgate-canary.platform").unwrap();
        let mut reports = PolicyReports::default();
        let owner = Owner { api_version: "v1".into(), kind: "Pod", namespace: "dev", name: "p", uid: "u" };
        PolicyReports::record(
            &mut reports,
            &owner,
            &[violation("corp", Mode::Enforce, ViolationKind::Untrusted, "c", "nginx")],
        );
        let objects = reports.into_objects(&second, now());
        let dev = &objects["dev"];
        assert_eq!(dev.metadata.name.as_deref(), Some("trustgate-canary.platform"));
        let labels = dev.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "trustgate-canary.platform");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "trustgate");
        assert_eq!(
            second.selector(),
            "app.kubernetes.io/managed-by=trustgate,app.kubernetes.io/instance=trustgate-canary.platform"
        );
        for bad in ["", "Trustgate", "-a", "a-", "a/b", "a b", &"x".repeat(64)] {
            assert!(Installation::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Installation::default().report_name(), "trustgate");
    }

    /// The reports of one untrusted Pod in each of `namespaces`.
    fn desired(namespaces: &[&str]) -> BTreeMap<String, DynamicObject> {
        let mut reports = PolicyReports::default();
        for ns in namespaces {
            reports.record(
                &owner("Pod", ns, "p"),
                &[violation("corp", Mode::Enforce, ViolationKind::Untrusted, "c", "nginx")],
            );
        }
        reports.into_objects(&Installation::default(), now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_that_gets_no_answer_fails_the_sync_at_its_timeout() {
        let (client, mut handle) = crate::mock_api::client();
        let mut writer = ReportWriter::new(client, Installation::default());
        let server = async {
            let (request, unanswered) =
                crate::mock_api::next_request(&mut handle, Duration::from_secs(1)).await.unwrap();
            assert!(request.line.starts_with("GET /apis/wgpolicyk8s.io/v1alpha2/policyreports?"), "{}", request.line);
            unanswered
        };
        let started = tokio::time::Instant::now();
        let (synced, _unanswered) = tokio::join!(writer.sync(desired(&["shop"])), server);
        assert!(
            matches!(synced, Err(PolicyReportError::List { source: PageError::Timeout(t), .. }) if t == REPORT_LIST_PAGE_TIMEOUT),
            "{synced:?}"
        );
        assert_eq!(started.elapsed(), REPORT_LIST_PAGE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_gets_no_answer_is_abandoned_at_its_timeout_and_the_sync_carries_on() {
        use crate::mock_api::{json_response, list, next_request};
        let (client, mut handle) = crate::mock_api::client();
        let mut writer = ReportWriter::new(client, Installation::default());
        let server = async {
            let (_, reply) = next_request(&mut handle, Duration::from_secs(1)).await.unwrap();
            reply.send_response(json_response(200, &list(vec![])));
            let (first, _unanswered) = next_request(&mut handle, Duration::from_secs(1)).await.unwrap();
            let asked = tokio::time::Instant::now();
            let (second, reply) = next_request(&mut handle, Duration::from_secs(300)).await.unwrap();
            let waited = asked.elapsed();
            reply.send_response(json_response(201, second.body.as_ref().unwrap()));
            (first.line, second.line, waited)
        };
        let (synced, (first, second, waited)) = tokio::join!(writer.sync(desired(&["dev", "shop"])), server);
        assert_eq!(first, "POST /apis/wgpolicyk8s.io/v1alpha2/namespaces/dev/policyreports?&fieldManager=trustgate");
        assert_eq!(second, "POST /apis/wgpolicyk8s.io/v1alpha2/namespaces/shop/policyreports?&fieldManager=trustgate");
        assert_eq!(waited, REPORT_WRITE_TIMEOUT, "dev's create was given up at its timeout, not before");
        assert_eq!(synced.unwrap(), Synced { created: 1, failed: 1, ..Synced::default() });
    }
}
