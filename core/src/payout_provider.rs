//! The payout provider: who actually moves money to a shopper's bank or
//! PayPal account.
//!
//! The HTTP API is modelled on the real ones (Stripe, Wise, Adyen payouts):
//!
//! - `POST {base}/v1/payouts` with `Authorization: Bearer <key>` and
//!   `Idempotency-Key: <our payout id>`, body `{reference, amount_minor,
//!   currency, destination: {type, value}}` → `200`/`201` with the payout
//!   `{id, reference, status: pending|paid|failed, failure_reason}`. A repeated
//!   request with the same key returns the same payout and moves no money again.
//!   `400`/`402`/`422` refuse the payout for good; `401`/`403`/`404` mean our
//!   configuration is wrong and the payout waits.
//! - `GET {base}/v1/payouts/{reference}` → `200` with the payout, `404` when
//!   the provider never received it.
//!
//! Every call has a timeout and goes through a circuit breaker
//! ([`crate::breaker`]). Its state is the `payout_provider_circuit_state`
//! gauge (0 closed, 1 half-open, 2 open).
//! The breaker is per process: each worker replica learns on its own that the
//! provider is down, after `PAYOUT_BREAKER_FAILURES` calls.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{config::PayoutConfig, ids::PayoutId, money::Currency};

/// A payout's state at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderStatus {
    Pending,
    Paid,
    Failed,
}

/// A payout as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderPayout {
    pub id: String,
    pub reference: PayoutId,
    pub status: ProviderStatus,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// What we ask the provider to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayoutOrder {
    /// Our payout id: the provider's idempotency key and our reference.
    pub reference: PayoutId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub destination: Destination,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Destination {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// The provider refused the payout; it will never be sent.
    #[error("the provider refused the payout: {0}")]
    Rejected(String),
    /// The request may have reached the provider (a timeout, a 5xx, a broken
    /// connection): whether money moved is unknown until we ask.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request certainly was not processed (connection refused, 429, bad key).
    #[error("not sent: {0}")]
    NotSent(String),
    /// The circuit breaker is open; nothing was sent.
    #[error("the payout provider's circuit breaker is open")]
    CircuitOpen,
}

impl ProviderError {
    /// Whether the call counts against the provider's health.
    fn is_outage(&self) -> bool {
        matches!(self, ProviderError::Unknown(_) | ProviderError::NotSent(_))
    }
}

/// A payout provider.
pub trait PayoutProvider: Send + Sync {
    /// Asks the provider to send the payout (idempotent by `order.reference`).
    fn create<'a>(
        &'a self,
        order: &'a PayoutOrder,
    ) -> BoxFuture<'a, Result<ProviderPayout, ProviderError>>;

    /// Looks the payout up by our reference; `None` when the provider never got it.
    fn find(
        &self,
        reference: PayoutId,
    ) -> BoxFuture<'_, Result<Option<ProviderPayout>, ProviderError>>;
}

pub use crate::breaker::CircuitState;

/// The circuit breaker around provider calls (see [`crate::breaker`]).
#[derive(Clone)]
pub struct Breaker(crate::breaker::Breaker);

impl Breaker {
    pub fn new(failures: u32, open: Duration, open_max: Duration) -> Self {
        let guarded = crate::breaker::Guarded {
            name: "payout_provider",
            what: "payout provider",
            waiting: "payouts wait",
        };
        Self(crate::breaker::Breaker::new(
            guarded, failures, open, open_max,
        ))
    }

    pub fn state(&self) -> CircuitState {
        self.0.state()
    }

    /// Runs `call` unless the breaker is open; outages count as failures.
    pub async fn call<T, F>(&self, call: F) -> Result<T, ProviderError>
    where
        F: std::future::Future<Output = Result<T, ProviderError>>,
    {
        self.0
            .call(ProviderError::is_outage, call)
            .await
            .map_err(|r| match r {
                crate::breaker::Refused::Inner(e) => e,
                crate::breaker::Refused::Open => ProviderError::CircuitOpen,
            })
    }
}

/// The provider over HTTP.
#[derive(Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
    base: String,
    key: String,
    breaker: Breaker,
}

impl HttpProvider {
    pub fn new(cfg: &PayoutConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(cfg.provider_timeout)
            .connect_timeout(cfg.provider_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("clicknback/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            base: cfg.provider_url.clone(),
            key: cfg.provider_key.expose().to_owned(),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_open, cfg.breaker_open_max),
        })
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Sends an authenticated call: the status and body, or a transport error.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), ProviderError> {
        let res = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(transport_error)?;
        let status = res.status();
        Ok((status, res.text().await.unwrap_or_default()))
    }

    async fn send_create(&self, order: &PayoutOrder) -> Result<ProviderPayout, ProviderError> {
        let req = self
            .client
            .post(format!("{}/v1/payouts", self.base))
            .header("Idempotency-Key", order.reference.to_string())
            .json(order);
        let (status, body) = self.send(req).await?;
        match status.as_u16() {
            200..=202 => decode(&body),
            400 | 402 | 422 => Err(ProviderError::Rejected(reason(&body, status))),
            // A 404 here means our URL is wrong, not that the payout is.
            404 => Err(misconfigured(&body, status)),
            _ => Err(unsuccessful(&body, status)),
        }
    }

    async fn send_find(
        &self,
        reference: PayoutId,
    ) -> Result<Option<ProviderPayout>, ProviderError> {
        let req = self
            .client
            .get(format!("{}/v1/payouts/{reference}", self.base));
        let (status, body) = self.send(req).await?;
        match status.as_u16() {
            200 => decode(&body).map(Some),
            404 => Ok(None),
            _ => Err(unsuccessful(&body, status)),
        }
    }
}

/// Our configuration, not the payout, is wrong: the payout and its
/// reservation wait until an operator fixes it.
fn misconfigured(body: &str, status: reqwest::StatusCode) -> ProviderError {
    tracing::error!(
        status = status.as_u16(),
        "the payout provider refused the call; check PAYOUT_PROVIDER_URL and PAYOUT_PROVIDER_KEY"
    );
    ProviderError::NotSent(reason(body, status))
}

/// Any other answer that is not a success, for either call.
fn unsuccessful(body: &str, status: reqwest::StatusCode) -> ProviderError {
    match status.as_u16() {
        401 | 403 | 405 => misconfigured(body, status),
        429 => ProviderError::NotSent(reason(body, status)),
        _ => ProviderError::Unknown(reason(body, status)),
    }
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    if e.is_connect() {
        ProviderError::NotSent(format!("could not connect: {e}"))
    } else if e.is_timeout() {
        ProviderError::Unknown("timed out waiting for the provider".into())
    } else {
        ProviderError::Unknown(e.to_string())
    }
}

fn decode(body: &str) -> Result<ProviderPayout, ProviderError> {
    serde_json::from_str(body)
        .map_err(|e| ProviderError::Unknown(format!("unreadable answer from the provider: {e}")))
}

fn reason(body: &str, status: reqwest::StatusCode) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let text = v["failure_reason"]
        .as_str()
        .or_else(|| v["error"]["message"].as_str())
        .or_else(|| v["error"].as_str())
        .or_else(|| v["detail"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("HTTP {}: {text}", status.as_u16())
}

fn observe<T>(op: &'static str, r: &Result<T, ProviderError>) {
    let outcome = match r {
        Ok(_) => "ok",
        Err(ProviderError::Rejected(_)) => "rejected",
        Err(ProviderError::Unknown(_)) => "unknown",
        Err(ProviderError::NotSent(_)) => "not_sent",
        Err(ProviderError::CircuitOpen) => "circuit_open",
    };
    metrics::counter!("payout_provider_calls_total", "op" => op, "outcome" => outcome).increment(1);
}

impl PayoutProvider for HttpProvider {
    fn create<'a>(
        &'a self,
        order: &'a PayoutOrder,
    ) -> BoxFuture<'a, Result<ProviderPayout, ProviderError>> {
        Box::pin(async move {
            let r = self.breaker.call(self.send_create(order)).await;
            observe("create", &r);
            r
        })
    }

    fn find(
        &self,
        reference: PayoutId,
    ) -> BoxFuture<'_, Result<Option<ProviderPayout>, ProviderError>> {
        Box::pin(async move {
            let r = self.breaker.call(self.send_find(reference)).await;
            observe("find", &r);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn breaker_opens_after_consecutive_outages_and_ignores_refusals() {
        let b = Breaker::new(3, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..5 {
            let r: Result<(), _> = b
                .call(async { Err(ProviderError::Rejected("bad iban".into())) })
                .await;
            assert!(matches!(r, Err(ProviderError::Rejected(_))));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        for _ in 0..3 {
            let _: Result<(), _> = b
                .call(async { Err(ProviderError::Unknown("503".into())) })
                .await;
        }
        assert_eq!(b.state(), CircuitState::Open);
        let r: Result<(), _> = b.call(async { Ok(()) }).await;
        assert_eq!(r, Err(ProviderError::CircuitOpen), "fails fast while open");
    }
}
