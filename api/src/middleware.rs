//! Cross-cutting request handling: the request id (taken from `X-Request-ID`
//! when it is 1 to 128 of `A-Z a-z 0-9 - _ . :`, else generated) on every
//! response, log line and audit entry; the HTTP metrics, labelled from fixed
//! sets only; and the guard of every request: a timeout and a limit on the
//! requests handled at once, past which a 503 is answered at once.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::HeaderValue,
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the request being handled (empty outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A caller's request id is kept only when it cannot mean anything to a log
/// reader, a terminal or a JSON consumer: 1 to 128 characters of a UUID's or
/// a trace id's alphabet.
pub fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut res = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    span.in_scope(|| {
        tracing::info!(status = res.status().as_u16(), "request finished");
    });
    res
}

/// The method as a metric label: one of the methods the api knows, else `other`.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times every request by method, route template (`unmatched`
/// when no route matched) and status, so the series are bounded by the route
/// list whatever a client sends.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method()).to_owned();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    res
}

/// The request timeout and the in-flight limit of [`guard`].
#[derive(Clone)]
pub struct Guard {
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    timeout: std::time::Duration,
}

impl Guard {
    pub fn new(http: &clicknback_core::config::HttpConfig) -> Self {
        Self {
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(http.max_in_flight)),
            timeout: http.request_timeout,
        }
    }
}

/// At most `HTTP_MAX_IN_FLIGHT` requests are handled at once: one more is
/// answered 503 `overloaded` with `Retry-After` at once rather than queued
/// (load shedding). `/healthz` and `/readyz` are never shed, so a flood does
/// not make an orchestrator think the process is dead. A request not
/// answered within `HTTP_REQUEST_TIMEOUT_SECS` is dropped and answered 503
/// `request_timeout`.
pub async fn guard(
    axum::extract::State(g): axum::extract::State<Guard>,
    req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let health = matches!(req.uri().path(), "/healthz" | "/readyz");
    let _permit = if health {
        None
    } else {
        match g.in_flight.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics::counter!("http_requests_shed_total").increment(1);
                return crate::error::ApiError::overloaded(
                    "the api is handling as many requests as it takes; retry shortly",
                )
                .into_response();
            }
        }
    };
    match tokio::time::timeout(g.timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!("http_request_timeouts_total").increment(1);
            crate::error::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request was not answered within {} seconds",
                    g.timeout.as_secs()
                ),
            )
            .with_header(axum::http::header::RETRY_AFTER, "1")
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_kept_only_when_plain() {
        for ok in ["0196f0e2-7c1d-7b3a-9d7e-1c2b3a4d5e6f", "trace:abc.1_2", "a"] {
            assert!(super::acceptable(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "a b", "a\"b", "<script>", "a\nb", "é", long.as_str()] {
            assert!(!super::acceptable(bad), "{bad}");
        }
    }
}
