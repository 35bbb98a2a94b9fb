//! Signed merchant webhooks (Standard Webhooks): purchases and their status.
//!
//! Order of checks: the merchant exists (404); an idempotency key is present
//! (`Idempotency-Key`, else `webhook-id`; 400); the signature over the raw body
//! verifies (401); the merchant is not suspended (403); the merchant is under
//! its rate limit (429, counted only for signed calls, so nobody else can use
//! up a merchant's quota); the body is JSON of the right shape (415/400/422).
//! Then the core service does the rest in one transaction. The merchant is
//! read through the cache (invalidated by every admin change to it).

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use chrono::Utc;
use clicknback_core::{
    ids::MerchantId,
    models::merchant::Merchant,
    services::{
        idempotency::IdempotencyKey,
        merchants,
        purchases::{self, PurchaseRequest, PurchaseView, StatusRequest},
        rate_limit::{Decision, Limit},
    },
    signature::{self, SignedHeaders},
};

use crate::{
    error::{
        ApiError, ApiResult, Path, Problem, RawBody, is_json_content_type, parse_json,
        unsupported_media_type,
    },
    handlers::{idempotency_key_header, respond, typed},
    limits,
    state::AppState,
};

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A verified webhook: the merchant, the idempotency key header and the JSON body.
struct Verified {
    merchant: Merchant,
    decision: Option<Decision>,
    key: Option<String>,
    json: serde_json::Value,
}

async fn verify(
    state: &AppState,
    merchant_id: MerchantId,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Verified> {
    let merchant: Merchant = state
        .cache
        .get_or_load(
            merchants::CACHE_KIND,
            &merchant_id.to_string(),
            state.config.cache.merchant_ttl,
            || async {
                let mut conn = state.conn().await?;
                Ok::<_, ApiError>(merchants::get(&mut conn, merchant_id).await?)
            },
        )
        .await?;

    let key = idempotency_key_header(headers)?
        .or_else(|| header_str(headers, "webhook-id"))
        .map(str::to_owned);
    if key.is_none() {
        return Err(ApiError::bad_request(
            "idempotency_key_missing",
            "send an Idempotency-Key header (or webhook-id)",
        ));
    }

    let secrets = merchants::verification_secrets(&state.keys, &merchant, Utc::now())?;
    signature::verify(
        &secrets,
        &SignedHeaders {
            id: header_str(headers, "webhook-id"),
            timestamp: header_str(headers, "webhook-timestamp"),
            signature: header_str(headers, "webhook-signature"),
        },
        body,
        Utc::now().timestamp(),
        state.config.webhook_tolerance.as_secs() as i64,
    )
    .map_err(|e| {
        tracing::warn!(merchant.id = %merchant_id, reason = %e, "webhook signature refused");
        metrics::counter!("webhook_signature_failures_total").increment(1);
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string())
    })?;

    if !merchant.is_active() {
        return Err(ApiError::forbidden("this merchant is suspended"));
    }
    let limit = Limit {
        limit: merchant
            .webhook_rate_limit_per_minute
            .map(|n| n as u64)
            .unwrap_or(state.config.webhook_per_minute),
        window: std::time::Duration::from_secs(60),
    };
    let decision = limits::hit(state, "webhook", &merchant.id.to_string(), limit).await?;

    if !is_json_content_type(headers) {
        return Err(unsupported_media_type());
    }
    let json = parse_json(body)?;
    Ok(Verified {
        merchant,
        decision,
        key,
        json,
    })
}

fn key_for(v: &Verified, endpoint: &str) -> ApiResult<IdempotencyKey> {
    Ok(IdempotencyKey::new(
        format!("merchant:{}", v.merchant.id),
        endpoint,
        v.key.as_deref(),
        &v.json,
    )?)
}

/// Reports a purchase. Accepted purchases are attributed in the background.
#[utoipa::path(post, path = "/v1/webhooks/{merchant_id}/purchases", tag = "webhooks",
    params(
        ("merchant_id" = Uuid, Path),
        ("webhook-id" = String, Header, description = "message id, signed with the body (also the idempotency key when Idempotency-Key is absent)"),
        ("webhook-timestamp" = i64, Header, description = "unix seconds, signed with the body; within 5 minutes of now"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable characters; falls back to `webhook-id`. The same key with the same body replays the first answer; with another body it is a 422 `idempotency_key_reused`"),
    ),
    security(("webhook_signature" = [])), extensions(("x-rate-limited" = json!(true))),
    request_body = PurchaseRequest,
    responses(
        (status = 202, description = "accepted; `Idempotent-Replayed: true` on a replay", body = PurchaseView, headers(("Idempotent-Replayed"))),
        (status = 400, description = "no idempotency key (`idempotency_key_missing`), a malformed one (`idempotency_key_invalid`), or a body that is not JSON (`invalid_json`)", body = Problem),
        (status = 401, description = "bad or missing signature (`invalid_signature`)", body = Problem),
        (status = 403, description = "merchant suspended", body = Problem),
        (status = 404, description = "unknown merchant", body = Problem),
        (status = 409, description = "order already reported under another key (`duplicate_order`), or the same key is in flight (`idempotency_request_in_progress`, with `Retry-After`)", body = Problem),
        (status = 415, body = Problem),
        (status = 422, description = "invalid fields (`validation_failed`), or the key reused with another body (`idempotency_key_reused`)", body = Problem),
        (status = 429, description = "over the merchant's webhook rate limit; see `Retry-After`", body = Problem),
    ))]
pub async fn purchase(
    State(state): State<AppState>,
    Path(merchant_id): Path<MerchantId>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let v = verify(&state, merchant_id, &headers, &body).await?;
    let key = key_for(&v, "POST /v1/webhooks/{merchant_id}/purchases")?;
    let request: PurchaseRequest = typed(&v.json)?;
    let valid = request.validate(Utc::now()).map_err(ApiError::validation)?;
    let mut conn = state.conn().await?;
    let outcome = purchases::ingest(
        &mut conn,
        &v.merchant,
        &key,
        valid,
        state.config.attribution_delay,
    )
    .await?;
    Ok(limits::annotate(respond(outcome), v.decision.as_ref()))
}

/// Confirms or reverses a reported purchase.
#[utoipa::path(post, path = "/v1/webhooks/{merchant_id}/purchases/{order_id}/status", tag = "webhooks",
    params(
        ("merchant_id" = Uuid, Path), ("order_id" = String, Path, description = "the merchant's order id, as reported"),
        ("webhook-id" = String, Header, description = "message id, signed with the body (also the idempotency key when Idempotency-Key is absent)"),
        ("webhook-timestamp" = i64, Header, description = "unix seconds, signed with the body; within 5 minutes of now"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable characters; falls back to `webhook-id`"),
    ),
    security(("webhook_signature" = [])), extensions(("x-rate-limited" = json!(true))),
    request_body = StatusRequest,
    responses(
        (status = 202, description = "accepted; the reward moves in the background", body = PurchaseView, headers(("Idempotent-Replayed"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "unknown merchant or order", body = Problem),
        (status = 409, description = "illegal transition (e.g. confirm after reverse) or key in flight", body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 429, description = "over the merchant's webhook rate limit", body = Problem),
    ))]
pub async fn purchase_status(
    State(state): State<AppState>,
    Path((merchant_id, order_id)): Path<(MerchantId, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let v = verify(&state, merchant_id, &headers, &body).await?;
    let key = key_for(
        &v,
        &format!("POST /v1/webhooks/{merchant_id}/purchases/{order_id}/status"),
    )?;
    let request: StatusRequest = typed(&v.json)?;
    request.validate().map_err(ApiError::validation)?;
    let mut conn = state.conn().await?;
    let outcome =
        purchases::request_status(&mut conn, &v.merchant, &order_id, &key, request).await?;
    Ok(limits::annotate(respond(outcome), v.decision.as_ref()))
}
