//! `trustgate check`: the offline evaluation of manifests, with the server's engine.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use trustgate_core::engine::{Namespace, PolicySet, Subject, Verdict, Violation};
use trustgate_core::workload::Workload;
use trustgate_manifest::manifest::{Document, ObjectReader, Position};
use trustgate_manifest::workloads::{Entry, Lines, UnreadableObject, WorkloadReader};

/// The JSON document `check --output json` prints.
#[derive(Debug, Serialize, PartialEq, Eq, Default)]
pub struct Report {
    pub objects: Vec<ObjectReport>,
    pub summary: Summary,
}

/// One object's decision.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ObjectReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub source: String,
    pub decision: Verdict,
    pub violations: Vec<Violation>,
    /// The denial message as the API server would show it (not part of the JSON contract).
    #[serde(skip)]
    pub denial: Option<String>,
    /// The warnings as kubectl would print them.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Where the object and its images are written (not part of the JSON contract).
    #[serde(skip)]
    pub lines: Lines,
}

#[derive(Debug, Serialize, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects: usize,
    pub allowed: usize,
    pub warned: usize,
    pub denied: usize,
}

impl Report {
    /// Whether any Enforce policy was violated (exit code 1).
    pub fn denied(&self) -> bool {
        self.summary.denied > 0
    }
}

/// Why `check` could not read its input.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error(transparent)]
    Manifest(#[from] trustgate_manifest::manifest::ManifestError),
    #[error(transparent)]
    Unreadable(#[from] UnreadableObject),
}

/// Collects objects one document at a time, keeping only what evaluation needs (a Namespace
/// may come after the objects it labels, so evaluation waits for the last document).
#[derive(Default)]
pub struct Checker {
    pending: Vec<(Workload<'static>, String, Lines)>,
    labels: HashMap<String, BTreeMap<String, String>>,
}

impl Checker {
    /// Reads one document's pod spec (or Namespace labels).
    pub fn add(&mut self, doc: &Document) -> Result<(), UnreadableObject> {
        let entry = WorkloadReader::default()
            .read_value(&doc.value, None)
            .map_err(|e| e.at(Position { source: &doc.source, document: doc.document }))?;
        self.push(&doc.source, entry);
        Ok(())
    }

    /// Keeps one object read by [`WorkloadReader`].
    pub fn push(&mut self, source: &str, entry: Entry) {
        if let Some((name, labels)) = entry.namespace_labels {
            self.labels.insert(name, labels);
        }
        self.pending.push((entry.workload, source.to_owned(), entry.lines));
    }

    /// Evaluates everything read.
    pub fn finish(self, policies: &PolicySet, default_namespace: &str, now: Timestamp) -> Report {
        let no_labels = BTreeMap::new();
        let mut report = Report { objects: Vec::with_capacity(self.pending.len()), summary: Summary::default() };
        for (workload, source, lines) in self.pending {
            let namespace = workload.namespace.as_deref().unwrap_or(default_namespace);
            let ns = Namespace { name: namespace, labels: Some(self.labels.get(namespace).unwrap_or(&no_labels)) };
            report.add(policies, &workload, &ns, source, lines, now);
        }
        report
    }
}

impl Report {
    /// Evaluates one workload in namespace `ns` and adds its decision (offline check and
    /// `check --cluster` both report through here).
    pub(crate) fn add(
        &mut self,
        policies: &PolicySet,
        workload: &Workload<'_>,
        ns: &Namespace<'_>,
        source: String,
        lines: Lines,
        now: Timestamp,
    ) {
        let decision = policies.evaluate_workload(workload, ns, now);
        let verdict = decision.verdict();
        let subject = Subject::of(workload, ns.name);
        match verdict {
            Verdict::Allow => self.summary.allowed += 1,
            Verdict::Warn => self.summary.warned += 1,
            Verdict::Deny => self.summary.denied += 1,
        }
        self.objects.push(ObjectReport {
            kind: workload.kind.to_string(),
            namespace: ns.name.to_owned(),
            name: subject.display_name().into_owned(),
            source,
            decision: verdict,
            denial: decision.denial(&subject),
            warnings: decision.warnings(&subject),
            violations: decision.violations,
            lines,
        });
        self.summary.objects = self.objects.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustgate_core::api::Mode;
    use trustgate_manifest::manifest;

    fn check(
        policies: &PolicySet,
        documents: &[Document],
        default_namespace: &str,
        now: Timestamp,
    ) -> Result<Report, UnreadableObject> {
        let mut checker = Checker::default();
        for doc in documents {
            checker.add(doc)?;
        }
        Ok(checker.finish(policies, default_namespace, now))
    }

    fn policies(yaml: &str) -> PolicySet {
        let (set, errors) = PolicySet::compile(&manifest::parse_policies("p.yaml", yaml).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
        set
    }

    const POLICIES: &str = "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: corporate}\nspec:\n  trustedRegistries: [registry.my.com]\n---\napiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: prod-warn}\nspec:\n  mode: Warn\n  trustedRegistries: [registry.my.com/prod]\n  namespaceSelector: {matchLabels: {env: prod}}\n";

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn decisions_summary_and_namespace_labels_from_inputs() {
        let inputs = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/prod/app:v1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: warned, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {containers: [{name: nginx, image: 'nginx:1.25'}]}}}\n";
        let docs = manifest::parse("in.yaml", inputs).unwrap();
        let report = check(&policies(POLICIES), &docs, "default", now()).unwrap();
        let decisions: Vec<(&str, Verdict)> = report.objects.iter().map(|o| (o.name.as_str(), o.decision)).collect();
        assert_eq!(
            decisions,
            [
                ("shop", Verdict::Allow),
                ("ok", Verdict::Allow),
                ("warned", Verdict::Warn),
                ("plain", Verdict::Allow),
                ("web", Verdict::Deny)
            ]
        );
        assert_eq!(report.summary, Summary { objects: 5, allowed: 3, warned: 1, denied: 1 });
        assert!(report.denied());
        let web = &report.objects[4];
        assert_eq!(web.namespace, "default");
        assert_eq!(web.violations[0].mode, Mode::Enforce);
        assert!(web.denial.as_deref().unwrap().starts_with("Deployment default/web: container \"nginx\""));
        assert_eq!(report.objects[2].warnings.len(), 1);
    }

    #[test]
    fn a_namespace_may_come_after_the_objects_it_labels() {
        let inputs = "apiVersion: v1\nkind: Pod\nmetadata: {name: warned, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n";
        let docs = manifest::parse("in.yaml", inputs).unwrap();
        let report = check(&policies(POLICIES), &docs, "default", now()).unwrap();
        assert_eq!(report.objects[0].decision, Verdict::Warn);
    }

    #[test]
    fn json_matches_the_spec_shape() {
        let docs = manifest::parse(
            "deploy.yaml",
            "kind: Deployment\nmetadata: {name: web, namespace: default}\nspec: {template: {spec: {containers: [{name: nginx, image: 'nginx:1.25'}]}}}\n",
        )
        .unwrap();
        let report = check(&policies(POLICIES), &docs, "default", now()).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        let expected = serde_json::json!({
            "objects": [{"kind": "Deployment", "namespace": "default", "name": "web", "source": "deploy.yaml",
                "decision": "deny",
                "violations": [{"policy": "corporate", "mode": "Enforce", "container": "nginx",
                    "field": "spec.template.spec.containers[0]", "image": "nginx:1.25",
                    "normalized": "docker.io/library/nginx:1.25",
                    "reason": "resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com)"}]}],
            "summary": {"objects": 1, "allowed": 0, "warned": 0, "denied": 1}
        });
        assert_eq!(json, expected);
    }

    /// The shortcut straight from YAML reads what the general reader reads, or steps aside.
    #[test]
    fn unreadable_pod_spec_is_an_error_naming_the_object() {
        let docs =
            manifest::parse("x.yaml", "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: 5}]}\n")
                .unwrap();
        let err = check(&policies(POLICIES), &docs, "default", now()).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml: document 1 (Pod p): cannot read the pod spec"), "{err}");
    }
}
