//! The plain-HTTP admin port: `/livez`, `/readyz` and `/metrics`.
//!
//! Kept apart from the admission port so that probes and scrapes need no TLS and can never be
//! starved by admission traffic, and so that readiness can be reported while admission drains.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use trustgate_core::engine::snapshot::Store;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct Admin {
    store: Arc<Store>,
    registry: Registry,
}

impl Admin {
    pub fn new(store: Arc<Store>, registry: Registry) -> Arc<Self> {
        Arc::new(Admin { store, registry })
    }

    /// Answers one admin request.
    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if !matches!(path, "/livez" | "/readyz" | "/metrics") {
            return text(StatusCode::NOT_FOUND, "not found: GET /livez, /readyz or /metrics\n".into());
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/livez" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.readiness(),
            _ => self.metrics(),
        }
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        if self.store.is_ready() {
            text(StatusCode::OK, "ready\n".into())
        } else if self.store.load().is_some() {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n".into())
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: policies are not loaded yet\n".into())
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        match crate::metrics::encode(&self.registry) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
                response
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n".into())
            }
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = admin.handle(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustgate_core::engine::snapshot::Snapshot;

    fn get(admin: &Admin, method: Method, path: &str) -> (StatusCode, String) {
        let request = Request::builder().method(method).uri(path).body(()).unwrap();
        let response = admin.handle(&request);
        let status = response.status();
        let body = futures_body(response);
        (status, body)
    }

    fn futures_body(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(response.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn readiness_follows_the_store() {
        let store = Store::new();
        let mut registry = crate::metrics::registry();
        crate::metrics::SnapshotCollector::register(&mut registry, store.clone());
        let admin = Admin::new(store.clone(), registry);
        assert_eq!(get(&admin, Method::GET, "/livez"), (StatusCode::OK, "ok\n".into()));
        let (status, body) = get(&admin, Method::GET, "/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not loaded yet"), "{body}");

        store.publish(Snapshot::default());
        assert_eq!(get(&admin, Method::GET, "/readyz").0, StatusCode::OK);
        store.start_draining();
        let (status, body) = get(&admin, Method::GET, "/readyz");
        assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n"));
    }

    #[test]
    fn metrics_are_openmetrics_and_unknown_routes_fail() {
        let store = Store::new();
        let mut registry = crate::metrics::registry();
        crate::metrics::SnapshotCollector::register(&mut registry, store.clone());
        let admin = Admin::new(store, registry);
        let request = Request::builder().uri("/metrics").body(()).unwrap();
        let response = admin.handle(&request);
        assert_eq!(response.headers()[CONTENT_TYPE], OPENMETRICS);
        let body = futures_body(response);
        assert!(body.contains("trustgate_ready 0"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(get(&admin, Method::GET, "/nope").0, StatusCode::NOT_FOUND);
        assert_eq!(get(&admin, Method::POST, "/readyz").0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
