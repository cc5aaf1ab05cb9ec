//! The Kubernetes policy source: kube-rs watchers feed the [`Index`], which publishes admission
//! snapshots to the [`Store`]; the elected leader writes policy status and runs the audit.
//!
//! Four loops run side by side until shutdown:
//! - **watch**: TrustedRegistryPolicy objects and Namespace metadata, retried after errors with
//!   a short capped backoff (`Retry`). Each change that admission would notice publishes a new
//!   snapshot, the first one once both initial lists are in. Errors only delay: the last snapshot
//!   stays in place, so admission never waits on the API server.
//! - **lease**: leader election ([`crate::lease`]).
//! - **status**: while leading, writes `observedGeneration` and `Ready` of each policy whose
//!   status does not already say it ([`crate::status`]).
//! - **audit**: while leading, every `audit_interval`, [`crate::audit::run`] and a write of each
//!   policy's `status.audit`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
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
use tracing::{debug, info, warn};

use crate::MANAGER;
use crate::audit;
use crate::index::{Index, PolicyEntry, PolicyObject};
use crate::lease::{Elector, LeaseConfig};
use crate::pager::PAGE_SIZE;
use crate::policy_report::{PolicyReports, ReportWriter};
use crate::status::{self, ReadyStatus};
use trustgate_core::engine::snapshot::Store;

/// How often the status writer retries writes that failed.
const STATUS_RESYNC: Duration = Duration::from_secs(30);
/// How long one status write may take: a write to an API server that stopped answering must
/// not hold up the writes after it (kube's client has no response timeout of its own).
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
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
}

/// The policies as the status writer sees them; `None` until the first list is in.
type PolicyView = Option<Arc<[Arc<PolicyEntry>]>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
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

const POLICIES: &str = "trustedregistrypolicies";
const NAMESPACES: &str = "namespaces";

/// Metrics of the watchers (`trustgate_watch_*`), the election (`trustgate_leader`), status
/// writes (`trustgate_status_*`) and the audit (`trustgate_audit_*`).
#[derive(Clone, Debug, Default)]
pub struct WatchMetrics {
    synced: Family<ResourceLabels, Gauge>,
    healthy: Family<ResourceLabels, Gauge>,
    errors: Family<ResourceLabels, Counter>,
    invalid: Gauge,
    ready: Family<PolicyLabels, Gauge>,
    leader: Gauge,
    status_writes: Family<ResultLabels, Counter>,
    audit_runs: Family<ResultLabels, Counter>,
    audit_violations: Family<PolicyLabels, Gauge>,
    audit_listed: Family<KindLabels, Gauge>,
    audit_last_success: Gauge,
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
        registry.register(
            "leader",
            "1 while this replica holds the lease (writes status, runs the audit)",
            m.leader.clone(),
        );
        registry.sub_registry_with_prefix("status").register(
            "writes",
            "Policy status writes, by result (success, error)",
            m.status_writes.clone(),
        );
        let r = registry.sub_registry_with_prefix("audit");
        r.register("runs", "Audit runs, by result (success, error)", m.audit_runs.clone());
        r.register(
            "violations",
            "Workloads in the cluster that the policy would deny or flag, from the last audit (leader only)",
            m.audit_violations.clone(),
        );
        r.register("listed_objects", "Objects listed by the last audit, by resource", m.audit_listed.clone());
        r.register(
            "last_success_timestamp_seconds",
            "When the last audit completed (Unix time)",
            m.audit_last_success.clone(),
        );
        m
    }

    /// Readiness of every policy the index holds; deleted policies lose their series.
    fn policies_compiled(&self, entries: &[Arc<PolicyEntry>]) {
        self.ready.clear();
        for entry in entries {
            let ready = i64::from(entry.error().is_none());
            self.ready.get_or_create(&PolicyLabels { policy: entry.name.clone() }).set(ready);
        }
    }

    fn watch_ok(&self, resource: &'static str) {
        self.healthy.get_or_create(&ResourceLabels { resource }).set(1);
    }

    fn watch_failed(&self, resource: &'static str) {
        self.healthy.get_or_create(&ResourceLabels { resource }).set(0);
        self.errors.get_or_create(&ResourceLabels { resource }).inc();
    }

    /// One series in every family: the encoder skips families without any, and the test of
    /// the known metric list (the binary's) must see them all.
    pub fn touch_every_family(&self) {
        self.watch_failed(POLICIES);
        self.synced.get_or_create(&ResourceLabels { resource: POLICIES }).set(1);
        self.ready.get_or_create(&PolicyLabels { policy: "p".into() }).set(1);
        self.status_writes.get_or_create(&ResultLabels { result: "success" }).inc();
        self.audit_runs.get_or_create(&ResultLabels { result: "success" }).inc();
        self.audit_violations.get_or_create(&PolicyLabels { policy: "p".into() }).set(1);
        self.audit_listed.get_or_create(&KindLabels { resource: "pods" }).set(1);
    }
}

/// The `--policy-source kubernetes` policy source.
pub struct KubeSource {
    config: WatchConfig,
    metrics: WatchMetrics,
}

impl KubeSource {
    /// Registers the source's metrics; nothing runs until [`KubeSource::run`].
    pub fn new(config: WatchConfig, registry: &mut Registry) -> Self {
        KubeSource { config, metrics: WatchMetrics::register(registry) }
    }

    /// Watches, elects, writes status and audits until `shutdown`; then releases the lease.
    pub async fn run(self, client: Client, store: Arc<Store>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let KubeSource { config, metrics } = self;
        let (view_tx, view_rx) = channel::channel::<PolicyView>(None);
        let (leader_tx, leader_rx) = channel::channel(false);
        let lease = LeaseConfig::new(&config.lease_namespace, &config.lease_name, &config.identity);
        let elector = Elector::new(client.clone(), lease);
        info!(
            lease = %format!("{}/{}", config.lease_namespace, config.lease_name),
            identity = %config.identity,
            audit_interval = ?config.audit_interval,
            policy_reports = config.policy_reports,
            "watching TrustedRegistryPolicies and Namespaces"
        );
        tokio::join!(
            watch_loop(client.clone(), store.clone(), view_tx, metrics.clone(), shutdown.clone()),
            lease_loop(elector, leader_tx, metrics.clone(), shutdown.clone()),
            status_loop(Api::all(client.clone()), view_rx, leader_rx.clone(), metrics.clone(), shutdown.clone()),
            audit_loop(client, store, leader_rx, &config, metrics, shutdown),
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

/// Now, to the second: `Time` is written with second precision, and comparing what we wrote
/// with what we read back must not see a difference that is only the nanoseconds.
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
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
    let mut reported: HashSet<(String, Option<i64>)> = HashSet::new();
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
            metrics.policies_compiled(&entries);
            let live: HashSet<_> = entries.iter().map(|e| (e.name.clone(), e.generation)).collect();
            reported.retain(|k| live.contains(k));
            for entry in &entries {
                if let Some(error) = entry.error()
                    && reported.insert((entry.name.clone(), entry.generation))
                {
                    warn!(policy = %entry.name, generation = ?entry.generation, %error, "policy not enforced");
                }
            }
            views.send_replace(Some(entries.into()));
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

async fn lease_loop(
    mut elector: Elector,
    leader: channel::Sender<bool>,
    metrics: WatchMetrics,
    shutdown: CancellationToken,
) {
    let config = elector.config().clone();
    loop {
        let (leading, error) = elector.tick(tokio::time::Instant::now()).await;
        if let Some(error) = error {
            let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
            warn!(%error, %source, leading, "leader election round failed");
        }
        let was = leader.send_replace(leading);
        if was != leading {
            if leading {
                info!(identity = %config.identity, "acquired the lease: this replica writes status and audits");
            } else {
                info!(identity = %config.identity, "lost the lease");
            }
        }
        metrics.leader.set(i64::from(leading));
        let mut pause = if leading { config.renew_interval } else { config.retry_interval };
        // A leader whose renewals fail wakes at its deadline, to step down on time.
        if let Some(until) = elector.leading_until() {
            pause = pause.min(until.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    leader.send_replace(false);
    metrics.leader.set(0);
    match elector.release().await {
        Ok(true) => info!("released the lease"),
        Ok(false) => {}
        Err(error) => warn!(%error, "failed to release the lease; another replica takes over when it expires"),
    }
}

/// Writes what differs; returns when `shutdown` fires or the channels close.
async fn status_loop(
    api: Api<PolicyObject>,
    mut views: channel::Receiver<PolicyView>,
    mut leader: channel::Receiver<bool>,
    metrics: WatchMetrics,
    shutdown: CancellationToken,
) {
    let params = PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() };
    // What we wrote, keyed by policy, with the resourceVersion we had read before writing: until
    // the watch brings a newer object, what we wrote is the better idea of the current status.
    let mut written: HashMap<String, (Option<String>, ReadyStatus)> = HashMap::new();
    let mut resync = tokio::time::interval(STATUS_RESYNC);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            _ = resync.tick() => {}
        }
        if !*leader.borrow_and_update() {
            written.clear();
            continue;
        }
        let Some(view) = views.borrow_and_update().clone() else { continue };
        written.retain(|name, _| view.iter().any(|e| &e.name == name));
        for entry in view.iter() {
            if !*leader.borrow() || shutdown.is_cancelled() {
                break;
            }
            let cached =
                written.get(&entry.name).filter(|(rv, _)| *rv == entry.resource_version).map(|(_, s)| s.clone());
            let current = cached.or_else(|| entry.status.as_ref().map(ReadyStatus::of));
            let Some(update) = status::update(entry, current.as_ref(), &now()) else { continue };
            let patch = Patch::Merge(update.patch());
            let write = api.patch_status(&entry.name, &params, &patch);
            let Ok(result) = tokio::time::timeout(STATUS_WRITE_TIMEOUT, write).await else {
                metrics.status_writes.get_or_create(&ResultLabels { result: "error" }).inc();
                warn!(policy = %entry.name, timeout = ?STATUS_WRITE_TIMEOUT, "no answer to a policy status write; retrying later");
                continue;
            };
            match result {
                Ok(_) => {
                    metrics.status_writes.get_or_create(&ResultLabels { result: "success" }).inc();
                    let ready = update.conditions.iter().find(|c| c.type_ == status::READY);
                    info!(policy = %entry.name, generation = ?entry.generation,
                          ready = ready.map(|c| c.status.as_str()), "policy status written");
                    written.insert(entry.name.clone(), (entry.resource_version.clone(), update));
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    debug!(policy = %entry.name, "policy gone before its status was written")
                }
                Err(error) => {
                    metrics.status_writes.get_or_create(&ResultLabels { result: "error" }).inc();
                    warn!(policy = %entry.name, %error, "failed to write policy status; retrying later");
                }
            }
        }
    }
}

async fn audit_loop(
    client: Client,
    store: Arc<Store>,
    mut leader: channel::Receiver<bool>,
    config: &WatchConfig,
    metrics: WatchMetrics,
    shutdown: CancellationToken,
) {
    let interval = config.audit_interval;
    let mut report_writer = config.policy_reports.then(|| ReportWriter::new(client.clone()));
    let api: Api<PolicyObject> = Api::all(client.clone());
    let params = PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            lead = leader.wait_for(|l| *l) => if lead.is_err() { return },
        }
        let mut ticker = tokio::time::interval(interval.max(Duration::from_secs(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = leader.wait_for(|l| !*l) => break,
                _ = ticker.tick() => {}
            }
            // Not synced yet: try again shortly rather than a whole interval later.
            let snapshot = loop {
                if let Some(s) = store.load() {
                    break s;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            };
            let started = std::time::Instant::now();
            let sink = report_writer.is_some().then(PolicyReports::default);
            let run = audit::run(&client, &snapshot, PAGE_SIZE, None, Timestamp::now(), sink);
            let report = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = leader.wait_for(|l| !*l) => break,
                report = run => report,
            };
            let report = match report {
                Ok(r) => r,
                Err(error) => {
                    metrics.audit_runs.get_or_create(&ResultLabels { result: "error" }).inc();
                    let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
                    warn!(%error, %source, "audit failed; no status written, retrying at the next interval");
                    continue;
                }
            };
            metrics.audit_violations.clear();
            for (resource, count) in &report.listed {
                metrics
                    .audit_listed
                    .get_or_create(&KindLabels { resource })
                    .set(i64::try_from(*count).unwrap_or(i64::MAX));
            }
            for (policy, audit) in &report.statuses {
                metrics.audit_violations.get_or_create(&PolicyLabels { policy: policy.clone() }).set(audit.violations);
                if !*leader.borrow() {
                    break;
                }
                match api.patch_status(policy, &params, &Patch::Merge(status::audit_patch(audit))).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(error) => warn!(%policy, %error, "failed to write audit status"),
                }
            }
            if let (Some(writer), Some(reports)) = (report_writer.as_mut(), report.sink) {
                if !*leader.borrow() {
                    break;
                }
                match writer.sync(reports.into_objects(Timestamp::now())).await {
                    Ok(synced) => debug!(?synced, "PolicyReports written"),
                    Err(error) => {
                        let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
                        warn!(%error, %source, "failed to write PolicyReports; retrying at the next audit");
                    }
                }
            }
            metrics.audit_runs.get_or_create(&ResultLabels { result: "success" }).inc();
            metrics.audit_last_success.set(Timestamp::now().as_second());
            let violations: i64 = report.statuses.values().map(|a| a.violations).sum();
            info!(
                evaluated = report.evaluated,
                unreadable = report.unreadable,
                violations,
                elapsed = ?started.elapsed(),
                "audit completed"
            );
        }
        // Only the leader reports audit results.
        metrics.audit_violations.clear();
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
        metrics.policies_compiled(&[good.clone(), bad]);
        let text = trustgate_runtime::metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_policy_ready{policy="corp"} 1"#), "{text}");
        assert!(text.contains(r#"trustgate_policy_ready{policy="broken"} 0"#), "{text}");

        metrics.policies_compiled(&[good]);
        let text = trustgate_runtime::metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_policy_ready{policy="corp"} 1"#), "{text}");
        assert!(!text.contains(r#"policy="broken""#), "a deleted policy keeps no series: {text}");
    }
}
