//! The cluster under test: the client, the CRDs, one namespace per test (never beside a foreign
//! Enforce policy that selects it), and [`Cleanup`], which deletes what a test made.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::Value;
use trustgate_core::api::{Mode as PolicyMode, TrustedRegistryPolicy};
use trustgate_core::engine::{CompiledPolicy, Namespace as PolicyNamespace};

use super::{MANAGER, Mode, NAMESPACE_LABEL, mode};

/// The name of trustgate's CRD.
pub const CRD: &str = "trustedregistrypolicies.trustgate.dev";

/// The API server the tests talk to, and how to reach it again (from another runtime, or from a
/// `trustgate` process the test starts).
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    config: kube::Config,
    /// `KUBECONFIG` as processes the test starts get it.
    kubeconfig: OsString,
}

impl Cluster {
    /// The cluster `KUBECONFIG` points to.
    pub async fn from_env() -> Cluster {
        let Some(kubeconfig) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) else {
            panic!(
                "the e2e tests need a Kubernetes API server: set KUBECONFIG to its kubeconfig \
                 (`KUBECONFIG=~/.kube/config just e2e`); they are #[ignore]d so that `cargo test` does not need one"
            );
        };
        let config = kube::Config::infer().await.expect("a client configuration from KUBECONFIG");
        Cluster::new(config, kubeconfig)
    }

    /// The cluster of this kubeconfig file, whatever `KUBECONFIG` says.
    pub async fn from_kubeconfig(path: &Path) -> Cluster {
        let file = Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .expect("a client configuration");
        Cluster::new(config, path.into())
    }

    fn new(config: kube::Config, kubeconfig: OsString) -> Cluster {
        Cluster { client: Client::try_from(config.clone()).expect("a client"), config, kubeconfig }
    }

    /// `KUBECONFIG` for the processes a test starts.
    pub fn kubeconfig(&self) -> &OsString {
        &self.kubeconfig
    }

    /// Where the kit keeps its certificates, if this is the kit's cluster: `pki/` beside the
    /// (first) kubeconfig file.
    pub fn kit_pki(&self) -> Option<PathBuf> {
        let first = std::env::split_paths(&self.kubeconfig).next()?;
        let pki = first.parent()?.join("pki");
        ["ca.crt", "webhook.crt", "webhook.key"].iter().all(|f| pki.join(f).is_file()).then_some(pki)
    }

    /// Installs (or updates) trustgate's CRD from `trustgate crd` and waits until it is served.
    /// In-cluster, the chart's CRD is left as it is: only the wait.
    pub async fn install_trustgate_crd(&self) {
        if mode() == Mode::Local {
            let output =
                Command::new(env!("CARGO_BIN_EXE_trustgate")).arg("crd").output().expect("run `trustgate crd`");
            assert!(output.status.success(), "`trustgate crd` failed: {}", String::from_utf8_lossy(&output.stderr));
            let name = self.install_crd(&String::from_utf8(output.stdout).expect("UTF-8 YAML")).await;
            assert_eq!(name, CRD);
        } else {
            self.wait_for_crd(CRD).await;
        }
    }

    /// Applies the CRD in `yaml` and waits until it is served; returns its name.
    pub async fn install_crd(&self, yaml: &str) -> String {
        let crd: CustomResourceDefinition = serde_saphyr::from_str(yaml).expect("a CRD");
        let name = crd.metadata.name.clone().expect("a CRD has a name");
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd)).await.expect("apply the CRD");
        self.wait_for_crd(&name).await;
        name
    }

    async fn wait_for_crd(&self, name: &str) {
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        eventually(&format!("the CRD {name} to be established"), Duration::from_secs(30), || async {
            let crd = api.get_opt(name).await.expect("read the CRD")?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }

    /// Creates the namespace `name` for one test, labelled [`NAMESPACE_LABEL`] and `labels`,
    /// for `cleanup` to delete; refuses first when foreign Enforce policies select it.
    pub async fn create_namespace(&self, cleanup: &mut Cleanup, name: &str, labels: &[(&str, &str)]) {
        let mut labels: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        labels.insert(NAMESPACE_LABEL.0.to_owned(), NAMESPACE_LABEL.1.to_owned());
        let mut selected = labels.clone();
        // What the API server adds: policies select on it.
        selected.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
        refuse_foreign_enforce_policies(&self.client, name, &selected).await;
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(labels), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        cleanup.add::<Namespace>(None, name);
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the namespace");
    }
}

/// Server-side applies `object` as [`MANAGER`], taking over conflicting fields.
pub async fn apply<K>(api: &Api<K>, name: &str, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object)).await.expect("apply");
}

/// A TrustedRegistryPolicy object named `name` with this `spec`.
pub fn policy(name: &str, spec: Value) -> Value {
    serde_json::json!({"apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
                       "metadata": {"name": name}, "spec": spec})
}

/// Server-side applies the TrustedRegistryPolicy `name` with `spec` as [`MANAGER`].
pub async fn apply_policy(client: &Client, name: &str, spec: Value) -> Result<TrustedRegistryPolicy, kube::Error> {
    Api::<TrustedRegistryPolicy>::all(client.clone())
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&policy(name, spec)))
        .await
}

/// Polls `f` every 250 ms until it gives a value; fails after `limit`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Panics, naming them, when Enforce policies other than the tests' own select a test namespace
/// with these labels: their denials would be mixed into every answer the tests check, and
/// Pods the tests expect to be admitted could be denied. Audit and Warn policies, and Enforce
/// policies that select other namespaces, are fine.
pub async fn refuse_foreign_enforce_policies(client: &Client, namespace: &str, labels: &BTreeMap<String, String>) {
    if let Some(refusal) = refusal(client, namespace, labels).await {
        panic!("{refusal}");
    }
}

/// Why the tests refuse to run in `namespace` with `labels`, if they do: see
/// [`refuse_foreign_enforce_policies`]. Without trustgate's CRD there are no policies.
pub async fn refusal(client: &Client, namespace: &str, labels: &BTreeMap<String, String>) -> Option<String> {
    let policies = match Api::<TrustedRegistryPolicy>::all(client.clone()).list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(error) => panic!("list TrustedRegistryPolicies: {error}"),
    };
    let names = enforcers_of(&policies, namespace, labels);
    (!names.is_empty()).then(|| {
        format!(
            "refusing to run: the cluster has Enforce TrustedRegistryPolicies that select the e2e \
             namespaces ({namespace}, labels {labels:?}): {names:?}. Their denials would mix with the \
             tests' own. Exclude the e2e namespaces from them (for example a namespaceSelector \
             requirement `{key} DoesNotExist`), switch them to Audit or Warn, or use another cluster.",
            key = NAMESPACE_LABEL.0,
        )
    })
}

/// The names of the Enforce policies in `policies` that apply to `namespace` with `labels`.
/// Policies trustgate cannot compile are left out: trustgate ignores them too.
pub fn enforcers_of(
    policies: &[TrustedRegistryPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let ns = PolicyNamespace { name: namespace, labels: Some(labels) };
    policies
        .iter()
        .filter_map(|p| CompiledPolicy::compile(p).ok())
        .filter(|p| p.mode() == PolicyMode::Enforce && p.applies_to(&ns))
        .map(|p| p.name().to_owned())
        .collect()
}

/// What a test made in the cluster; deleted, newest first, when this is dropped, pass or fail.
pub struct Cleanup {
    config: kube::Config,
    /// (resource, namespace, name), in the order they were made.
    objects: Vec<(ApiResource, Option<String>, String)>,
}

impl Cleanup {
    pub fn new(cluster: &Cluster) -> Cleanup {
        Cleanup { config: cluster.config.clone(), objects: Vec::new() }
    }

    /// Deletes the object `name` of kind `K` (in `namespace`, if it is namespaced) on drop.
    pub fn add<K: kube::Resource<DynamicType = ()>>(&mut self, namespace: Option<&str>, name: &str) {
        let object = (ApiResource::erase::<K>(&()), namespace.map(str::to_owned), name.to_owned());
        if !self.objects.contains(&object) {
            self.objects.push(object);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (config, objects) = (self.config.clone(), std::mem::take(&mut self.objects));
        // A runtime of its own: the test's may be unwinding.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let client = Client::try_from(config).expect("a client");
                let dp = DeleteParams::default();
                for (resource, namespace, name) in objects.iter().rev() {
                    let api: Api<DynamicObject> = match namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
                        None => Api::all_with(client.clone(), resource),
                    };
                    let _ = api.delete(name, &dp).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
