//! End-to-end test of the request-body budget (docs/operations.md, "Request-body memory"):
//! while a hostile client keeps hundreds of stalled and trickling 4 MiB uploads open against
//! the webhook, reconnecting whenever one ends, every review the API server sends still gets
//! the policy's answer, and the webhook neither crashes nor restarts.
//!
//! The attacker is tools/body-attacker (`cargo build -p trustgate-body-attacker`). With `TRUSTGATE_E2E_MODE=in-cluster`
//! (`.ci/e2e.sh node`) it runs as two Pods on the kit's node (image
//! `trustgate-body-attacker:e2e`, loaded by the script) against every replica of the chart's
//! webhook, with the chart's resource limits: no container may restart (an OOM kill is a
//! restart). Locally it runs as a process from 127.0.0.2 against the test's own `serve`, whose
//! resident memory must stay below the chart's memory limit.

mod e2e_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::chart::release;
use e2e_support::harness::{Harness, POLICY_MESSAGE, denial};
use e2e_support::{Mode, mode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(45);
/// Uploads the attacker keeps open against each webhook replica, per attacker.
const CONNECTIONS: usize = 100;
/// The chart's memory limit (charts/trustgate/values.yaml, resources.limits.memory).
const CHART_MEMORY_LIMIT_KIB: u64 = 256 * 1024;
const ATTACKER_IMAGE: &str = "trustgate-body-attacker:e2e";

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": image}]}})
}

/// What one attacker printed when it stopped.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tally {
    connects: u64,
    body_bytes: u64,
    most_open: u64,
}

/// The attacker binary, built beside this test (target/<profile>/body-attacker).
fn attacker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("body-attacker");
    assert!(path.exists(), "{} is missing: build it first (cargo build -p trustgate-body-attacker)", path.display());
    path
}

/// The attackers, wherever they run.
enum Attackers {
    Local(Vec<Child>),
    Pods(Vec<String>),
}

impl Attackers {
    /// Starts a stalling and a trickling attacker against `targets`.
    async fn start(harness: &Harness, targets: &[String]) -> Attackers {
        let seconds = ATTACK.as_secs().to_string();
        let connections = CONNECTIONS.to_string();
        let variants: [&[&str]; 2] = [&[], &["--trickle"]];
        match mode() {
            Mode::Local => Attackers::Local(
                variants
                    .iter()
                    .map(|extra| {
                        Command::new(attacker_binary())
                            .args(["--source", "127.0.0.2", "--connections", &connections, "--seconds", &seconds])
                            .args(*extra)
                            .args(targets)
                            .stdout(Stdio::piped())
                            .spawn()
                            .expect("start the attacker")
                    })
                    .collect(),
            ),
            Mode::InCluster => {
                let mut names = Vec::new();
                for (i, extra) in variants.iter().enumerate() {
                    let name = format!("body-attacker-{i}");
                    let mut args = vec!["--connections", &connections, "--seconds", &seconds];
                    args.extend(*extra);
                    args.extend(targets.iter().map(String::as_str));
                    let object = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                                 "containers": [{"name": "attacker", "image": ATTACKER_IMAGE,
                                                 "imagePullPolicy": "Never", "args": args}]}});
                    harness.create(&object).await.expect("the attacker Pod is admitted (its image is trusted)");
                    names.push(name);
                }
                let pods: Api<Pod> = Api::namespaced(harness.client.clone(), &harness.namespace);
                for name in &names {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let phase = pods.get(name).await.ok().and_then(|p| p.status?.phase);
                        if phase.as_deref() == Some("Running") {
                            break;
                        }
                        assert!(Instant::now() < deadline, "attacker {name} not Running in 60 s: {phase:?}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                Attackers::Pods(names)
            }
        }
    }

    /// Waits for the attackers to stop; returns what each did.
    async fn finish(self, harness: &Harness) -> Vec<Tally> {
        let parse = |out: &str| -> Tally {
            let line = out.lines().last().unwrap_or_default();
            serde_json::from_str(line).unwrap_or_else(|e| panic!("attacker output {out:?}: {e}"))
        };
        match self {
            Attackers::Local(children) => children
                .into_iter()
                .map(|child| {
                    let out = child.wait_with_output().expect("the attacker runs");
                    assert!(out.status.success(), "attacker failed: {:?}", out.status);
                    parse(&String::from_utf8_lossy(&out.stdout))
                })
                .collect(),
            Attackers::Pods(names) => {
                let pods: Api<Pod> = Api::namespaced(harness.client.clone(), &harness.namespace);
                let mut tallies = Vec::new();
                for name in names {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let phase = pods.get(&name).await.ok().and_then(|p| p.status?.phase);
                        if phase.as_deref() == Some("Succeeded") {
                            break;
                        }
                        assert!(Instant::now() < deadline, "attacker {name} did not finish: {phase:?}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let log = pods.logs(&name, &LogParams::default()).await.expect("the attacker's log");
                    tallies.push(parse(&log));
                }
                tallies
            }
        }
    }
}

/// The webhook Pods of the chart: name → (pod IP, restart count of every container).
async fn webhook_pods(harness: &Harness) -> BTreeMap<String, (String, i32)> {
    let (namespace, name) = release();
    let pods: Api<Pod> = Api::namespaced(harness.client.clone(), &namespace);
    let selector = format!("app.kubernetes.io/instance={name}");
    let list = pods.list(&ListParams::default().labels(&selector)).await.expect("list the webhook Pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let restarts = status.container_statuses.iter().flatten().map(|c| c.restart_count).sum();
            (p.name_any(), (status.pod_ip.unwrap_or_default(), restarts))
        })
        .collect()
}

/// The body-budget counters of every webhook replica: (waits, refusals) summed.
async fn budget_counters(harness: &mut Harness) -> (f64, f64) {
    let sum = |text: &str, family: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(family) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let texts: Vec<String> = match harness.local_webhook() {
        Some(serve) => serve.metrics().into_iter().collect(),
        None => {
            let (namespace, _) = release();
            let mut texts = Vec::new();
            for name in webhook_pods(harness).await.keys() {
                // Through the API server's proxy to the Pod's admin port.
                let request =
                    http::Request::get(format!("/api/v1/namespaces/{namespace}/pods/{name}:8080/proxy/metrics"))
                        .body(Vec::new())
                        .unwrap();
                if let Ok(text) = harness.client.request_text(request).await {
                    texts.push(text);
                }
            }
            texts
        }
    };
    let waits = texts.iter().map(|t| sum(t, "trustgate_admission_body_budget_waits_total")).sum();
    let refusals = texts.iter().map(|t| sum(t, "trustgate_admission_body_budget_refusals_total")).sum();
    (waits, refusals)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run with `just e2e`"]
async fn hostile_uploads_do_not_stop_admission() {
    let mut harness = Harness::start("bodies").await;
    harness
        .apply_policy(
            "registries",
            json!({"trustedRegistries": ["registry.my.com", "docker.io/library/trustgate-body-attacker"]}),
        )
        .await;
    let denied = pod("denied", "nginx:1.27");
    let allowed = pod("allowed", "registry.my.com/app:1");
    harness.wait_until_denied(&denied).await;

    let (targets, restarts_before, serve_pid) = match harness.local_webhook() {
        Some(serve) => (vec![format!("127.0.0.1:{}", serve.port)], BTreeMap::new(), Some(serve.pid())),
        None => {
            let pods = webhook_pods(&harness).await;
            assert!(!pods.is_empty(), "no webhook Pods of the release {:?}", release());
            let targets = pods.values().map(|(ip, _)| format!("{ip}:8443")).collect();
            (targets, pods, None)
        }
    };
    let (waits_before, _) = budget_counters(&mut harness).await;
    let attackers = Attackers::start(&harness, &targets).await;
    // Give the uploads a moment to fill the budget.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // `kubectl run --dry-run=server`, one after another, for as long as the attack lasts.
    let started = Instant::now();
    let (mut answered, mut wrong, mut peak_rss) = (0, Vec::new(), 0);
    while started.elapsed() < ATTACK - Duration::from_secs(8) {
        let denial_answer = harness.create_with(&denied, true).await;
        match denial(&denial_answer) {
            Some(message) if message.contains(POLICY_MESSAGE) => answered += 1,
            _ => wrong.push(format!("{:?}: {denial_answer:?}", started.elapsed())),
        }
        match harness.create_with(&allowed, true).await {
            Ok(_) => answered += 1,
            Err(error) => wrong.push(format!("{:?}: {error}", started.elapsed())),
        }
        if let Some(rss) = serve_pid.and_then(rss_kib) {
            peak_rss = peak_rss.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (waits_during, _) = budget_counters(&mut harness).await;
    let tallies = attackers.finish(&harness).await;
    eprintln!(
        "attack: {tallies:?}; {answered} reviews answered as the policy says, {} not; budget waits {waits_before} -> {waits_during}; peak RSS {peak_rss} KiB",
        wrong.len()
    );

    assert!(wrong.is_empty(), "reviews during the attack without the policy's answer:\n{}", wrong.join("\n"));
    assert!(answered >= 20, "only {answered} reviews made during the attack");
    let expected_open = (CONNECTIONS * targets.len()) as u64;
    for tally in &tallies {
        assert!(tally.most_open >= expected_open * 9 / 10, "the attacker held too few uploads open: {tally:?}");
        assert!(tally.connects >= expected_open, "{tally:?}");
    }
    let pushed: u64 = tallies.iter().map(|t| t.body_bytes).sum();
    assert!(
        pushed > 16 * 1024 * 1024,
        "the attackers pushed only {pushed} bytes: more than a source's budget is the point"
    );
    assert!(waits_during > waits_before, "the uploads never waited on the budget ({waits_before} -> {waits_during})");

    match serve_pid {
        Some(_) => {
            let serve = harness.local_webhook().unwrap();
            assert!(!serve.exited(), "the webhook exited under the attack");
            assert!(
                peak_rss < CHART_MEMORY_LIMIT_KIB,
                "peak RSS {peak_rss} KiB: above the chart's memory limit, the container would be OOM-killed"
            );
        }
        None => {
            let after = webhook_pods(&harness).await;
            assert_eq!(
                after.keys().collect::<Vec<_>>(),
                restarts_before.keys().collect::<Vec<_>>(),
                "the webhook Pods changed during the attack"
            );
            for (name, (_, restarts)) in &after {
                assert_eq!(*restarts, restarts_before[name].1, "webhook Pod {name} restarted during the attack");
            }
        }
    }
    // Still answering once the attackers are gone.
    let after = harness.create_with(&denied, true).await;
    assert!(denial(&after).is_some_and(|m| m.contains(POLICY_MESSAGE)), "{after:?}");
}
