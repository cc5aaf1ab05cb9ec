//! `trustgate check --cluster`: policies that are not installed, evaluated against the
//! workloads of a live cluster, to try a policy before applying it.
//!
//! The objects are listed and rolled up to their top-level owner by the audit's own code
//! ([`audit::list_workloads`], [`audit::top_level`]), so the what-if reports exactly what the
//! audit would once the policy is applied; the report is offline `check`'s. Only `list` and
//! `get` are used: a `view` identity is enough.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config};

use crate::cli::check::Report;
use trustgate_cluster::audit::{self, AuditError};
use trustgate_core::engine::PolicySet;
use trustgate_core::engine::snapshot::{NamespaceLabels, Snapshot};

use trustgate_cluster::pager::{PAGE_SIZE, PageError};

/// Which cluster, and which part of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// A kubeconfig file instead of `KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// A context instead of the kubeconfig's current one.
    pub context: Option<String>,
    /// Only this namespace; else every namespace.
    pub namespace: Option<String>,
}

/// Why the what-if could not run.
#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    #[error("cannot read the kubeconfig")]
    Kubeconfig(#[source] KubeconfigError),
    #[error("no kubeconfig found (KUBECONFIG, ~/.kube/config) and not running in a cluster")]
    NoConfig(#[source] kube::config::InClusterError),
    #[error("cannot configure the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("cannot read namespace {0}")]
    Namespace(String, #[source] kube::Error),
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(String),
    #[error("cannot list namespaces")]
    Namespaces(#[source] PageError),
    #[error(transparent)]
    List(#[from] AuditError),
}

/// A client for `target`, and how reports name the cluster (`source` of every object).
async fn client(target: &Target) -> Result<(Client, String), WhatIfError> {
    let options = KubeConfigOptions { context: target.context.clone(), cluster: None, user: None };
    let kubeconfig = match &target.kubeconfig {
        Some(path) => Some(Kubeconfig::read_from(path).map_err(WhatIfError::Kubeconfig)?),
        None => match Kubeconfig::read() {
            Ok(k) => Some(k),
            // No file at all: in a Pod, its ServiceAccount, unless a context was asked for.
            Err(KubeconfigError::FindPath | KubeconfigError::ReadConfig(..)) if target.context.is_none() => None,
            Err(e) => return Err(WhatIfError::Kubeconfig(e)),
        },
    };
    let (config, source) = match kubeconfig {
        Some(k) => {
            let context = options.context.clone().or_else(|| k.current_context.clone()).unwrap_or_default();
            let config = Config::from_custom_kubeconfig(k, &options).await.map_err(WhatIfError::Kubeconfig)?;
            (config, format!("cluster:{context}"))
        }
        None => (Config::incluster().map_err(WhatIfError::NoConfig)?, "cluster:in-cluster".to_owned()),
    };
    Ok((Client::try_from(config).map_err(WhatIfError::Client)?, source))
}

/// Labels of the namespaces in scope, or `None` when this identity may not read them
/// (policies with a namespaceSelector then apply everywhere, as admission does for a
/// namespace it has not seen: the what-if errs on the side of reporting).
async fn namespace_labels(client: &Client, only: Option<&str>) -> Result<Option<NamespaceLabels>, WhatIfError> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Namespace"), "namespaces");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let forbidden = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 403);
    let mut labels = NamespaceLabels::new();
    let mut add = |o: &DynamicObject| {
        if let Some(name) = &o.metadata.name {
            labels.insert(name.clone(), o.metadata.labels.clone().unwrap_or_default());
        }
    };
    match only {
        Some(ns) => match api.get_opt(ns).await {
            Ok(Some(o)) => add(&o),
            Ok(None) => return Err(WhatIfError::NoSuchNamespace(ns.to_owned())),
            Err(e) if forbidden(&e) => return Ok(None),
            Err(e) => return Err(WhatIfError::Namespace(ns.to_owned(), e)),
        },
        None => {
            // No page timeout, here or for the workloads: unlike the leader, a command has
            // someone to interrupt it, and a slow cluster is still worth waiting for.
            let params = ListParams::default().limit(PAGE_SIZE);
            let listed = trustgate_cluster::pager::each_page(&api, params, None, |page| page.iter().for_each(&mut add));
            match listed.await {
                Ok(()) => {}
                Err(PageError::Api(e)) if forbidden(&e) => return Ok(None),
                Err(e) => return Err(WhatIfError::Namespaces(e)),
            }
        }
    }
    Ok(Some(labels))
}

/// Prints how far the listing got, on one line of a terminal's stderr.
struct Progress {
    terminal: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Progress { terminal: std::io::stderr().is_terminal(), shown: false }
    }

    fn update(&mut self, plural: &str, listed: u64) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            // \r and "erase line": the next update overwrites this one.
            let _ = write!(err, "\r\x1b[2Klisting {plural}... {listed} objects so far");
            let _ = err.flush();
            self.shown = true;
        }
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// Evaluates `policies` against every workload `client` can list (in `namespace` only, if
/// given), each reported as its top-level owner.
pub async fn check_client(
    client: &Client,
    source: &str,
    policies: PolicySet,
    namespace: Option<&str>,
    now: Timestamp,
) -> Result<Report, WhatIfError> {
    let namespaces = namespace_labels(client, namespace).await?;
    if namespaces.is_none() {
        eprintln!(
            "warning: this identity cannot read Namespace labels; policies with a namespaceSelector are applied to every namespace"
        );
    }
    // An empty map, not `None`: every namespace is then one whose labels are unknown, which
    // selector-bound policies apply to (`None` would mean "no labels", which they skip).
    let snapshot = Snapshot { policies, namespaces: Some(namespaces.unwrap_or_default()) };
    let mut report = Report::default();
    let mut progress = Progress::new();
    let mut listed = 0;
    let mut unreadable = 0;
    let result = audit::list_workloads(client, namespace, PAGE_SIZE, None, |kind, page| {
        listed += page.len() as u64;
        progress.update(kind.plural, listed);
        for object in page {
            match audit::top_level(kind.kind, &object.metadata, &object.data) {
                Ok(Some(workload)) => {
                    let ns = workload.namespace.as_deref().unwrap_or_default();
                    report.add(
                        &snapshot.policies,
                        &workload,
                        &snapshot.namespace(ns),
                        source.to_owned(),
                        trustgate_manifest::workloads::Lines::default(),
                        now,
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    unreadable += 1;
                    eprintln!("warning: skipped {e}: {}", e.source);
                }
            }
        }
    })
    .await;
    progress.clear();
    result?;
    if unreadable > 0 {
        eprintln!("warning: {unreadable} objects could not be read and were skipped");
    }
    Ok(report)
}

/// `check --cluster`: connects to `target` and evaluates `policies` there.
pub(crate) fn check(target: &Target, policies: PolicySet) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (client, source) = client(target).await?;
        Ok(check_client(&client, &source, policies, target.namespace.as_deref(), Timestamp::now()).await?)
    })
}
