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
