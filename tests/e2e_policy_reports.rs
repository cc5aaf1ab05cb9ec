//! End-to-end test of `serve --policy-reports` against a real API server (`just e2e`, with
//! KUBECONFIG set; `#[ignore]` otherwise): the leader's audit writes a `wgpolicyk8s.io/v1alpha2`
//! PolicyReport per namespace with findings, leaves it alone while nothing changes, and deletes
//! it once the namespace has no findings. The test applies a minimal PolicyReport CRD
//! (tests/fixtures/policyreport-crd.yaml) and trustgate's CRD, runs the binary on 127.0.0.1
//! with a Lease of its own, and asserts only about its own namespaces and policies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const MANAGER: &str = "trustgate-e2e";

async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        panic!("the e2e tests need a Kubernetes API server: set KUBECONFIG (`just e2e`)");
    }
    Client::try_default().await.expect("a client from KUBECONFIG")
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{:05x}", std::process::id() % 0x100, nanos % 0x100000)
}

async fn apply<K>(api: &Api<K>, name: &str, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object)).await.expect("apply");
}

async fn install_crd(client: &Client, yaml: &str) {
    let crd: CustomResourceDefinition = serde_saphyr::from_str(yaml).expect("a CRD");
    let name = crd.metadata.name.clone().unwrap();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd)).await.expect("apply the CRD");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let established = api.get_opt(&name).await.expect("read the CRD").is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "the CRD {name} is not established after 30s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("trustgate.dev", "v1alpha1", "TrustedRegistryPolicy"),
        "trustedregistrypolicies",
    )
}

fn report_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    )
}

/// The server under test and everything the test made; removed when the test ends, pass or fail.
struct Harness {
    child: Child,
    log: std::path::PathBuf,
    namespaces: Vec<String>,
    policies: Vec<String>,
    lease: String,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- trustgate log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (namespaces, policies, lease) =
            (std::mem::take(&mut self.namespaces), std::mem::take(&mut self.policies), self.lease.clone());
        // A runtime of its own: the test's may be unwinding.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let client = Client::try_default().await.expect("a client from KUBECONFIG");
                let dp = DeleteParams::default();
                for p in policies {
                    let _ = Api::<DynamicObject>::all_with(client.clone(), &policy_resource()).delete(&p, &dp).await;
                }
                let _ = Api::<Lease>::namespaced(client.clone(), "default").delete(&lease, &dp).await;
                for ns in namespaces {
                    let _ = Api::<Namespace>::all(client.clone()).delete(&ns, &dp).await;
                }
            });
        })
        .join();
    }
}

/// Polls `f` every 250 ms until it gives a value; fails after `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn the_audit_writes_policy_reports_keeps_them_steady_and_deletes_stale_ones() {
    let client = client().await;
    install_crd(&client, include_str!("fixtures/policyreport-crd.yaml")).await;
    let crd = Command::new(env!("CARGO_BIN_EXE_trustgate")).arg("crd").output().expect("trustgate crd");
    install_crd(&client, &String::from_utf8(crd.stdout).unwrap()).await;

    let suffix = unique_suffix();
    let (bad, good) = (format!("tg-polr-bad-{suffix}"), format!("tg-polr-good-{suffix}"));
    let (enforce, audit) = (format!("e2e-polr-enforce-{suffix}"), format!("e2e-polr-audit-{suffix}"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trustgate.log");
    let lease = format!("tg-polr-{suffix}");
    let child = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["serve", "--self-signed", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .arg("--ca-bundle-out")
        .arg(dir.path().join("ca.pem"))
        .args(["--policy-source", "kubernetes", "--policy-reports", "--audit-interval", "1s"])
        .args(["--lease-namespace", "default", "--lease-name", &lease, "--identity", &lease])
        .args(["--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start trustgate serve");
    let _harness = Harness {
        child,
        log,
        namespaces: vec![bad.clone(), good.clone()],
        policies: vec![enforce.clone(), audit.clone()],
        lease,
        _dir: dir,
    };

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&bad, &good] {
        apply(&namespaces, ns, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    }
    // Both policies apply to this test's namespaces only.
    let selector =
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [bad, good]}]});
    let policies: Api<DynamicObject> = Api::all_with(client.clone(), &policy_resource());
    let policy = |name: &str, spec: Value| json!({"apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy", "metadata": {"name": name}, "spec": spec});
    apply(
        &policies,
        &enforce,
        policy(&enforce, json!({"trustedRegistries": ["registry.my.com"], "namespaceSelector": selector})),
    )
    .await;
    apply(
        &policies,
        &audit,
        policy(
            &audit,
            json!({"mode": "Audit", "trustedRegistries": ["registry.my.com", "docker.io"], "tags": {"deny": ["latest"]},
                "namespaceSelector": selector}),
        ),
    )
    .await;
    let pods = |ns: &str| Api::<Pod>::namespaced(client.clone(), ns);
    let pod = |name: &str, image: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": image}]}})
    };
    apply(&pods(&bad), "untrusted", pod("untrusted", "nginx:1.25")).await;
    apply(&pods(&bad), "latest", pod("latest", "registry.my.com/app:latest")).await;
    apply(&pods(&good), "fine", pod("fine", "registry.my.com/app:1")).await;

    let reports = |ns: &str| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &report_resource());
    let report = eventually("the PolicyReport of the bad namespace", Duration::from_secs(60), || {
        let api = reports(&bad);
        async move { api.get_opt("trustgate").await.expect("read the report") }
    })
    .await;
    let labels = report.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("trustgate"));
    // Other policies in a shared cluster may add results of their own: look at ours only.
    let ours = |r: &&Value| r["policy"] == json!(enforce) || r["policy"] == json!(audit);
    let summary = &report.data["summary"];
    assert!(summary["fail"].as_i64() >= Some(1) && summary["warn"].as_i64() >= Some(1), "{summary}");
    assert_eq!((&summary["pass"], &summary["error"], &summary["skip"]), (&json!(0), &json!(0), &json!(0)));
    let results: Vec<&Value> = report.data["results"].as_array().expect("results").iter().filter(ours).collect();
    let brief: Vec<(String, String, String, String, String)> = results
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (r["resources"][0]["name"].as_str().unwrap().to_owned(), s("policy"), s("rule"), s("result"), s("severity"))
        })
        .collect();
    assert_eq!(
        brief,
        [
            ("latest".to_owned(), audit.clone(), "DeniedTag".to_owned(), "warn".to_owned(), "low".to_owned()),
            ("untrusted".to_owned(), enforce.clone(), "Untrusted".to_owned(), "fail".to_owned(), "high".to_owned()),
        ]
    );
    let untrusted = &results[1];
    assert_eq!(untrusted["source"], "trustgate");
    assert_eq!(untrusted["resources"][0]["kind"], "Pod");
    assert_eq!(untrusted["resources"][0]["apiVersion"], "v1");
    assert_eq!(untrusted["resources"][0]["namespace"], json!(bad));
    assert!(untrusted["resources"][0]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(
        untrusted["message"]
            .as_str()
            .unwrap()
            .contains("image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25")
    );
    assert!(untrusted["timestamp"]["seconds"].as_i64().unwrap() > 1_700_000_000);

    // Nothing changes: later audits (1s apart) leave the object alone, new timestamps or not.
    let version = report.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let again = reports(&bad).get("trustgate").await.unwrap();
    assert_eq!(again.metadata.resource_version, version, "an unchanged report is not rewritten");

    // By now audits have seen the good namespace's Pod: our policies find nothing there. A
    // report exists only if another policy of a shared cluster finds something (CI's foreign
    // Audit policy trusts only registry.k8s.io), and then it holds only that policy's results.
    if let Some(other) = reports(&good).get_opt("trustgate").await.unwrap() {
        let results = other.data["results"].as_array().cloned().unwrap_or_default();
        assert!(!results.is_empty(), "a report without results was written: {:?}", other.data);
        assert!(!results.iter().any(|r| ours(&r)), "our policies found something in {good}: {results:?}");
    }

    // The enforce policy now trusts docker.io too: the audit result is left; with the Pods gone,
    // the report goes.
    let trusting = json!({"trustedRegistries": ["registry.my.com", "docker.io"], "namespaceSelector": selector});
    apply(&policies, &enforce, policy(&enforce, trusting)).await;
    eventually("the report to drop the untrusted result", Duration::from_secs(30), || {
        let api = reports(&bad);
        let (enforce, audit) = (enforce.clone(), audit.clone());
        async move {
            let r = api.get("trustgate").await.unwrap();
            let results = r.data["results"].as_array().cloned().unwrap_or_default();
            let left: Vec<&Value> =
                results.iter().filter(|r| r["policy"] == json!(enforce) || r["policy"] == json!(audit)).collect();
            (left.len() == 1 && left[0]["policy"] == json!(audit)).then_some(())
        }
    })
    .await;
    // No workload left in the namespace: no findings, whatever policies the cluster has.
    for name in ["untrusted", "latest"] {
        pods(&bad).delete(name, &DeleteParams::default().grace_period(0)).await.unwrap();
    }
    eventually("the stale report to be deleted", Duration::from_secs(30), || {
        let api = reports(&bad);
        async move { api.get_opt("trustgate").await.unwrap().is_none().then_some(()) }
    })
    .await;
}
