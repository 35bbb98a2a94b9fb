//! What protects a browser that talks to the api: the security headers on
//! every response, and the same-origin rule for every state-changing call of
//! the board and the admin API.
//!
//! Headers: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//! `Referrer-Policy: same-origin` (no referrer leaves the api; `no-referrer`
//! would make browsers send `Origin: null` on the board's own forms), a `Content-Security-Policy` (a page's own,
//! else [`PAGE_CSP`] for HTML and [`API_CSP`] for everything else, both with
//! `frame-ancestors 'none'`), and `Strict-Transport-Security` with
//! `APP_ENV=production`.
//!
//! Same origin: a `POST`, `PUT`, `PATCH` or `DELETE` under `/board` or
//! `/v1/admin` is refused with 403 `cross_origin_request` before any
//! credential is looked at when its `Sec-Fetch-Site` (set by the browser, out
//! of a page's reach) says anything but `same-origin` or `none`; without that
//! header (older browsers), when its `Origin` is another origin or `null`. A
//! request with neither header (curl, scripts, servers) passes: browsers
//! always send one of them on such calls. The api's origin is `PUBLIC_ORIGIN` when set, else
//! the host the request was sent to.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{error::ApiError, state::AppState};

/// The policy of the api's HTML pages (the board, its login form, the static
/// pages): everything from the api itself, no inline script, no framing.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The policy of every other response (JSON, problems, files): nothing runs.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Adds the security headers to every response (`production`: with HSTS).
pub async fn headers(State(production): State<bool>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        let html = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(if html { PAGE_CSP } else { API_CSP }),
        );
    }
    if production {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    res
}

/// Whether the same-origin rule applies to a request.
fn guarded(method: &Method, path: &str) -> bool {
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let board_or_admin = path == "/board"
        || path.starts_with("/board/")
        || path == "/v1/admin"
        || path.starts_with("/v1/admin/");
    changes && board_or_admin
}

/// The `host[:port]` of an origin (`https://a.example:8443` → `a.example:8443`).
fn authority(origin: &str) -> Option<&str> {
    origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
}

/// Whether a request was sent from a page of another origin.
pub fn cross_origin(headers: &HeaderMap, host: Option<&str>, public_origin: Option<&str>) -> bool {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = get("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = get("origin") else {
        return false;
    };
    match public_origin {
        Some(ours) => !origin.eq_ignore_ascii_case(ours),
        None => match (authority(origin), host) {
            (Some(theirs), Some(ours)) => !theirs.eq_ignore_ascii_case(ours),
            _ => true,
        },
    }
}

/// Refuses state-changing board and admin calls from another origin.
pub async fn same_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if guarded(req.method(), req.uri().path()) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if cross_origin(
            req.headers(),
            host,
            state.config.http.public_origin.as_deref(),
        ) {
            tracing::warn!(path = %req.uri().path(), "cross-origin call to the board or admin API refused");
            return ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "cross_origin_request",
                "state-changing board and admin calls must come from the api's own origin",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The CORS policy of the SDK's routes: `origins` (any when empty, as
/// `SDK_ALLOWED_ORIGINS=*`), `POST` with the SDK's headers, preflights
/// cached for ten minutes, the limit headers readable by the script, and
/// never credentials (the SDK sends none; a publishable key is public).
pub fn sdk_cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-publishable-key"),
            header::AUTHORIZATION,
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("ratelimit"),
            header::HeaderName::from_static("ratelimit-policy"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Applies `cors` ([`sdk_cors`]) to `/v1/track/*` and to nothing else: the
/// preflight (`OPTIONS`) is answered here, before routing would call it a 405.
pub async fn sdk_routes(
    State(cors): State<tower_http::cors::CorsLayer>,
    req: Request,
    next: Next,
) -> Response {
    use tower::{Layer, ServiceExt};
    if !req.uri().path().starts_with("/v1/track/") {
        return next.run(req).await;
    }
    match cors.layer(next).oneshot(req).await {
        Ok(res) => res.map(axum::body::Body::new),
        Err(e) => match e {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn origins_are_compared_with_the_api_s_own() {
        let host = Some("api.example:8080");
        assert!(
            !cross_origin(&h(&[]), host, None),
            "no Origin: not a browser"
        );
        assert!(!cross_origin(
            &h(&[("origin", "http://api.example:8080")]),
            host,
            None
        ));
        assert!(cross_origin(
            &h(&[("origin", "https://evil.example")]),
            host,
            None
        ));
        assert!(cross_origin(&h(&[("origin", "null")]), host, None));
        assert!(cross_origin(
            &h(&[("sec-fetch-site", "cross-site")]),
            host,
            None
        ));
        assert!(!cross_origin(
            &h(&[("sec-fetch-site", "same-origin")]),
            host,
            None
        ));
        assert!(
            !cross_origin(
                &h(&[("sec-fetch-site", "same-origin"), ("origin", "null")]),
                host,
                None
            ),
            "a browser's own form under a strict referrer policy"
        );
        assert!(cross_origin(
            &h(&[
                ("sec-fetch-site", "same-site"),
                ("origin", "http://api.example:8080")
            ]),
            host,
            None
        ));
        let public = Some("https://api.example");
        assert!(!cross_origin(
            &h(&[("origin", "https://api.example")]),
            host,
            public
        ));
        assert!(cross_origin(
            &h(&[("origin", "http://api.example")]),
            host,
            public
        ));
        assert!(guarded(&Method::POST, "/board/api/queues/payouts/pause"));
        assert!(guarded(&Method::DELETE, "/v1/admin/queues/x/jobs/y"));
        assert!(!guarded(&Method::GET, "/board"));
        assert!(!guarded(&Method::POST, "/v1/auth/login"));
        assert!(!guarded(&Method::POST, "/boardroom"));
    }
}
