//! The Kubernetes policy source: kube-rs watchers feed the [`Index`], which publishes admission
//! snapshots to the [`Store`]; beside them the elected leader writes policy status and audits.
//! [`KubeSource`] is the entry that wires these jobs and their metrics together; the watch is
//! the job kept here. Imports the index and the modules of the other jobs (`election`,
//! `status_writer`, `auditor`, `policy_report`); nothing of the crate imports this.
//!
//! Four jobs run side by side until shutdown:
//! - **watch** (here): TrustedRegistryPolicy objects and Namespace metadata, retried after
//!   errors with a short capped backoff (`Retry`). Each change that admission would notice
//!   publishes a new snapshot, the first one once both initial lists are in. Errors only delay:
//!   the last snapshot stays in place, so admission never waits on the API server.
//! - **election** ([`crate::election`]): the Lease, published as leadership to the others.
//! - **status** ([`crate::status_writer`]): while leading, writes `observedGeneration` and
//!   `Ready` of each policy whose status does not already say it.
//! - **audit** ([`crate::auditor`]): while leading, every `audit_interval`, an audit whose
//!   results go to the policy status and, if asked, PolicyReports.
//!
//! The leader-only jobs stop the moment the Lease is lost, abandoning any call in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auditor::{AuditMetrics, Auditor};
use crate::election::{self, ElectionMetrics, Leadership};
use crate::index::{Index, PolicyEntries, PolicyEntry, PolicyObject};
use crate::lease::{Elector, LeaseConfig};
use crate::policy_report::{Installation, ReportWriter};
use crate::status_writer::{AuditStatusWriter, PolicyView, StatusMetrics, StatusWriter};
use imbl::ordmap::DiffItem;
use trustgate_core::engine::snapshot::Store;

/// The first wait of a watcher after an error.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest wait of a watcher between two attempts: a change made while the API server was
/// away is seen at most this long after it is back (plus the relist).
const RETRY_MAX: Duration = Duration::from_secs(4);

/// Where the lease lives, who we are, and how often to audit.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub lease_namespace: String,
    pub lease_name: String,
    /// `holderIdentity` in the lease: the pod name.
    pub identity: String,
    pub audit_interval: Duration,
    /// Also write the audit's findings as `wgpolicyk8s.io` PolicyReports.
    pub policy_reports: bool,
    /// Whose PolicyReports the audit writes (`--instance`).
    pub installation: Installation,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

const POLICIES: &str = "trustedregistrypolicies";
const NAMESPACES: &str = "namespaces";

/// Metrics of the watchers (`trustgate_watch_*`) and of what they read (`trustgate_policy_ready`).
#[derive(Clone, Debug, Default)]
pub struct WatchMetrics {
    synced: Family<ResourceLabels, Gauge>,
    healthy: Family<ResourceLabels, Gauge>,
    errors: Family<ResourceLabels, Counter>,
    invalid: Gauge,
    ready: Family<PolicyLabels, Gauge>,
}

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = WatchMetrics::default();
        {
            let r = registry.sub_registry_with_prefix("watch");
            r.register("synced", "1 once the initial list of the resource is in", m.synced.clone());
            r.register(
                "healthy",
                "1 while the watch of the resource works, 0 after an error until it recovers (admission keeps the last snapshot)",
                m.healthy.clone(),
            );
            r.register("errors", "Errors of the watch of the resource (list, watch, decode)", m.errors.clone());
            r.register(
                "invalid_policies",
                "TrustedRegistryPolicies that do not compile and are not enforced",
                m.invalid.clone(),
            );
        }
        registry.sub_registry_with_prefix("policy").register(
            "ready",
            "1 when the TrustedRegistryPolicy compiled and is enforced (Ready=True), 0 when it is not (Ready=False)",
            m.ready.clone(),
        );
        m
    }

    /// Readiness of a policy the index holds.
    fn policy_compiled(&self, entry: &PolicyEntry) {
        let ready = i64::from(entry.error().is_none());
        self.ready.get_or_create(&PolicyLabels { policy: entry.name.clone() }).set(ready);
    }

    /// A deleted policy loses its series.
    fn policy_deleted(&self, name: &str) {
        self.ready.remove(&PolicyLabels { policy: name.to_owned() });
    }

    fn watch_ok(&self, resource: &'static str) {
        self.healthy.get_or_create(&ResourceLabels { resource }).set(1);
    }

    fn watch_failed(&self, resource: &'static str) {
        self.healthy.get_or_create(&ResourceLabels { resource }).set(0);
        self.errors.get_or_create(&ResourceLabels { resource }).inc();
    }

    /// One series in every family (see [`KubeSourceMetrics::touch_every_family`]).
    fn touch_every_family(&self) {
        self.watch_failed(POLICIES);
        self.synced.get_or_create(&ResourceLabels { resource: POLICIES }).set(1);
        self.ready.get_or_create(&PolicyLabels { policy: "p".into() }).set(1);
    }
}

/// The metrics of every job of the source, each registering its own families.
#[derive(Clone, Debug)]
pub struct KubeSourceMetrics {
    watch: WatchMetrics,
    election: ElectionMetrics,
    status: StatusMetrics,
    audit: AuditMetrics,
}

impl KubeSourceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        KubeSourceMetrics {
            watch: WatchMetrics::register(registry),
            election: ElectionMetrics::register(registry),
            status: StatusMetrics::register(registry),
            audit: AuditMetrics::register(registry),
        }
    }

    /// One series in every family: the encoder skips families without any, and the test of
    /// the known metric list (the binary's) must see them all.
    pub fn touch_every_family(&self) {
        self.watch.touch_every_family();
        self.status.touch_every_family();
        self.audit.touch_every_family();
    }
}

/// Why the source stopped before shutdown. Nothing stops it today: every failure only delays
/// (the watch retries, the leader's jobs retry at their next round). The type keeps a failure
/// added later a new variant, not a new signature for the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeSourceError {}

/// The `--policy-source kubernetes` policy source.
pub struct KubeSource {
    config: WatchConfig,
    metrics: KubeSourceMetrics,
}

impl KubeSource {
    /// Registers the source's metrics; nothing runs until [`KubeSource::run`].
    pub fn new(config: WatchConfig, registry: &mut Registry) -> Self {
        KubeSource { config, metrics: KubeSourceMetrics::register(registry) }
    }

    /// Watches, elects, writes status and audits until `shutdown`; then releases the lease.
    pub async fn run(
        self,
        client: Client,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<(), KubeSourceError> {
        let KubeSource { config, metrics } = self;
        let (view_tx, view_rx) = channel::channel::<PolicyView>(None);
        let (leader_tx, leadership) = Leadership::channel();
        let lease = LeaseConfig::new(&config.lease_namespace, &config.lease_name, &config.identity);
        let elector = Elector::new(client.clone(), lease);
        info!(
            lease = %format!("{}/{}", config.lease_namespace, config.lease_name),
            identity = %config.identity,
            audit_interval = ?config.audit_interval,
            policy_reports = config.policy_reports,
            "watching TrustedRegistryPolicies and Namespaces"
        );
        let status = StatusWriter::new(Api::all(client.clone()), metrics.status);
        let publishers = (
            AuditStatusWriter::new(Api::all(client.clone())),
            config.policy_reports.then(|| ReportWriter::new(client.clone(), config.installation.clone())),
        );
        let auditor = Auditor::new(client.clone(), config.audit_interval, publishers, metrics.audit);
        tokio::join!(
            watch_loop(client, store.clone(), view_tx, metrics.watch, shutdown.clone()),
            election::run(elector, leader_tx, metrics.election, shutdown.clone()),
            status.run(view_rx, leadership.clone(), shutdown.clone()),
            auditor.run(store, leadership, shutdown),
        );
        Ok(())
    }
}

/// When a watcher tries again after an error.
///
/// kube's default backoff (client-go's: 0.8 s doubling to 30 s, reset only after two minutes
/// without an error) grows so long during an API server restart that a policy written right
/// after it came back was seen 10 s later. Here the wait doubles from [`RETRY_MIN`] to
/// [`RETRY_MAX`] and starts over once events flow again; and `410 Gone` (the resource version
/// is too old, as a restarted API server says to every resumed watch) relists at once, as
/// client-go does, unless the relist itself was answered `410` again.
#[derive(Debug, Default)]
pub(crate) struct Retry {
    failures: u32,
    /// The last error was a `410 Gone`, with no event since.
    gone: bool,
    /// Not before then.
    until: Option<tokio::time::Instant>,
}

impl Retry {
    /// Events flow: the next error waits [`RETRY_MIN`] again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.gone = false;
    }

    /// Records an error at `now`; returns how long the watcher waits before its next attempt.
    pub(crate) fn failed(&mut self, error: &watcher::Error, now: tokio::time::Instant) -> Duration {
        let gone = matches!(error, watcher::Error::WatchError(status) if status.code == 410);
        let delay = if gone && !self.gone {
            Duration::ZERO
        } else {
            let doublings = self.failures.min(16);
            RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX)
        };
        self.gone = gone;
        self.failures = self.failures.saturating_add(1);
        self.until = Some(now + delay);
        delay
    }

    /// Waits out the delay of the last error, if any. Cancel-safe: dropped half-way, the next
    /// call waits for the same instant.
    async fn wait(&mut self) {
        if let Some(until) = self.until {
            tokio::time::sleep_until(until).await;
            self.until = None;
        }
    }
}

/// The next item of a watcher, once the delay of its last error has passed.
async fn next_event<S: futures::Stream + Unpin>(stream: &mut S, retry: &mut Retry) -> Option<S::Item> {
    retry.wait().await;
    stream.next().await
}

/// Reports each policy change: its readiness series, and one log line per invalid generation.
#[derive(Default)]
struct PolicyReporter {
    /// The entries last reported.
    last: PolicyEntries,
    /// The generation of each invalid policy whose error was logged.
    reported: HashMap<String, Option<i64>>,
}

impl PolicyReporter {
    /// Reports what changed since the last call, visiting only the entries that differ (the
    /// maps share every untouched node); returns how many it visited.
    fn report(&mut self, entries: &PolicyEntries, metrics: &WatchMetrics) -> usize {
        let mut visited = 0;
        for change in self.last.diff(entries) {
            visited += 1;
            match change {
                DiffItem::Add(_, entry) | DiffItem::Update { new: (_, entry), .. } => {
                    metrics.policy_compiled(entry);
                    match entry.error() {
                        Some(error)
                            if self.reported.insert(entry.name.clone(), entry.generation) != Some(entry.generation) =>
                        {
                            warn!(policy = %entry.name, generation = ?entry.generation, %error, "policy not enforced");
                        }
                        Some(_) => {}
                        None => {
                            self.reported.remove(&entry.name);
                        }
                    }
                }
                DiffItem::Remove(name, _) => {
                    metrics.policy_deleted(name);
                    self.reported.remove(name);
                }
            }
        }
        self.last = entries.clone();
        visited
    }
}

async fn watch_loop(
    client: Client,
    store: Arc<Store>,
    views: channel::Sender<PolicyView>,
    metrics: WatchMetrics,
    shutdown: CancellationToken,
) {
    let policies = watcher(Api::<PolicyObject>::all(client.clone()), watcher::Config::default());
    // Metadata only: labels are all we need, and full Namespace objects are larger.
    let namespaces = watcher(Api::<PartialObjectMeta<Namespace>>::all(client), watcher::Config::default());
    let mut policies = std::pin::pin!(policies);
    let mut namespaces = std::pin::pin!(namespaces);
    let (mut policies_retry, mut namespaces_retry) = (Retry::default(), Retry::default());
    let mut index = Index::new();
    let mut reporter = PolicyReporter::default();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(event) = next_event(&mut policies, &mut policies_retry) => match event {
                Ok(event) => {
                    policies_retry.succeeded();
                    metrics.watch_ok(POLICIES);
                    index.apply_policy(event)
                }
                Err(error) => {
                    let retry_in = policies_retry.failed(&error, tokio::time::Instant::now());
                    metrics.watch_failed(POLICIES);
                    warn!(%error, resource = POLICIES, ?retry_in, "watch failed; keeping the last snapshot and retrying");
                    continue;
                }
            },
            Some(event) = next_event(&mut namespaces, &mut namespaces_retry) => match event {
                Ok(event) => {
                    namespaces_retry.succeeded();
                    metrics.watch_ok(NAMESPACES);
                    index.apply_namespace(event)
                }
                Err(error) => {
                    let retry_in = namespaces_retry.failed(&error, tokio::time::Instant::now());
                    metrics.watch_failed(NAMESPACES);
                    warn!(%error, resource = NAMESPACES, ?retry_in, "watch failed; keeping the last snapshot and retrying");
                    continue;
                }
            },
            else => return,
        };
        for (resource, synced) in [(POLICIES, index.policies_synced()), (NAMESPACES, index.namespaces_synced())] {
            metrics.synced.get_or_create(&ResourceLabels { resource }).set(i64::from(synced));
        }
        if change.policies && index.policies_synced() {
            let entries = index.policies();
            metrics.invalid.set(i64::try_from(index.invalid_policies()).unwrap_or(i64::MAX));
            reporter.report(&entries, &metrics);
            views.send_replace(Some(entries));
        }
        if change.snapshot
            && let Some(snapshot) = index.snapshot()
        {
            let first = store.load().is_none();
            info!(policies = snapshot.policies.len(), invalid = index.invalid_policies(), "policy snapshot published");
            if first {
                info!("initial policies and namespaces synced; ready for admission");
            }
            store.publish(snapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Status::failure("too old resource version", "Expired").with_code(410).boxed())
    }

    fn unavailable() -> watcher::Error {
        watcher::Error::WatchError(Status::failure("etcdserver: request timed out", "").with_code(500).boxed())
    }

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_once_events_flow() {
        let now = tokio::time::Instant::now();
        let mut retry = Retry::default();
        let waits: Vec<_> = (0..6).map(|_| retry.failed(&unavailable(), now).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(retry.until, Some(now + RETRY_MAX));
        retry.succeeded();
        assert_eq!(retry.failed(&unavailable(), now), RETRY_MIN);
    }

    #[test]
    fn gone_relists_at_once_unless_the_relist_was_gone_too() {
        let now = tokio::time::Instant::now();
        let mut retry = Retry::default();
        // Refused connections while the API server restarts, then 410 to the resumed watch.
        for _ in 0..4 {
            retry.failed(&unavailable(), now);
        }
        assert_eq!(retry.failed(&gone(), now), Duration::ZERO, "a restarted API server asks for a relist");
        assert_eq!(retry.failed(&gone(), now), RETRY_MAX, "410 again without an event in between backs off");
        retry.succeeded();
        assert_eq!(retry.failed(&gone(), now), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn next_event_waits_out_the_delay_even_when_cancelled_half_way() {
        let mut retry = Retry::default();
        let start = tokio::time::Instant::now();
        retry.failed(&unavailable(), start);
        retry.failed(&unavailable(), start);
        let mut stream = futures::stream::iter([1, 2]);
        // Cancelled after 300 ms of its 1 s wait, as a select! that took another branch does.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), next_event(&mut stream, &mut retry)).await;
        assert!(cancelled.is_err());
        assert_eq!(next_event(&mut stream, &mut retry).await, Some(1));
        assert_eq!(start.elapsed(), Duration::from_secs(1), "the same instant, not a new full wait");
        assert_eq!(next_event(&mut stream, &mut retry).await, Some(2), "no wait without a new error");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    use serde_json::json;

    fn entry(name: &str, trusted: serde_json::Value) -> Arc<PolicyEntry> {
        let object: PolicyObject = serde_json::from_value(json!({
            "apiVersion": "trustgate.dev/v1alpha1",
            "kind": "TrustedRegistryPolicy",
            "metadata": {"name": name, "generation": 1},
            "spec": {"trustedRegistries": trusted},
        }))
        .unwrap();
        Arc::new(PolicyEntry::new(object))
    }

    #[test]
    fn policy_readiness_follows_compilation_and_forgets_deleted_policies() {
        let mut registry = trustgate_runtime::metrics::registry();
        let metrics = WatchMetrics::register(&mut registry);
        // An empty list of trusted registries does not compile: the policy is Ready=False.
        let (good, bad) = (entry("corp", json!(["registry.my.com"])), entry("broken", json!([])));
        assert!(good.error().is_none() && bad.error().is_some());
        let mut reporter = PolicyReporter::default();
        let mut entries = PolicyEntries::new();
        entries.insert(good.name.clone(), good);
        entries.insert(bad.name.clone(), bad.clone());
        assert_eq!(reporter.report(&entries, &metrics), 2);
        assert_eq!(reporter.reported.get("broken"), Some(&Some(1)), "the error is logged once");
        let text = trustgate_runtime::metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_policy_ready{policy="corp"} 1"#), "{text}");
        assert!(text.contains(r#"trustgate_policy_ready{policy="broken"} 0"#), "{text}");

        entries.remove("broken");
        assert_eq!(reporter.report(&entries, &metrics), 1);
        let text = trustgate_runtime::metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_policy_ready{policy="corp"} 1"#), "{text}");
        assert!(!text.contains(r#"policy="broken""#), "a deleted policy keeps no series: {text}");
        assert!(reporter.reported.is_empty());
    }

    #[test]
    fn a_policy_change_visits_that_policy_only() {
        let mut registry = trustgate_runtime::metrics::registry();
        let metrics = WatchMetrics::register(&mut registry);
        let mut reporter = PolicyReporter::default();
        let mut entries: PolicyEntries =
            (0..1000).map(|i| (format!("p{i:04}"), entry(&format!("p{i:04}"), json!(["registry.my.com"])))).collect();
        assert_eq!(reporter.report(&entries, &metrics), 1000);
        entries.insert("p0500".into(), entry("p0500", json!([])));
        assert_eq!(reporter.report(&entries, &metrics), 1, "one changed entry, one visit");
        let text = trustgate_runtime::metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_policy_ready{policy="p0500"} 0"#), "{text}");
        assert_eq!(reporter.report(&entries, &metrics), 0, "no change, no visit");
    }
}
