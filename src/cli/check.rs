//! `trustgate check`: the offline evaluation of manifests, with the server's engine.
//!
//! Memory is bounded: the inputs are read a window at a time (`trustgate_manifest::inputs`)
//! and each object's decision goes to a [`Sink`] as soon as it is made. Text and JSON write it
//! out there and then (`output.rs`); SARIF and JUnit keep the reports (not the YAML)
//! to write their documents at the end. Namespace labels apply to every object of a run, those
//! written before the Namespace too, so a first pass over the inputs collects them.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use trustgate_core::engine::{Namespace, PolicySet, Subject, Verdict, Violation};
use trustgate_core::workload::Workload;
use trustgate_manifest::inputs::Inputs;
use trustgate_manifest::workloads::{self, Entry, Lines, UnreadableObject, WorkloadReader};

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

#[derive(Debug, Serialize, Default, PartialEq, Eq, Clone)]
pub struct Summary {
    pub objects: usize,
    pub allowed: usize,
    pub warned: usize,
    pub denied: usize,
}

impl Summary {
    /// Counts one decision.
    pub fn count(&mut self, verdict: Verdict) {
        self.objects += 1;
        match verdict {
            Verdict::Allow => self.allowed += 1,
            Verdict::Warn => self.warned += 1,
            Verdict::Deny => self.denied += 1,
        }
    }

    /// Whether any Enforce policy was violated (exit code 1).
    pub fn denied(&self) -> bool {
        self.denied > 0
    }
}

impl Report {
    /// Whether any Enforce policy was violated (exit code 1).
    pub fn denied(&self) -> bool {
        self.summary.denied()
    }
}

/// Where decisions go, one object at a time, in input order.
pub trait Sink {
    /// Takes one object's decision.
    fn object(&mut self, object: ObjectReport) -> std::io::Result<()>;
    /// Takes the summary, after the last object.
    fn finish(&mut self, summary: &Summary) -> std::io::Result<()>;
}

/// A report keeps every decision (SARIF, JUnit and `check --cluster` need them together).
impl Sink for Report {
    fn object(&mut self, object: ObjectReport) -> std::io::Result<()> {
        self.summary.count(object.decision);
        self.objects.push(object);
        Ok(())
    }

    fn finish(&mut self, summary: &Summary) -> std::io::Result<()> {
        debug_assert_eq!(&self.summary, summary, "the report counted what the check counted");
        Ok(())
    }
}

/// Why `check` could not read its input or write its output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error(transparent)]
    Manifest(#[from] trustgate_manifest::manifest::ManifestError),
    #[error(transparent)]
    Unreadable(#[from] UnreadableObject),
    #[error("writing output: {0}")]
    Output(std::io::Error),
}

/// How `check` reads and evaluates its inputs.
pub struct Check<'a> {
    pub policies: &'a PolicySet,
    /// The namespace of objects that do not set one.
    pub default_namespace: &'a str,
    pub now: Timestamp,
    /// Find the line of each image (only SARIF needs them).
    pub locate: bool,
}

impl Check<'_> {
    /// Evaluates every object of `inputs` and hands each decision to `sink` as it is made, in
    /// input order, then the summary. The first pass reads only the documents that may hold a
    /// Namespace, for their labels; the second reads and decides every object.
    pub(crate) fn run(&self, inputs: &mut Inputs, sink: &mut impl Sink) -> Result<Summary, CheckError> {
        let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        inputs.prescan(&WorkloadReader::default(), workloads::may_hold_namespace, |entry: Entry| {
            // The last Namespace of a name wins, as it would when applied in order.
            if let Some((name, namespace_labels)) = entry.namespace_labels {
                labels.insert(name, namespace_labels);
            }
        })?;
        let no_labels = BTreeMap::new();
        let mut summary = Summary::default();
        inputs.read_objects(&WorkloadReader { locate: self.locate }, |at, entry| {
            let entry = entry.map_err(|e| e.at(at))?;
            let namespace = entry.workload.namespace.as_deref().unwrap_or(self.default_namespace);
            let ns = Namespace { name: namespace, labels: Some(labels.get(namespace).unwrap_or(&no_labels)) };
            let object = decide(self.policies, &entry.workload, &ns, at.source.to_owned(), entry.lines, self.now);
            summary.count(object.decision);
            sink.object(object).map_err(CheckError::Output)
        })?;
        sink.finish(&summary).map_err(CheckError::Output)?;
        Ok(summary)
    }
}

/// Evaluates one workload in namespace `ns` (offline check and `check --cluster` both decide
/// through here).
fn decide(
    policies: &PolicySet,
    workload: &Workload<'_>,
    ns: &Namespace<'_>,
    source: String,
    lines: Lines,
    now: Timestamp,
) -> ObjectReport {
    let decision = policies.evaluate_workload(workload, ns, now);
    let verdict = decision.verdict();
    let subject = Subject::of(workload, ns.name);
    ObjectReport {
        kind: workload.kind.to_string(),
        namespace: ns.name.to_owned(),
        name: subject.display_name().into_owned(),
        source,
        decision: verdict,
        denial: decision.denial(&subject),
        warnings: decision.warnings(&subject),
        violations: decision.violations,
        lines,
    }
}

impl Report {
    /// Evaluates one workload in namespace `ns` and adds its decision.
    pub(crate) fn add(
        &mut self,
        policies: &PolicySet,
        workload: &Workload<'_>,
        ns: &Namespace<'_>,
        source: String,
        lines: Lines,
        now: Timestamp,
    ) {
        let object = decide(policies, workload, ns, source, lines, now);
        self.summary.count(object.decision);
        self.objects.push(object);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use trustgate_core::api::Mode;
    use trustgate_manifest::inputs::Input;
    use trustgate_manifest::manifest::{self, ObjectReader};

    fn policies(yaml: &str) -> PolicySet {
        let (set, errors) = PolicySet::compile(&manifest::parse_policies("p.yaml", yaml).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
        set
    }

    const POLICIES: &str = "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: corporate}\nspec:\n  trustedRegistries: [registry.my.com]\n---\napiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: prod-warn}\nspec:\n  mode: Warn\n  trustedRegistries: [registry.my.com/prod]\n  namespaceSelector: {matchLabels: {env: prod}}\n";

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    /// Reads its text, counting in `read` the bytes read since the input was last opened.
    struct Counted {
        inner: io::Cursor<Arc<[u8]>>,
        read: Arc<AtomicUsize>,
    }

    impl Read for Counted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.fetch_add(n, Ordering::SeqCst);
            Ok(n)
        }
    }

    fn input(name: &str, text: &str) -> (Input, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let bytes: Arc<[u8]> = text.as_bytes().into();
        let count = read.clone();
        let input = Input::new(name, bytes.len() as u64, move || {
            count.store(0, Ordering::SeqCst);
            Ok(Box::new(Counted { inner: io::Cursor::new(bytes.clone()), read: count.clone() }))
        });
        (input, read)
    }

    /// Checks the `(name, text)` files, `window` bytes at a time.
    fn check(files: &[(&str, &str)], window: usize) -> Result<Report, CheckError> {
        let mut inputs = Inputs::new(files.iter().map(|(name, text)| input(name, text).0).collect(), window);
        let policies = policies(POLICIES);
        let check = Check { policies: &policies, default_namespace: "default", now: now(), locate: true };
        let mut report = Report::default();
        let summary = check.run(&mut inputs, &mut report)?;
        assert_eq!(summary, report.summary);
        Ok(report)
    }

    /// How `check` read its inputs before it read them in windows: every file whole, every
    /// object kept until the last one was read (the oracle of the equivalence test).
    fn check_whole(files: &[(&str, &str)]) -> Report {
        let policies = policies(POLICIES);
        let reader = WorkloadReader::default();
        let mut pending = Vec::new();
        let mut labels = HashMap::new();
        for (name, text) in files {
            for doc in manifest::parse(name, text).unwrap() {
                let entry = reader.read_value(&doc.value, None).expect("the cases are readable");
                if let Some((ns, l)) = entry.namespace_labels {
                    labels.insert(ns, l);
                }
                pending.push((entry.workload, name.to_string()));
            }
        }
        let no_labels = BTreeMap::new();
        let mut report = Report::default();
        for (workload, source) in pending {
            let namespace = workload.namespace.as_deref().unwrap_or("default");
            let ns = Namespace { name: namespace, labels: Some(labels.get(namespace).unwrap_or(&no_labels)) };
            report.add(&policies, &workload, &ns, source, Lines::default(), now());
        }
        report
    }

    fn pod(name: &str, namespace: &str, image: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  containers:\n  - name: a\n    image: {image}\n"
        )
    }

    #[test]
    fn decisions_summary_and_namespace_labels_from_inputs() {
        let inputs = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/prod/app:v1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: warned, namespace: shop}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec: {containers: [{name: a, image: registry.my.com/dev/app:v1}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {containers: [{name: nginx, image: 'nginx:1.25'}]}}}\n";
        let report = check(&[("in.yaml", inputs)], 1 << 20).unwrap();
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
        assert_eq!(web.lines.object, Some(20), "SARIF lines are found");
    }

    #[test]
    fn a_namespace_may_come_after_the_objects_it_labels_even_in_a_later_file() {
        let warned = pod("warned", "shop", "registry.my.com/dev/app:v1");
        let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n";
        for window in [16, 1 << 20] {
            let report = check(&[("a.yaml", &format!("{warned}---\n{namespace}")), ("b.yaml", "")], window).unwrap();
            assert_eq!(report.objects[0].decision, Verdict::Warn);
            let report = check(&[("a.yaml", &warned), ("b.json", &serde_json::to_string(&serde_json::json!({"kind": "Namespace", "metadata": {"name": "shop", "labels": {"env": "prod"}}})).unwrap())], window).unwrap();
            assert_eq!(report.objects[0].decision, Verdict::Warn);
        }
        // The last Namespace of a name is the one that counts.
        let relabelled = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: dev}}\n";
        let report = check(&[("a.yaml", &format!("{namespace}---\n{warned}---\n{relabelled}"))], 16).unwrap();
        assert_eq!(report.objects[1].decision, Verdict::Allow);
    }

    #[test]
    fn reading_in_windows_decides_what_reading_whole_files_decided() {
        let many: String = (0..30)
            .map(|i| {
                format!(
                    "---\n{}",
                    pod(&format!("p{i}"), ["shop", "web"][i % 2], ["registry.my.com/dev/a:1", "nginx"][i % 3 / 2])
                )
            })
            .collect();
        let ns = |name: &str, env: &str| {
            format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    env: {env}\n")
        };
        let big = format!(
            "---\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  k: |\n{}",
            "    ---\n    text\n".repeat(300)
        );
        let cases: Vec<Vec<(&str, String)>> = vec![
            vec![("a.yaml", format!("{many}{}", ns("shop", "prod")))],
            vec![("a.yaml", many.clone()), ("b.yaml", format!("{big}{}{many}", ns("web", "prod")))],
            vec![("crlf.yaml", format!("{many}{}", ns("shop", "prod")).replace('\n', "\r\n"))],
            vec![("no-newline.yaml", format!("{many}{}", ns("shop", "prod").trim_end()))],
            vec![(
                "list.yaml",
                format!(
                    "{many}---\nkind: List\nitems:\n- {{kind: Namespace, metadata: {{name: shop, labels: {{env: prod}}}}}}\n"
                ),
            )],
            vec![(
                "quoted.yaml",
                format!("{many}---\nkind: \"Name\\x73pace\"\nmetadata: {{name: shop, labels: {{env: prod}}}}\n"),
            )],
            vec![("directives.yaml", format!("{many}...\n%YAML 1.2\n{}", ns("shop", "prod")))],
        ];
        for files in &cases {
            let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
            let expected = check_whole(&files);
            assert!(expected.summary.warned > 0, "{:?}: a Namespace label applies", files[0].0);
            for window in [1, 100, 1000, 1 << 20] {
                let mut got = check(&files, window).unwrap();
                got.objects.iter_mut().for_each(|o| o.lines = Lines::default());
                assert_eq!(got, expected, "{:?}, window {window}", files[0].0);
            }
        }
    }

    /// The bounded-memory test: an input 64 windows long (a Namespace at its end labelling
    /// every object before it) is decided object by object while it is read, never more than
    /// a window ahead of the object decided.
    #[test]
    fn an_input_longer_than_the_window_is_decided_a_window_at_a_time() {
        let window = 16 * 1024;
        let mut text = String::new();
        let mut starts = Vec::new();
        while text.len() < 64 * window {
            starts.push(text.len());
            text.push_str(&format!("---\n{}", pod(&format!("p{}", starts.len()), "shop", "registry.my.com/dev/a:1")));
        }
        text.push_str("---\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n");
        let (input, read) = input("big.yaml", &text);
        let mut inputs = Inputs::new(vec![input], window);

        /// Asserts at each decision how far ahead of it the input has been read.
        struct Ahead<'a> {
            read: &'a AtomicUsize,
            starts: &'a [usize],
            decided: usize,
            window: usize,
        }
        impl Sink for Ahead<'_> {
            fn object(&mut self, object: ObjectReport) -> io::Result<()> {
                if let Some(&start) = self.starts.get(self.decided) {
                    assert_eq!(object.decision, Verdict::Warn, "{}: the Namespace at the end applies", object.name);
                    let ahead = self.read.load(Ordering::SeqCst) - start;
                    assert!(ahead <= self.window + 200, "{}: read {ahead} bytes ahead", object.name);
                }
                self.decided += 1;
                Ok(())
            }
            fn finish(&mut self, _: &Summary) -> io::Result<()> {
                Ok(())
            }
        }
        let policies = policies(POLICIES);
        let check = Check { policies: &policies, default_namespace: "default", now: now(), locate: false };
        let mut sink = Ahead { read: &read, starts: &starts, decided: 0, window };
        let summary = check.run(&mut inputs, &mut sink).unwrap();
        assert_eq!(summary.warned, starts.len());
        assert_eq!(sink.decided, starts.len() + 1);
    }

    #[test]
    fn json_matches_the_spec_shape() {
        let report = check(
            &[(
                "deploy.yaml",
                "kind: Deployment\nmetadata: {name: web, namespace: default}\nspec: {template: {spec: {containers: [{name: nginx, image: 'nginx:1.25'}]}}}\n",
            )],
            1 << 20,
        )
        .unwrap();
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

    #[test]
    fn unreadable_pod_spec_is_an_error_naming_the_object() {
        for window in [8, 1 << 20] {
            let text = format!(
                "{}---\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: a, image: 5}}]}}\n",
                pod("a", "shop", "registry.my.com/app:v1")
            );
            let err = check(&[("x.yaml", &text)], window).unwrap_err().to_string();
            assert!(err.starts_with("x.yaml: document 2 (Pod p): cannot read the pod spec"), "{err}");
        }
    }
}
