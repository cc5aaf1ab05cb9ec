//! The seam between policy sources and admission: an immutable [`Snapshot`] that a source (the
//! file source or the Kubernetes watchers) publishes, swapped atomically, read lock-free by
//! every admission request. Admission never waits on a source.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

use crate::engine::{Namespace, PolicySet};

/// Labels of every known namespace, by name: a persistent map, so a snapshot shares it with
/// the watcher's copy (O(1)) and a label change copies one path.
pub type NamespaceLabels = imbl::HashMap<String, BTreeMap<String, String>>;

/// Everything admission needs to decide, as of one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub policies: PolicySet,
    /// `None` when the source knows no namespaces (policy files): namespaces then carry only
    /// their `kubernetes.io/metadata.name` label, as in `trustgate check`.
    pub namespaces: Option<NamespaceLabels>,
}

impl Snapshot {
    /// The namespace as policies see it. A namespace the watcher has not seen yet has unknown
    /// labels, and policies with a selector then apply to it.
    pub fn namespace<'a>(&'a self, name: &'a str) -> Namespace<'a> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        let labels = match &self.namespaces {
            None => Some(&NO_LABELS),
            Some(known) => known.get(name),
        };
        Namespace { name, labels }
    }
}

/// Holds the current snapshot and whether the server is shutting down.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
    draining: AtomicBool,
}

impl Store {
    pub fn new() -> Arc<Self> {
        Arc::new(Store::default())
    }

    /// Replaces the snapshot; the first publication makes the server ready.
    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }

    /// The current snapshot, or `None` before the first publication.
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Ready to answer admission: a snapshot exists and the server is not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.current.load().is_some()
    }

    /// Marks the server as shutting down: readiness turns false for good.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_publication_and_until_draining() {
        let store = Store::new();
        assert!(!store.is_ready());
        assert!(store.load().is_none());
        store.publish(Snapshot::default());
        assert!(store.is_ready());
        store.start_draining();
        assert!(!store.is_ready());
        assert!(store.load().is_some(), "the last snapshot stays readable while draining");
    }

    #[test]
    fn namespace_labels_known_unknown_and_absent() {
        let file_source = Snapshot::default();
        assert_eq!(file_source.namespace("a").labels.map(BTreeMap::len), Some(0));
        let mut known = NamespaceLabels::new();
        known.insert("prod".into(), BTreeMap::from([("env".into(), "prod".into())]));
        let watched = Snapshot { policies: PolicySet::default(), namespaces: Some(known) };
        assert_eq!(watched.namespace("prod").labels.and_then(|l| l.get("env")).map(String::as_str), Some("prod"));
        assert!(watched.namespace("new-one").labels.is_none());
    }
}
