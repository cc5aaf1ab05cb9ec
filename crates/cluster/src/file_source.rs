//! The file policy source (`--policy-file PATH`): a file or a directory of TrustedRegistryPolicy
//! YAML, re-read when it changes, compiled, and published to the [`Store`].
//!
//! Every couple of seconds the files are read and hashed; only a change is parsed and compiled.
//! An edit that does not load (a YAML error, an invalid policy, a policy defined twice) is
//! rejected as a whole and the last good snapshot stays in service: dropping just the broken
//! policy would silently widen trust.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trustgate_core::api::{Mode, TrustedRegistryPolicy};
use trustgate_core::engine::snapshot::{Snapshot, Store};
use trustgate_core::engine::{PolicyError, PolicySet};
use trustgate_manifest::manifest::{self, ManifestError};

/// Why the policy files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{file}: {error}")]
    Invalid { file: String, error: PolicyError },
    #[error(
        "{file} holds no policy; an empty policy file is never loaded, since it may be half written: delete the file to remove its policies"
    )]
    Empty { file: String },
    #[error("policy {name:?} is defined twice: in {first} and in {second}")]
    Duplicate { name: String, first: String, second: String },
    #[error(
        "the policy files under {path} changed every time they were read ({attempts} tries): is something still writing them?"
    )]
    Unsettled { path: String, attempts: u32 },
}

/// Policies read from files.
pub struct FileSource {
    path: PathBuf,
    /// Hash of the file names and contents last loaded (successfully or not).
    seen: Option<u64>,
    metrics: SourceMetrics,
}

impl FileSource {
    pub fn new(path: PathBuf, metrics: SourceMetrics) -> Self {
        FileSource { path, seen: None, metrics }
    }

    /// The first load, at start-up: [`FileSource::poll`] until the files read the same twice
    /// in a row, at most `attempts` times. Blocking file I/O.
    pub fn first_load(&mut self, attempts: u32) -> Result<Snapshot, SourceError> {
        let path = self.path.display().to_string();
        first_settled(attempts, &path, || {
            // The first poll has nothing to compare with: `None` means the files changed while
            // they were read.
            let polled = self.poll();
            self.seen = None;
            polled
        })
    }

    /// Reads the files and, if they changed since the last call, compiles them. `Ok(None)`: no
    /// change, or a change still being written. Blocking file I/O.
    pub fn poll(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let files = self.read()?;
        let hash = hash_of(&files);
        if self.seen == Some(hash) {
            return Ok(None);
        }
        // A file being written may be read between two of the writer's writes; a truncated
        // multi-document file would silently drop policies. Act only on contents that read the
        // same twice, and try again at the next poll otherwise.
        std::thread::sleep(SETTLE);
        if hash_of(&self.read()?) != hash {
            return Ok(None);
        }
        self.seen = Some(hash);
        let result = compile(&files);
        match &result {
            Ok(_) => self.metrics.reloaded(),
            Err(_) => self.metrics.failed(),
        }
        result.map(Some)
    }

    /// The policy files under the path, with their contents. Hidden entries are skipped: a
    /// ConfigMap volume holds every file three times (`x.yaml`, `..data/x.yaml` and
    /// `..2024_01_01_00_00_00.1/x.yaml`), and `.git` holds no policies.
    fn read(&self) -> Result<Vec<(String, String)>, SourceError> {
        let mut out = Vec::new();
        for file in manifest::files(&self.path)? {
            if is_hidden(file.strip_prefix(&self.path).unwrap_or(&file)) {
                continue;
            }
            let name = file.display().to_string();
            let text =
                std::fs::read_to_string(&file).map_err(|source| ManifestError::Io { path: name.clone(), source })?;
            out.push((name, text));
        }
        Ok(out)
    }

    /// Checks the files every `interval` until `shutdown`, publishing each good change.
    pub async fn run(self, store: Arc<Store>, interval: Duration, shutdown: CancellationToken) {
        let publish = move |source: &mut FileSource| match source.poll() {
            Ok(None) => {}
            Ok(Some(snapshot)) => {
                log_loaded(&source.path, &snapshot);
                store.publish(snapshot);
            }
            Err(error) => tracing::error!(
                path = %source.path.display(),
                %error,
                "policy files changed but do not load; still enforcing the last good policies"
            ),
        };
        trustgate_runtime::poll::poll_every(self, interval, shutdown, "the policy file source", publish).await;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The first `Some` of `poll`, tried at most `attempts` times.
fn first_settled<T>(
    attempts: u32,
    path: &str,
    mut poll: impl FnMut() -> Result<Option<T>, SourceError>,
) -> Result<T, SourceError> {
    for _ in 0..attempts {
        if let Some(loaded) = poll()? {
            return Ok(loaded);
        }
    }
    Err(SourceError::Unsettled { path: path.to_owned(), attempts })
}

/// Logs what a newly loaded snapshot holds.
pub fn log_loaded(path: &Path, snapshot: &Snapshot) {
    let policies = &snapshot.policies;
    if policies.is_empty() {
        tracing::warn!(path = %path.display(), "no TrustedRegistryPolicy found: every image is allowed");
    } else {
        tracing::info!(
            path = %path.display(),
            enforce = policies.count_by_mode(Mode::Enforce),
            warn = policies.count_by_mode(Mode::Warn),
            audit = policies.count_by_mode(Mode::Audit),
            "policies loaded"
        );
    }
}

fn is_hidden(relative: &Path) -> bool {
    relative.components().any(|c| matches!(c, Component::Normal(name) if name.to_string_lossy().starts_with('.')))
}

/// How long contents must stay the same before a change is loaded.
const SETTLE: Duration = Duration::from_millis(20);

fn hash_of(files: &[(String, String)]) -> u64 {
    let mut hasher = DefaultHasher::new();
    files.hash(&mut hasher);
    hasher.finish()
}

/// Parses and compiles every policy; any problem rejects the whole set.
fn compile(files: &[(String, String)]) -> Result<Snapshot, SourceError> {
    let mut policies: Vec<(&str, TrustedRegistryPolicy)> = Vec::new();
    for (name, text) in files {
        let parsed = manifest::parse_policies(name, text)?;
        if parsed.is_empty() {
            return Err(SourceError::Empty { file: name.clone() });
        }
        policies.extend(parsed.into_iter().map(|p| (name.as_str(), p)));
    }
    let mut defined: HashMap<&str, &str> = HashMap::new();
    for (file, policy) in &policies {
        let name = policy.metadata.name.as_deref().unwrap_or("");
        if let Some(first) = defined.insert(name, file) {
            return Err(SourceError::Duplicate {
                name: name.to_owned(),
                first: first.to_owned(),
                second: (*file).to_owned(),
            });
        }
    }
    let (set, errors) = PolicySet::compile(policies.iter().map(|(_, p)| p));
    if let Some(error) = errors.into_iter().next() {
        let file = policies
            .iter()
            .find(|(_, p)| p.metadata.name.as_deref() == Some(error.policy.as_str()))
            .map_or("", |(f, _)| *f);
        return Err(SourceError::Invalid { file: file.to_owned(), error });
    }
    Ok(Snapshot { policies: set, namespaces: None })
}

/// The file source's metrics (`trustgate_policy_source_*`).
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    reloads: Family<ResultLabels, Counter>,
    healthy: Gauge,
    last_success: Gauge,
}

impl SourceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("policy_source");
        let metrics = SourceMetrics::default();
        registry.register(
            "reloads",
            "Attempts to load changed policies, by result (success, error)",
            metrics.reloads.clone(),
        );
        registry.register(
            "healthy",
            "1 when the last attempt to load policies succeeded, 0 when the server runs on an older snapshot",
            metrics.healthy.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When policies were last loaded successfully (Unix time)",
            metrics.last_success.clone(),
        );
        metrics
    }

    pub fn reloaded(&self) {
        self.reloads.get_or_create(&ResultLabels { result: "success" }).inc();
        self.healthy.set(1);
        self.last_success.set(unix_seconds());
    }

    pub fn failed(&self) {
        self.reloads.get_or_create(&ResultLabels { result: "error" }).inc();
        self.healthy.set(0);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn unix_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, mode: &str) -> String {
        format!(
            "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  trustedRegistries: [registry.my.com]\n"
        )
    }

    #[test]
    fn source_results_are_counted() {
        let mut registry = trustgate_runtime::metrics::registry();
        let source = SourceMetrics::register(&mut registry);
        source.reloaded();
        source.failed();
        let text = trustgate_runtime::metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_policy_source_reloads_total{result="error"} 1"#), "{text}");
        assert!(text.contains(r#"trustgate_policy_source_reloads_total{result="success"} 1"#), "{text}");
        assert!(text.contains("trustgate_policy_source_healthy 0"), "{text}");
    }

    #[test]
    fn the_first_load_waits_for_files_that_stop_changing_and_gives_up_on_files_that_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, policy("a", "Enforce")).unwrap();
        let mut source = FileSource::new(dir.path().to_owned(), SourceMetrics::default());
        assert_eq!(names(&source.first_load(3).unwrap()), ["a"]);

        // Files that change under every read: the first load gives up after its tries, with
        // a message saying why (a writer racing the settle window cannot be timed reliably in
        // a test, so the retry is driven directly).
        let mut tries = 0;
        let error = first_settled::<Snapshot>(3, "/etc/trustgate/policies", || {
            tries += 1;
            Ok(None)
        })
        .unwrap_err();
        assert_eq!(tries, 3);
        assert!(matches!(error, SourceError::Unsettled { attempts: 3, .. }), "{error}");
        assert!(error.to_string().contains("changed every time they were read (3 tries)"), "{error}");
        // A poll that settles on a later try loads; an error ends the tries at once.
        let mut tries = 0;
        assert_eq!(
            first_settled(5, "p", || {
                tries += 1;
                Ok((tries == 2).then_some(7))
            })
            .unwrap(),
            7
        );
        let mut tries = 0;
        let failed = first_settled::<u8>(5, "p", || {
            tries += 1;
            Err(SourceError::Empty { file: "p.yaml".into() })
        });
        assert!(matches!(failed, Err(SourceError::Empty { .. })) && tries == 1);
    }

    fn names(snapshot: &Snapshot) -> Vec<&str> {
        snapshot.policies.policies().map(|p| p.name()).collect()
    }

    #[test]
    fn loads_a_directory_then_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), policy("a", "Enforce")).unwrap();
        std::fs::write(dir.path().join("b.yml"), policy("b", "Warn")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        let mut source = FileSource::new(dir.path().to_owned(), SourceMetrics::default());
        let snapshot = source.poll().unwrap().expect("first load");
        assert_eq!(names(&snapshot), ["a", "b"]);
        assert!(source.poll().unwrap().is_none(), "unchanged files are not reloaded");

        // Same length, same second: only the content differs.
        std::fs::write(dir.path().join("b.yml"), policy("c", "Warn")).unwrap();
        assert_eq!(names(&source.poll().unwrap().expect("changed")), ["a", "c"]);
    }

    #[tokio::test]
    async fn run_publishes_good_edits_keeps_the_last_good_one_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, policy("a", "Enforce")).unwrap();
        let mut source = FileSource::new(file.clone(), SourceMetrics::default());
        let store = Store::new();
        store.publish(source.poll().unwrap().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(source.run(store.clone(), Duration::from_millis(10), shutdown.clone()));
        let current = |store: &Store| names(&store.load().unwrap()).iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let wait_for = |want: &'static str| {
            let store = store.clone();
            async move {
                for _ in 0..500 {
                    if current(&store) == [want] {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("policy {want:?} was never published; still {:?}", current(&store));
            }
        };

        std::fs::write(&file, policy("b", "Enforce")).unwrap();
        wait_for("b").await;
        std::fs::write(&file, "kind: [").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(current(&store), ["b"], "a bad edit keeps the last good policies");
        std::fs::write(&file, policy("c", "Enforce")).unwrap();
        wait_for("c").await;

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns on shutdown").unwrap();
    }

    #[test]
    fn an_empty_file_is_rejected_and_a_settled_edit_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, policy("a", "Enforce")).unwrap();
        let mut source = FileSource::new(dir.path().to_owned(), SourceMetrics::default());
        source.poll().unwrap().unwrap();

        // What a reader sees between the truncation and the write of `fs::write`.
        std::fs::write(&file, "").unwrap();
        assert!(matches!(source.poll(), Err(SourceError::Empty { file }) if file.ends_with("p.yaml")));
        std::fs::write(&file, "# only a comment\n").unwrap();
        assert!(matches!(source.poll(), Err(SourceError::Empty { .. })));
        std::fs::write(&file, policy("b", "Enforce")).unwrap();
        assert_eq!(names(&source.poll().unwrap().expect("a finished write loads")), ["b"]);
    }

    #[test]
    fn bad_edits_are_rejected_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, policy("a", "Enforce")).unwrap();
        let mut source = FileSource::new(file.clone(), SourceMetrics::default());
        source.poll().unwrap().unwrap();

        std::fs::write(&file, "apiVersion: trustgate.dev/v1alpha1\nkind: [").unwrap();
        assert!(matches!(source.poll(), Err(SourceError::Manifest(_))));
        assert!(source.poll().unwrap().is_none(), "a failure is reported once per change");

        let invalid = policy("a", "Enforce").replace("registry.my.com", "nginx");
        std::fs::write(&file, format!("{invalid}---\n{}", policy("b", "Enforce"))).unwrap();
        let err = source.poll().unwrap_err().to_string();
        assert!(err.contains("p.yaml: policy \"a\" is invalid"), "{err}");

        std::fs::write(&file, format!("{}---\n{}", policy("a", "Enforce"), policy("a", "Warn"))).unwrap();
        assert!(matches!(source.poll(), Err(SourceError::Duplicate { name, .. }) if name == "a"));
    }

    #[cfg(unix)]
    #[test]
    fn reads_a_configmap_volume_once_and_follows_its_swap() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let generation = |name: &str, policy_name: &str| {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("p.yaml"), policy(policy_name, "Enforce")).unwrap();
        };
        generation("..2024_01_01", "first");
        symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        symlink("..data/p.yaml", dir.path().join("p.yaml")).unwrap();
        let mut source = FileSource::new(dir.path().to_owned(), SourceMetrics::default());
        assert_eq!(names(&source.poll().unwrap().unwrap()), ["first"]);

        generation("..2024_02_01", "second");
        symlink("..2024_02_01", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert_eq!(names(&source.poll().unwrap().unwrap()), ["second"]);
    }

    #[test]
    fn an_empty_directory_is_an_empty_policy_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = FileSource::new(dir.path().to_owned(), SourceMetrics::default());
        assert!(source.poll().unwrap().unwrap().policies.is_empty());
        let missing = FileSource::new(dir.path().join("nope"), SourceMetrics::default()).poll();
        assert!(matches!(missing, Err(SourceError::Manifest(ManifestError::Io { .. }))));
    }
}
