//! The HTTPS admission server: TLS listener, HTTP/1.1 and HTTP/2 (by ALPN), routing, limits,
//! timeouts, connection limits (see [`crate::connections`]) and graceful drain. A thin shell: every decision is made by the
//! pure [`crate::review`] functions on the current [`Snapshot`](trustgate_core::engine::snapshot::Snapshot).
//!
//! The hot path reads the store once per request, never holds a lock across an `.await`, and
//! never waits on a policy source or on disk.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::{Empty, Field, Value};

use crate::body_budget::{BodyBudget, BudgetLimits, Lease, Refusal};
use crate::connections::{self, Activity, ConnectionTable, Shed, Slot};
use crate::inheritance::ControllerIdentities;
use crate::metrics::{AdmissionMetrics, Endpoint};
use crate::review::{AdmissionRequest, ImageRequest, Outcome};
use trustgate_core::engine::snapshot::Store;
use trustgate_core::engine::{Verdict, Violation};

/// Request bodies above this size are refused with 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// How much of an over-limit HTTP/2 body is read and discarded after the 413, so that the
/// stream ends with the client's last frame instead of a reset: curl, for one, reports a reset
/// (even `NO_ERROR`) during its upload as an error and drops the 413 it already received.
const MAX_DRAIN: usize = 16 * 1024 * 1024;

/// HTTP/2 streams a client may have open on one connection; more are refused (`REFUSED_STREAM`).
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2 flow-control windows. Body bytes a client sends before the server reads them wait in
/// the connection's receive buffer, outside the body budget, so these bound that memory per
/// connection (512 KiB for all its streams). Reviews (2 to 100 KB) fit a stream's window; a
/// larger body flows as the server reads it.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 512 * 1024;

/// For a body of unknown length (chunked HTTP/1.1, HTTP/2 without `content-length`), room is
/// reserved this far ahead of what has arrived before the next frame is read (an HTTP/2 DATA
/// frame is at most 16 KiB here, an HTTP/1.1 read at most 64 KiB).
const UNKNOWN_LENGTH_STEP: usize = 64 * 1024;

/// Largest HTTP/2 or HTTP/1.1 header list accepted (the API server sends well under 1 KiB).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Largest HTTP/1.1 read buffer of a connection: twice the header list, so headers always fit.
/// A body waiting for room in the budget has at most this much of it read ahead.
const H1_READ_BUFFER: usize = 2 * MAX_HEADER_LIST as usize;

/// Limits and timeouts of the admission server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body (413 above).
    pub max_body: usize,
    /// Body bytes held at once, in all and per client address (503 past `request_timeout`).
    pub body_budget: BudgetLimits,
    /// Time allowed for the TLS handshake, from accept to its end.
    pub handshake_timeout: Duration,
    /// Time allowed for each request's headers. For HTTP/1.1 it also bounds how long a
    /// kept-alive connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Time allowed to receive a request's body (408 after it).
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once. At the cap an idle or handshaking connection of the address
    /// holding the most is shed for a new one; if every one is busy the new one is refused.
    pub max_connections: usize,
    /// Connections open at once from one source address; more are refused.
    pub max_connections_per_source: usize,
    /// How long the listener stays open after shutdown starts (see [`serve`]).
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish once the listener is closed.
    pub drain_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: MAX_BODY,
            body_budget: BudgetLimits::default(),
            handshake_timeout: Duration::from_secs(3),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_connections: 1024,
            max_connections_per_source: 256,
            shutdown_delay: Duration::ZERO,
            drain_grace: Duration::from_secs(25),
        }
    }
}

/// The admission service: routes requests and answers reviews.
#[derive(Debug)]
pub struct Admission {
    store: Arc<Store>,
    metrics: AdmissionMetrics,
    controllers: ControllerIdentities,
    budget: Arc<BodyBudget>,
    max_body: usize,
    request_timeout: Duration,
}

type Body = Full<Bytes>;

impl Admission {
    pub fn new(store: Arc<Store>, metrics: AdmissionMetrics, limits: &Limits) -> Arc<Self> {
        Self::with_controllers(store, metrics, limits, ControllerIdentities::BuiltIn)
    }

    /// [`Admission::new`] whose CREATEs by `controllers` from an admitted template inherit that
    /// admission (`--controller-identity`).
    pub fn with_controllers(
        store: Arc<Store>,
        metrics: AdmissionMetrics,
        limits: &Limits,
        controllers: ControllerIdentities,
    ) -> Arc<Self> {
        let budget = BodyBudget::new(limits.body_budget, metrics.body_budget());
        Arc::new(Admission {
            store,
            metrics,
            controllers,
            budget,
            max_body: limits.max_body,
            request_timeout: limits.request_timeout,
        })
    }

    /// Answers one HTTP request from the client address `peer`.
    pub async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight();
        let endpoint = match request.uri().path() {
            "/validate" => Endpoint::Validate,
            "/imagereview" => Endpoint::ImageReview,
            path => {
                return self.reject(
                    StatusCode::NOT_FOUND,
                    format!("no such path {path:?}: POST AdmissionReviews to /validate, ImageReviews to /imagereview"),
                );
            }
        };
        if request.method() != Method::POST {
            let mut response = self.reject(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {} is not allowed: use POST", request.method(), request.uri().path()),
            );
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body as u64) {
            if request.version() == http::Version::HTTP_2 {
                self.drain(request.into_body());
            }
            return self.too_large();
        }
        let http2 = request.version() == http::Version::HTTP_2;
        let mut incoming = request.into_body();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut lease = self.budget.lease(peer);
        let body = match read_body(&mut incoming, declared, self.max_body, &mut lease, deadline).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                drop(lease);
                if http2 {
                    self.drain(incoming);
                }
                return self.too_large();
            }
            Err(BodyError::Read(e)) => {
                return self.reject(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"));
            }
            Err(BodyError::Timeout) => {
                return self.reject(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not arrive within {:?}", self.request_timeout),
                );
            }
            Err(BodyError::Budget(refusal)) => {
                // The rest of the body is never read: HTTP/1.1 closes the connection after
                // this answer, HTTP/2 resets the stream.
                let mut response = self.reject(StatusCode::SERVICE_UNAVAILABLE, format!("{refusal}: retry later"));
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        };
        // Read whole: from here the request is decided without waiting, so it keeps its room.
        lease.settle();
        // Read once: the whole review is decided on this one snapshot.
        let Some(snapshot) = self.store.load() else {
            return self.reject(StatusCode::SERVICE_UNAVAILABLE, "policies are not loaded yet".to_owned());
        };
        let now = jiff::Timestamp::now();
        match endpoint {
            Endpoint::Validate => {
                self.validate(&body, |request| request.review_with(&snapshot, &self.controllers, now), started)
            }
            Endpoint::ImageReview => self.image_review(&body, |request| request.review(&snapshot, now), started),
        }
    }

    fn validate(
        &self,
        body: &[u8],
        review: impl FnOnce(&AdmissionRequest<'_>) -> crate::review::Answer,
        started: Instant,
    ) -> Response<Body> {
        let span = tracing::info_span!(
            "admission",
            uid = Empty,
            kind = Empty,
            namespace = Empty,
            // Not `name`: the JSON formatter writes the span's own name under that key.
            object_name = Empty,
            operation = Empty,
            subresource = Empty,
            dry_run = Empty,
            decision = Empty,
            violations = Empty,
            micros = Empty,
        );
        let request = match AdmissionRequest::parse(body) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(parent: &span, %error, "malformed AdmissionReview");
                return self.reject(StatusCode::BAD_REQUEST, error.to_string());
            }
        };
        let answer = review(&request);
        let verdict = answer.outcome.verdict();
        let elapsed = started.elapsed();
        // Every field in one `record`: the JSON log formatter re-parses a span's recorded fields
        // each time more are added. The review in between is pure and logs nothing.
        record(
            &span,
            [
                ("uid", &&*request.uid as &dyn Value),
                ("kind", &&*request.kind),
                ("namespace", &&*request.namespace),
                ("object_name", &&*request.name),
                ("operation", &request.operation.as_str()),
                ("subresource", &&*request.sub_resource),
                ("dry_run", &request.dry_run),
                ("decision", &verdict.as_str()),
                ("violations", &answer.outcome.violations().len()),
                ("micros", &micros(elapsed)),
            ],
        );
        log_decision(&span, &answer.outcome);
        if let Some(from) = &answer.inherited {
            // Controllers ignore warnings: this line and the counter are what operators see.
            let mut policies: Vec<&str> =
                answer.outcome.violations().iter().filter(|v| v.inherited).map(|v| &*v.policy).collect();
            policies.dedup();
            tracing::info!(
                parent: &span,
                controller = %from.controller,
                owner = %from.owner,
                policies = %policies.join(","),
                "allowed by inheritance: a controller created it from a template trustgate admitted (existingImages: Allow)"
            );
            for policy in policies {
                self.metrics.inherited(policy);
            }
        }
        self.metrics.decided(Endpoint::Validate, &request.kind, request.operation.as_str(), verdict, elapsed);
        json(answer.body)
    }

    fn image_review(
        &self,
        body: &[u8],
        review: impl FnOnce(&ImageRequest<'_>) -> crate::review::Answer,
        started: Instant,
    ) -> Response<Body> {
        let span = tracing::info_span!(
            "imagereview",
            namespace = Empty,
            images = Empty,
            decision = Empty,
            violations = Empty,
            micros = Empty,
        );
        let request = match ImageRequest::parse(body) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(parent: &span, %error, "malformed ImageReview");
                return self.reject(StatusCode::BAD_REQUEST, error.to_string());
            }
        };
        let answer = review(&request);
        let verdict = answer.outcome.verdict();
        let elapsed = started.elapsed();
        record(
            &span,
            [
                ("namespace", &&*request.namespace as &dyn Value),
                ("images", &request.images()),
                ("decision", &verdict.as_str()),
                ("violations", &answer.outcome.violations().len()),
                ("micros", &micros(elapsed)),
            ],
        );
        log_decision(&span, &answer.outcome);
        self.metrics.decided(Endpoint::ImageReview, "ImageReview", "CREATE", verdict, elapsed);
        json(answer.body)
    }

    /// Reads and discards the rest of an over-limit HTTP/2 body (at most [`MAX_DRAIN`] bytes,
    /// within the request timeout) while the 413 goes out.
    fn drain(&self, mut body: Incoming) {
        let timeout = self.request_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, async {
                let mut drained = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    drained += frame.data_ref().map_or(0, Bytes::len);
                    if drained > MAX_DRAIN {
                        break;
                    }
                }
            })
            .await;
        });
    }

    fn too_large(&self) -> Response<Body> {
        self.reject(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body exceeds {} bytes", self.max_body))
    }

    fn reject(&self, status: StatusCode, reason: String) -> Response<Body> {
        self.metrics.rejected(status.as_u16());
        if status != StatusCode::BAD_REQUEST {
            tracing::debug!(status = status.as_u16(), %reason, "request rejected");
        }
        let mut response = Response::new(Full::new(Bytes::from(reason + "\n")));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    Read(hyper::Error),
    /// The body did not arrive by the deadline.
    Timeout,
    /// The body budget had no room for it.
    Budget(Refusal),
}

/// Reads a request body of at most `max` bytes into one buffer, reserving its room in the
/// budget before reading the bytes that fill it; over `max`, leaves the rest in `body`.
///
/// With a declared length, the whole body is reserved and allocated once. Without one, the
/// buffer doubles, and the budget holds the old and the new buffer while it moves.
async fn read_body(
    body: &mut Incoming,
    declared: Option<u64>,
    max: usize,
    lease: &mut Lease,
    deadline: tokio::time::Instant,
) -> Result<Bytes, BodyError> {
    let mut buffer = Vec::new();
    if let Some(declared) = declared {
        // At most `max`: a larger declared length was answered 413 before any read.
        let declared = usize::try_from(declared).unwrap_or(usize::MAX).min(max);
        make_room(&mut buffer, declared, max, lease, deadline).await?;
    }
    loop {
        if declared.is_none() {
            make_room(&mut buffer, UNKNOWN_LENGTH_STEP, max, lease, deadline).await?;
        }
        let frame = tokio::select! {
            frame = tokio::time::timeout_at(deadline, body.frame()) => frame.map_err(|_| BodyError::Timeout)?,
            () = lease.preempted() => return Err(BodyError::Budget(Refusal::Preempted)),
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(BodyError::Read)?;
        if let Some(data) = frame.data_ref() {
            if buffer.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            // A frame larger than the room made for it: account for it before keeping it.
            make_room(&mut buffer, data.len(), max, lease, deadline).await?;
            buffer.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(buffer))
}

/// Makes `buffer` able to take `additional` more bytes (capped at `max` in all) without moving,
/// with the room reserved in `lease` first.
async fn make_room(
    buffer: &mut Vec<u8>,
    additional: usize,
    max: usize,
    lease: &mut Lease,
    deadline: tokio::time::Instant,
) -> Result<(), BodyError> {
    let needed = (buffer.len() + additional).min(max);
    if needed <= lease.bytes() {
        return Ok(());
    }
    let old = lease.bytes();
    // Exactly what was declared the first time; doubling after that.
    let new = if old == 0 { needed } else { needed.max(old * 2).min(max) };
    lease.grow(new, deadline).await.map_err(BodyError::Budget)?;
    buffer.reserve_exact(new - buffer.len());
    lease.shrink(old);
    Ok(())
}

/// Logs the one line of a decision, inside the request's span: at info when anything was
/// found (a denial, a warning, an audit finding), at debug for a clean allow.
fn log_decision(span: &tracing::Span, outcome: &Outcome) {
    let violations = outcome.violations();
    match outcome {
        Outcome::Unreadable(reason) => tracing::warn!(parent: span, %reason, "denied: object unreadable"),
        Outcome::Evaluated(_) if outcome.verdict() == Verdict::Deny => {
            tracing::info!(parent: span, reasons = %Reasons(violations), "denied")
        }
        Outcome::Evaluated(_) if !violations.is_empty() => {
            tracing::info!(parent: span, reasons = %Reasons(violations), "allowed with violations")
        }
        Outcome::Skipped => tracing::debug!(parent: span, "allowed: not checked"),
        Outcome::Evaluated(_) => tracing::debug!(parent: span, "allowed"),
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Every violation of a decision, compact, for the log line:
/// `Enforce corporate Untrusted spec.template.spec.containers[0] "nginx:1.25"; ...` (with
/// ` (existing image)` when existingImages admitted it as a warning). The full
/// sentences go to the user in the response; the log names the policy, the rule, the field and
/// the image (quoted: it comes from the request).
struct Reasons<'a>(&'a [Violation]);

impl std::fmt::Display for Reasons<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} {} {:?} {} {:?}", v.mode, v.policy, v.kind, v.field, v.image)?;
            if v.existing {
                // Admitted by existingImages: Allow; the mode shown is the one applied.
                f.write_str(" (existing image)")?;
            }
        }
        Ok(())
    }
}

/// Records several fields on a span at once: the JSON log formatter re-serializes a span's
/// fields on every `record` call, so fields known together are recorded together.
fn record<const N: usize>(span: &tracing::Span, values: [(&str, &dyn Value); N]) {
    let Some(metadata) = span.metadata() else { return };
    let fields = metadata.fields();
    let resolved =
        values.map(|(name, value)| (fields.field(name).expect("every recorded field is declared on its span"), value));
    let pairs: [(&Field, Option<&dyn Value>); N] = std::array::from_fn(|i| (&resolved[i].0, Some(resolved[i].1)));
    span.record_all(&fields.value_set(&pairs));
}

fn json(body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Serves admission over TLS on `listener` until `shutdown`, then stops accepting, lets
/// in-flight requests finish (at most `limits.drain_grace`) and returns.
///
/// Between `shutdown` and closing the listener lie `limits.shutdown_delay`, in which clients are
/// sent elsewhere without a request failing: HTTP/2 connections get a GOAWAY (the client opens
/// its next stream on a new connection), HTTP/1.1 responses carry `Connection: close` (the
/// client drops the connection after reading it), and new connections are still served the
/// same way. Closing a kept-alive HTTP/1.1 connection while it is idle races with the client
/// sending on it, and a POST lost that way is not retried: the API server's webhook client
/// (HTTP/1.1 only, connections pooled per Service and reused until the server closes them)
/// reports `EOF` or `broken pipe` and, with `failurePolicy: Fail`, rejects the object. With
/// the delay, only connections that stayed idle throughout it are closed that way.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    admission: Arc<Admission>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer of every connection: it must hold a request's headers, and it is
        // resident per connection (1,024 of them) outside the body budget.
        .max_buf_size(H1_READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        // Streams a client opens and resets before they are served (the rapid-reset attack):
        // past this many at once the connection is closed with ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(Some(20))
        // Streams the server had to reset for a client's protocol errors ("MadeYouReset").
        .max_local_error_reset_streams(Some(256))
        // Responses are a few KiB: a client that never opens its window holds at most this
        // much of each response in memory.
        .max_send_buf_size(64 * 1024)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let table = ConnectionTable::new(limits.max_connections, limits.max_connections_per_source);
    let connections = TaskTracker::new();
    let closed = CancellationToken::new();
    let stop_accepting = {
        let (shutdown, delay) = (shutdown.clone(), limits.shutdown_delay);
        async move {
            shutdown.cancelled().await;
            if !delay.is_zero() {
                tracing::info!(?delay, "sending clients elsewhere before closing the listener");
                tokio::time::sleep(delay).await;
            }
        }
    };
    tokio::pin!(stop_accepting);

    loop {
        // Never wait for a free slot before accepting: a connection left in the listen backlog
        // cannot be told apart from the API server's. Accept, then decide.
        let (tcp, peer) = tokio::select! {
            () = &mut stop_accepting => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match table.admit(peer.ip()) {
            connections::Arrival::Admitted { slot, shed } => {
                if let Some(reason) = shed {
                    admission.metrics.connection_shed(reason);
                }
                slot
            }
            connections::Arrival::Refused(reason) => {
                // Debug only: a flood must not turn into a flood of log lines.
                tracing::debug!(%peer, reason = reason.as_str(), "connection refused");
                admission.metrics.connection_refused(reason);
                drop(tcp);
                continue;
            }
        };
        let connection = Connection {
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            admission: admission.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            closed: closed.clone(),
        };
        connections.spawn(connection.serve(tcp, peer, slot));
    }
    // Closing the listener refuses new connections from here on.
    drop(listener);
    closed.cancel();
    connections.close();
    tracing::info!(connections = connections.len(), "draining in-flight requests");
    if tokio::time::timeout(limits.drain_grace, connections.wait()).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            grace = ?limits.drain_grace,
            "drain grace period over: closing the remaining connections"
        );
    }
}

struct Connection {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    admission: Arc<Admission>,
    limits: Limits,
    /// Shutdown has started: send the client elsewhere.
    shutdown: CancellationToken,
    /// The listener is closed: finish what is in flight and close.
    closed: CancellationToken,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr, slot: Slot) {
        let _open = self.admission.metrics.connection_opened();
        let _ = tcp.set_nodelay(true);
        let handshake = tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    self.admission.metrics.connection_shed(Shed::HandshakeTimeout);
                    return;
                }
            },
            // Counted by the accept loop, which chose it.
            () = slot.shed().cancelled() => return,
        };
        let activity = Activity::new();
        slot.established(activity.clone());
        let admission = self.admission.clone();
        let in_flight = activity.clone();
        let http2 = Arc::new(AtomicBool::new(false));
        let (seen_http2, shutdown) = (http2.clone(), self.shutdown.clone());
        let source = peer.ip();
        let service = service_fn(move |request: Request<Incoming>| {
            let admission = admission.clone();
            let guard = in_flight.begin();
            let version = request.version();
            if version == Version::HTTP_2 {
                seen_http2.store(true, Ordering::Relaxed);
            }
            let shutdown = shutdown.clone();
            async move {
                let mut response = admission.handle(request, source).await;
                // HTTP/1.1 while shutting down: the client closes after this response, so the
                // connection is never closed under a request it is sending.
                if shutdown.is_cancelled() && version < Version::HTTP_2 {
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                drop(guard);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(connection);
        // Once closing starts, how long the connection may take to finish: HTTP/2 waits for its
        // open streams, and a client that never opens its flow-control window would hold them
        // (and this task) forever.
        let mut closing: Option<Instant> = None;
        // Shutdown has started and the client was told to go elsewhere.
        let mut told = false;
        loop {
            let idle_deadline = activity.idle_deadline(self.limits.idle_timeout);
            let recheck = idle_deadline.unwrap_or_else(|| Instant::now() + self.limits.idle_timeout);
            let give_up = closing.unwrap_or_else(|| Instant::now() + self.limits.idle_timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    return;
                }
                () = self.shutdown.cancelled(), if closing.is_none() && !told => {
                    // HTTP/2: GOAWAY now, in-flight streams finish. HTTP/1.1 (or nothing
                    // received yet): the next response says `Connection: close`.
                    told = true;
                    if http2.load(Ordering::Relaxed) {
                        // The drain grace period bounds this one.
                        closing = Some(Instant::now() + self.limits.drain_grace);
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = self.closed.cancelled(), if closing.is_none() => {
                    closing = Some(Instant::now() + self.limits.drain_grace);
                    connection.as_mut().graceful_shutdown();
                }
                () = slot.shed().cancelled(), if closing.is_none() => {
                    tracing::debug!(%peer, "shedding idle connection for a new one");
                    closing = Some(Instant::now() + self.limits.request_timeout);
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(recheck.into()), if closing.is_none() => {
                    if activity.idle_deadline(self.limits.idle_timeout).is_some_and(|d| d <= Instant::now()) {
                        tracing::debug!(%peer, "closing idle connection");
                        closing = Some(Instant::now() + self.limits.request_timeout);
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = tokio::time::sleep_until(give_up.into()), if closing.is_some() => {
                    tracing::debug!(%peer, "connection did not close in time: dropping it");
                    return;
                }
            }
        }
    }
}
