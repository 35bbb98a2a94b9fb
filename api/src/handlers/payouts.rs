//! Payouts: the shopper moves available cashback to a bank account or PayPal.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use clicknback_core::{
    ids::PayoutId,
    services::{
        FieldError,
        idempotency::IdempotencyKey,
        payouts::{self, PayoutError, PayoutRequest, PayoutView},
    },
};

use crate::{
    auth::AuthUser,
    error::{ApiError, ApiResult, Json, Path, Problem, Query},
    handlers::{ListQuery, Page, idempotency_key_header, respond, typed},
    state::AppState,
};

impl From<PayoutError> for ApiError {
    fn from(e: PayoutError) -> Self {
        let detail = e.to_string();
        match e {
            PayoutError::Idempotency(i) => i.into(),
            PayoutError::InsufficientFunds => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "insufficient_funds",
                detail,
            ),
            PayoutError::NotFound => Self::not_found("payout"),
            PayoutError::Pool(_) => Self::unavailable("the database is unavailable; retry shortly"),
            PayoutError::Destination(_) | PayoutError::Amount(_) => Self::internal(detail),
            PayoutError::Db(d) => d.into(),
        }
    }
}

/// Requests a payout of available cashback. The amount is reserved at once
/// and sent in the background; the response is the payout as `requested`.
#[utoipa::path(post, path = "/v1/payouts", tag = "payouts", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "required; at most 255 characters; a retry with the same key and body returns the first answer")),
    request_body = PayoutRequest,
    responses(
        (status = 202, description = "accepted; `Idempotent-Replayed: true` on a replay", body = PayoutView, headers(("Idempotent-Replayed"))),
        (status = 400, description = "missing Idempotency-Key or malformed JSON", body = Problem),
        (status = 401, body = Problem),
        (status = 409, description = "a request with this key is in flight", body = Problem),
        (status = 415, body = Problem),
        (status = 422, description = "invalid fields, below the minimum, `insufficient_funds`, or key reused with another body", body = Problem),
    ))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(json): Json<serde_json::Value>,
) -> ApiResult<Response> {
    let key = IdempotencyKey::new(
        format!("user:{}", user.id),
        "POST /v1/payouts",
        idempotency_key_header(&headers)?,
        &json,
    )?;
    if json.get("destination").is_some_and(|d| !d.is_object()) {
        return Err(ApiError::validation(vec![FieldError::new(
            "destination",
            "must be an object {type, value}",
        )]));
    }
    let body: PayoutRequest = typed(&json)?;
    let valid = body
        .validate(state.config.payouts.min_amount_minor)
        .map_err(ApiError::validation)?;
    let mut conn = state.conn().await?;
    let outcome = payouts::request(&mut conn, &state.keys, user.id, &key, valid).await?;
    Ok(respond(outcome))
}

/// The caller's payouts, newest first.
#[utoipa::path(get, path = "/v1/payouts", tag = "payouts", security(("bearer" = [])),
    params(ListQuery), responses(
    (status = 200, body = Page<PayoutView>), (status = 400, description = "bad cursor or limit", body = Problem),
    (status = 401, body = Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<PayoutView>>> {
    let (limit, cursor) = q.parse(&state.cursors)?;
    let mut conn = state.conn().await?;
    let rows = payouts::list(&mut conn, user.id, cursor.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        &state.cursors,
        |p| (p.created_at, p.id),
        |p| PayoutView::from(&p),
    )))
}

/// One of the caller's payouts (404 for anyone else's).
#[utoipa::path(get, path = "/v1/payouts/{id}", tag = "payouts", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = PayoutView), (status = 404, body = Problem), (status = 401, body = Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<PayoutId>,
) -> ApiResult<Json<PayoutView>> {
    let mut conn = state.conn().await?;
    Ok(Json(payouts::get(&mut conn, user.id, id).await?))
}
