//! The policy index: TrustedRegistryPolicy and Namespace watch events applied to plain data,
//! with no I/O, so tests drive it synchronously with the events a watcher would yield.
//!
//! Policies are compiled when they change (compile on write) and indexed into a persistent
//! [`PolicySet`] as they change, so [`Index::snapshot`] is an O(1) clone and one update costs
//! the policy it changes, not the set. A relist (`Init` .. `InitDone`) is buffered and
//! swapped in whole when it completes: objects deleted while the watch was down disappear, and
//! until the relist completes admission keeps the last complete state.
//!
//! The index plays the part of kube's `reflector` store, kept as our own plain data so that it
//! holds compiled policies next to their objects, never exposes a half-done relist, and can be
//! driven by tests without a runtime.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ClusterResourceScope, PartialObjectMeta};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Deserializer};

use trustgate_core::api::{TrustedRegistryPolicy, TrustedRegistryPolicySpec, TrustedRegistryPolicyStatus};

use trustgate_core::engine::snapshot::{NamespaceLabels, Snapshot};
use trustgate_core::engine::{CompiledPolicy, PolicySet};

/// Every known policy entry, by name: persistent, so views of it are O(1) clones.
pub type PolicyEntries = imbl::OrdMap<String, Arc<PolicyEntry>>;

/// A TrustedRegistryPolicy as the watcher reads it: its spec when the spec deserializes, the
/// error when it does not, and its metadata and status either way.
///
/// This is our error boundary. kube's `DeserializeGuard` would also keep one malformed object
/// from failing the whole list, but it drops the status of a malformed object, and the status
/// writer needs the current status of every policy to write only what changed.
#[derive(Clone, Debug)]
pub struct PolicyObject {
    pub metadata: ObjectMeta,
    /// The spec, or why it does not deserialize.
    pub spec: Result<TrustedRegistryPolicySpec, SpecError>,
    /// `None` when absent, or when it does not deserialize (it is then rewritten).
    pub status: Option<TrustedRegistryPolicyStatus>,
}

/// Why a watched policy's spec cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec is missing")]
    Missing,
    /// The deserializer's message (kept as text: the index compares specs, errors included, to
    /// skip recompiling, and `serde_json::Error` is neither `Clone` nor `PartialEq`).
    #[error("spec does not match the schema: {0}")]
    Schema(String),
}

impl<'de> Deserialize<'de> for PolicyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Option<serde_json::Value>,
            #[serde(default)]
            status: Option<serde_json::Value>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let spec = match raw.spec {
            None | Some(serde_json::Value::Null) => Err(SpecError::Missing),
            Some(spec) => serde_json::from_value(spec).map_err(|e| SpecError::Schema(e.to_string())),
        };
        let status = raw.status.and_then(|s| serde_json::from_value(s).ok());
        Ok(PolicyObject { metadata: raw.metadata, spec, status })
    }
}

impl Resource for PolicyObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        TrustedRegistryPolicy::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        TrustedRegistryPolicy::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        TrustedRegistryPolicy::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        TrustedRegistryPolicy::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One policy as the index knows it: identity, current status, and what compiling it gave.
#[derive(Clone, Debug)]
pub struct PolicyEntry {
    pub name: String,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    /// The status as last read from the API server.
    pub status: Option<TrustedRegistryPolicyStatus>,
    /// The compiled policy, or the message that says why it is not enforced.
    pub compiled: Result<Arc<CompiledPolicy>, String>,
    /// What was compiled, to skip recompiling when only metadata or status changed.
    spec: Result<TrustedRegistryPolicySpec, SpecError>,
}

impl PolicyEntry {
    /// Compiles a watched object.
    pub fn new(object: PolicyObject) -> Self {
        let compiled = match &object.spec {
            Err(e) => Err(format!("policy {:?} is invalid: {e}", object.name_any())),
            Ok(spec) => {
                let policy =
                    TrustedRegistryPolicy { metadata: object.metadata.clone(), spec: spec.clone(), status: None };
                CompiledPolicy::compile(&policy).map(Arc::new).map_err(|e| e.to_string())
            }
        };
        Self::with_compiled(object, compiled)
    }

    fn with_compiled(object: PolicyObject, compiled: Result<Arc<CompiledPolicy>, String>) -> Self {
        PolicyEntry {
            name: object.name_any(),
            generation: object.metadata.generation,
            resource_version: object.metadata.resource_version,
            status: object.status,
            compiled,
            spec: object.spec,
        }
    }

    /// Like [`PolicyEntry::new`], reusing `previous`'s compiled form when spec and generation
    /// are unchanged (a status write or a label change).
    fn update(previous: Option<&PolicyEntry>, object: PolicyObject) -> Self {
        match previous {
            Some(p) if p.spec == object.spec && p.generation == object.metadata.generation => {
                let compiled = p.compiled.clone();
                Self::with_compiled(object, compiled)
            }
            _ => Self::new(object),
        }
    }

    /// Whether admission would see a difference between the two.
    fn same_policy(&self, other: &PolicyEntry) -> bool {
        self.spec == other.spec && self.generation == other.generation
    }

    /// The compile error, if the policy is not enforced.
    pub fn error(&self) -> Option<&str> {
        self.compiled.as_ref().err().map(String::as_str)
    }
}

/// Equal when the object read is the same: the compiled form follows from spec and generation.
/// (What lets the status writer diff two views, visiting only the entries that changed.)
impl PartialEq for PolicyEntry {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.resource_version == other.resource_version
            && self.same_policy(other)
            && self.status == other.status
    }
}

/// What applying one event changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// Admission would decide differently: a new snapshot is due (once synced).
    pub snapshot: bool,
    /// Some policy object changed, possibly only its status: the status writer may act.
    pub policies: bool,
}

/// Watched policies and namespace labels, with their sync state.
#[derive(Debug, Default)]
pub struct Index {
    policies: PolicyEntries,
    /// The compiled ones among `policies`, indexed for admission.
    set: PolicySet,
    /// How many of `policies` do not compile.
    invalid: usize,
    /// Filled between `Init` and `InitDone` of a (re)list; `None` otherwise.
    policies_relist: Option<BTreeMap<String, Arc<PolicyEntry>>>,
    policies_synced: bool,
    namespaces: NamespaceLabels,
    namespaces_relist: Option<NamespaceLabels>,
    namespaces_synced: bool,
}

impl Index {
    pub fn new() -> Self {
        Index::default()
    }

    /// Applies one policy watch event.
    pub fn apply_policy(&mut self, event: Event<PolicyObject>) -> Change {
        match event {
            Event::Init => {
                self.policies_relist = Some(BTreeMap::new());
                Change::default()
            }
            Event::InitApply(object) => {
                let name = object.name_any();
                // Reuse the live entry's compiled form: a relist mostly returns what we have.
                let entry = PolicyEntry::update(self.policies.get(&name).map(Arc::as_ref), object);
                self.policies_relist.get_or_insert_with(BTreeMap::new).insert(name, Arc::new(entry));
                Change::default()
            }
            Event::InitDone => {
                let listed = self.policies_relist.take().unwrap_or_default();
                let mut same = listed.len() == self.policies.len();
                for name in self.policies.keys() {
                    if !listed.contains_key(name) {
                        same = false;
                        self.set.remove(name);
                    }
                }
                for (name, entry) in &listed {
                    if !self.policies.get(name).is_some_and(|p| p.same_policy(entry)) {
                        same = false;
                        index_entry(&mut self.set, entry);
                    }
                }
                self.invalid = listed.values().filter(|e| e.compiled.is_err()).count();
                self.policies = listed.into_iter().collect();
                let first = !self.policies_synced;
                self.policies_synced = true;
                Change { snapshot: first || !same, policies: true }
            }
            Event::Apply(object) => {
                let name = object.name_any();
                let previous = self.policies.get(&name);
                let entry = PolicyEntry::update(previous.map(Arc::as_ref), object);
                let snapshot = previous.is_none_or(|p| !p.same_policy(&entry));
                if snapshot {
                    index_entry(&mut self.set, &entry);
                }
                self.invalid += usize::from(entry.compiled.is_err());
                if let Some(replaced) = self.policies.insert(name, Arc::new(entry)) {
                    self.invalid -= usize::from(replaced.compiled.is_err());
                }
                Change { snapshot, policies: true }
            }
            Event::Delete(object) => {
                let name = object.name_any();
                let removed = self.policies.remove(&name);
                if let Some(entry) = &removed {
                    self.invalid -= usize::from(entry.compiled.is_err());
                }
                let removed = removed.is_some();
                self.set.remove(&name);
                Change { snapshot: removed, policies: removed }
            }
        }
    }

    /// Applies one Namespace metadata watch event; only label changes matter.
    pub fn apply_namespace(&mut self, event: Event<PartialObjectMeta<Namespace>>) -> Change {
        let changed = match event {
            Event::Init => {
                self.namespaces_relist = Some(NamespaceLabels::new());
                false
            }
            Event::InitApply(ns) => {
                let (name, labels) = namespace_labels(ns);
                self.namespaces_relist.get_or_insert_with(NamespaceLabels::new).insert(name, labels);
                false
            }
            Event::InitDone => {
                let listed = self.namespaces_relist.take().unwrap_or_default();
                let changed = listed != self.namespaces || !self.namespaces_synced;
                self.namespaces = listed;
                self.namespaces_synced = true;
                changed
            }
            Event::Apply(ns) => {
                let (name, labels) = namespace_labels(ns);
                self.namespaces.insert(name, labels.clone()) != Some(labels)
            }
            Event::Delete(ns) => self.namespaces.remove(&ns.name_any()).is_some(),
        };
        Change { snapshot: changed, policies: false }
    }

    /// Both initial lists are in: admission may start.
    pub(crate) fn is_synced(&self) -> bool {
        self.policies_synced && self.namespaces_synced
    }

    pub fn policies_synced(&self) -> bool {
        self.policies_synced
    }

    pub fn namespaces_synced(&self) -> bool {
        self.namespaces_synced
    }

    /// The admission snapshot, once both initial lists are in.
    pub fn snapshot(&self) -> Option<Snapshot> {
        if !self.is_synced() {
            return None;
        }
        Some(Snapshot { policies: self.set.clone(), namespaces: Some(self.namespaces.clone()) })
    }

    /// Every known policy, by name, as the status writer sees them (an O(1) clone).
    pub fn policies(&self) -> PolicyEntries {
        self.policies.clone()
    }

    /// How many known policies do not compile.
    pub(crate) fn invalid_policies(&self) -> usize {
        self.invalid
    }
}

/// Puts `entry`'s compiled policy into `set`, or takes its name out when it does not compile.
fn index_entry(set: &mut PolicySet, entry: &PolicyEntry) {
    match &entry.compiled {
        Ok(policy) => set.insert(policy.clone()),
        Err(_) => {
            set.remove(&entry.name);
        }
    }
}

fn namespace_labels(ns: PartialObjectMeta<Namespace>) -> (String, BTreeMap<String, String>) {
    let name = ns.name_any();
    (name, ns.metadata.labels.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use trustgate_core::api::Mode;
    use trustgate_core::engine::Verdict;
    use trustgate_core::workload::Workload;

    fn policy(name: &str, generation: i64, spec: Value) -> PolicyObject {
        serde_json::from_value(json!({
            "apiVersion": "trustgate.dev/v1alpha1",
            "kind": "TrustedRegistryPolicy",
            "metadata": {"name": name, "generation": generation, "resourceVersion": format!("{generation}0")},
            "spec": spec,
        }))
        .expect("a PolicyObject deserializes from any object with metadata")
    }

    fn trusting(name: &str, registry: &str) -> PolicyObject {
        policy(name, 1, json!({"trustedRegistries": [registry]}))
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn synced(policies: Vec<PolicyObject>, namespaces: Vec<PartialObjectMeta<Namespace>>) -> Index {
        let mut index = Index::new();
        index.apply_policy(Event::Init);
        for p in policies {
            index.apply_policy(Event::InitApply(p));
        }
        index.apply_policy(Event::InitDone);
        index.apply_namespace(Event::Init);
        for n in namespaces {
            index.apply_namespace(Event::InitApply(n));
        }
        index.apply_namespace(Event::InitDone);
        index
    }

    fn names(index: &Index) -> Vec<String> {
        let snapshot = index.snapshot().expect("synced");
        snapshot.policies.policies().map(|p| p.name().to_owned()).collect()
    }

    /// The verdict admission would give a Deployment running `image` in `ns`.
    fn verdict(index: &Index, ns: &str, image: &str) -> Verdict {
        let snapshot = index.snapshot().expect("synced");
        let object = json!({"kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
                            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
        let workload = Workload::read(None, &object).unwrap();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        snapshot.policies.evaluate_workload(&workload, &snapshot.namespace(ns), now).verdict()
    }

    #[test]
    fn no_snapshot_until_both_initial_lists_are_done() {
        let mut index = Index::new();
        index.apply_policy(Event::Init);
        index.apply_policy(Event::InitApply(trusting("corp", "registry.my.com")));
        assert!(index.snapshot().is_none(), "policies still listing");
        let change = index.apply_policy(Event::InitDone);
        assert!(change.snapshot && change.policies);
        assert!(index.policies_synced() && !index.is_synced());
        assert!(index.snapshot().is_none(), "namespaces not listed yet");
        index.apply_namespace(Event::Init);
        index.apply_namespace(Event::InitApply(namespace("default", &[])));
        assert!(index.snapshot().is_none());
        let change = index.apply_namespace(Event::InitDone);
        assert!(change.snapshot, "the first namespace list completes the sync");
        assert!(index.is_synced());
        assert_eq!(names(&index), ["corp"]);
        assert_eq!(verdict(&index, "default", "nginx"), Verdict::Deny);
        assert_eq!(verdict(&index, "default", "registry.my.com/app:1"), Verdict::Allow);
    }

    #[test]
    fn an_empty_cluster_syncs_with_no_policies() {
        let index = synced(vec![], vec![]);
        assert!(index.is_synced());
        assert_eq!(names(&index), Vec::<String>::new());
        assert_eq!(verdict(&index, "default", "nginx"), Verdict::Allow);
    }

    #[test]
    fn apply_adds_and_replaces_delete_removes() {
        let mut index = synced(vec![trusting("a", "registry.my.com")], vec![]);
        let change = index.apply_policy(Event::Apply(trusting("b", "ghcr.io/org")));
        assert_eq!(change, Change { snapshot: true, policies: true });
        assert_eq!(names(&index), ["a", "b"]);

        let mut edited = policy("a", 2, json!({"trustedRegistries": ["quay.io"], "mode": "Warn"}));
        edited.metadata.resource_version = Some("99".into());
        assert!(index.apply_policy(Event::Apply(edited)).snapshot);
        let snapshot = index.snapshot().unwrap();
        let a = snapshot.policies.get("a").unwrap();
        assert_eq!((a.name(), a.mode(), a.generation()), ("a", Mode::Warn, Some(2)));

        assert!(index.apply_policy(Event::Delete(trusting("b", "ghcr.io/org"))).snapshot);
        assert_eq!(names(&index), ["a"]);
        let again = index.apply_policy(Event::Delete(trusting("b", "ghcr.io/org")));
        assert_eq!(again, Change::default(), "deleting an unknown policy changes nothing");
    }

    #[test]
    fn a_status_only_update_needs_no_new_snapshot_but_reaches_the_status_writer() {
        let mut index = synced(vec![trusting("a", "registry.my.com")], vec![]);
        let mut with_status = trusting("a", "registry.my.com");
        with_status.metadata.resource_version = Some("11".into());
        with_status.status = Some(TrustedRegistryPolicyStatus { observed_generation: Some(1), ..Default::default() });
        let change = index.apply_policy(Event::Apply(with_status));
        assert_eq!(change, Change { snapshot: false, policies: true });
        let entry = &index.policies()["a"];
        assert_eq!(entry.resource_version.as_deref(), Some("11"));
        assert_eq!(entry.status.as_ref().and_then(|s| s.observed_generation), Some(1));
    }

    #[test]
    fn relist_replaces_the_set_and_drops_objects_deleted_while_the_watch_was_down() {
        let mut index = synced(vec![trusting("a", "registry.my.com"), trusting("b", "quay.io")], vec![]);
        assert_eq!(names(&index), ["a", "b"]);
        // The watch broke; "a" was deleted and "c" created meanwhile. The watcher relists.
        assert_eq!(index.apply_policy(Event::Init), Change::default());
        index.apply_policy(Event::InitApply(trusting("b", "quay.io")));
        index.apply_policy(Event::InitApply(trusting("c", "ghcr.io/org")));
        assert_eq!(names(&index), ["a", "b"], "until InitDone admission keeps the last complete state");
        let change = index.apply_policy(Event::InitDone);
        assert!(change.snapshot);
        assert_eq!(names(&index), ["b", "c"]);
        assert_eq!(verdict(&index, "default", "registry.my.com/app:1"), Verdict::Deny, "stale policy gone");
    }

    #[test]
    fn a_relist_that_finds_the_same_policies_needs_no_new_snapshot() {
        let mut index = synced(vec![trusting("a", "registry.my.com")], vec![]);
        index.apply_policy(Event::Init);
        index.apply_policy(Event::InitApply(trusting("a", "registry.my.com")));
        assert_eq!(index.apply_policy(Event::InitDone), Change { snapshot: false, policies: true });
    }

    #[test]
    fn a_restarted_relist_discards_the_half_done_one() {
        let mut index = synced(vec![trusting("a", "registry.my.com")], vec![]);
        index.apply_policy(Event::Init);
        index.apply_policy(Event::InitApply(trusting("stale", "quay.io")));
        index.apply_policy(Event::Init);
        index.apply_policy(Event::InitApply(trusting("a", "registry.my.com")));
        index.apply_policy(Event::InitDone);
        assert_eq!(names(&index), ["a"]);
    }

    #[test]
    fn a_malformed_policy_is_kept_out_of_the_snapshot_with_its_error_and_others_still_apply() {
        let malformed = policy("bad", 4, json!({"trustedRegistries": ["registry.my.com"], "mode": "Block"}));
        assert!(malformed.spec.is_err());
        let not_compiling = policy(
            "selector",
            1,
            json!({"trustedRegistries": ["quay.io"],
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Near"}]}}),
        );
        let index = synced(vec![malformed, trusting("good", "registry.my.com"), not_compiling], vec![]);
        assert_eq!(names(&index), ["good"]);
        assert_eq!(index.invalid_policies(), 2);
        let entries = index.policies();
        let bad = &entries["bad"];
        let error = bad.error().unwrap();
        assert!(error.starts_with("policy \"bad\" is invalid: spec does not match the schema: "), "{error}");
        assert!(error.contains("Block"), "{error}");
        assert_eq!(bad.generation, Some(4));
        let selector = &entries["selector"];
        assert!(selector.error().unwrap().contains("spec.namespaceSelector"), "{:?}", selector.error());
        assert_eq!(verdict(&index, "default", "registry.my.com/app:1"), Verdict::Allow);
        assert_eq!(verdict(&index, "default", "quay.io/app:1"), Verdict::Deny);
    }

    #[test]
    fn fixing_a_malformed_policy_brings_it_into_effect() {
        let mut index = synced(vec![policy("p", 1, json!({"trustedRegistries": "registry.my.com"}))], vec![]);
        assert_eq!(names(&index), Vec::<String>::new());
        assert!(index.apply_policy(Event::Apply(policy("p", 2, json!({"trustedRegistries": ["quay.io"]})))).snapshot);
        assert_eq!(names(&index), ["p"]);
        assert!(index.policies()["p"].error().is_none());
    }

    #[test]
    fn policy_object_keeps_metadata_and_status_of_malformed_objects() {
        let object: PolicyObject = serde_json::from_value(json!({
            "metadata": {"name": "x", "generation": 7},
            "spec": {"trustedRegistries": 5},
            "status": {"observedGeneration": 6, "conditions": [{"type": "Ready", "status": "True",
                "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        assert_eq!(object.name_any(), "x");
        assert_eq!(object.metadata.generation, Some(7));
        assert!(object.spec.is_err());
        let status = object.status.unwrap();
        assert_eq!(status.observed_generation, Some(6));
        assert_eq!(status.conditions[0].reason, "Accepted");

        let no_spec: PolicyObject = serde_json::from_value(json!({"metadata": {"name": "y"}})).unwrap();
        assert_eq!(no_spec.spec.unwrap_err(), SpecError::Missing);
        let bad_status: PolicyObject = serde_json::from_value(json!({"metadata": {"name": "z"},
            "spec": {"trustedRegistries": ["quay.io"]}, "status": {"conditions": "nope"}}))
        .unwrap();
        assert!(bad_status.spec.is_ok() && bad_status.status.is_none());
    }

    #[test]
    fn policy_object_is_the_cluster_scoped_policy_resource() {
        assert_eq!(PolicyObject::url_path(&(), None), "/apis/trustgate.dev/v1alpha1/trustedregistrypolicies");
        assert_eq!(PolicyObject::kind(&()), "TrustedRegistryPolicy");
    }

    #[test]
    fn namespace_label_changes_change_which_policies_apply() {
        let selective = policy(
            "prod-only",
            1,
            json!({"trustedRegistries": ["registry.my.com"],
            "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
        );
        let mut index = synced(vec![selective], vec![namespace("shop", &[("env", "dev")])]);
        assert_eq!(verdict(&index, "shop", "nginx"), Verdict::Allow);

        let change = index.apply_namespace(Event::Apply(namespace("shop", &[("env", "prod")])));
        assert_eq!(change, Change { snapshot: true, policies: false });
        assert_eq!(verdict(&index, "shop", "nginx"), Verdict::Deny);

        let same = index.apply_namespace(Event::Apply(namespace("shop", &[("env", "prod")])));
        assert_eq!(same, Change::default(), "an update that keeps the labels changes nothing");

        assert!(index.apply_namespace(Event::Delete(namespace("shop", &[]))).snapshot);
        assert!(index.snapshot().unwrap().namespace("shop").labels.is_none());
        assert_eq!(verdict(&index, "shop", "nginx"), Verdict::Deny, "unknown labels: selector policies apply");
    }

    #[test]
    fn namespace_relist_replaces_labels_and_drops_deleted_namespaces() {
        let mut index = synced(vec![], vec![namespace("a", &[("x", "1")]), namespace("b", &[])]);
        index.apply_namespace(Event::Init);
        index.apply_namespace(Event::InitApply(namespace("a", &[("x", "1")])));
        index.apply_namespace(Event::InitApply(namespace("b", &[])));
        assert!(!index.apply_namespace(Event::InitDone).snapshot, "nothing changed");
        index.apply_namespace(Event::Init);
        index.apply_namespace(Event::InitApply(namespace("a", &[("x", "2")])));
        assert!(index.snapshot().unwrap().namespace("b").labels.is_some(), "kept until InitDone");
        assert!(index.apply_namespace(Event::InitDone).snapshot);
        let snapshot = index.snapshot().unwrap();
        assert!(snapshot.namespace("b").labels.is_none());
        assert_eq!(snapshot.namespace("a").labels.unwrap()["x"], "2");
    }

    mod incremental {
        //! The index updated event by event answers exactly like one built from scratch.

        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        const NAMESPACES: [&str; 4] = ["shop", "cart", "prod", "dev"];
        const PATTERNS: [&str; 6] =
            ["registry.my.com", "Registry.MY.com", "ghcr.io/org", "reg.io:5000", "reg.io", "quay.io/team"];
        const IMAGES: [&str; 8] = [
            "registry.my.com/app:1",
            "ghcr.io/org/tool:2",
            "ghcr.io/other/tool:2",
            "reg.io/x:1",
            "reg.io:5000/x:1",
            "quay.io/team/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "nginx:latest",
            "Not A Reference",
        ];

        /// A policy spec from small pools, so that policies share patterns and namespaces.
        fn spec() -> impl Strategy<Value = Value> {
            let patterns = proptest::sample::subsequence(PATTERNS.to_vec(), 0..=3);
            let namespaces = proptest::sample::subsequence(NAMESPACES.to_vec(), 1..=3);
            let selector = prop_oneof![
                Just(Value::Null),
                namespaces.clone().prop_map(|n| json!({"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": n}]})),
                Just(json!({"matchLabels": {"env": "prod"}})),
                namespaces.clone().prop_map(|n| json!({"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": n}]})),
            ];
            let mode = proptest::sample::select(vec!["Enforce", "Warn", "Audit"]);
            let excluded = proptest::sample::subsequence(NAMESPACES.to_vec(), 0..=1);
            (patterns, selector, mode, excluded).prop_map(|(patterns, selector, mode, excluded)| {
                // An empty list does not compile: such a policy is kept out with its error.
                let mut spec = json!({"trustedRegistries": patterns, "mode": mode, "excludedNamespaces": excluded});
                if !selector.is_null() {
                    spec["namespaceSelector"] = selector;
                }
                spec
            })
        }

        fn labels() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
            prop_oneof![Just(vec![]), Just(vec![("env", "prod")]), Just(vec![("env", "dev")])]
        }

        #[derive(Debug, Clone)]
        enum Op {
            Apply(usize, Value),
            /// The same spec and generation again, with a new resourceVersion (a status write).
            Touch(usize),
            Delete(usize),
            /// The watch broke and relisted these policies.
            Relist(Vec<(usize, Value)>),
            Namespace(usize, Option<Vec<(&'static str, &'static str)>>),
            NamespaceRelist(Vec<(usize, Vec<(&'static str, &'static str)>)>),
        }

        fn op() -> impl Strategy<Value = Op> {
            let name = 0..NAMES.len();
            let ns = 0..NAMESPACES.len();
            prop_oneof![
                6 => (name.clone(), spec()).prop_map(|(n, s)| Op::Apply(n, s)),
                1 => name.clone().prop_map(Op::Touch),
                3 => name.clone().prop_map(Op::Delete),
                1 => proptest::collection::vec((name, spec()), 0..5).prop_map(Op::Relist),
                2 => (ns.clone(), proptest::option::of(labels())).prop_map(|(n, l)| Op::Namespace(n, l)),
                1 => proptest::collection::vec((ns, labels()), 0..4).prop_map(Op::NamespaceRelist),
            ]
        }

        /// What the API server holds: each policy's spec and generation, and namespace labels.
        #[derive(Default)]
        struct World {
            policies: BTreeMap<usize, (Value, i64)>,
            namespaces: BTreeMap<usize, Vec<(&'static str, &'static str)>>,
            generation: i64,
        }

        impl World {
            fn object(&self, name: usize) -> PolicyObject {
                let (spec, generation) = &self.policies[&name];
                policy(NAMES[name], *generation, spec.clone())
            }

            fn set(&mut self, name: usize, spec: Value) {
                self.generation += 1;
                self.policies.insert(name, (spec, self.generation));
            }

            fn index_built_from_scratch(&self) -> Index {
                let policies = self.policies.keys().map(|&n| self.object(n)).collect();
                let namespaces = self.namespaces.iter().map(|(&n, l)| namespace(NAMESPACES[n], l)).collect();
                synced(policies, namespaces)
            }
        }

        fn apply(index: &mut Index, world: &mut World, op: Op) {
            match op {
                Op::Apply(n, spec) => {
                    world.set(n, spec);
                    index.apply_policy(Event::Apply(world.object(n)));
                }
                Op::Touch(n) if world.policies.contains_key(&n) => {
                    let mut object = world.object(n);
                    object.metadata.resource_version = Some(format!("touched-{}", world.generation));
                    index.apply_policy(Event::Apply(object));
                }
                Op::Touch(_) => {}
                Op::Delete(n) => {
                    let object = policy(NAMES[n], 0, json!({}));
                    world.policies.remove(&n);
                    index.apply_policy(Event::Delete(object));
                }
                Op::Relist(listed) => {
                    world.policies.clear();
                    for (n, spec) in listed {
                        world.set(n, spec);
                    }
                    index.apply_policy(Event::Init);
                    for &n in world.policies.keys() {
                        index.apply_policy(Event::InitApply(world.object(n)));
                    }
                    index.apply_policy(Event::InitDone);
                }
                Op::Namespace(n, Some(labels)) => {
                    index.apply_namespace(Event::Apply(namespace(NAMESPACES[n], &labels)));
                    world.namespaces.insert(n, labels);
                }
                Op::Namespace(n, None) => {
                    index.apply_namespace(Event::Delete(namespace(NAMESPACES[n], &[])));
                    world.namespaces.remove(&n);
                }
                Op::NamespaceRelist(listed) => {
                    world.namespaces = listed.into_iter().collect();
                    index.apply_namespace(Event::Init);
                    for (&n, labels) in &world.namespaces {
                        index.apply_namespace(Event::InitApply(namespace(NAMESPACES[n], labels)));
                    }
                    index.apply_namespace(Event::InitDone);
                }
            }
        }

        /// Every answer admission could get from `index`'s snapshot.
        fn answers(index: &Index) -> Vec<String> {
            let snapshot = index.snapshot().expect("synced");
            let now = "2026-01-01T00:00:00Z".parse().unwrap();
            let mut out = vec![format!(
                "policies {:?} by mode {:?} invalid {}",
                snapshot.policies.policies().map(|p| (p.name().to_owned(), p.generation())).collect::<Vec<_>>(),
                Mode::ALL.map(|m| snapshot.policies.count_by_mode(m)),
                index.invalid_policies(),
            )];
            for ns in NAMESPACES.iter().chain(&["never-seen"]) {
                let containers: Vec<Value> = IMAGES
                    .iter()
                    .enumerate()
                    .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
                    .collect();
                let object = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": ns},
                                    "spec": {"containers": containers}});
                let workload = Workload::read(None, &object).unwrap();
                let decision = snapshot.policies.evaluate_workload(&workload, &snapshot.namespace(ns), now);
                out.push(format!("{ns}: {:?}", decision.violations));
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
            #[test]
            fn answers_like_an_index_built_from_scratch(ops in proptest::collection::vec(op(), 1..40)) {
                let mut world = World::default();
                let mut index = synced(vec![], vec![]);
                for op in ops {
                    apply(&mut index, &mut world, op);
                    prop_assert_eq!(answers(&index), answers(&world.index_built_from_scratch()));
                }
            }
        }
    }
}
