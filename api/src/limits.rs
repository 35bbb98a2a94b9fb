//! Rate limits on the routes SPEC §5 names: per merchant on webhooks, per
//! client address on SDK tracking, per e-mail and address on login, and per
//! address on every sign-in and registration. Counters live in Redis (fixed
//! windows), so every api replica shares them; each request is counted
//! before it is let through. When Redis does not answer, this process counts
//! in a local limiter with the same limits instead of letting requests
//! through. A limited route answers with `RateLimit-Policy` and `RateLimit`
//! headers, and a 429 problem+json with `Retry-After` past the limit.

use std::time::Duration;

use axum::{
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::Response,
};
use clicknback_core::services::rate_limit::{self, Decision, Limit};

use crate::{error::ApiError, state::AppState};

/// A Redis call slower than this is counted in the local limiter instead.
const REDIS_BUDGET: Duration = Duration::from_millis(250);

/// Windows the local limiter keeps at most (about 100 bytes each).
const LOCAL_WINDOWS: usize = 100_000;

fn local() -> &'static rate_limit::LocalLimiter {
    static LOCAL: std::sync::OnceLock<rate_limit::LocalLimiter> = std::sync::OnceLock::new();
    LOCAL.get_or_init(|| rate_limit::LocalLimiter::new(LOCAL_WINDOWS))
}

/// The Redis key of a limit: `<namespace>:rl:<name>:<who>`.
pub fn key(state: &AppState, name: &str, who: &str) -> String {
    format!("{}:rl:{name}:{who}", state.config.redis_namespace)
}

/// Counts one hit against `name`/`who`; a 429 past the limit. `None` when
/// limits are turned off (`RATE_LIMITS_ENABLED=false`).
pub async fn hit(
    state: &AppState,
    name: &'static str,
    who: &str,
    limit: Limit,
) -> Result<Option<Decision>, ApiError> {
    if !state.config.rate_limits_enabled {
        return Ok(None);
    }
    hit_always(state, name, who, limit).await.map(Some)
}

/// Counts one hit whatever `RATE_LIMITS_ENABLED` says (the sign-in limits).
pub async fn hit_always(
    state: &AppState,
    name: &'static str,
    who: &str,
    limit: Limit,
) -> Result<Decision, ApiError> {
    let d = count(state, name, who, limit).await;
    if !d.allowed {
        return Err(too_many(name, &d, "rate_limited", "too many requests"));
    }
    Ok(d)
}

/// Counts in Redis, or in this process when Redis does not answer in time.
async fn count(state: &AppState, name: &'static str, who: &str, limit: Limit) -> Decision {
    let key = key(state, name, who);
    let counted = tokio::time::timeout(REDIS_BUDGET, async {
        let mut r = state.redis.get().await?;
        rate_limit::try_hit(&mut r, &key, limit).await
    })
    .await;
    match counted {
        Ok(Ok(d)) => d,
        failed => {
            if let Ok(Err(e)) = failed {
                tracing::warn!(limit = name, error = %e, "rate limiter unavailable; counting in this process");
            } else {
                tracing::warn!(
                    limit = name,
                    "rate limiter too slow; counting in this process"
                );
            }
            metrics::counter!("rate_limit_local_fallbacks_total", "limit" => name).increment(1);
            local().hit(&key, limit, std::time::Instant::now())
        }
    }
}

/// Forgets `name`/`who`'s window, in Redis and in this process.
async fn reset(state: &AppState, name: &'static str, who: &str) {
    let key = key(state, name, who);
    local().reset(&key);
    let _ = tokio::time::timeout(REDIS_BUDGET, async {
        if let Ok(mut r) = state.redis.get().await {
            rate_limit::reset(&mut r, &key).await;
        }
    })
    .await;
}

/// The email as a limit key: hashed, so no address is written to Redis.
fn email_key(email: &str) -> String {
    clicknback_core::crypto::sha256(email.trim().to_lowercase().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One sign-in attempt (a password login, Basic credentials, the board's
/// login form), counted before the password is checked: per client address
/// (`LOGIN_PER_IP_PER_MINUTE`, whatever the email) and per email and address
/// (`LOGIN_MAX_FAILURES` per `LOGIN_WINDOW_SECS`). The decision of the
/// email's limit, for the answer's headers.
pub async fn sign_in_attempt(
    state: &AppState,
    ip: &str,
    email: &str,
) -> Result<Decision, ApiError> {
    let per_ip = Limit {
        limit: state.config.sign_in.per_ip_per_minute,
        window: Duration::from_secs(60),
    };
    let d = count(state, "login_ip", ip, per_ip).await;
    if !d.allowed {
        tracing::warn!("sign-ins from one address over the limit");
        return Err(too_many(
            "login_ip",
            &d,
            "too_many_login_attempts",
            "too many sign-ins from this address",
        ));
    }
    let per_email = Limit {
        limit: state.config.login_max_failures,
        window: state.config.login_window,
    };
    let d = count(
        state,
        "login",
        &format!("{}:{ip}", email_key(email)),
        per_email,
    )
    .await;
    if !d.allowed {
        tracing::warn!("login locked out after repeated failures");
        return Err(too_many(
            "login",
            &d,
            "too_many_login_attempts",
            "too many failed logins",
        ));
    }
    Ok(d)
}

/// A sign-in succeeded: the email's failures from this address are forgotten.
pub async fn sign_in_succeeded(state: &AppState, ip: &str, email: &str) {
    reset(state, "login", &format!("{}:{ip}", email_key(email))).await;
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
