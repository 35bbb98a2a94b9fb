//! The fraud explainer: an OpenAI-compatible chat-completions API that writes
//! a short explanation of each flagged purchase for the admin who reviews it.

use std::{net::SocketAddr, time::Duration};

use super::{
    env::{ConfigError, Env, UrlForm},
    secrets::Secret,
};

/// The fraud explainer. Off (`url` is `None`) unless `FRAUD_EXPLAINER_URL` is
/// set or, in development, the sandbox serves it.
#[derive(Debug, Clone)]
pub struct ExplainerConfig {
    /// Base URL of the API (`/chat/completions` is appended), like
    /// `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub url: Option<String>,
    pub model: String,
    /// Sent as `Authorization: Bearer`; local servers need none.
    pub key: Option<Secret>,
    /// Limit on every call.
    pub timeout: Duration,
    /// Upper bound of the answer's length, in the provider's tokens.
    pub max_tokens: u32,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe; doubles up to `breaker_open_max`.
    pub breaker_open: Duration,
    pub breaker_open_max: Duration,
    /// The api serves a deterministic sandbox explainer at `/sandbox/explainer` (development only).
    pub sandbox: bool,
}

impl ExplainerConfig {
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }
}

const EXPLAINER_URL: UrlForm<'static> = UrlForm {
    expected: "the base URL of an OpenAI-compatible API, like https://api.openai.com/v1 or http://127.0.0.1:11434/v1",
    schemes: &["http://", "https://"],
    aliases: &[],
    expected_scheme: None,
};

/// The model name the sandbox answers as.
pub const SANDBOX_MODEL: &str = "clicknback-sandbox";
const DEV_EXPLAINER_KEY: &str = "sandbox-explainer-key-development-only";

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    api_addr: SocketAddr,
) -> Result<ExplainerConfig, ConfigError> {
    let sandbox = env.sandbox(
        "FRAUD_EXPLAINER_SANDBOX",
        "false in production (the sandbox's explanations are canned)",
    )?;
    let explicit = env.raw("FRAUD_EXPLAINER_URL").is_some();
    let url = if explicit {
        Some(env.url("FRAUD_EXPLAINER_URL", &EXPLAINER_URL, None)?)
    } else if sandbox {
        Some(format!("http://{api_addr}/sandbox/explainer/v1"))
    } else {
        None
    };
    let on_sandbox = sandbox && !explicit;
    let model = match &url {
        Some(_) => env.required(
            "FRAUD_EXPLAINER_MODEL",
            "the model to ask, like gpt-4o-mini or llama3.2",
            on_sandbox.then_some(SANDBOX_MODEL),
        )?,
        None => String::new(),
    };
    let key = env
        .raw("FRAUD_EXPLAINER_KEY")
        .or_else(|| on_sandbox.then(|| DEV_EXPLAINER_KEY.to_owned()))
        .map(Secret::new);
    let (breaker_open, breaker_open_max) = env.breaker_open(
        "FRAUD_EXPLAINER_BREAKER_OPEN_SECS",
        "FRAUD_EXPLAINER_BREAKER_OPEN_MAX_SECS",
    )?;
    Ok(ExplainerConfig {
        url: url.map(|u| u.trim_end_matches('/').to_owned()),
        model,
        key,
        timeout: env.millis("FRAUD_EXPLAINER_TIMEOUT_MS", 20_000, 100..=300_000)?,
        max_tokens: env.int_in("FRAUD_EXPLAINER_MAX_TOKENS", 300, 16..=4_096)? as u32,
        breaker_failures: env.int_in("FRAUD_EXPLAINER_BREAKER_FAILURES", 5, 1..=1_000)? as u32,
        breaker_open,
        breaker_open_max,
        sandbox,
    })
}
