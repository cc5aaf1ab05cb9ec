//! A mocked API server for the tests of the leader's jobs: kube's `Client` over a `tower-test`
//! mock service (as tests/kube_api.rs does), each answer written by the test. Test-only;
//! imports nothing of the crate.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tower_test::mock::{self, SendResponse};

pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
pub(crate) type Handle = mock::Handle<Request<Body>, Response<ResponseBody>>;
/// Where the answer to one request goes; dropped unused, the request never gets one.
pub(crate) type Reply = SendResponse<Response<ResponseBody>>;

pub(crate) fn client() -> (Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<ResponseBody>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server received it.
#[derive(Debug)]
pub(crate) struct Received {
    /// `METHOD path?query`.
    pub line: String,
    pub body: Option<Value>,
}

/// The next request, if one comes `within` this long.
pub(crate) async fn next_request(handle: &mut Handle, within: Duration) -> Option<(Received, Reply)> {
    let (request, reply) = tokio::time::timeout(within, handle.next_request()).await.ok()??;
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("a request body");
    let path = parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default();
    let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("request bodies are JSON"));
    Some((Received { line: format!("{} {path}", parts.method), body }, reply))
}

pub(crate) fn json_response(status: u16, value: &Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).expect("JSON"))).boxed_unsync();
    Response::builder().status(status).header("content-type", "application/json").body(body).expect("a response")
}

/// A list of `items`, complete in one page.
pub(crate) fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// An answer whose body never ends, as from a server that froze half-way through, and a
/// receiver that resolves once the client drops the body: the call was abandoned.
pub(crate) fn endless() -> (Response<ResponseBody>, oneshot::Receiver<()>) {
    let (dropped, abandoned) = oneshot::channel::<()>();
    let trailers = async move {
        // Held until the body is dropped; its sender dropping is what the receiver sees.
        let _dropped = dropped;
        std::future::pending::<Option<Result<HeaderMap, Infallible>>>().await
    };
    let body = Full::new(Bytes::new()).with_trailers(trailers).boxed_unsync();
    let response =
        Response::builder().status(200).header("content-type", "application/json").body(body).expect("a response");
    (response, abandoned)
}
