//! End-to-end test of `serve --policy-reports` against a real API server (`just e2e`, with
//! KUBECONFIG set; `#[ignore]` otherwise): the leader's audit writes a `wgpolicyk8s.io/v1alpha2`
//! PolicyReport per namespace with findings, leaves it alone while nothing changes, and deletes
//! it once the namespace has no findings. The test applies a minimal PolicyReport CRD
//! (tests/fixtures/policyreport-crd.yaml) and trustgate's CRD, runs the binary on 127.0.0.1
//! with a Lease of its own, and asserts only about its own namespaces and policies.

mod e2e_support;

use std::time::Duration;

use e2e_support::cluster::{Cleanup, Cluster, apply, apply_policy, eventually};
use e2e_support::serve::{LEASE_NAMESPACE, Serve, ServeOptions};
use e2e_support::unique_suffix;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use trustgate_core::api::TrustedRegistryPolicy;

fn report_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    )
}

/// The cluster of KUBECONFIG with the PolicyReport and trustgate CRDs, and what cleans up after
/// the test.
async fn setup() -> (Cluster, Cleanup) {
    let cluster = Cluster::from_env().await;
    cluster.install_crd(include_str!("fixtures/policyreport-crd.yaml")).await;
    cluster.install_trustgate_crd().await;
    let cleanup = Cleanup::new(&cluster);
    (cluster, cleanup)
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn the_audit_writes_policy_reports_keeps_them_steady_and_deletes_stale_ones() {
    let (cluster, mut cleanup) = setup().await;
    let client = cluster.client.clone();

    let suffix = unique_suffix();
    let (bad, good) = (format!("tg-polr-bad-{suffix}"), format!("tg-polr-good-{suffix}"));
    let (enforce, audit) = (format!("e2e-polr-enforce-{suffix}"), format!("e2e-polr-audit-{suffix}"));
    let lease = format!("tg-polr-{suffix}");
    cleanup.add::<Lease>(Some(LEASE_NAMESPACE), &lease);
    let options = ServeOptions {
        identity: &lease,
        lease: &lease,
        audit_interval: "1s",
        log_filter: "info",
        args: &["--policy-reports"],
    };
    let mut serve = Serve::start(&cluster, options);
    serve.wait_ready().await;

    for ns in [&bad, &good] {
        cluster.create_namespace(&mut cleanup, ns, &[]).await;
    }
    // Both policies apply to this test's namespaces only.
    let selector =
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [bad, good]}]});
    cleanup.add::<TrustedRegistryPolicy>(None, &enforce);
    cleanup.add::<TrustedRegistryPolicy>(None, &audit);
    let spec = json!({"trustedRegistries": ["registry.my.com"], "namespaceSelector": selector});
    apply_policy(&client, &enforce, spec).await.expect("apply");
    let spec = json!({"mode": "Audit", "trustedRegistries": ["registry.my.com", "docker.io"],
                      "tags": {"deny": ["latest"]}, "namespaceSelector": selector});
    apply_policy(&client, &audit, spec).await.expect("apply");
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
    apply_policy(&client, &enforce, trusting).await.expect("apply");
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

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run `just e2e` with KUBECONFIG set"]
async fn two_installations_on_one_cluster_each_keep_and_delete_only_their_own_reports() {
    let (cluster, mut cleanup) = setup().await;
    let client = cluster.client.clone();

    let suffix = unique_suffix();
    let ns = format!("tg-polr-two-{suffix}");
    let policy = format!("e2e-polr-two-{suffix}");
    let (first, second) = (format!("tg-two-a-{suffix}"), format!("tg-two-b-{suffix}"));
    let start = |name: &str| {
        let args = ["--policy-reports", "--instance", name];
        let options =
            ServeOptions { identity: name, lease: name, audit_interval: "1s", log_filter: "info", args: &args };
        Serve::start(&cluster, options)
    };
    let mut a = start(&first);
    let mut b = start(&second);
    for lease in [&first, &second] {
        cleanup.add::<Lease>(Some(LEASE_NAMESPACE), lease);
    }
    a.wait_ready().await;
    b.wait_ready().await;

    cluster.create_namespace(&mut cleanup, &ns, &[]).await;
    cleanup.add::<TrustedRegistryPolicy>(None, &policy);
    let selector =
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]});
    apply_policy(&client, &policy, json!({"trustedRegistries": ["registry.my.com"], "namespaceSelector": selector}))
        .await
        .expect("apply");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "untrusted"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]}});
    apply(&Api::<Pod>::namespaced(client.clone(), &ns), "untrusted", pod).await;

    // Each installation writes its own report, named and labelled after it.
    let reports = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &report_resource());
    let mut uids = Vec::new();
    for name in [&first, &second] {
        let report = eventually(&format!("the report of {name}"), Duration::from_secs(60), || {
            let (api, name) = (reports.clone(), name.clone());
            async move { api.get_opt(&name).await.expect("read the report") }
        })
        .await;
        let labels = report.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app.kubernetes.io/instance"), Some(name), "{labels:?}");
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("trustgate"));
        uids.push(report.metadata.uid.clone());
    }
    // Audits of both, a second apart: neither deletes or rewrites the other's report.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, uid) in [&first, &second].into_iter().zip(&uids) {
        let report = reports.get(name).await.unwrap_or_else(|e| panic!("{name}'s report is gone: {e}{}", a.log()));
        assert_eq!(&report.metadata.uid, uid, "{name}'s report was deleted and written again");
    }
    // One installation goes: the other's audits go on and leave its report alone.
    b.terminate();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let kept = reports.get(&second).await.unwrap_or_else(|e| panic!("the other installation deleted it: {e}"));
    assert_eq!(kept.metadata.uid, uids[1]);
    // Its own it still deletes: with the Pod gone (so that no policy, ours or another of a
    // shared cluster, finds anything in the namespace), the first installation's report goes.
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("untrusted", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the Pod");
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while reports.get_opt(&first).await.expect("read the report").is_some() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    if gone.is_err() {
        let left = reports.get_opt(&first).await.ok().flatten().map(|r| r.data);
        panic!("the first installation's report did not go within 30s: {left:?}\n{}", a.log());
    }
    assert!(reports.get_opt(&second).await.unwrap().is_some(), "only its own report went");
    reports.delete(&second, &DeleteParams::default()).await.expect("delete the stopped installation's report");
}
