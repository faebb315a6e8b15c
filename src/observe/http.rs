//! The metrics endpoint: `GET /metrics` in the Prometheus text format over
//! plain HTTP/1.1, nothing else (404 for other paths, 405 for other
//! methods). It is off unless `[metrics] listen` is set; bind it to a
//! private address, as it has no authentication.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Metrics;

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Scrapers connected at once; more are closed on accept (a scraper is
/// one Prometheus, not the public).
const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request's headers.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    crate::daemon::accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "metrics",
        shutdown,
        |stream, peer, permit| {
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let result = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| answer(req, Arc::clone(&metrics))),
                    )
                    .await;
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
                drop(permit);
            });
        },
    )
    .await;
}

async fn answer(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = respond(req.method(), req.uri().path(), &metrics);
    let mut out = Response::new(Full::new(Bytes::from(body)));
    *out.status_mut() = status;
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(out)
}

/// The status, content type and body for a request.
fn respond(method: &Method, path: &str, metrics: &Metrics) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (path, method) {
        ("/metrics", &Method::GET) => (StatusCode::OK, CONTENT_TYPE_TEXT, metrics.render()),
        // HEAD is answered as GET; hyper leaves the body out.
        ("/metrics", &Method::HEAD) => (StatusCode::OK, CONTENT_TYPE_TEXT, String::new()),
        ("/metrics", _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is allowed here\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let m = Metrics::new();
        let (s, ct, body) = respond(&Method::GET, "/metrics", &m);
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct, CONTENT_TYPE_TEXT);
        assert!(body.contains("# TYPE dropzone_sessions gauge"));
        assert_eq!(respond(&Method::GET, "/", &m).0, StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&Method::GET, "/metrics/x", &m).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", &m).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
