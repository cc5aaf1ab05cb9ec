//! Disruption of the API server, end to end, on the kit's LOCAL cluster (`../shared/k8s`):
//! kube-apiserver restarted, etcd restarted, and the API server frozen (SIGSTOP) for 60 s.
//! `just e2e-disruption` (or `.ci/e2e-disruption.sh`) starts a cluster with its own state
//! directory and ports, runs these tests one at a time, and stops it.
//!
//! The tests signal the cluster's processes, so they only run when told where that cluster is:
//! `TRUSTGATE_E2E_K8S` (the kit's folder) and `TRUSTGATE_E2E_K8S_STATE` (its state root, as
//! `TRUSTGATE_K8S_STATE` was for `up`). Without them they print why and pass without doing
//! anything. Processes are found only through the kit's pid files, each checked against
//! `/proc/PID/exe`; the ports of `up` are read from the cluster's own `run/config`.
//!
//! Each test runs TWO webhooks (`trustgate serve --policy-source kubernetes` on 127.0.0.1, the
//! kit's webhook certificate; started, like the namespace and the cleanup, by the harness in
//! tests/e2e_support) that share one Lease, and asserts:
//! - admission keeps answering from the last snapshot throughout: AdmissionReviews are sent
//!   straight to both webhooks over HTTPS all along (the API server cannot send any while it is
//!   down) and every one gets HTTP 200 with the right decision;
//! - the watchers resume by themselves: a policy created or changed, and a namespace relabelled,
//!   as soon as the API server takes writes again are in force in both webhooks within 10 s;
//! - status writes resume (the policy's `status.observedGeneration` catches up) and the Lease is
//!   renewed again;
//! - never two leaders: at no sampled moment do both webhooks' `trustgate_leader` gauges read 1,
//!   and every `holderIdentity` read names one of them.
//!
//! Each prints a `disruption:` line with what it measured.

mod e2e_support;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::cluster::{Cleanup, Cluster, apply_policy};
use e2e_support::serve::{LEASE_NAMESPACE, Serve, ServeOptions, http_get};
use e2e_support::unique_suffix;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use trustgate_core::api::TrustedRegistryPolicy;

/// Trusted by the base policy and by the late one: admitted throughout.
const TRUSTED: &str = "registry.my.com/team/app:1";
/// Trusted by nothing: denied throughout.
const UNTRUSTED: &str = "docker.io/library/nginx:1.25";
/// Trusted by the base policy only: admitted until the late policy is in force.
const PROBE: &str = "registry.my.com/other/app:1";
/// The label that makes the late policy select the test's namespace.
const LATE_LABEL: &str = "trustgate.dev/disruption";
/// How soon after the API server takes writes again a change must be in force.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(10);
/// How long the status and the Lease may take to catch up after recovery (the leader may have
/// stepped down during the outage and takes the lease again at its next round).
const CATCH_UP_WITHIN: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------- the kit and its processes

/// The kit's LOCAL cluster the tests may disrupt.
#[derive(Clone)]
struct Kit {
    /// The kit's folder (`up`, `down`).
    dir: PathBuf,
    /// `TRUSTGATE_K8S_STATE` of the cluster.
    root: PathBuf,
    /// `<root>/local`.
    local: PathBuf,
    /// `K8S_*_PORT` as the cluster was started with, from `run/config`.
    ports: Vec<(&'static str, String)>,
}

impl Kit {
    /// The kit named by the environment, or `None` (with the reason printed) to skip.
    fn from_env(test: &str) -> Option<Kit> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (Some(dir), Some(root)) = (var("TRUSTGATE_E2E_K8S"), var("TRUSTGATE_E2E_K8S_STATE")) else {
            eprintln!(
                "skipping {test}: it restarts and freezes a cluster's processes, so it needs the kit's folder in \
                 TRUSTGATE_E2E_K8S and the cluster's state root in TRUSTGATE_E2E_K8S_STATE \
                 (`just e2e-disruption` starts a cluster of its own and sets both)"
            );
            return None;
        };
        let local = root.join("local");
        let config = std::fs::read_to_string(local.join("run/config")).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; start the cluster first: TRUSTGATE_K8S_STATE={} {}/up",
                local.join("run/config").display(),
                root.display(),
                dir.display()
            )
        });
        // "api=7443 etcd=7379 etcd-peer=7380 kcm=11257": `up` with other ports would restart
        // the cluster on them.
        let ports = config
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| {
                let var = match k {
                    "api" => "K8S_API_PORT",
                    "etcd" => "K8S_ETCD_PORT",
                    "etcd-peer" => "K8S_ETCD_PEER_PORT",
                    "kcm" => "K8S_KCM_PORT",
                    _ => return None,
                };
                Some((var, v.to_owned()))
            })
            .collect::<Vec<_>>();
        assert_eq!(ports.len(), 4, "unexpected {}: {config:?}", local.join("run/config").display());
        Some(Kit { dir, root, local, ports })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.local.join("kubeconfig")
    }

    /// `up`: starts what is missing (the kit then restarts the whole cluster, data kept) or
    /// reuses the healthy cluster.
    /// A component the kit just stopped may still hold its port for a moment, and `up` then
    /// refuses to start it ("already in use"): try again a few times, as an operator would.
    fn up(&self) -> Duration {
        let start = Instant::now();
        for attempt in 1..=5 {
            let output = Command::new(self.dir.join("up"))
                .env("TRUSTGATE_K8S_STATE", &self.root)
                .envs(self.ports.iter().map(|(k, v)| (*k, v.as_str())))
                .env_remove("FRESH")
                .stdin(Stdio::null())
                .output()
                .expect("run the kit's up");
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                return start.elapsed();
            }
            assert!(attempt < 5 && stderr.contains("already in use"), "`up` failed:\n{stderr}");
            eprintln!("disruption: `up` found a port still in use (attempt {attempt}); trying again in 2s");
            std::thread::sleep(Duration::from_secs(2));
        }
        unreachable!("the last attempt returns or fails above")
    }

    /// The pid of a running component, checked as the kit checks it: `/proc/PID/exe` is the
    /// binary recorded beside the pid, and the process is no zombie.
    fn pid(&self, component: &str) -> Option<u32> {
        let record = std::fs::read_to_string(self.local.join("run").join(format!("{component}.pid"))).ok()?;
        let mut lines = record.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let exe = lines.next()?.trim().to_owned();
        let actual = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let actual = actual.to_string_lossy();
        if actual.trim_end_matches(" (deleted)") != exe {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
        (!zombie).then_some(pid)
    }

    fn running(&self, component: &str) -> u32 {
        self.pid(component).unwrap_or_else(|| panic!("{component} of {} is not running", self.local.display()))
    }

    fn signal(&self, pid: u32, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits until `pid` has exited (or is a zombie of ours).
    fn wait_gone(&self, component: &str, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.pid(component) == Some(pid) {
            assert!(Instant::now() < deadline, "{component} (pid {pid}) did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a component again with the command line it ran with, as the kit's `start` does
    /// (own session, stdin closed, output appended to its log, pid recorded for `down`): the kit
    /// itself restarts only whole clusters.
    fn respawn(&self, component: &str, cmdline: &[String]) -> u32 {
        let (exe, args) = cmdline.split_first().expect("a command line");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.local.join("logs").join(format!("{component}.log")))
            .expect("the component's log");
        let child = Command::new("setsid")
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the component again");
        // `setsid` execs the binary in place (the child leads no process group), so the pid is
        // the component's, as in the kit's own pid files.
        let pid = child.id();
        std::fs::write(self.local.join("run").join(format!("{component}.pid")), format!("{pid}\n{exe}\n"))
            .expect("record the pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pid(component) != Some(pid) {
            assert!(Instant::now() < deadline, "{component} did not start again");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not waited for: it outlives the test, as the kit's daemons do.
        std::mem::forget(child);
        pid
    }

    fn cmdline(pid: u32) -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the command line");
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }
}

/// Undoes a disruption if the test stops half-way: a frozen API server is thawed and whatever
/// is missing is started again, so that the next test (and other engineers' waits) are not
/// stuck behind it.
struct Restore<'a> {
    kit: &'a Kit,
    frozen: Option<u32>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.frozen.take() {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
        if std::thread::panicking() {
            let _ = Command::new(self.kit.dir.join("up"))
                .env("TRUSTGATE_K8S_STATE", &self.kit.root)
                .envs(self.kit.ports.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------- reviews sent straight to the webhooks

/// Sends AdmissionReviews over HTTPS, each on a new connection, as a client of the webhook.
#[derive(Clone)]
struct ReviewClient {
    tls: Arc<rustls::ClientConfig>,
}

impl ReviewClient {
    fn new(ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("the webhooks' CA")).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ReviewClient { tls: Arc::new(tls) }
    }

    /// Whether the webhook on `port` admits a Pod running `image` in `namespace`.
    fn admits(&self, port: u16, namespace: &str, image: &str) -> Result<bool, String> {
        let uid =
            format!("{:032x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
                         "spec": {"containers": [{"name": "app", "image": image}]}});
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "probe", "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "e2e-disruption"}, "object": pod, "dryRun": true}});
        let body = serde_json::to_vec(&review).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let connection = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        let head = format!(
            "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // One write: a body sent apart from its head waits for the delayed ACK (Nagle).
        let request = [head.as_bytes(), &body].concat();
        tls.write_all(&request).and_then(|()| tls.flush()).map_err(|e| format!("send: {e}"))?;
        let mut response = Vec::new();
        if let Err(e) = tls.read_to_end(&mut response) {
            // A peer that closes without close_notify after a complete response is fine.
            if e.kind() != std::io::ErrorKind::UnexpectedEof || response.is_empty() {
                return Err(format!("read: {e}"));
            }
        }
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            return Err(format!("HTTP {status}: {body}"));
        }
        let answer: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        if answer["response"]["uid"] != json!(uid) {
            return Err(format!("answer for another uid: {body}"));
        }
        answer["response"]["allowed"].as_bool().ok_or_else(|| format!("no decision: {body}"))
    }
}

/// What the reviewer saw.
#[derive(Debug, Default)]
struct ReviewStats {
    answered: u64,
    /// Transport errors, non-200 answers and wrong decisions (the first few).
    failures: Vec<String>,
    failed: u64,
    slowest: Duration,
}

/// Sends a trusted and an untrusted Pod to every webhook, round after round, until stopped.
fn start_reviewer(
    client: ReviewClient,
    ports: Vec<u16>,
    namespace: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<ReviewStats> {
    std::thread::spawn(move || {
        let mut stats = ReviewStats::default();
        while !stop.load(Ordering::Relaxed) {
            for &port in &ports {
                for (image, want) in [(TRUSTED, true), (UNTRUSTED, false)] {
                    let start = Instant::now();
                    let result = client.admits(port, &namespace, image);
                    stats.slowest = stats.slowest.max(start.elapsed());
                    match result {
                        Ok(allowed) if allowed == want => stats.answered += 1,
                        other => {
                            stats.failed += 1;
                            if stats.failures.len() < 10 {
                                stats.failures.push(format!("port {port}, {image}: {other:?}"));
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stats
    })
}

// ---------------------------------------------------------------- leadership samples

#[derive(Debug, Default)]
struct LeaderSamples {
    /// (when, leader gauge of each webhook; None when its /metrics did not answer).
    gauges: Vec<(Instant, Vec<Option<f64>>)>,
    /// holderIdentity of every Lease read that succeeded, and when it was sent.
    holders: Vec<(Instant, Option<String>)>,
}

impl LeaderSamples {
    /// Instants at which more than one webhook said it leads.
    fn two_leaders(&self) -> Vec<&(Instant, Vec<Option<f64>>)> {
        self.gauges.iter().filter(|(_, g)| g.iter().filter(|v| **v == Some(1.0)).count() > 1).collect()
    }

    /// The longest stretch during which no webhook led.
    fn longest_without_leader(&self) -> Duration {
        let (mut longest, mut since) = (Duration::ZERO, None);
        for (at, gauges) in &self.gauges {
            if gauges.contains(&Some(1.0)) {
                since = None;
            } else {
                let start = *since.get_or_insert(*at);
                longest = longest.max(at.duration_since(start));
            }
        }
        longest
    }

    /// The longest time between two Lease reads that succeeded: how long the API server did
    /// not answer.
    fn longest_without_api(&self) -> Duration {
        self.holders.windows(2).map(|w| w[1].0.duration_since(w[0].0)).max().unwrap_or_default()
    }
}

/// Reads both leader gauges every 200 ms until stopped.
fn start_gauge_sampler(
    admin_ports: Vec<u16>,
    samples: Arc<Mutex<LeaderSamples>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            let gauges = admin_ports
                .iter()
                .map(|&port| {
                    let (_, text) = http_get(port, "/metrics")?;
                    text.lines().find_map(|l| l.strip_prefix("trustgate_leader ")?.trim().parse().ok())
                })
                .collect();
            samples.lock().unwrap().gauges.push((at, gauges));
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

// ---------------------------------------------------------------- the harness

/// One test's cluster objects and webhooks; removed when dropped.
struct Harness {
    kit: Kit,
    client: Client,
    namespace: String,
    lease: String,
    reviews: ReviewClient,
    // Dropped in this order: the webhooks stop (and give the Lease up) before the Lease, the
    // policies and the namespace are deleted.
    webhooks: Vec<Serve>,
    cleanup: Cleanup,
}

/// Retries `f` every 100 ms (each try cut at 2 s) until it succeeds; returns when it did.
async fn until_ok<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> (T, Instant) {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), f()).await {
            Ok(Ok(v)) => return (v, Instant::now()),
            Ok(Err(e)) => assert!(start.elapsed() < within, "{what}: still failing after {within:?}: {e:?}"),
            Err(_) => assert!(start.elapsed() < within, "{what}: still no answer after {within:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Harness {
    async fn start(kit: Kit, test: &str) -> Harness {
        kit.up();
        let cluster = Cluster::from_kubeconfig(&kit.kubeconfig()).await;
        cluster.install_trustgate_crd().await;
        let mut cleanup = Cleanup::new(&cluster);
        let namespace = format!("tg-dis-{test}-{}", unique_suffix());
        cluster.create_namespace(&mut cleanup, &namespace, &[]).await;
        let lease = format!("trustgate-e2e-{namespace}");
        cleanup.add::<Lease>(Some(LEASE_NAMESPACE), &lease);
        let pki = cluster.kit_pki().expect("the kit's pki/ beside its kubeconfig");
        let reviews = ReviewClient::new(&std::fs::read_to_string(pki.join("ca.crt")).expect("the kit's CA"));
        let client = cluster.client.clone();
        let mut h = Harness { kit, client, namespace, lease, reviews, webhooks: Vec::new(), cleanup };
        let base = json!({"trustedRegistries": ["registry.my.com"],
                          "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": h.namespace}}});
        h.apply_policy("base", base).await.expect("apply the base policy");
        for name in ["a", "b"] {
            let identity = format!("{}-{name}", h.namespace);
            let options = ServeOptions {
                identity: &identity,
                lease: &h.lease,
                audit_interval: "10m",
                log_filter: "info,trustgate::server=warn",
                args: &[],
            };
            let webhook = Serve::start(&cluster, options);
            h.webhooks.push(webhook);
        }
        for w in &mut h.webhooks {
            w.wait_ready().await;
        }
        h.wait_until("the base policy in force", Duration::from_secs(20), |h| h.all_answer(UNTRUSTED, false)).await;
        h
    }

    fn policy_name(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace)
    }

    async fn apply_policy(&mut self, name: &str, spec: Value) -> Result<(), kube::Error> {
        let name = self.policy_name(name);
        self.cleanup.add::<TrustedRegistryPolicy>(None, &name);
        apply_policy(&self.client, &name, spec).await.map(drop)
    }

    /// The late policy: trusts only registry.my.com/team, in namespaces that carry the label.
    fn late_spec(&self, trusted: &str) -> Value {
        json!({"trustedRegistries": [trusted],
               "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace, LATE_LABEL: "late"}}})
    }

    async fn label_namespace(&self) -> Result<(), kube::Error> {
        let patch = json!({"metadata": {"labels": {LATE_LABEL: "late"}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&self.namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Whether every webhook answers `image` with `allowed`.
    fn all_answer(&self, image: &str, allowed: bool) -> bool {
        self.webhooks.iter().all(|w| self.reviews.admits(w.port, &self.namespace, image) == Ok(allowed))
    }

    async fn wait_until(&self, what: &str, within: Duration, f: impl Fn(&Harness) -> bool) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < within, "{what}: not within {within:?}{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    async fn lease(&self) -> Option<Lease> {
        let leases = Api::<Lease>::namespaced(self.client.clone(), LEASE_NAMESPACE);
        tokio::time::timeout(Duration::from_secs(2), leases.get_opt(&self.lease)).await.ok()?.ok()?
    }

    fn identities(&self) -> Vec<String> {
        self.webhooks.iter().map(|w| w.identity.clone()).collect()
    }

    fn logs(&self) -> String {
        self.webhooks.iter().map(|w| format!("\n---- {} log:\n{}", w.identity, w.log())).collect()
    }

    /// The policy's status has caught up with its generation, Ready=True.
    async fn status_observed(&self, name: &str) -> bool {
        let api = Api::<TrustedRegistryPolicy>::all(self.client.clone());
        let Ok(Ok(p)) = tokio::time::timeout(Duration::from_secs(2), api.get(&self.policy_name(name))).await else {
            return false;
        };
        let status = p.status.unwrap_or_default();
        status.observed_generation.is_some()
            && status.observed_generation == p.metadata.generation
            && status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // All at once; each is then awaited as it is dropped.
        for w in &mut self.webhooks {
            w.terminate();
        }
    }
}

// ---------------------------------------------------------------- the scenario

/// What the test does to the cluster, and undoes.
enum Disruption {
    /// SIGKILL kube-apiserver, wait, bring it back with the kit's `up`.
    RestartApiServer { down_for: Duration },
    /// SIGKILL etcd, wait, start it again with its own command line (the API server stays).
    RestartEtcd { down_for: Duration },
    /// SIGSTOP kube-apiserver, wait, SIGCONT.
    FreezeApiServer { frozen_for: Duration },
}

impl Disruption {
    fn name(&self) -> &'static str {
        match self {
            Disruption::RestartApiServer { .. } => "kube-apiserver restart",
            Disruption::RestartEtcd { .. } => "etcd restart",
            Disruption::FreezeApiServer { .. } => "kube-apiserver SIGSTOP",
        }
    }

    /// Disrupts, and starts undoing: returns once the component is started again (the kit's
    /// `up`, still waiting for the whole cluster to be ready, is returned to be awaited).
    async fn run(&self, kit: &Kit) -> Option<tokio::task::JoinHandle<Duration>> {
        let mut restore = Restore { kit, frozen: None };
        match self {
            Disruption::RestartApiServer { down_for } => {
                let pid = kit.running("kube-apiserver");
                kit.signal(pid, "KILL");
                kit.wait_gone("kube-apiserver", pid);
                tokio::time::sleep(*down_for).await;
                let kit = kit.clone();
                return Some(tokio::task::spawn_blocking(move || kit.up()));
            }
            Disruption::RestartEtcd { down_for } => {
                let pid = kit.running("etcd");
                let cmdline = Kit::cmdline(pid);
                kit.signal(pid, "KILL");
                kit.wait_gone("etcd", pid);
                tokio::time::sleep(*down_for).await;
                kit.respawn("etcd", &cmdline);
            }
            Disruption::FreezeApiServer { frozen_for } => {
                let pid = kit.running("kube-apiserver");
                kit.signal(pid, "STOP");
                restore.frozen = Some(pid);
                tokio::time::sleep(*frozen_for).await;
                kit.signal(pid, "CONT");
                restore.frozen = None;
            }
        }
        None
    }
}

async fn survive(test: &str, disruption: Disruption) {
    let Some(kit) = Kit::from_env(test) else { return };
    let mut h = Harness::start(kit, test).await;
    let frozen = matches!(disruption, Disruption::FreezeApiServer { .. });
    // A frozen API server takes no writes: the late policy exists before, and is changed after.
    if frozen {
        let spec = h.late_spec("registry.my.com");
        h.apply_policy("late", spec).await.expect("apply the late policy");
    }

    // Elected, and (when the late policy exists) its status written.
    let identities = h.identities();
    let start = Instant::now();
    let before = loop {
        let spec = h.lease().await.and_then(|l| l.spec).unwrap_or_default();
        if spec.holder_identity.as_ref().is_some_and(|id| identities.contains(id))
            && h.webhooks.iter().filter(|w| w.metric("trustgate_leader") == Some(1.0)).count() == 1
        {
            break spec;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no leader within 30s: {spec:?}{}", h.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if frozen {
        let mut ok = false;
        for _ in 0..200 {
            ok = h.status_observed("late").await;
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "the late policy's status was not written before the freeze{}", h.logs());
    }
    assert!(h.all_answer(PROBE, true), "the probe image is admitted before the outage");

    // Reviews and leadership samples, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let ports = h.webhooks.iter().map(|w| w.port).collect();
    let reviewer = start_reviewer(h.reviews.clone(), ports, h.namespace.clone(), stop.clone());
    let samples = Arc::new(Mutex::new(LeaderSamples::default()));
    let admin_ports = h.webhooks.iter().map(|w| w.admin_port).collect();
    let sampler = start_gauge_sampler(admin_ports, samples.clone(), stop.clone());
    let holders = {
        let (client, lease, samples, stop) = (h.client.clone(), h.lease.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            let leases = Api::<Lease>::namespaced(client, LEASE_NAMESPACE);
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                if let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_secs(1), leases.get_opt(&lease)).await {
                    samples.lock().unwrap().holders.push((at, l.spec.and_then(|s| s.holder_identity)));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let outage = Instant::now();
    let bringing_back = disruption.run(&h.kit).await;
    let back = Instant::now();

    // As soon as the API server takes writes: the late policy (created or changed) and the
    // namespace label that makes it apply.
    let spec = h.late_spec("registry.my.com/team");
    let ((), written) = until_ok("write the late policy", Duration::from_secs(60), || {
        let (client, name, spec) = (h.client.clone(), h.policy_name("late"), spec.clone());
        async move { apply_policy(&client, &name, spec).await.map(drop) }
    })
    .await;
    let recovered_at = Timestamp::now();
    if let Some(up) = bringing_back {
        let took = up.await.expect("the kit's up");
        eprintln!("disruption: `up` brought the whole cluster back in {took:.1?}");
    }
    let late = h.policy_name("late");
    h.cleanup.add::<TrustedRegistryPolicy>(None, &late);
    until_ok("label the namespace", Duration::from_secs(30), || h.label_namespace()).await;

    h.wait_until("the late policy in force", Duration::from_secs(30), |h| h.all_answer(PROBE, false)).await;
    let in_force = written.elapsed();
    let status_start = Instant::now();
    let mut status_ok = false;
    while status_start.elapsed() < CATCH_UP_WITHIN {
        if h.status_observed("late").await {
            status_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(status_ok, "the late policy's status did not catch up within {CATCH_UP_WITHIN:?}{}", h.logs());
    let status_after = written.elapsed();

    let lease_start = Instant::now();
    let renewed = loop {
        let spec = h.lease().await.and_then(|l| l.spec).unwrap_or_default();
        if spec.renew_time.as_ref().is_some_and(|t| t.0 > recovered_at) {
            break spec;
        }
        assert!(
            lease_start.elapsed() < CATCH_UP_WITHIN,
            "the lease was not renewed after recovery: {spec:?}{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lease_after = written.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    let stats = reviewer.join().expect("the reviewer");
    sampler.join().expect("the sampler");
    holders.await.expect("the lease sampler");
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    // Admission answered throughout, from the last snapshot.
    assert_eq!(stats.failed, 0, "reviews failed during the {}: {:#?}{}", disruption.name(), stats.failures, h.logs());
    let minimum = back.duration_since(outage).as_secs() * 4;
    assert!(stats.answered >= minimum, "only {} reviews answered (expected at least {minimum})", stats.answered);
    // The change made after recovery is in force everywhere, soon.
    assert!(in_force < IN_FORCE_WITHIN, "in force {in_force:?} after the API server took the write{}", h.logs());
    // Never two leaders; the lease always names one of the two.
    let two = samples.two_leaders();
    assert!(two.is_empty(), "two webhooks led at once at {} samples: {:?}", two.len(), two.first());
    assert!(samples.gauges.iter().all(|(_, g)| g.iter().all(Option::is_some)), "a webhook's /metrics did not answer");
    let strangers: Vec<_> =
        samples.holders.iter().filter(|(_, h)| !h.as_ref().is_some_and(|id| identities.contains(id))).collect();
    assert!(strangers.is_empty(), "holderIdentity named neither webhook: {strangers:?}");
    assert!(
        renewed.holder_identity.as_ref().is_some_and(|id| identities.contains(id)),
        "renewed by a stranger: {renewed:?}"
    );
    // The watchers say they work again.
    for w in &h.webhooks {
        let metrics = w.metrics().unwrap_or_default();
        for resource in ["trustedregistrypolicies", "namespaces"] {
            let line = format!("trustgate_watch_healthy{{resource=\"{resource}\"}} 1");
            assert!(metrics.contains(&line), "{}: no {line:?} after recovery:\n{metrics}", w.identity);
        }
    }
    let errors: Vec<String> = h
        .webhooks
        .iter()
        .map(|w| {
            let text = w.metrics().unwrap_or_default();
            let count = |resource: &str| {
                let prefix = format!("trustgate_watch_errors_total{{resource=\"{resource}\"}} ");
                text.lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned)).unwrap_or_else(|| "0".into())
            };
            format!("{}: {}/{}", w.identity, count("trustedregistrypolicies"), count("namespaces"))
        })
        .collect();
    let transitions = |s: &k8s_openapi::api::coordination::v1::LeaseSpec| s.lease_transitions.unwrap_or(0);
    eprintln!(
        "disruption: {}: outage {:.1?} (disruption {:.1?} + first write accepted {:.1?} later; no lease read answered \
         for {:.1?}); {} reviews answered, \
         0 failed, slowest {:.0?}; late policy in force {:.2?} after the write; status observed {:.1?} after; \
         lease renewed {:.1?} after (holder {:?} -> {:?}, transitions +{}); longest without a leader {:.1?}; \
         watch errors (policies/namespaces) {errors:?}",
        disruption.name(),
        written.duration_since(outage),
        back.duration_since(outage),
        written.duration_since(back),
        samples.longest_without_api(),
        stats.answered,
        stats.slowest,
        in_force,
        status_after,
        lease_after,
        before.holder_identity.as_deref().unwrap_or_default(),
        renewed.holder_identity.as_deref().unwrap_or_default(),
        transitions(&renewed) - transitions(&before),
        samples.longest_without_leader(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts a cluster's API server: run `just e2e-disruption`"]
async fn admission_and_election_survive_a_kube_apiserver_restart() {
    survive("apiserver", Disruption::RestartApiServer { down_for: Duration::from_secs(5) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts a cluster's etcd: run `just e2e-disruption`"]
async fn admission_and_election_survive_an_etcd_restart() {
    survive("etcd", Disruption::RestartEtcd { down_for: Duration::from_secs(10) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "freezes a cluster's API server for 60 s: run `just e2e-disruption`"]
async fn admission_and_election_survive_a_frozen_kube_apiserver() {
    survive("freeze", Disruption::FreezeApiServer { frozen_for: Duration::from_secs(60) }).await;
}

/// Pure: runs without a cluster, under plain `cargo test`.
#[test]
fn leader_samples_find_two_leaders_and_the_time_without_one() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let samples = LeaderSamples {
        gauges: vec![
            (at(0), vec![Some(1.0), Some(0.0)]),
            (at(200), vec![Some(0.0), Some(0.0)]),
            (at(400), vec![Some(0.0), None]),
            (at(600), vec![Some(0.0), Some(0.0)]),
            (at(800), vec![Some(0.0), Some(1.0)]),
            (at(1000), vec![Some(1.0), Some(1.0)]),
        ],
        holders: vec![(at(0), Some("a".into())), (at(300), Some("a".into())), (at(1300), Some("b".into()))],
    };
    let two: Vec<Instant> = samples.two_leaders().iter().map(|(t, _)| *t).collect();
    assert_eq!(two, [at(1000)]);
    assert_eq!(samples.longest_without_leader(), Duration::from_millis(400));
    assert_eq!(samples.longest_without_api(), Duration::from_millis(1000));
}
