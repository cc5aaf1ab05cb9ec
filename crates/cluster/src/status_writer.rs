//! The leader's writes of policy status: `observedGeneration` and `Ready` of each policy whose
//! status does not already say it ([`StatusWriter`]), and each audit run's `status.audit`
//! ([`AuditStatusWriter`], a [`Publisher`] of the audit); the `trustgate_status_*` metrics.
//! What to write comes from the pure `status`. Imports `status`, `index`, `election` and
//! `auditor`; only `watch` imports this.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::MANAGER;
use crate::auditor::Publisher;
use crate::election::Leadership;
use crate::index::{PolicyEntries, PolicyEntry, PolicyObject};
use crate::status::{self, ReadyStatus};
use imbl::ordmap::DiffItem;
use trustgate_core::api::AuditStatus;

/// How often the status writer retries writes that failed.
const STATUS_RESYNC: Duration = Duration::from_secs(30);
/// How long one status write may take: a write to an API server that stopped answering must
/// not hold up the writes after it (kube's client has no response timeout of its own). A
/// status patch is one small object that a healthy API server writes in milliseconds; 10 s
/// leaves a loaded one plenty, and stays well inside [`STATUS_RESYNC`].
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one policy's `status.audit` write may take. The same small patch as a status
/// write (at most `MAX_SAMPLES` samples), so the same 10 s: a hung API server then delays
/// the next policy's audit status by that much, never the whole run indefinitely.
pub(crate) const AUDIT_STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The policies as the status writer sees them; `None` until the first list is in.
pub(crate) type PolicyView = Option<PolicyEntries>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `trustgate_status_*`.
#[derive(Clone, Debug, Default)]
pub struct StatusMetrics {
    writes: Family<ResultLabels, Counter>,
}

impl StatusMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = StatusMetrics::default();
        registry.sub_registry_with_prefix("status").register(
            "writes",
            "Policy status writes, by result (success, error)",
            m.writes.clone(),
        );
        m
    }

    fn written(&self, result: &'static str) {
        self.writes.get_or_create(&ResultLabels { result }).inc();
    }

    /// One series in every family (see `KubeSourceMetrics::touch_every_family`).
    pub(crate) fn touch_every_family(&self) {
        self.written("success");
    }
}

/// Now, to the second: `Time` is written with second precision, and comparing what we wrote
/// with what we read back must not see a difference that is only the nanoseconds.
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() }
}

/// Writes `observedGeneration` and `Ready` while leading.
pub(crate) struct StatusWriter {
    api: Api<PolicyObject>,
    params: PatchParams,
    metrics: StatusMetrics,
    /// What we wrote, keyed by policy, with the resourceVersion we had read before writing:
    /// until the watch brings a newer object, what we wrote is the better idea of the current
    /// status.
    written: HashMap<String, (Option<String>, ReadyStatus)>,
}

impl StatusWriter {
    pub(crate) fn new(api: Api<PolicyObject>, metrics: StatusMetrics) -> Self {
        StatusWriter { api, params: patch_params(), metrics, written: HashMap::new() }
    }

    /// Writes what differs while leading; returns when `shutdown` fires or the channels close.
    /// A write in flight when leadership is lost is abandoned at once.
    pub(crate) async fn run(
        mut self,
        mut views: channel::Receiver<PolicyView>,
        mut leadership: Leadership,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                leading = leadership.acquired() => if !leading { return },
            }
            // What another leader wrote meanwhile is unknown: trust only what the watch says.
            self.written.clear();
            let closed = tokio::select! {
                _ = shutdown.cancelled() => return,
                closed = leadership.while_leading(self.lead(&mut views)) => closed,
            };
            if closed.is_some() {
                return;
            }
        }
    }

    /// Writes each view as it comes, and again every [`STATUS_RESYNC`] for the writes that
    /// failed; returns only when the views close. A new view is compared with the last one
    /// written and only the entries that differ are visited (the maps share every untouched
    /// node, so that costs the change, not the policy count); a resync visits every entry.
    async fn lead(&mut self, views: &mut channel::Receiver<PolicyView>) {
        let mut resync = tokio::time::interval(STATUS_RESYNC);
        let mut last: Option<PolicyEntries> = None;
        loop {
            let every = tokio::select! {
                changed = views.changed() => if changed.is_err() { return } else { false },
                _ = resync.tick() => true,
            };
            let Some(view) = views.borrow_and_update().clone() else { continue };
            let visit: Vec<Arc<PolicyEntry>> = match last.as_ref().filter(|_| !every) {
                Some(last) => last
                    .diff(&view)
                    .filter_map(|change| match change {
                        DiffItem::Add(_, entry) | DiffItem::Update { new: (_, entry), .. } => Some(entry.clone()),
                        DiffItem::Remove(name, _) => {
                            self.written.remove(name);
                            None
                        }
                    })
                    .collect(),
                None => {
                    self.written.retain(|name, _| view.contains_key(name));
                    view.values().cloned().collect()
                }
            };
            for entry in &visit {
                self.write(entry).await;
            }
            last = Some(view);
        }
    }

    async fn write(&mut self, entry: &PolicyEntry) {
        let cached =
            self.written.get(&entry.name).filter(|(rv, _)| *rv == entry.resource_version).map(|(_, s)| s.clone());
        let current = cached.or_else(|| entry.status.as_ref().map(ReadyStatus::of));
        let Some(update) = status::update(entry, current.as_ref(), &now()) else { return };
        let patch = Patch::Merge(update.patch());
        let write = self.api.patch_status(&entry.name, &self.params, &patch);
        let Ok(result) = tokio::time::timeout(STATUS_WRITE_TIMEOUT, write).await else {
            self.metrics.written("error");
            warn!(policy = %entry.name, timeout = ?STATUS_WRITE_TIMEOUT, "no answer to a policy status write; retrying later");
            return;
        };
        match result {
            Ok(_) => {
                self.metrics.written("success");
                let ready = update.conditions.iter().find(|c| c.type_ == status::READY);
                info!(policy = %entry.name, generation = ?entry.generation,
                      ready = ready.map(|c| c.status.as_str()), "policy status written");
                self.written.insert(entry.name.clone(), (entry.resource_version.clone(), update));
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                debug!(policy = %entry.name, "policy gone before its status was written")
            }
            Err(error) => {
                self.metrics.written("error");
                warn!(policy = %entry.name, %error, "failed to write policy status; retrying later");
            }
        }
    }
}

/// Writes each audit run's `status.audit`, policy by policy.
pub(crate) struct AuditStatusWriter {
    api: Api<PolicyObject>,
    params: PatchParams,
}

impl AuditStatusWriter {
    pub(crate) fn new(api: Api<PolicyObject>) -> Self {
        AuditStatusWriter { api, params: patch_params() }
    }
}

impl Publisher for AuditStatusWriter {
    /// The status is the audit's own result: nothing to collect beside it.
    type Findings = ();

    fn start(&self) {}

    async fn publish(&mut self, statuses: &BTreeMap<String, AuditStatus>, (): ()) {
        for (policy, audit) in statuses {
            let patch = Patch::Merge(status::audit_patch(audit));
            let write = self.api.patch_status(policy, &self.params, &patch);
            match tokio::time::timeout(AUDIT_STATUS_WRITE_TIMEOUT, write).await {
                Ok(Ok(_)) => {}
                Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {}
                Ok(Err(error)) => warn!(%policy, %error, "failed to write audit status"),
                Err(_) => {
                    warn!(%policy, timeout = ?AUDIT_STATUS_WRITE_TIMEOUT, "no answer to an audit status write")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api::{self, Received, endless, json_response};
    use serde_json::json;

    fn entry(name: &str) -> Arc<PolicyEntry> {
        let object: PolicyObject = serde_json::from_value(json!({
            "apiVersion": "trustgate.dev/v1alpha1",
            "kind": "TrustedRegistryPolicy",
            "metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
            "spec": {"trustedRegistries": ["registry.my.com"]},
        }))
        .unwrap();
        Arc::new(PolicyEntry::new(object))
    }

    fn patch_of(name: &str) -> String {
        format!("PATCH /apis/trustgate.dev/v1alpha1/trustedregistrypolicies/{name}/status?&fieldManager=trustgate")
    }

    /// A status writer that leads, over a mocked API server, writing policies `names`.
    struct Fixture {
        handle: mock_api::Handle,
        registry: Registry,
        leader: channel::Sender<bool>,
        _views: channel::Sender<PolicyView>,
        _shutdown: tokio_util::sync::DropGuard,
    }

    fn leading_writer(names: &[&str]) -> Fixture {
        let (client, handle) = mock_api::client();
        let mut registry = trustgate_runtime::metrics::registry();
        let writer = StatusWriter::new(Api::all(client), StatusMetrics::register(&mut registry));
        let view: PolicyEntries = names.iter().map(|n| (n.to_string(), entry(n))).collect();
        let (views, view_rx) = channel::channel::<PolicyView>(Some(view));
        let (leader, leadership) = Leadership::channel();
        leader.send_replace(true);
        let shutdown = CancellationToken::new();
        tokio::spawn(writer.run(view_rx, leadership, shutdown.clone()));
        Fixture { handle, registry, leader, _views: views, _shutdown: shutdown.drop_guard() }
    }

    fn metrics(registry: &Registry) -> String {
        trustgate_runtime::metrics::encode(registry).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_gets_no_answer_is_abandoned_at_its_timeout_and_the_next_policy_is_written() {
        let mut f = leading_writer(&["a", "b"]);
        let (first, _unanswered) = mock_api::next_request(&mut f.handle, Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.line, patch_of("a"));
        let asked = tokio::time::Instant::now();
        let (second, reply) = mock_api::next_request(&mut f.handle, Duration::from_secs(60)).await.unwrap();
        assert_eq!(second.line, patch_of("b"), "the writer carried on with the next policy");
        assert_eq!(asked.elapsed(), STATUS_WRITE_TIMEOUT, "a's write was given up at its timeout, not before");
        assert!(metrics(&f.registry).contains(r#"trustgate_status_writes_total{result="error"} 1"#));
        reply.send_response(json_response(200, &json!({"metadata": {"name": "b"}, "spec": {}})));
        tokio::task::yield_now().await;
        let text = metrics(&f.registry);
        assert!(text.contains(r#"trustgate_status_writes_total{result="success"} 1"#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_lease_abandons_the_write_in_flight_at_once() {
        let mut f = leading_writer(&["a", "b"]);
        let (Received { line, .. }, reply) =
            mock_api::next_request(&mut f.handle, Duration::from_secs(1)).await.unwrap();
        assert_eq!(line, patch_of("a"));
        let (response, abandoned) = endless();
        reply.send_response(response);
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.leader.send_replace(false);
        let lost = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(1), abandoned).await.expect("the write is dropped within 1s").ok();
        assert!(lost.elapsed() < Duration::from_secs(1));
        let later = mock_api::next_request(&mut f.handle, STATUS_RESYNC * 4).await;
        assert!(later.is_none(), "no write after the lease is lost: {:?}", later.map(|(r, _)| r));
        let text = metrics(&f.registry);
        assert!(!text.contains("trustgate_status_writes_total{"), "nothing counted: {text}");
    }
}
