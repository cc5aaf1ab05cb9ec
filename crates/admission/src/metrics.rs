//! Prometheus metrics, grouped per subsystem: each subsystem registers its own families under
//! its own prefix of one [`Registry`] (`trustgate_admission_*`, `trustgate_policy_source_*`,
//! `trustgate_tls_*`), and `/metrics` encodes that registry as OpenMetrics text.
//!
//! Label values are always drawn from closed sets: a request's `kind` is one of the workload
//! kinds trustgate knows or `other`, so a client posting made-up kinds cannot grow the series.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::connections::{Refusal, Shed};
use trustgate_core::api::Mode;
use trustgate_runtime::log_writer::DroppedLines;

use trustgate_core::engine::Verdict;
use trustgate_core::engine::snapshot::Store;

pub use trustgate_runtime::metrics::{encode, registry};

/// The two review endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    /// `POST /validate`: AdmissionReview.
    Validate,
    /// `POST /imagereview`: ImageReview.
    ImageReview,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::ImageReview => "imagereview",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    endpoint: &'static str,
    kind: &'static str,
    operation: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Workload kinds reported by name; every other kind is counted as `other`.
const KNOWN_KINDS: [&str; 10] = [
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ImageReview",
];

const KNOWN_OPERATIONS: [&str; 4] = ["CREATE", "UPDATE", "DELETE", "CONNECT"];

fn bounded(value: &str, known: &[&'static str]) -> &'static str {
    known.iter().find(|k| **k == value).copied().unwrap_or("other")
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The largest finite bucket must reach the longest webhook timeout the API server allows
/// (30s): the chart's p99 alert compares the quantile with a share of the timeout, and
/// `histogram_quantile` never reports more than the largest finite bucket.
const LATENCY_BUCKETS: u16 = 21;

fn latency_histogram() -> Histogram {
    // 50µs to ~52s: reviews take microseconds, but a slow one must still be measured up to
    // the timeout.
    Histogram::new(exponential_buckets(0.000_05, 2.0, LATENCY_BUCKETS))
}

/// Admission endpoint metrics (`trustgate_admission_*`).
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    decisions: Family<DecisionLabels, Counter>,
    duration: HistogramFamily<EndpointLabels>,
    rejections: Family<RejectionLabels, Counter>,
    in_flight: Gauge,
    connections: Gauge,
    refused: Family<ReasonLabels, Counter>,
    shed: Family<ReasonLabels, Counter>,
    body_budget: crate::body_budget::BodyBudgetMetrics,
    inherited: Family<PolicyLabels, Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

impl AdmissionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("admission");
        let metrics = AdmissionMetrics {
            decisions: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            rejections: Family::default(),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            refused: Family::default(),
            shed: Family::default(),
            body_budget: crate::body_budget::BodyBudgetMetrics::default(),
            inherited: Family::default(),
        };
        registry.register(
            "requests",
            "Reviews answered, by endpoint, object kind, operation and decision",
            metrics.decisions.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from the first byte of a review's body to its answer",
            prometheus_client::registry::Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests answered with an HTTP error (400, 404, 405, 408, 413, 503) instead of a review",
            metrics.rejections.clone(),
        );
        registry.register("in_flight_requests", "Requests received and not yet answered", metrics.in_flight.clone());
        registry.register(
            "open_connections",
            "Admission connections open now (in the TLS handshake or established)",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted, by reason (per_source_limit: the client's address holds --max-connections-per-source; global_limit: --max-connections are open and all busy)",
            metrics.refused.clone(),
        );
        registry.register(
            "connections_shed",
            "Open connections closed early, by reason (handshake_timeout: no TLS handshake within --handshake-timeout; handshaking, idle: closed at --max-connections to admit a new one)",
            metrics.shed.clone(),
        );
        registry.register(
            "inherited",
            "CREATEs by a built-in controller from a template trustgate admitted, admitted with their violations as warnings (existingImages: Allow), by policy",
            metrics.inherited.clone(),
        );
        registry.register(
            "body_bytes_in_flight",
            "Request-body bytes reserved in the body memory budget now (at most --max-body-bytes-in-flight)",
            metrics.body_budget.in_flight.clone(),
        );
        registry.register(
            "body_budget_waits",
            "Request bodies that had to wait for room in the body memory budget (their socket is not read meanwhile)",
            metrics.body_budget.waits.clone(),
        );
        registry.register(
            "body_budget_refusals",
            "Requests answered 503 by the body memory budget, by reason (timeout: no room before --request-timeout; preempted: a lighter client address needed the room; too_large: the body exceeds --max-body-bytes-per-source)",
            metrics.body_budget.refusals.clone(),
        );
        metrics
    }

    /// Counts a CREATE that inherited its owner's admission despite `policy`.
    pub(crate) fn inherited(&self, policy: &str) {
        self.inherited.get_or_create(&PolicyLabels { policy: policy.to_owned() }).inc();
    }

    /// One series in every labelled family: the encoder skips families without any, and the
    /// test of the known metric list (the binary's) must see them all.
    pub fn touch_every_family(&self) {
        self.decided(Endpoint::Validate, "Pod", "CREATE", Verdict::Allow, Duration::from_millis(1));
        self.rejected(400);
        self.connection_refused(Refusal::PerSourceLimit);
        self.connection_shed(Shed::Idle);
        self.body_budget.refused(crate::body_budget::Refusal::Timeout);
        self.inherited("p");
    }

    /// The metrics of the body budget these admission metrics belong with.
    pub fn body_budget(&self) -> crate::body_budget::BodyBudgetMetrics {
        self.body_budget.clone()
    }

    /// Counts a connection closed as soon as it was accepted.
    pub(crate) fn connection_refused(&self, reason: Refusal) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
    }

    /// Counts an open connection closed early.
    pub(crate) fn connection_shed(&self, reason: Shed) {
        self.shed.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> InFlightRequest {
        self.connections.inc();
        InFlightRequest(self.connections.clone())
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub(crate) fn in_flight(&self) -> InFlightRequest {
        self.in_flight.inc();
        InFlightRequest(self.in_flight.clone())
    }

    /// Counts one answered review and its latency.
    pub(crate) fn decided(&self, endpoint: Endpoint, kind: &str, operation: &str, verdict: Verdict, elapsed: Duration) {
        let labels = DecisionLabels {
            endpoint: endpoint.as_str(),
            kind: bounded(kind, &KNOWN_KINDS),
            operation: bounded(operation, &KNOWN_OPERATIONS),
            decision: verdict.as_str(),
        };
        self.decisions.get_or_create(&labels).inc();
        self.duration.get_or_create(&EndpointLabels { endpoint: endpoint.as_str() }).observe(elapsed.as_secs_f64());
    }

    /// Counts a request answered with an HTTP error status.
    pub fn rejected(&self, code: u16) {
        self.rejections.get_or_create(&RejectionLabels { code }).inc();
    }
}

/// A request in flight or a connection open; dropping it (answered, abandoned, closed) counts
/// it out.
#[derive(Debug)]
pub struct InFlightRequest(Gauge);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// TLS metrics (`trustgate_tls_*`).
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    reloads: Family<ResultLabels, Counter>,
    not_after: Gauge,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("tls");
        let metrics = TlsMetrics::default();
        registry.register(
            "certificate_reloads",
            "Changes of the certificate files seen on disk, by result (success: now served; error: the previous certificate stays)",
            metrics.reloads.clone(),
        );
        registry.register(
            "certificate_not_after_seconds",
            "When the serving certificate expires: its notAfter (Unix time)",
            metrics.not_after.clone(),
        );
        metrics
    }

    pub fn reloaded(&self) {
        self.reloads.get_or_create(&ResultLabels { result: "success" }).inc();
    }

    /// Records the notAfter of the certificate now served, in Unix seconds.
    pub(crate) fn serving_until(&self, not_after: i64) {
        self.not_after.set(not_after);
    }

    pub fn failed(&self) {
        self.reloads.get_or_create(&ResultLabels { result: "error" }).inc();
    }
}

/// Reports what the current snapshot holds at scrape time, whichever source published it:
/// `trustgate_policies{mode}` and `trustgate_ready`.
#[derive(Debug)]
pub struct SnapshotCollector {
    store: Arc<Store>,
}

impl SnapshotCollector {
    pub fn register(registry: &mut Registry, store: Arc<Store>) {
        registry.register_collector(Box::new(SnapshotCollector { store }));
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.store.load();
        let ready = ConstGauge::new(i64::from(self.store.is_ready()));
        let metric = encoder.encode_descriptor(
            "ready",
            "1 when policies are loaded and the server is not shutting down",
            None,
            ready.metric_type(),
        )?;
        ready.encode(metric)?;
        let Some(snapshot) = snapshot else { return Ok(()) };
        let mut family = encoder.encode_descriptor(
            "policies",
            "Policies loaded, by mode",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for mode in Mode::ALL {
            let count = i64::try_from(snapshot.policies.count_by_mode(mode)).unwrap_or(i64::MAX);
            ConstGauge::new(count).encode(family.encode_family(&ModeLabels { mode: mode.as_str() })?)?;
        }
        Ok(())
    }
}

/// Reports `trustgate_log_lines_dropped_total`: log lines the log writer dropped because its
/// buffer was full (a burst faster than stderr drains). Decisions are still answered
/// and counted in the request metrics; only their log lines are lost.
#[derive(Debug)]
pub struct LogCollector {
    dropped: DroppedLines,
}

impl LogCollector {
    pub fn register(registry: &mut Registry, dropped: DroppedLines) {
        registry.register_collector(Box::new(LogCollector { dropped }));
    }
}

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = ConstCounter::new(u64::try_from(self.dropped.dropped_lines()).unwrap_or(u64::MAX));
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log writer's buffer was full",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustgate_core::engine::snapshot::Snapshot;

    #[test]
    fn kinds_and_operations_outside_the_known_sets_are_other() {
        let mut registry = registry();
        let metrics = AdmissionMetrics::register(&mut registry);
        metrics.decided(Endpoint::Validate, "Deployment", "CREATE", Verdict::Deny, Duration::from_micros(80));
        metrics.decided(Endpoint::Validate, "MadeUp123", "PATCH", Verdict::Allow, Duration::from_micros(80));
        metrics.rejected(413);
        let request = metrics.in_flight();
        assert!(encode(&registry).unwrap().contains("trustgate_admission_in_flight_requests 1"));
        drop(request);
        let text = encode(&registry).unwrap();
        assert!(
            text.contains(
                r#"trustgate_admission_requests_total{endpoint="validate",kind="Deployment",operation="CREATE",decision="deny"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"kind="other",operation="other",decision="allow"} 1"#), "{text}");
        assert!(!text.contains("MadeUp123"), "{text}");
        assert!(text.contains(r#"trustgate_admission_rejected_requests_total{code="413"} 1"#), "{text}");
        assert!(
            text.contains(r#"trustgate_admission_request_duration_seconds_count{endpoint="validate"} 2"#),
            "{text}"
        );
        assert!(text.contains("trustgate_admission_in_flight_requests 0"), "{text}");
    }

    #[test]
    fn snapshot_collector_reports_policies_by_mode_and_readiness() {
        let store = Store::new();
        let mut registry = registry();
        SnapshotCollector::register(&mut registry, store.clone());
        let text = encode(&registry).unwrap();
        assert!(text.contains("trustgate_ready 0"), "{text}");
        assert!(!text.contains("trustgate_policies"), "{text}");

        let yaml = "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: a}\nspec: {mode: Warn, trustedRegistries: [r.io]}\n";
        let policies = trustgate_manifest::manifest::parse_policies("p.yaml", yaml).unwrap();
        let (set, errors) = trustgate_core::engine::PolicySet::compile(&policies);
        assert!(errors.is_empty());
        store.publish(Snapshot { policies: set, namespaces: None });
        let text = encode(&registry).unwrap();
        assert!(text.contains("trustgate_ready 1"), "{text}");
        assert!(text.contains(r#"trustgate_policies{mode="Warn"} 1"#), "{text}");
        assert!(text.contains(r#"trustgate_policies{mode="Enforce"} 0"#), "{text}");
    }

    #[test]
    fn connection_refusals_and_sheds_are_counted_by_reason() {
        let mut registry = registry();
        let metrics = AdmissionMetrics::register(&mut registry);
        metrics.connection_refused(Refusal::PerSourceLimit);
        metrics.connection_refused(Refusal::PerSourceLimit);
        metrics.connection_shed(Shed::HandshakeTimeout);
        let _open = [metrics.connection_opened(), metrics.connection_opened()];
        drop(metrics.connection_opened());
        let text = encode(&registry).unwrap();
        assert!(
            text.contains(r#"trustgate_admission_connections_refused_total{reason="per_source_limit"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"trustgate_admission_connections_shed_total{reason="handshake_timeout"} 1"#), "{text}");
        assert!(text.contains("trustgate_admission_open_connections 2"), "{text}");
    }

    #[test]
    fn log_lines_dropped_by_a_full_buffer_are_counted() {
        use std::io::Write as _;
        // Never drained (the sink blocks until the end): the buffer fills and lines are dropped.
        let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().unwrap();
        struct Stalled(std::sync::Arc<std::sync::Mutex<()>>);
        impl std::io::Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                drop(self.0.lock());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (mut writer, dropped, guard) = trustgate_runtime::log_writer::spawn(Stalled(gate.clone())).unwrap();
        let mut registry = registry();
        LogCollector::register(&mut registry, dropped.clone());
        assert!(encode(&registry).unwrap().contains("trustgate_log_lines_dropped_total 0"));
        let line = [b'x'; 1023].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..3 * trustgate_runtime::log_writer::CAPACITY / line.len() {
            writer.write_all(&line).unwrap();
        }
        // At most the batch being written and the full buffer got through.
        let count = dropped.dropped_lines();
        assert!(count >= trustgate_runtime::log_writer::CAPACITY / line.len(), "{count}");
        let text = encode(&registry).unwrap();
        assert!(text.contains("# TYPE trustgate_log_lines_dropped counter"), "{text}");
        assert!(text.contains(&format!("trustgate_log_lines_dropped_total {count}")), "{text}");
        drop(held);
        drop(guard);
    }

    #[test]
    fn latency_buckets_reach_the_longest_webhook_timeout() {
        let mut registry = registry();
        let metrics = AdmissionMetrics::register(&mut registry);
        metrics.decided(Endpoint::Validate, "Pod", "CREATE", Verdict::Allow, Duration::from_secs(20));
        let text = encode(&registry).unwrap();
        let largest = text
            .lines()
            .filter(|l| l.starts_with("trustgate_admission_request_duration_seconds_bucket{"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse::<f64>().ok())
            .filter(|le| le.is_finite())
            .fold(0.0, f64::max);
        assert!(largest >= 30.0, "largest finite bucket {largest}s is below the 30s maximum timeout:\n{text}");
        // A 20s review lands in a finite bucket, so a p99 of 20s is measurable.
        assert!(text.contains(r#"le="26.2144",endpoint="validate"} 1"#), "{text}");
    }

    #[test]
    fn tls_results_are_counted() {
        let mut registry = registry();
        let tls = TlsMetrics::register(&mut registry);
        tls.reloaded();
        let text = encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_tls_certificate_reloads_total{result="success"} 1"#), "{text}");
    }
}
