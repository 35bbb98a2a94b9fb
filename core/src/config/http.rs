//! What the api's listener and middleware allow a connection and a request.

use std::{net::SocketAddr, time::Duration};

use super::env::{ConfigError, Env};

/// What the api's listener and middleware allow a connection and a request.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A connection whose request headers are not complete within this of
    /// their first byte (its first request: of its accept) is closed.
    pub header_read_timeout: Duration,
    /// A keep-alive connection waiting this long for its next request is
    /// closed; above the idle timeouts of proxies and clients, so they close
    /// first.
    pub idle_timeout: Duration,
    /// A request not answered within this gets a 503.
    pub request_timeout: Duration,
    /// Open connections at once; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// Requests handled at once; beyond it a 503 with `Retry-After` at once
    /// (health checks are never shed).
    pub max_in_flight: usize,
    /// Where `/metrics` is served; `None` serves it nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Database-backed gauges are recomputed at most this often.
    pub metrics_refresh: Duration,
    /// Origins allowed to call `/v1/track/*` from a browser; empty means any (`*`).
    pub sdk_allowed_origins: Vec<String>,
    /// The api's public origin (`https://api.example.com`), which state-changing
    /// board and admin calls from a browser must come from; unset, an `Origin`
    /// must name the host the request was sent to.
    pub public_origin: Option<String>,
}

pub(super) fn read<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<HttpConfig, ConfigError> {
    let metrics_addr = match env.raw("METRICS_ADDR").as_deref() {
        Some("off") => None,
        _ => Some(env.parsed(
            "METRICS_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 8082)),
            "a socket address like 127.0.0.1:8082, or `off`",
        )?),
    };
    let sdk_allowed_origins = env
        .or("SDK_ALLOWED_ORIGINS", "*")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty() && *o != "*")
        .map(|o| {
            let o = o.trim_end_matches('/');
            let origin = o.split_once("://").is_some_and(|(scheme, host)| {
                matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
            });
            if origin {
                Ok(o.to_owned())
            } else {
                Err(ConfigError {
                    var: "SDK_ALLOWED_ORIGINS".into(),
                    problem: format!("contains {o:?}"),
                    expected: "`*` or comma-separated origins like https://shop.example".into(),
                })
            }
        })
        .collect::<Result<_, _>>()?;
    let public_origin = env
        .raw("PUBLIC_ORIGIN")
        .map(|o| o.trim_end_matches('/').to_owned());
    if let Some(o) = &public_origin
        && !(o.starts_with("https://") || o.starts_with("http://"))
    {
        return Err(ConfigError {
            var: "PUBLIC_ORIGIN".into(),
            problem: format!("is {o:?}"),
            expected: "the api's origin, like https://api.example.com".into(),
        });
    }
    Ok(HttpConfig {
        header_read_timeout: env.secs("HTTP_HEADER_READ_TIMEOUT_SECS", 10, 1..=300)?,
        idle_timeout: env.secs("HTTP_IDLE_TIMEOUT_SECS", 75, 1..=3_600)?,
        request_timeout: env.secs("HTTP_REQUEST_TIMEOUT_SECS", 30, 1..=3_600)?,
        max_connections: env.int_in("HTTP_MAX_CONNECTIONS", 1_024, 1..=1_000_000)? as usize,
        max_in_flight: env.int_in("HTTP_MAX_IN_FLIGHT", 256, 1..=1_000_000)? as usize,
        metrics_addr,
        metrics_refresh: env.secs("METRICS_GAUGE_REFRESH_SECS", 15, 1..=3_600)?,
        sdk_allowed_origins,
        public_origin,
    })
}
