//! Payouts and the provider that sends them.

use std::{net::SocketAddr, time::Duration};

use super::{
    env::{ConfigError, Env, UrlForm},
    secrets::Secret,
};

/// Payouts and the provider that sends them.
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    pub min_amount_minor: i64,
    /// Base URL of the provider's API (`.../v1/payouts` is appended).
    pub provider_url: String,
    pub provider_key: Secret,
    /// Limit on every call to the provider.
    pub provider_timeout: Duration,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe; doubles up to `breaker_open_max`.
    pub breaker_open: Duration,
    pub breaker_open_max: Duration,
    /// Payouts unresolved (`processing`, `submitted_unknown`) for this long are
    /// looked up at the provider by the reconciliation schedule.
    pub reconcile_after: Duration,
    /// The api serves a sandbox provider at `/sandbox/provider` (development only).
    pub sandbox: bool,
}

const PROVIDER_URL: UrlForm<'static> = UrlForm {
    expected: "the payout provider's base URL, like https://api.provider.example",
    schemes: &["http://", "https://"],
    aliases: &[],
    expected_scheme: None,
};

const DEV_PAYOUT_PROVIDER_KEY: &str = "sandbox-provider-key-development-only";

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    api_addr: SocketAddr,
) -> Result<PayoutConfig, ConfigError> {
    let sandbox = env.sandbox(
        "PAYOUT_SANDBOX",
        "false in production (the sandbox sends no money)",
    )?;
    let sandbox_url = format!("http://{api_addr}/sandbox/provider");
    let provider_url = env.url("PAYOUT_PROVIDER_URL", &PROVIDER_URL, Some(&sandbox_url))?;
    let provider_key = env.required(
        "PAYOUT_PROVIDER_KEY",
        "the API key the payout provider issued",
        Some(DEV_PAYOUT_PROVIDER_KEY),
    )?;
    let (breaker_open, breaker_open_max) =
        env.breaker_open("PAYOUT_BREAKER_OPEN_SECS", "PAYOUT_BREAKER_OPEN_MAX_SECS")?;
    Ok(PayoutConfig {
        min_amount_minor: env.int_in("PAYOUT_MIN_AMOUNT_MINOR", 1_000, 1..=1_000_000_000_000)?
            as i64,
        provider_url: provider_url.trim_end_matches('/').to_owned(),
        provider_key: Secret::new(provider_key),
        provider_timeout: env.millis("PAYOUT_PROVIDER_TIMEOUT_MS", 10_000, 100..=120_000)?,
        breaker_failures: env.int_in("PAYOUT_BREAKER_FAILURES", 5, 1..=1_000)? as u32,
        breaker_open,
        breaker_open_max,
        reconcile_after: env.secs("PAYOUT_RECONCILE_AFTER_SECS", 300, 1..=604_800)?,
        sandbox,
    })
}
