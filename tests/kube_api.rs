//! The Kubernetes policy source against a mocked API server: kube's `Client` over a
//! `tower-test` mock service (as kube-rs/controller-rs tests do), asserting the exact requests
//! that the watchers, the leader election, the status writer and the audit make, and what they
//! do with the answers. No cluster needed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, SendResponse};

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
type Handle = mock::Handle<Request<Body>, Response<ResponseBody>>;

/// One request as the API server received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query, e.g. `/api/v1/pods?&limit=500`.
    uri: String,
    accept: String,
    body: Option<Value>,
}

impl Recorded {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

async fn record(request: Request<Body>) -> Recorded {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        accept: parts.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(),
        body: (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("request bodies are JSON")),
    }
}

fn json_response(status: u16, value: Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())).boxed_unsync();
    Response::builder().status(status).header("content-type", "application/json").body(body).unwrap()
}

fn status_response(code: u16, reason: &str) -> Response<ResponseBody> {
    json_response(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("fake: {reason}"), "reason": reason, "code": code}),
    )
}

/// A response whose body the test writes line by line: a watch.
fn stream_response() -> (mpsc::UnboundedSender<Bytes>, Response<ResponseBody>) {
    let (tx, rx) = mpsc::unbounded::<Bytes>();
    let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync();
    (tx, Response::builder().status(200).header("content-type", "application/json").body(body).unwrap())
}

fn watch_event(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn list(kind: &str, resource_version: &str, items: Vec<Value>, continue_token: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({"apiVersion": "v1", "kind": kind, "metadata": metadata, "items": items})
}

fn mock_client() -> (Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<ResponseBody>>();
    (Client::new(service, "default"), handle)
}

/// Waits for the next request, which must come within a few seconds.
async fn next_request(handle: &mut Handle) -> (Recorded, SendResponse<Response<ResponseBody>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5s")
        .expect("the client is alive");
    (record(request).await, send)
}

/// Polls `f` until it gives a value; fails after 10 seconds.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn time(s: &str) -> Timestamp {
    s.parse().unwrap()
}

mod lease {
    use super::*;
    use tokio::time::Instant;
    use trustgate_cluster::lease::{Elector, LeaseConfig};

    const URL: &str = "/apis/coordination.k8s.io/v1/namespaces/trustgate-system/leases/trustgate";
    const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/trustgate-system/leases";

    fn elector(client: Client, identity: &str, now: &'static str) -> Elector {
        Elector::new(client, LeaseConfig::new("trustgate-system", "trustgate", identity)).with_clock(move || time(now))
    }

    fn lease(resource_version: &str, holder: Option<&str>, renew: &str, transitions: i32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "trustgate", "namespace": "trustgate-system", "resourceVersion": resource_version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": renew},
        })
    }

    /// Answers a GET of the lease with `lease` (404 when `None`).
    async fn answer_get(handle: &mut Handle, lease: Option<Value>) {
        let (request, send) = next_request(handle).await;
        assert_eq!(request.line(), format!("GET {URL}"));
        send.send_response(match lease {
            Some(l) => json_response(200, l),
            None => status_response(404, "NotFound"),
        });
    }

    #[tokio::test]
    async fn creates_the_lease_when_there_is_none() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:00.123456Z");
        let server = async {
            answer_get(&mut handle, None).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.line(), format!("POST {COLLECTION}?"));
            assert_eq!(
                request.body.unwrap(),
                json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "trustgate", "namespace": "trustgate-system"},
                    "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                             "acquireTime": "2026-03-01T10:00:00.123456Z", "renewTime": "2026-03-01T10:00:00.123456Z"},
                })
            );
            send.send_response(json_response(201, lease("1", Some("pod-a"), "2026-03-01T10:00:00.123456Z", 0)));
        };
        let ((leading, error), ()) = tokio::join!(elector.tick(Instant::now()), server);
        assert!(error.is_none(), "{error:?}");
        assert!(leading);
    }

    #[tokio::test]
    async fn losing_the_create_race_means_following() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:00Z");
        let server = async {
            answer_get(&mut handle, None).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.method, "POST");
            send.send_response(status_response(409, "AlreadyExists"));
        };
        let ((leading, error), ()) = tokio::join!(elector.tick(Instant::now()), server);
        assert!(error.is_none());
        assert!(!leading);
    }

    #[tokio::test]
    async fn renews_its_own_lease_with_a_resource_version_guarded_replace() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:05Z");
        let server = async {
            answer_get(&mut handle, Some(lease("7", Some("pod-a"), "2026-03-01T10:00:00.000000Z", 2))).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.line(), format!("PUT {URL}?"));
            assert_eq!(
                request.body.unwrap(),
                lease("7", Some("pod-a"), "2026-03-01T10:00:05.000000Z", 2),
                "only renewTime changes, and resourceVersion 7 guards the write"
            );
            send.send_response(json_response(200, lease("8", Some("pod-a"), "2026-03-01T10:00:05.000000Z", 2)));
        };
        let ((leading, _), ()) = tokio::join!(elector.tick(Instant::now()), server);
        assert!(leading);
    }

    #[tokio::test]
    async fn a_conflict_on_renewal_means_someone_else_wrote_it() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:05Z");
        let server = async {
            answer_get(&mut handle, Some(lease("7", Some("pod-a"), "2026-03-01T10:00:00.000000Z", 2))).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.method, "PUT");
            send.send_response(status_response(409, "Conflict"));
        };
        let ((leading, error), ()) = tokio::join!(elector.tick(Instant::now()), server);
        assert!(error.is_none());
        assert!(!leading);
    }

    #[tokio::test]
    async fn follows_a_live_holder_and_takes_over_once_it_stops_renewing() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-b", "2026-03-01T10:01:00Z");
        let start = Instant::now();
        let held = |rv: &str, renew: &str| lease(rv, Some("pod-a"), renew, 3);

        // pod-a holds it: we only read.
        let (r, ()) =
            tokio::join!(elector.tick(start), answer_get(&mut handle, Some(held("5", "2026-03-01T10:00:00.000000Z"))));
        assert!(!r.0);
        // 10s later pod-a has renewed: the record changed, so it is alive whatever the clocks say.
        let (r, ()) = tokio::join!(
            elector.tick(start + Duration::from_secs(10)),
            answer_get(&mut handle, Some(held("6", "2026-03-01T10:00:10.000000Z")))
        );
        assert!(!r.0);
        // 14s after that, no renewal seen for 14s < 15s: still follow.
        let (r, ()) = tokio::join!(
            elector.tick(start + Duration::from_secs(24)),
            answer_get(&mut handle, Some(held("6", "2026-03-01T10:00:10.000000Z")))
        );
        assert!(!r.0);
        // 15s without a change since the answer that first showed it (which took a moment to
        // come): expired, take it over.
        let server = async {
            answer_get(&mut handle, Some(held("6", "2026-03-01T10:00:10.000000Z"))).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.line(), format!("PUT {URL}?"));
            let body = request.body.unwrap();
            assert_eq!(body["metadata"]["resourceVersion"], "6");
            assert_eq!(
                body["spec"],
                json!({"holderIdentity": "pod-b", "leaseDurationSeconds": 15, "leaseTransitions": 4,
                       "acquireTime": "2026-03-01T10:01:00.000000Z", "renewTime": "2026-03-01T10:01:00.000000Z"})
            );
            send.send_response(json_response(200, body));
        };
        let (r, ()) = tokio::join!(elector.tick(start + Duration::from_secs(26)), server);
        assert!(r.0, "the lease expired by our clock");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_counts_a_record_as_seen_from_when_a_slow_answer_arrived() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-b", "2026-03-01T10:01:00Z");
        let held = lease("6", Some("pod-a"), "2026-03-01T10:00:10.000000Z", 3);
        let start = Instant::now();
        // The answer takes 4s: pod-a may have renewed just before it was sent.
        let slow = async {
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.method, "GET");
            tokio::time::sleep(Duration::from_secs(4)).await;
            send.send_response(json_response(200, held.clone()));
        };
        let (r, ()) = tokio::join!(elector.tick(start), slow);
        assert!(!r.0);
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        // 15s after the request, but not after the answer: still follow.
        let (r, ()) = tokio::join!(
            elector.tick(start + Duration::from_millis(18_900)),
            answer_get(&mut handle, Some(held.clone()))
        );
        assert!(!r.0, "expired counts from the answer, not from the request");
        let server = async {
            answer_get(&mut handle, Some(held.clone())).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.method, "PUT");
            send.send_response(json_response(200, request.body.unwrap()));
        };
        let (r, ()) = tokio::join!(elector.tick(start + Duration::from_secs(19)), server);
        assert!(r.0, "15s after the answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_server_cannot_keep_a_leader_past_its_deadline() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:00Z");
        let start = Instant::now();
        let server = async {
            answer_get(&mut handle, None).await;
            let (_, send) = next_request(&mut handle).await;
            send.send_response(json_response(201, lease("1", Some("pod-a"), "2026-03-01T10:00:00.000000Z", 0)));
        };
        let (r, ()) = tokio::join!(elector.tick(start), server);
        assert!(r.0);
        assert_eq!(elector.leading_until(), Some(start + Duration::from_secs(10)));

        // 7s later the API server takes the request and never answers: the round is cut at the
        // 10s deadline (not 5s after it began), and the leader steps down then.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let hung = async { next_request(&mut handle).await };
        let ((leading, error), (request, _unanswered)) = tokio::join!(elector.tick(Instant::now()), hung);
        assert_eq!(request.line(), format!("GET {URL}"));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(!leading, "past the deadline, 5s before the lease can expire for others");
        let error = error.expect("a timeout");
        assert!(matches!(error, trustgate_cluster::lease::LeaseError::Timeout { .. }), "{error:?}");
        assert_eq!(error.to_string(), "no answer about lease trustgate-system/trustgate within 3s");

        // A follower's round is cut after half the deadline.
        let round = Instant::now();
        let hung = async { next_request(&mut handle).await };
        let ((leading, error), _unanswered) = tokio::join!(elector.tick(Instant::now()), hung);
        assert!(!leading && error.is_some());
        assert_eq!(round.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-b", "2026-03-01T10:01:00Z");
        let server = async {
            answer_get(&mut handle, Some(lease("9", None, "2026-03-01T10:00:59.000000Z", 3))).await;
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.method, "PUT");
            assert_eq!(request.body.as_ref().unwrap()["spec"]["holderIdentity"], "pod-b");
            assert_eq!(request.body.as_ref().unwrap()["spec"]["leaseTransitions"], 4);
            send.send_response(json_response(200, request.body.unwrap()));
        };
        let (r, ()) = tokio::join!(elector.tick(Instant::now()), server);
        assert!(r.0);
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_after_the_renew_deadline() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:00Z");
        let start = Instant::now();
        let server = async {
            answer_get(&mut handle, None).await;
            let (_, send) = next_request(&mut handle).await;
            send.send_response(json_response(201, lease("1", Some("pod-a"), "2026-03-01T10:00:00.000000Z", 0)));
        };
        let (r, ()) = tokio::join!(elector.tick(start), server);
        assert!(r.0);
        let outage = async {
            let (_, send) = next_request(&mut handle).await;
            send.send_response(status_response(500, "InternalError"));
        };
        let ((leading, error), ()) = tokio::join!(elector.tick(start + Duration::from_secs(9)), outage);
        assert!(error.is_some());
        assert!(leading, "9s without renewal is within the 10s deadline");
        let outage = async {
            let (_, send) = next_request(&mut handle).await;
            send.send_response(status_response(500, "InternalError"));
        };
        let ((leading, error), ()) = tokio::join!(elector.tick(start + Duration::from_secs(10)), outage);
        assert!(error.is_some());
        assert!(!leading, "past the deadline, before the 15s lease can expire for others");
    }

    #[tokio::test]
    async fn release_clears_the_holder_and_shortens_the_lease() {
        let (client, mut handle) = mock_client();
        let mut elector = elector(client, "pod-a", "2026-03-01T10:00:00Z");
        let server = async {
            answer_get(&mut handle, None).await;
            let (_, send) = next_request(&mut handle).await;
            send.send_response(json_response(201, lease("1", Some("pod-a"), "2026-03-01T10:00:00.000000Z", 0)));
        };
        let (r, ()) = tokio::join!(elector.tick(Instant::now()), server);
        assert!(r.0);
        let server = async {
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.line(), format!("PUT {URL}?"));
            let body = request.body.unwrap();
            assert_eq!(body["metadata"]["resourceVersion"], "1", "guarded by the version we wrote");
            assert_eq!(
                body["spec"],
                json!({"leaseDurationSeconds": 1, "leaseTransitions": 0,
                       "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-03-01T10:00:00.000000Z"})
            );
            send.send_response(json_response(200, body));
        };
        let (released, ()) = tokio::join!(elector.release(), server);
        assert!(released.unwrap());
        assert!(!elector.is_leader());
        // Nothing of ours left to release: no request.
        assert!(!elector.release().await.unwrap());
    }
}

mod audit {
    use super::*;
    use trustgate_cluster::audit;
    use trustgate_core::api::TrustedRegistryPolicy;
    use trustgate_core::engine::PolicySet;
    use trustgate_core::engine::snapshot::Snapshot;

    fn pod(name: &str, image: &str, owner: Option<&str>) -> Value {
        let owners: Vec<Value> = owner
            .map(|o| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "uid": "u", "controller": true}))
            .into_iter()
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "shop", "ownerReferences": owners},
               "spec": {"containers": [{"name": "app", "image": image}]}})
    }

    #[tokio::test]
    async fn lists_every_kind_cluster_wide_page_by_page() {
        let policies: Vec<TrustedRegistryPolicy> = serde_json::from_value(json!([
            {"metadata": {"name": "corp"}, "spec": {"trustedRegistries": ["registry.my.com"]}}
        ]))
        .unwrap();
        let snapshot = Snapshot { policies: PolicySet::compile(&policies).0, namespaces: Some(Default::default()) };
        let (client, mut handle) = mock_client();
        let server = async {
            let mut lines = Vec::new();
            loop {
                let (request, send) = next_request(&mut handle).await;
                lines.push(request.line());
                let reply = match request.uri.as_str() {
                    "/api/v1/pods?&limit=2" => list(
                        "PodList",
                        "50",
                        vec![pod("a", "nginx", None), pod("b", "registry.my.com/b:1", None)],
                        Some("page-2"),
                    ),
                    "/api/v1/pods?&limit=2&continue=page-2" => {
                        list("PodList", "50", vec![pod("c", "quay.io/c:1", None), pod("d", "nginx", Some("rs"))], None)
                    }
                    "/apis/apps/v1/deployments?&limit=2" => list(
                        "DeploymentList",
                        "50",
                        vec![json!({"metadata": {"name": "web", "namespace": "shop"},
                            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}}})],
                        None,
                    ),
                    _ => list("List", "50", vec![], None),
                };
                send.send_response(json_response(200, reply));
                if request.uri.starts_with("/api/v1/pods?&limit=2&continue") {
                    return lines;
                }
            }
        };
        let (report, lines) =
            tokio::join!(audit::run(&client, &snapshot, 2, None, time("2026-01-01T00:00:00Z"), ()), server);
        assert_eq!(
            lines,
            [
                "GET /apis/apps/v1/deployments?&limit=2",
                "GET /apis/apps/v1/statefulsets?&limit=2",
                "GET /apis/apps/v1/daemonsets?&limit=2",
                "GET /apis/apps/v1/replicasets?&limit=2",
                "GET /apis/batch/v1/cronjobs?&limit=2",
                "GET /apis/batch/v1/jobs?&limit=2",
                "GET /api/v1/replicationcontrollers?&limit=2",
                "GET /api/v1/pods?&limit=2",
                "GET /api/v1/pods?&limit=2&continue=page-2",
            ]
        );
        let report = report.unwrap();
        assert_eq!(report.listed["pods"], 4);
        assert_eq!(report.listed["deployments"], 1);
        assert_eq!(report.evaluated, 4, "web, a, b, c; d belongs to a ReplicaSet");
        let corp = &report.statuses["corp"];
        assert_eq!(corp.violations, 3, "web, a and c");
        let samples: Vec<(&str, &str)> = corp.samples.iter().map(|s| (s.kind.as_str(), s.name.as_str())).collect();
        assert_eq!(samples, [("Deployment", "web"), ("Pod", "a"), ("Pod", "c")]);
        assert_eq!(corp.last_run.as_ref().map(|t| t.0), Some(time("2026-01-01T00:00:00Z")));
    }

    #[tokio::test]
    async fn a_failed_list_fails_the_run() {
        let snapshot = Snapshot::default();
        let (client, mut handle) = mock_client();
        let server = async {
            let (request, send) = next_request(&mut handle).await;
            assert_eq!(request.line(), "GET /apis/apps/v1/deployments?&limit=500");
            send.send_response(status_response(403, "Forbidden"));
        };
        let (report, ()) = tokio::join!(audit::run(&client, &snapshot, 500, None, Timestamp::now(), ()), server);
        let error = report.unwrap_err();
        assert_eq!(error.to_string(), "failed to list deployments");
    }
}

/// The whole source, run as `serve` runs it, against a stateful fake API server.
mod source {
    use super::*;
    use tokio_util::sync::CancellationToken;
    use trustgate_cluster::watch::{KubeSource, WatchConfig};
    use trustgate_core::engine::Verdict;
    use trustgate_core::engine::snapshot::Store;
    use trustgate_core::workload::Workload;

    const POLICIES: &str = "/apis/trustgate.dev/v1alpha1/trustedregistrypolicies";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/trustgate-system/leases/trustgate";

    #[derive(Default)]
    struct Cluster {
        policies: Vec<Value>,
        policies_rv: u64,
        /// Answer this many policy lists with 500 first (an API server outage).
        failing_policy_lists: u32,
        namespaces: Vec<Value>,
        /// Hold namespace lists unanswered until the test releases them.
        hold_namespaces: bool,
        held: Vec<SendResponse<Response<ResponseBody>>>,
        /// Take lease requests and never answer them (a frozen API server).
        hang_leases: bool,
        workloads: HashMap<String, Vec<Value>>,
        lease: Option<Value>,
        lease_rv: u64,
        policy_watch: Option<mpsc::UnboundedSender<Bytes>>,
        namespace_watch: Option<mpsc::UnboundedSender<Bytes>>,
        log: Vec<Recorded>,
    }

    impl Cluster {
        fn reply(&mut self, r: &Recorded, send: SendResponse<Response<ResponseBody>>) {
            let (path, query) = r.uri.split_once('?').unwrap_or((&r.uri, ""));
            let watch = query.contains("watch=true");
            if self.hang_leases && path.contains("/leases") {
                self.held.push(send);
                return;
            }
            let response = match (r.method.as_str(), path) {
                ("GET", POLICIES) if watch => {
                    let (tx, response) = stream_response();
                    self.policy_watch = Some(tx);
                    response
                }
                ("GET", POLICIES) if self.failing_policy_lists > 0 => {
                    self.failing_policy_lists -= 1;
                    status_response(500, "InternalError")
                }
                ("GET", POLICIES) => json_response(
                    200,
                    list("TrustedRegistryPolicyList", &self.policies_rv.to_string(), self.policies.clone(), None),
                ),
                ("GET", "/api/v1/namespaces") if watch => {
                    let (tx, response) = stream_response();
                    self.namespace_watch = Some(tx);
                    response
                }
                ("GET", "/api/v1/namespaces") if self.hold_namespaces => {
                    self.held.push(send);
                    return;
                }
                ("GET", "/api/v1/namespaces") => {
                    json_response(200, list("PartialObjectMetadataList", "5", self.namespaces.clone(), None))
                }
                ("PATCH", p) if p.starts_with(POLICIES) && p.ends_with("/status") => {
                    let name = p.trim_start_matches(POLICIES).trim_start_matches('/').trim_end_matches("/status");
                    json_response(200, json!({"metadata": {"name": name}, "spec": {}}))
                }
                ("GET", LEASE) => match &self.lease {
                    Some(l) => json_response(200, l.clone()),
                    None => status_response(404, "NotFound"),
                },
                ("POST", p) if LEASE.starts_with(p) => self.write_lease(r.body.clone().unwrap(), None),
                ("PUT", LEASE) => {
                    let body = r.body.clone().unwrap();
                    let rv = body["metadata"]["resourceVersion"].as_str().map(str::to_owned);
                    self.write_lease(body, rv)
                }
                ("GET", p) => match p.rsplit('/').next().and_then(|plural| self.workloads.get(plural)) {
                    Some(items) => json_response(200, list("List", "9", items.clone(), None)),
                    None if p.starts_with("/api") => json_response(200, list("List", "9", vec![], None)),
                    None => status_response(404, "NotFound"),
                },
                _ => status_response(404, "NotFound"),
            };
            send.send_response(response);
        }

        fn write_lease(&mut self, mut body: Value, guard: Option<String>) -> Response<ResponseBody> {
            let current = self.lease.as_ref().map(|l| l["metadata"]["resourceVersion"].as_str().unwrap().to_owned());
            if current != guard {
                return status_response(409, if guard.is_none() { "AlreadyExists" } else { "Conflict" });
            }
            self.lease_rv += 1;
            body["metadata"]["resourceVersion"] = json!(self.lease_rv.to_string());
            self.lease = Some(body.clone());
            json_response(200, body)
        }

        fn requests(&self, method: &str, prefix: &str) -> Vec<Recorded> {
            self.log.iter().filter(|r| r.method == method && r.uri.starts_with(prefix)).cloned().collect()
        }
    }

    fn serve(mut handle: Handle, cluster: Arc<Mutex<Cluster>>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let recorded = record(request).await;
                let mut cluster = cluster.lock().unwrap();
                cluster.log.push(recorded.clone());
                cluster.reply(&recorded, send);
            }
        })
    }

    fn policy(name: &str, generation: i64, rv: &str, spec: Value) -> Value {
        json!({"apiVersion": "trustgate.dev/v1alpha1", "kind": "TrustedRegistryPolicy",
               "metadata": {"name": name, "generation": generation, "resourceVersion": rv,
                            "uid": format!("uid-{name}"), "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": spec})
    }

    fn namespace(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": name, "labels": labels, "resourceVersion": "3"}})
    }

    fn verdict(store: &Store, ns: &str, image: &str) -> Option<Verdict> {
        let snapshot = store.load()?;
        let object = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": ns},
                            "spec": {"containers": [{"name": "c", "image": image}]}});
        let workload = Workload::read(None, &object).unwrap();
        Some(snapshot.policies.evaluate_workload(&workload, &snapshot.namespace(ns), Timestamp::now()).verdict())
    }

    fn policy_names(store: &Store) -> Vec<String> {
        store.load().map(|s| s.policies.policies().map(|p| p.name().to_owned()).collect()).unwrap_or_default()
    }

    /// The status patches written to one policy that set conditions.
    fn condition_patches(cluster: &Mutex<Cluster>, name: &str) -> Vec<Value> {
        let cluster = cluster.lock().unwrap();
        cluster
            .requests("PATCH", &format!("{POLICIES}/{name}/status"))
            .into_iter()
            .filter_map(|r| r.body)
            .filter(|b| b["status"].get("conditions").is_some())
            .collect()
    }

    fn audit_patches(cluster: &Mutex<Cluster>, name: &str) -> Vec<Value> {
        let cluster = cluster.lock().unwrap();
        cluster
            .requests("PATCH", &format!("{POLICIES}/{name}/status"))
            .into_iter()
            .filter_map(|r| r.body)
            .filter(|b| b["status"].get("audit").is_some())
            .collect()
    }

    /// Takes `lastTransitionTime` out of a condition patch, checking it is a timestamp.
    fn without_transition_time(mut patch: Value) -> (Value, String) {
        let condition = &mut patch["status"]["conditions"][0];
        let t = condition["lastTransitionTime"].as_str().expect("lastTransitionTime").to_owned();
        t.parse::<Timestamp>().expect("an RFC 3339 time");
        condition.as_object_mut().unwrap().remove("lastTransitionTime");
        (patch, t)
    }

    #[tokio::test]
    async fn watches_publishes_elects_writes_status_audits_and_survives_an_outage() {
        let steady_status = json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True",
            "reason": "Accepted", "message": "the policy is valid and in effect in Warn mode",
            "observedGeneration": 2, "lastTransitionTime": "2025-06-01T00:00:00Z"}]});
        let mut steady = policy("steady", 2, "12", json!({"mode": "Warn", "trustedRegistries": ["docker.io"]}));
        steady["status"] = steady_status;
        let cluster = Arc::new(Mutex::new(Cluster {
            policies: vec![
                policy(
                    "corp",
                    1,
                    "11",
                    json!({"trustedRegistries": ["registry.my.com"],
                    "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
                ),
                steady.clone(),
                policy("broken", 1, "13", json!({"trustedRegistries": ["registry.my.com"], "mode": "Block"})),
            ],
            policies_rv: 100,
            namespaces: vec![namespace("shop", json!({"env": "prod"})), namespace("dev", json!({"env": "dev"}))],
            hold_namespaces: true,
            workloads: HashMap::from([
                (
                    "deployments".to_owned(),
                    vec![json!({"metadata": {"name": "web", "namespace": "shop"},
                        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}}})],
                ),
                (
                    "pods".to_owned(),
                    vec![json!({"metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-x", "uid": "u", "controller": true}]},
                        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}})],
                ),
            ]),
            ..Cluster::default()
        }));
        let (client, handle) = mock_client();
        let server = serve(handle, cluster.clone());
        let store = Store::new();
        let shutdown = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::with_prefix("trustgate");
        let source = KubeSource::new(
            WatchConfig {
                lease_namespace: "trustgate-system".into(),
                lease_name: "trustgate".into(),
                identity: "pod-a".into(),
                audit_interval: Duration::from_secs(3600),
                policy_reports: false,
                installation: trustgate_cluster::policy_report::Installation::default(),
            },
            &mut registry,
        );
        let run = tokio::spawn(source.run(client, store.clone(), shutdown.clone()));

        // Policies are listed, namespaces are not yet: not ready.
        eventually("the namespace list", || (!cluster.lock().unwrap().held.is_empty()).then_some(())).await;
        eventually("the policy watch", || cluster.lock().unwrap().policy_watch.as_ref().map(|_| ())).await;
        assert!(!store.is_ready(), "ready only once both initial lists are in");
        {
            let mut c = cluster.lock().unwrap();
            c.hold_namespaces = false;
            let list = list("PartialObjectMetadataList", "5", c.namespaces.clone(), None);
            for send in c.held.drain(..) {
                send.send_response(json_response(200, list.clone()));
            }
        }
        eventually("readiness", || store.is_ready().then_some(())).await;
        assert_eq!(policy_names(&store), ["corp", "steady"], "the malformed policy is left out");
        assert_eq!(verdict(&store, "shop", "quay.io/app:1"), Some(Verdict::Deny));
        assert_eq!(verdict(&store, "dev", "quay.io/app:1"), Some(Verdict::Warn), "corp selects env=prod only");

        // The exact list and watch requests.
        {
            let c = cluster.lock().unwrap();
            let gets: Vec<String> =
                c.log.iter().filter(|r| r.method == "GET" && !r.uri.contains("lease")).map(Recorded::line).collect();
            assert!(gets.contains(&format!("GET {POLICIES}?&limit=500")), "{gets:#?}");
            assert!(
                gets.contains(&format!(
                    "GET {POLICIES}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=100"
                )),
                "{gets:#?}"
            );
            let namespaces = c.requests("GET", "/api/v1/namespaces?&limit=500");
            assert_eq!(namespaces.len(), 1);
            assert_eq!(
                namespaces[0].accept, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                "namespaces are watched as metadata only"
            );
        }

        // Elected (the lease did not exist), then statuses are written: once each, and not for
        // the policy whose status already says it.
        eventually("the lease", || cluster.lock().unwrap().lease.clone()).await;
        {
            let c = cluster.lock().unwrap();
            let created = c.requests("POST", "/apis/coordination.k8s.io/v1/namespaces/trustgate-system/leases");
            assert_eq!(created.len(), 1);
            assert_eq!(created[0].body.as_ref().unwrap()["spec"]["holderIdentity"], "pod-a");
        }
        let corp = eventually("corp's status", || condition_patches(&cluster, "corp").pop()).await;
        let (corp_patch, corp_time) = without_transition_time(corp);
        assert_eq!(
            corp_patch,
            json!({"status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True",
                "reason": "Accepted", "message": "the policy is valid and in effect in Enforce mode",
                "observedGeneration": 1}]}})
        );
        let broken = eventually("broken's status", || condition_patches(&cluster, "broken").pop()).await;
        let (broken_patch, _) = without_transition_time(broken);
        let condition = &broken_patch["status"]["conditions"][0];
        assert_eq!((&condition["status"], &condition["reason"]), (&json!("False"), &json!("Invalid")));
        let message = condition["message"].as_str().unwrap();
        assert!(message.starts_with("policy \"broken\" is invalid: spec does not match the schema: "), "{message}");
        assert!(message.contains("Block"), "{message}");

        // The audit: the Deployment, reported once; its Pod belongs to a ReplicaSet.
        let audit = eventually("corp's audit", || audit_patches(&cluster, "corp").pop()).await;
        assert_eq!(audit["status"]["audit"]["violations"], 1);
        assert_eq!(
            audit["status"]["audit"]["samples"],
            json!([{"kind": "Deployment", "namespace": "shop", "name": "web", "container": "web",
                    "image": "nginx:1.25", "reason": "resolves to docker.io/library/nginx:1.25, which policy \"corp\" does not trust (trusted: registry.my.com)"}])
        );
        let steady_audit = eventually("steady's audit", || audit_patches(&cluster, "steady").pop()).await;
        assert_eq!(steady_audit["status"]["audit"]["violations"], 0);
        assert_eq!(steady_audit["status"]["audit"]["samples"], json!([]));
        assert!(condition_patches(&cluster, "steady").is_empty(), "steady's status already said it");
        let text = trustgate_metrics(&registry);
        assert!(text.contains(r#"trustgate_audit_violations{policy="corp"} 1"#), "{text}");
        assert!(text.contains("trustgate_leader 1"), "{text}");
        assert!(text.contains(r#"trustgate_watch_synced{resource="namespaces"} 1"#), "{text}");
        assert!(text.contains("trustgate_watch_invalid_policies 1"), "{text}");

        // Another policy changes before the watch brings back what was written to corp and
        // broken: the writer remembers what it wrote and does not write it again. (Policies
        // are written in name order: broken, corp, steady.)
        let mut steady3 = steady;
        steady3["metadata"]["generation"] = json!(3);
        steady3["metadata"]["resourceVersion"] = json!("14");
        send_policy_event(&cluster, "MODIFIED", steady3);
        let steady_patch = eventually("steady's new generation", || condition_patches(&cluster, "steady").pop()).await;
        assert_eq!(steady_patch["status"]["observedGeneration"], 3);
        assert_eq!(
            steady_patch["status"]["conditions"][0]["lastTransitionTime"], "2025-06-01T00:00:00Z",
            "still Ready since 2025"
        );
        assert_eq!(condition_patches(&cluster, "corp").len(), 1, "corp's status was not written twice");
        assert_eq!(condition_patches(&cluster, "broken").len(), 1, "broken's status was not written twice");

        // A policy edit arrives through the watch, carrying the status we wrote.
        let mut edited = policy(
            "corp",
            2,
            "20",
            json!({"trustedRegistries": ["registry.my.com", "quay.io"],
            "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
        );
        let mut written = corp_patch["status"].clone();
        written["conditions"][0]["lastTransitionTime"] = json!(corp_time);
        edited["status"] = written;
        send_policy_event(&cluster, "MODIFIED", edited.clone());
        // quay.io is now trusted by corp; steady (Warn, docker.io only) still warns.
        eventually("the edit to take effect", || {
            (verdict(&store, "shop", "quay.io/app:1") == Some(Verdict::Warn)).then_some(())
        })
        .await;
        let patches = eventually("corp's new generation", || {
            let p = condition_patches(&cluster, "corp");
            (p.len() == 2).then_some(p)
        })
        .await;
        assert_eq!(patches[1]["status"]["observedGeneration"], 2);
        assert_eq!(
            patches[1]["status"]["conditions"][0]["lastTransitionTime"], corp_time,
            "still Ready: the transition time stays"
        );

        // A namespace relabelled: corp no longer selects it.
        assert_eq!(verdict(&store, "shop", "nginx"), Some(Verdict::Deny));
        send_namespace_event(&cluster, "MODIFIED", namespace("shop", json!({"env": "staging"})));
        eventually("the relabel", || (verdict(&store, "shop", "nginx") == Some(Verdict::Allow)).then_some(())).await;

        // Deleted through the watch.
        send_policy_event(&cluster, "DELETED", edited);
        eventually("the delete", || (policy_names(&store) == ["steady"]).then_some(())).await;

        // An outage: the watch expires (410), the relist fails once; admission keeps the last
        // snapshot meanwhile. While the watch was down, steady was deleted and late created.
        {
            let mut c = cluster.lock().unwrap();
            c.failing_policy_lists = 1;
            c.policies_rv = 200;
            c.policies = vec![policy("late", 1, "30", json!({"trustedRegistries": ["ghcr.io/org"]}))];
        }
        send_policy_event(
            &cluster,
            "ERROR",
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "too old resource version", "reason": "Expired", "code": 410}),
        );
        eventually("the failed relist", || (cluster.lock().unwrap().failing_policy_lists == 0).then_some(())).await;
        assert_eq!(policy_names(&store), ["steady"], "the last good snapshot stays during the outage");
        assert!(store.is_ready());
        eventually("the relist", || (policy_names(&store) == ["late"]).then_some(())).await;
        assert_eq!(verdict(&store, "dev", "ghcr.io/org/app:1"), Some(Verdict::Allow));
        assert!(
            trustgate_metrics(&registry)
                .contains(r#"trustgate_watch_errors_total{resource="trustedregistrypolicies"} 2"#)
        );

        // Shutdown releases the lease.
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("run ends on shutdown").unwrap().unwrap();
        let lease = cluster.lock().unwrap().lease.clone().unwrap();
        assert_eq!(lease["spec"].get("holderIdentity"), None, "released: {lease}");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_follower_admits_but_writes_no_status_and_runs_no_audit() {
        let now = Timestamp::now().to_string();
        let cluster = Arc::new(Mutex::new(Cluster {
            policies: vec![policy("corp", 1, "11", json!({"trustedRegistries": ["registry.my.com"]}))],
            policies_rv: 100,
            namespaces: vec![namespace("shop", json!({}))],
            lease: Some(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "trustgate", "namespace": "trustgate-system", "resourceVersion": "1"},
                "spec": {"holderIdentity": "pod-other", "leaseDurationSeconds": 15, "renewTime": now}})),
            lease_rv: 1,
            ..Cluster::default()
        }));
        let (client, handle) = mock_client();
        let server = serve(handle, cluster.clone());
        let store = Store::new();
        let shutdown = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::with_prefix("trustgate");
        let config = WatchConfig {
            lease_namespace: "trustgate-system".into(),
            lease_name: "trustgate".into(),
            identity: "pod-b".into(),
            audit_interval: Duration::from_secs(1),
            policy_reports: false,
            installation: trustgate_cluster::policy_report::Installation::default(),
        };
        let run = tokio::spawn(KubeSource::new(config, &mut registry).run(client, store.clone(), shutdown.clone()));
        eventually("readiness", || store.is_ready().then_some(())).await;
        assert_eq!(verdict(&store, "shop", "nginx"), Some(Verdict::Deny), "followers enforce too");
        // Two lease rounds (2s apart) and two audit intervals' worth of time.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("run ends on shutdown").unwrap().unwrap();
        let c = cluster.lock().unwrap();
        let writes: Vec<String> = c.log.iter().filter(|r| r.method != "GET").map(Recorded::line).collect();
        assert_eq!(writes, Vec::<String>::new(), "a follower writes nothing, not even a lease release");
        let lease_reads = c.requests("GET", LEASE).len();
        assert!(lease_reads >= 2, "it keeps trying to acquire: {lease_reads} reads");
        let audits = c.log.iter().filter(|r| r.uri.contains("/pods") || r.uri.contains("/deployments")).count();
        assert_eq!(audits, 0, "only the leader audits");
        assert!(trustgate_metrics(&registry).contains("trustgate_leader 0"));
        drop(c);
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_by_a_hung_api_server_stops_leading_at_its_renew_deadline() {
        let cluster = Arc::new(Mutex::new(Cluster {
            policies: vec![policy("corp", 1, "11", json!({"trustedRegistries": ["registry.my.com"]}))],
            policies_rv: 100,
            namespaces: vec![namespace("shop", json!({}))],
            ..Cluster::default()
        }));
        let (client, handle) = mock_client();
        let server = serve(handle, cluster.clone());
        let store = Store::new();
        let shutdown = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::with_prefix("trustgate");
        let config = WatchConfig {
            lease_namespace: "trustgate-system".into(),
            lease_name: "trustgate".into(),
            identity: "pod-a".into(),
            audit_interval: Duration::from_secs(3600),
            policy_reports: false,
            installation: trustgate_cluster::policy_report::Installation::default(),
        };
        let run = tokio::spawn(KubeSource::new(config, &mut registry).run(client, store.clone(), shutdown.clone()));
        let lease_rv = || cluster.lock().unwrap().lease_rv;
        eventually("the lease", || (lease_rv() == 1).then_some(())).await;
        // Right after a renewal, the API server stops answering lease requests.
        eventually("a renewal", || (lease_rv() == 2).then_some(())).await;
        cluster.lock().unwrap().hang_leases = true;
        let renewed = tokio::time::Instant::now();
        assert!(trustgate_metrics(&registry).contains("trustgate_leader 1"));
        eventually("stepping down", || trustgate_metrics(&registry).contains("trustgate_leader 0").then_some(())).await;
        let led_for = renewed.elapsed();
        assert!(
            led_for <= Duration::from_secs(10),
            "led {led_for:?} after its last renewal, past the 10s renew deadline (the lease lasts 15s)"
        );
        assert!(led_for >= Duration::from_secs(9), "stepped down early, after {led_for:?}");
        assert!(store.is_ready(), "admission goes on");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("run ends on shutdown").unwrap().unwrap();
        server.abort();
    }

    fn send_policy_event(cluster: &Mutex<Cluster>, kind: &str, object: Value) {
        let c = cluster.lock().unwrap();
        c.policy_watch.as_ref().expect("a policy watch is open").unbounded_send(watch_event(kind, object)).unwrap();
    }

    fn send_namespace_event(cluster: &Mutex<Cluster>, kind: &str, object: Value) {
        let c = cluster.lock().unwrap();
        c.namespace_watch
            .as_ref()
            .expect("a namespace watch is open")
            .unbounded_send(watch_event(kind, object))
            .unwrap();
    }

    fn trustgate_metrics(registry: &prometheus_client::registry::Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }
}

/// The PolicyReport writer: which objects it creates, replaces and deletes, and what it does
/// when the CRD is missing.
mod policy_reports {
    use super::*;
    use trustgate_cluster::audit::Owner;
    use trustgate_cluster::policy_report::{Installation, PolicyReports, ReportWriter, Synced};
    use trustgate_core::api::Mode;
    use trustgate_core::engine::{Violation, ViolationKind};

    const LIST: &str = "GET /apis/wgpolicyk8s.io/v1alpha2/policyreports?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dtrustgate%2Capp.kubernetes.io%2Finstance%3Dtrustgate&limit=500";

    fn violation(image: &str) -> Violation {
        Violation {
            policy: Arc::from("corp"),
            mode: Mode::Enforce,
            container: "app".into(),
            field: "spec.containers[0]".into(),
            image: image.into(),
            normalized: None,
            reason: "is not trusted".into(),
            kind: ViolationKind::Untrusted,
            policy_message: None,
            existing: false,
            inherited: false,
        }
    }

    /// The reports an audit that found one untrusted Pod in each of `namespaces` writes.
    fn desired(namespaces: &[&str], now: &str) -> std::collections::BTreeMap<String, kube::api::DynamicObject> {
        let mut reports = PolicyReports::default();
        for ns in namespaces {
            let owner = Owner { api_version: "v1".into(), kind: "Pod", namespace: ns, name: "p", uid: "u" };
            reports.record(&owner, &[violation("nginx")]);
        }
        reports.into_objects(&Installation::default(), time(now))
    }

    /// A report as the API server lists it.
    fn listed(ns: &str, name: &str, rv: &str, data: &Value) -> Value {
        let mut object = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                "labels": {"app.kubernetes.io/managed-by": "trustgate", "app.kubernetes.io/instance": "trustgate"}}});
        for (k, v) in data.as_object().unwrap().iter().filter(|(k, _)| *k == "summary" || *k == "results") {
            object[k] = v.clone();
        }
        object
    }

    #[tokio::test]
    async fn creates_new_replaces_changed_keeps_unchanged_and_deletes_stale_reports() {
        let wanted = desired(&["dev", "new", "shop"], "2026-05-01T00:00:00Z");
        // dev: the same findings written by an earlier run (other timestamps); shop: different ones.
        let earlier = desired(&["dev"], "2026-04-01T00:00:00Z");
        let mut changed = serde_json::to_value(&wanted["shop"]).unwrap();
        changed["summary"]["fail"] = json!(7);
        let existing = vec![
            listed("dev", "trustgate", "11", &earlier["dev"].data),
            listed("gone", "trustgate", "12", &earlier["dev"].data),
            listed("shop", "trustgate", "13", &changed),
            listed("shop", "old-name", "14", &earlier["dev"].data),
        ];
        let (client, mut handle) = mock_client();
        let server = async {
            let mut requests = Vec::new();
            while requests.len() < 5 {
                let (request, send) = next_request(&mut handle).await;
                let reply = match request.method.as_str() {
                    "GET" => json_response(200, list("PolicyReportList", "20", existing.clone(), None)),
                    "DELETE" => json_response(200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                    _ => json_response(if request.method == "POST" { 201 } else { 200 }, request.body.clone().unwrap()),
                };
                send.send_response(reply);
                requests.push(request);
            }
            requests
        };
        let mut writer = ReportWriter::new(client, Installation::default());
        // A sixth request (say, a rewrite of the unchanged report) would find no server: bounded.
        let (synced, requests) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(writer.sync(wanted), server) })
                .await
                .expect("exactly five requests");
        assert_eq!(synced.unwrap(), Synced { created: 1, updated: 1, unchanged: 1, deleted: 2, failed: 0 });
        let lines: Vec<String> = requests.iter().map(Recorded::line).collect();
        assert_eq!(
            lines,
            [
                LIST,
                "DELETE /apis/wgpolicyk8s.io/v1alpha2/namespaces/gone/policyreports/trustgate?",
                "PUT /apis/wgpolicyk8s.io/v1alpha2/namespaces/shop/policyreports/trustgate?&fieldManager=trustgate",
                "DELETE /apis/wgpolicyk8s.io/v1alpha2/namespaces/shop/policyreports/old-name?",
                "POST /apis/wgpolicyk8s.io/v1alpha2/namespaces/new/policyreports?&fieldManager=trustgate",
            ]
        );
        let put = requests[2].body.as_ref().unwrap();
        assert_eq!(put["metadata"]["resourceVersion"], "13", "the replace is guarded by the listed version");
        assert_eq!(put["summary"]["fail"], 1);
        let post = requests[4].body.as_ref().unwrap();
        assert_eq!(post["metadata"]["namespace"], "new");
        assert_eq!(post["metadata"]["labels"]["app.kubernetes.io/managed-by"], "trustgate");
        assert_eq!(
            post["results"][0]["resources"][0],
            json!({"apiVersion": "v1", "kind": "Pod", "namespace": "new", "name": "p", "uid": "u"})
        );
    }

    /// Log lines written while the guard lives, for the current thread.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn count(&self, needle: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
        }
    }

    #[tokio::test]
    async fn a_missing_crd_is_said_once_and_is_no_error() {
        let logs = Logs::default();
        let writer_logs = logs.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer_logs.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (client, mut handle) = mock_client();
        let mut writer = ReportWriter::new(client, Installation::default());
        // 404, 404, then the CRD is there (nothing listed, one create), then 404 again.
        for (round, crd) in [false, false, true, false].into_iter().enumerate() {
            let server = async {
                let (request, send) = next_request(&mut handle).await;
                assert_eq!(request.line(), LIST);
                if !crd {
                    send.send_response(status_response(404, "NotFound"));
                    return 0;
                }
                send.send_response(json_response(200, list("PolicyReportList", "1", vec![], None)));
                let (request, send) = next_request(&mut handle).await;
                assert_eq!(request.method, "POST");
                send.send_response(json_response(201, request.body.clone().unwrap()));
                1
            };
            let (synced, created) = tokio::join!(writer.sync(desired(&["shop"], "2026-05-01T00:00:00Z")), server);
            assert_eq!(synced.unwrap().created, created, "round {round}");
        }
        assert_eq!(logs.count("CRD is not installed"), 2, "once, and once more after it came and went");
        assert_eq!(logs.count("CRD is installed now"), 1);
    }
}

/// `check --cluster` against a mocked API server: read requests only, in the namespace asked.
mod what_if {
    use super::*;
    use trustgate::cli::check::Report;
    use trustgate::cli::what_if::check_client;
    use trustgate_core::engine::{PolicySet, Verdict};

    #[tokio::test]
    async fn lists_one_namespace_rolls_up_owned_objects_and_survives_unreadable_namespace_labels() {
        let policies: Vec<trustgate_core::api::TrustedRegistryPolicy> = serde_json::from_value(json!([
            {"metadata": {"name": "corp"}, "spec": {"trustedRegistries": ["registry.my.com"]}},
            {"metadata": {"name": "prod"}, "spec": {"mode": "Warn", "trustedRegistries": ["registry.my.com/prod"],
                "namespaceSelector": {"matchLabels": {"env": "prod"}}}},
        ]))
        .unwrap();
        let (client, mut handle) = mock_client();
        let server = async {
            let mut lines = Vec::new();
            loop {
                let (request, send) = next_request(&mut handle).await;
                lines.push(request.line());
                let reply = match request.uri.as_str() {
                    "/api/v1/namespaces/shop" => status_response(403, "Forbidden"),
                    "/apis/apps/v1/namespaces/shop/replicasets?&limit=500" => json_response(
                        200,
                        list(
                            "ReplicaSetList",
                            "5",
                            vec![json!({"metadata": {"name": "web-1", "namespace": "shop",
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]},
                                "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})],
                            None,
                        ),
                    ),
                    "/api/v1/namespaces/shop/pods?&limit=500" => json_response(
                        200,
                        list(
                            "PodList",
                            "5",
                            vec![json!({"metadata": {"name": "solo", "namespace": "shop"},
                                "spec": {"containers": [{"name": "a", "image": "registry.my.com/dev/a:1"}]}})],
                            None,
                        ),
                    ),
                    _ => json_response(200, list("List", "5", vec![], None)),
                };
                send.send_response(reply);
                if request.uri.starts_with("/api/v1/namespaces/shop/pods") {
                    return lines;
                }
            }
        };
        let now = time("2026-01-01T00:00:00Z");
        let (report, lines) = tokio::join!(
            check_client(&client, "cluster:test", PolicySet::compile(&policies).0, Some("shop"), now),
            server
        );
        assert!(lines.iter().all(|l| l.starts_with("GET ")), "read-only: {lines:?}");
        assert_eq!(lines[0], "GET /api/v1/namespaces/shop");
        assert!(lines[1..].iter().all(|l| l.contains("/namespaces/shop/")), "{lines:?}");
        assert_eq!(lines.len(), 9, "the namespace, then the eight audited kinds");
        let report: Report = report.unwrap();
        let objects: Vec<(&str, &str, Verdict)> =
            report.objects.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.decision)).collect();
        // The ReplicaSet belongs to a Deployment (not listed here): left to it. Labels unknown:
        // the prod policy's selector is taken to match, so solo is warned.
        assert_eq!(objects, [("Pod", "solo", Verdict::Warn)]);
        assert_eq!(report.objects[0].source, "cluster:test");
        assert_eq!(report.summary.warned, 1);
    }
}
