//! Sandboxes of outside services for development: the payout provider and
//! the fraud explainer ([`explainer_routes`]).
//!
//! A sandbox payout provider for development (`PAYOUT_SANDBOX`, on by default
//! with `APP_ENV=development`, refused in production). It speaks the same
//! HTTP API as the real provider (see `clicknback_core::payout_provider`), so
//! the worker's client, timeouts and circuit breaker run for real while no
//! money moves. Payouts are kept in Redis under `<namespace>:sandbox:payouts`.
//!
//! Behaviour: a destination containing `fail` is refused with status
//! `failed`; everything else is `paid` at once. A repeated request with the
//! same `Idempotency-Key` returns the payout it created the first time.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use clicknback_core::{
    ids::PayoutId,
    payout_provider::{PayoutOrder, ProviderPayout, ProviderStatus},
};
use redis::AsyncCommands;
use uuid::Uuid;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandbox/provider/v1/payouts", post(create))
        .route("/sandbox/provider/v1/payouts/{reference}", get(find))
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"message": message}})),
    )
        .into_response()
}

fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", state.config.payouts.provider_key.expose());
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

fn key(state: &AppState) -> String {
    format!("{}:sandbox:payouts", state.config.redis_namespace)
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(order): Json<PayoutOrder>,
) -> Response {
    if !authorised(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let idem = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    if idem != Some(order.reference.to_string().as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must equal the payout reference",
        );
    }
    let Ok(mut r) = state.redis.get().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sandbox storage unavailable",
        );
    };
    let refused = order.destination.value.to_lowercase().contains("fail");
    let payout = ProviderPayout {
        id: format!("sbx_{}", Uuid::new_v4().simple()),
        reference: order.reference,
        status: if refused {
            ProviderStatus::Failed
        } else {
            ProviderStatus::Paid
        },
        failure_reason: refused
            .then(|| "the sandbox refuses destinations containing 'fail'".into()),
    };
    let json = serde_json::to_string(&payout).expect("payouts serialize");
    let field = order.reference.to_string();
    let created: redis::RedisResult<bool> = r.hset_nx(key(&state), &field, &json).await;
    match created {
        Ok(true) => {
            tracing::info!(payout.reference = %order.reference, amount.minor = order.amount_minor, status = ?payout.status, "sandbox provider: payout created");
            (StatusCode::CREATED, Json(payout)).into_response()
        }
        Ok(false) => find_stored(&state, order.reference).await,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sandbox storage unavailable",
        ),
    }
}

async fn find_stored(state: &AppState, reference: PayoutId) -> Response {
    let Ok(mut r) = state.redis.get().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sandbox storage unavailable",
        );
    };
    let stored: redis::RedisResult<Option<String>> =
        r.hget(key(state), reference.to_string()).await;
    match stored {
        Ok(Some(json)) => match serde_json::from_str::<ProviderPayout>(&json) {
            Ok(p) => (StatusCode::OK, Json(p)).into_response(),
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "corrupt sandbox record"),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, "no such payout"),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sandbox storage unavailable",
        ),
    }
}

async fn find(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(reference): Path<PayoutId>,
) -> Response {
    if !authorised(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    find_stored(&state, reference).await
}

/// The sandbox fraud explainer (`FRAUD_EXPLAINER_SANDBOX`, on by default with
/// `APP_ENV=development`, refused in production): an OpenAI-compatible
/// `POST /sandbox/explainer/v1/chat/completions` that answers without any
/// language model, deterministically, from the facts in the prompt, so the
/// worker's client, timeout and breaker run for real and the demo shows
/// explanations offline. Its `usage` is an estimate (four characters a
/// token), not a tokenizer's count.
pub fn explainer_routes() -> Router<AppState> {
    Router::new().route(
        "/sandbox/explainer/v1/chat/completions",
        post(chat_completions),
    )
}

/// Tokens as a rough English-text tokenizer counts them: about four characters each.
fn estimated_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn money(minor: Option<i64>, currency: &str) -> String {
    match minor {
        Some(m) => format!("{}.{:02} {currency}", m / 100, (m % 100).abs()),
        None => "nothing".into(),
    }
}

/// The sandbox's explanation of the facts the worker sent.
fn sandbox_explanation(facts: &serde_json::Value) -> String {
    let p = &facts["purchase"];
    let h = &facts["shopper_history"];
    let currency = p["currency"].as_str().unwrap_or("");
    let rules: Vec<&str> = facts["fraud"]["rules_fired"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    let score = facts["fraud"]["score"].as_f64().unwrap_or(0.0);
    let earlier = h["earlier_purchases"].as_i64().unwrap_or(0);
    let history = if earlier == 0 {
        "It is the shopper's first purchase.".to_owned()
    } else {
        format!(
            "The shopper made {earlier} earlier purchases at {} merchants, averaging {}; {} in the hour before.",
            h["distinct_merchants"].as_i64().unwrap_or(0),
            money(h["average_amount_minor"].as_i64(), currency),
            h["purchases_in_the_hour_before"].as_i64().unwrap_or(0),
        )
    };
    format!(
        "Scored {score:.2} for: {}. The purchase is {} at {}, a merchant {} days old, at {} UTC. {history} \
         (Sandbox explanation, written from the facts without a language model.)",
        if rules.is_empty() {
            "no rule".to_owned()
        } else {
            rules.join("; ")
        },
        money(p["amount_minor"].as_i64(), currency),
        p["merchant"].as_str().unwrap_or("an unknown merchant"),
        p["merchant_age_days"].as_i64().unwrap_or(0),
        p["purchased_at"].as_str().unwrap_or("an unknown time"),
    )
}

async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<serde_json::Value>,
) -> Response {
    let expected = state
        .config
        .explainer
        .key
        .as_ref()
        .map(|k| format!("Bearer {}", k.expose()));
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if expected.is_some() && given != expected.as_deref() {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let content = |role: &str| {
        messages
            .iter()
            .filter(|m| m["role"] == role)
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let user = content("user");
    let Ok(facts) = serde_json::from_str::<serde_json::Value>(&user) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the sandbox expects the purchase's facts as JSON",
        );
    };
    let text = sandbox_explanation(&facts);
    // Four tokens of framing per message, as chat formats add.
    let prompt_tokens =
        estimated_tokens(&content("system")) + estimated_tokens(&user) + 4 * messages.len() as u64;
    let completion_tokens = estimated_tokens(&text);
    let model = req["model"]
        .as_str()
        .unwrap_or(clicknback_core::config::SANDBOX_MODEL);
    Json(serde_json::json!({
        "id": format!("chatcmpl-sbx-{}", Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}
