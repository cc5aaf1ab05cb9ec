//! The leader's audit: every `audit_interval` while leading, one [`audit::run`] over the
//! cluster, whose results go to its [`Publisher`]s (the policy status, PolicyReports), and the
//! `trustgate_audit_*` metrics. Knows no output format: each publisher writes its own.
//! Imports `audit`, `election` and `pager`; the publishers import this, never the reverse.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit;
use crate::election::Leadership;
use crate::pager::PAGE_SIZE;
use trustgate_core::api::AuditStatus;
use trustgate_core::engine::snapshot::Store;

/// How long one page of the audit's lists may take. A page is up to [`PAGE_SIZE`] whole
/// workload objects read from etcd (a paged list is a consistent read), which on a large,
/// busy cluster takes seconds. 60 s is the API server's own default `--request-timeout`: it
/// gives up on a list by then itself, so an answer later than that is not coming.
pub(crate) const AUDIT_PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the results of each audit run go. A publisher is fed every evaluated object while
/// the run lists ([`audit::Sink`]), and once the run is complete it writes what it kept.
pub trait Publisher: Send {
    /// What it keeps of one run.
    type Findings: audit::Sink + Send;

    /// Empty findings, for a new run.
    fn start(&self) -> Self::Findings;

    /// Writes one complete run: the status the audit computed for each policy, and its own
    /// findings. Failures are its own to log and retry at the next run. The future is dropped
    /// half-way when leadership is lost, so each write must stand on its own.
    fn publish(
        &mut self,
        statuses: &BTreeMap<String, AuditStatus>,
        findings: Self::Findings,
    ) -> impl Future<Output = ()> + Send;
}

/// Both, in order.
impl<A: Publisher, B: Publisher> Publisher for (A, B) {
    type Findings = (A::Findings, B::Findings);

    fn start(&self) -> Self::Findings {
        (self.0.start(), self.1.start())
    }

    async fn publish(&mut self, statuses: &BTreeMap<String, AuditStatus>, (a, b): Self::Findings) {
        self.0.publish(statuses, a).await;
        self.1.publish(statuses, b).await;
    }
}

/// A publisher that is configured or not (`--policy-reports`).
impl<P: Publisher> Publisher for Option<P> {
    type Findings = Option<P::Findings>;

    fn start(&self) -> Self::Findings {
        self.as_ref().map(P::start)
    }

    async fn publish(&mut self, statuses: &BTreeMap<String, AuditStatus>, findings: Self::Findings) {
        if let (Some(publisher), Some(findings)) = (self.as_mut(), findings) {
            publisher.publish(statuses, findings).await;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    resource: &'static str,
}

/// `trustgate_audit_*`.
#[derive(Clone, Debug, Default)]
pub struct AuditMetrics {
    runs: Family<ResultLabels, Counter>,
    violations: Family<PolicyLabels, Gauge>,
    listed: Family<KindLabels, Gauge>,
    last_success: Gauge,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AuditMetrics::default();
        let r = registry.sub_registry_with_prefix("audit");
        r.register("runs", "Audit runs, by result (success, error)", m.runs.clone());
        r.register(
            "violations",
            "Workloads in the cluster that the policy would deny or flag, from the last audit (leader only)",
            m.violations.clone(),
        );
        r.register("listed_objects", "Objects listed by the last audit, by resource", m.listed.clone());
        r.register(
            "last_success_timestamp_seconds",
            "When the last audit completed (Unix time)",
            m.last_success.clone(),
        );
        m
    }

    fn run_ended(&self, result: &'static str) {
        self.runs.get_or_create(&ResultLabels { result }).inc();
    }

    /// One series in every family (see `KubeSourceMetrics::touch_every_family`).
    pub(crate) fn touch_every_family(&self) {
        self.run_ended("success");
        self.violations.get_or_create(&PolicyLabels { policy: "p".into() }).set(1);
        self.listed.get_or_create(&KindLabels { resource: "pods" }).set(1);
    }
}

/// Audits while this replica leads.
pub(crate) struct Auditor<P> {
    client: Client,
    interval: Duration,
    publisher: P,
    metrics: AuditMetrics,
}

impl<P: Publisher> Auditor<P> {
    pub(crate) fn new(client: Client, interval: Duration, publisher: P, metrics: AuditMetrics) -> Self {
        Auditor { client, interval, publisher, metrics }
    }

    /// Audits every interval while leading, until `shutdown` or the election ends. A run in
    /// progress when leadership is lost is dropped at once, publication included.
    pub(crate) async fn run(mut self, store: Arc<Store>, mut leadership: Leadership, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                leading = leadership.acquired() => if !leading { return },
            }
            let mut ticker = tokio::time::interval(self.interval.max(Duration::from_secs(1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = leadership.lost() => break,
                    _ = ticker.tick() => {}
                }
                let audited = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    audited = leadership.while_leading(self.audit(&store)) => audited,
                };
                if audited.is_none() {
                    break;
                }
            }
            // Only the leader reports audit results.
            self.metrics.violations.clear();
        }
    }

    /// One run and its publication.
    async fn audit(&mut self, store: &Store) {
        // Not synced yet: try again shortly rather than a whole interval later.
        let snapshot = loop {
            if let Some(s) = store.load() {
                break s;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let started = std::time::Instant::now();
        let findings = self.publisher.start();
        let run = audit::run(&self.client, &snapshot, PAGE_SIZE, Some(AUDIT_PAGE_TIMEOUT), Timestamp::now(), findings);
        let report = match run.await {
            Ok(r) => r,
            Err(error) => {
                self.metrics.run_ended("error");
                let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
                warn!(%error, %source, "audit failed; no status written, retrying at the next interval");
                return;
            }
        };
        self.metrics.violations.clear();
        for (resource, count) in &report.listed {
            self.metrics.listed.get_or_create(&KindLabels { resource }).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        for (policy, audit) in &report.statuses {
            self.metrics.violations.get_or_create(&PolicyLabels { policy: policy.clone() }).set(audit.violations);
        }
        self.publisher.publish(&report.statuses, report.sink).await;
        self.metrics.run_ended("success");
        self.metrics.last_success.set(Timestamp::now().as_second());
        let violations: i64 = report.statuses.values().map(|a| a.violations).sum();
        info!(
            evaluated = report.evaluated,
            unreadable = report.unreadable,
            violations,
            elapsed = ?started.elapsed(),
            "audit completed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api::{self, Handle, Received, endless, json_response, list};
    use crate::policy_report::ReportWriter;
    use crate::status_writer::{AUDIT_STATUS_WRITE_TIMEOUT, AuditStatusWriter};
    use kube::Api;
    use serde_json::json;
    use tokio::sync::watch as channel;
    use trustgate_core::api::TrustedRegistryPolicy;
    use trustgate_core::engine::PolicySet;
    use trustgate_core::engine::snapshot::Snapshot;

    const INTERVAL: Duration = Duration::from_secs(3600);
    const FIRST_LIST: &str = "GET /apis/apps/v1/deployments?&limit=500";
    const REPORTS_LIST: &str = "GET /apis/wgpolicyk8s.io/v1alpha2/policyreports?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dtrustgate%2Capp.kubernetes.io%2Finstance%3Dtrustgate&limit=500";

    fn store(policies: &[&str]) -> Arc<Store> {
        let policies: Vec<TrustedRegistryPolicy> = policies
            .iter()
            .map(|name| {
                serde_json::from_value(
                    json!({"metadata": {"name": name}, "spec": {"trustedRegistries": ["registry.my.com"]}}),
                )
                .unwrap()
            })
            .collect();
        let store = Store::new();
        store.publish(Snapshot { policies: PolicySet::compile(&policies).0, namespaces: Some(Default::default()) });
        store
    }

    /// An auditor that leads, over a mocked API server, with the status and, if asked,
    /// PolicyReports as its publishers.
    struct Fixture {
        handle: Handle,
        registry: Registry,
        leader: channel::Sender<bool>,
        _shutdown: tokio_util::sync::DropGuard,
    }

    fn leading_auditor(policies: &[&str], policy_reports: bool) -> Fixture {
        let (client, handle) = mock_api::client();
        let mut registry = trustgate_runtime::metrics::registry();
        let publishers = (
            AuditStatusWriter::new(Api::all(client.clone())),
            policy_reports.then(|| ReportWriter::new(client.clone(), crate::policy_report::Installation::default())),
        );
        let auditor = Auditor::new(client, INTERVAL, publishers, AuditMetrics::register(&mut registry));
        let (leader, leadership) = Leadership::channel();
        leader.send_replace(true);
        let shutdown = CancellationToken::new();
        tokio::spawn(auditor.run(store(policies), leadership, shutdown.clone()));
        Fixture { handle, registry, leader, _shutdown: shutdown.drop_guard() }
    }

    impl Fixture {
        async fn next(&mut self) -> (Received, mock_api::Reply) {
            mock_api::next_request(&mut self.handle, Duration::from_secs(1)).await.expect("a request within 1s")
        }

        /// Answers the lists of every audited kind with nothing.
        async fn empty_cluster(&mut self) {
            for kind in audit::AUDITED_KINDS {
                let (request, reply) = self.next().await;
                assert!(request.line.contains(&format!("/{}?", kind.plural)), "{}", request.line);
                reply.send_response(json_response(200, &list(vec![])));
            }
        }

        fn metrics(&self) -> String {
            trustgate_runtime::metrics::encode(&self.registry).unwrap()
        }

        /// Loses the lease; returns once the call in flight (answered by `endless`) is dropped,
        /// which must be within a second.
        async fn lose_the_lease(&self, abandoned: tokio::sync::oneshot::Receiver<()>) {
            self.leader.send_replace(false);
            let lost = tokio::time::Instant::now();
            tokio::time::timeout(Duration::from_secs(1), abandoned).await.expect("the call is dropped within 1s").ok();
            assert!(lost.elapsed() < Duration::from_secs(1));
        }
    }

    fn patch_of(name: &str) -> String {
        format!("PATCH /apis/trustgate.dev/v1alpha1/trustedregistrypolicies/{name}/status?&fieldManager=trustgate")
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_page_that_gets_no_answer_fails_the_run_at_its_timeout_and_the_next_run_comes() {
        let mut f = leading_auditor(&["corp"], false);
        let (request, _unanswered) = f.next().await;
        assert_eq!(request.line, FIRST_LIST);
        let asked = tokio::time::Instant::now();
        tokio::time::sleep(AUDIT_PAGE_TIMEOUT - Duration::from_millis(1)).await;
        assert!(!f.metrics().contains("trustgate_audit_runs_total{"), "not given up before its timeout");
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        let text = f.metrics();
        assert!(text.contains(r#"trustgate_audit_runs_total{result="error"} 1"#), "{text}");
        assert!(!text.contains(r#"result="success""#), "{text}");
        // The loop carries on: the next run at the next interval.
        let (request, _) = mock_api::next_request(&mut f.handle, INTERVAL).await.expect("the next run");
        assert_eq!(request.line, FIRST_LIST);
        assert_eq!(asked.elapsed(), INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn an_audit_status_write_that_gets_no_answer_is_abandoned_at_its_timeout_and_the_next_is_written() {
        let mut f = leading_auditor(&["a", "b"], false);
        f.empty_cluster().await;
        let (request, _unanswered) = f.next().await;
        assert_eq!(request.line, patch_of("a"));
        assert_eq!(request.body.unwrap()["status"]["audit"]["violations"], 0);
        let asked = tokio::time::Instant::now();
        let (request, reply) =
            mock_api::next_request(&mut f.handle, Duration::from_secs(60)).await.expect("b's audit status");
        assert_eq!(request.line, patch_of("b"));
        assert_eq!(asked.elapsed(), AUDIT_STATUS_WRITE_TIMEOUT);
        reply.send_response(json_response(200, &json!({"metadata": {"name": "b"}, "spec": {}})));
        tokio::task::yield_now().await;
        let text = f.metrics();
        assert!(text.contains(r#"trustgate_audit_runs_total{result="success"} 1"#), "the run completes: {text}");
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_lease_cancels_a_run_in_the_middle_of_a_list() {
        let mut f = leading_auditor(&["corp"], false);
        let (request, reply) = f.next().await;
        assert_eq!(request.line, FIRST_LIST);
        let (response, abandoned) = endless();
        reply.send_response(response);
        tokio::time::sleep(Duration::from_secs(5)).await;
        f.lose_the_lease(abandoned).await;
        let later = mock_api::next_request(&mut f.handle, INTERVAL * 2).await;
        assert!(later.is_none(), "a follower lists nothing: {:?}", later.map(|(r, _)| r));
        assert!(!f.metrics().contains("trustgate_audit_runs_total{"), "a cancelled run is no run");
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_lease_cancels_the_policy_report_sync() {
        let mut f = leading_auditor(&["corp"], true);
        f.empty_cluster().await;
        let (request, reply) = f.next().await;
        assert_eq!(request.line, patch_of("corp"));
        reply.send_response(json_response(200, &json!({"metadata": {"name": "corp"}, "spec": {}})));
        let (request, reply) = f.next().await;
        assert_eq!(request.line, REPORTS_LIST);
        let (response, abandoned) = endless();
        reply.send_response(response);
        tokio::time::sleep(Duration::from_secs(5)).await;
        f.lose_the_lease(abandoned).await;
        let later = mock_api::next_request(&mut f.handle, INTERVAL * 2).await;
        assert!(later.is_none(), "a follower writes nothing: {:?}", later.map(|(r, _)| r));
        assert!(!f.metrics().contains("trustgate_audit_runs_total{"), "a cancelled run is no run");
    }
}
