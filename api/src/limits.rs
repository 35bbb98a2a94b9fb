//! Rate limits on the routes SPEC §5 names: per merchant on webhooks, per
//! client address on SDK tracking, per e-mail and address on login. Counters
//! live in Redis (fixed windows), so every api replica shares them. A limited
//! route answers with `RateLimit-Policy` and `RateLimit` headers, and a 429
//! problem+json with `Retry-After` past the limit.

use std::time::Duration;

use axum::{
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::Response,
};
use clicknback_core::services::rate_limit::{self, Decision, Limit};

use crate::{error::ApiError, state::AppState};

/// A Redis call slower than this lets the request through (fail open).
const REDIS_BUDGET: Duration = Duration::from_millis(250);

/// The Redis key of a limit: `<namespace>:rl:<name>:<who>`.
pub fn key(state: &AppState, name: &str, who: &str) -> String {
    format!("{}:rl:{name}:{who}", state.config.redis_namespace)
}

/// Counts one hit against `name`/`who`; a 429 past the limit. `None` when
/// limits are turned off.
pub async fn hit(
    state: &AppState,
    name: &'static str,
    who: &str,
    limit: Limit,
) -> Result<Option<Decision>, ApiError> {
    if !state.config.rate_limits_enabled {
        return Ok(None);
    }
    let key = key(state, name, who);
    let decision = tokio::time::timeout(REDIS_BUDGET, async {
        match state.redis.get().await {
            Ok(mut r) => Some(rate_limit::hit(&mut r, &key, limit).await),
            Err(_) => None,
        }
    })
    .await
    .ok()
    .flatten();
    let Some(d) = decision else {
        tracing::warn!(
            limit = name,
            "rate limiter unavailable; allowing the request"
        );
        return Ok(None);
    };
    if !d.allowed {
        return Err(too_many(name, &d, "rate_limited", "too many requests"));
    }
    Ok(Some(d))
}

/// The 429 for a decision that refused.
pub fn too_many(name: &'static str, d: &Decision, code: &'static str, what: &str) -> ApiError {
    metrics::counter!("rate_limited_total", "limit" => name).increment(1);
    let wait = d.reset_secs.max(1);
    let err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        format!("{what}; retry in {wait} seconds"),
    )
    .with_header(header::RETRY_AFTER, &wait.to_string());
    with_headers(err, d)
}

fn pairs(d: &Decision) -> [(HeaderName, String); 2] {
    [
        (
            HeaderName::from_static("ratelimit-policy"),
            d.policy_header(),
        ),
        (HeaderName::from_static("ratelimit"), d.limit_header()),
    ]
}

/// Adds the limit headers to an error.
pub fn with_headers(mut err: ApiError, d: &Decision) -> ApiError {
    for (k, v) in pairs(d) {
        err = err.with_header(k, &v);
    }
    err
}

/// Adds the limit headers to a response.
pub fn annotate(mut res: Response, d: Option<&Decision>) -> Response {
    if let Some(d) = d {
        for (k, v) in pairs(d) {
            if let Ok(v) = HeaderValue::from_str(&v) {
                res.headers_mut().insert(k, v);
            }
        }
    }
    res
}
