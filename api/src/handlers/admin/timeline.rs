//! A purchase's timeline and the purchase search, for operators. Served under
//! `/v1/admin` and, for the board's purchase page, under `/board/api`; both
//! take an admin bearer token, Basic credentials or the board's session. The
//! paths in the `#[utoipa::path]`s are below those two mount points.

use axum::extract::State;
use clicknback_core::{
    ids::{MerchantId, PurchaseId},
    services::timeline::{self, Match, Timeline},
};
use serde::Deserialize;

use crate::{
    auth::BoardAdmin,
    error::{ApiError, ApiResult, Json, Path, Problem, Query},
    state::AppState,
};

/// Everything that happened to a purchase, oldest first: its webhooks (with
/// their idempotency keys and replays), the checkout page's confirmations and
/// their outcome, identity links and merges, every run of its jobs with its
/// attempt and error, its fraud score and review, each ledger transfer, the
/// emails sent and the payouts that spent its cashback.
#[utoipa::path(get, path = "/purchases/{id}/timeline", tag = "admin", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("id" = Uuid, Path, description = "the purchase id")), responses(
    (status = 200, body = Timeline), (status = 404, description = "no such purchase", body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn purchase(
    State(state): State<AppState>,
    _admin: BoardAdmin,
    Path(id): Path<PurchaseId>,
) -> ApiResult<Json<Timeline>> {
    let mut conn = state.conn().await?;
    timeline::of_purchase(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("purchase"))
}

/// The timeline of a merchant's order (the purchase its webhook reported).
#[utoipa::path(get, path = "/merchants/{id}/orders/{order_id}/timeline", tag = "admin", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("id" = Uuid, Path, description = "the merchant id"), ("order_id" = String, Path, description = "the merchant's order id, as reported")), responses(
    (status = 200, body = Timeline), (status = 404, description = "no purchase for this order", body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn order(
    State(state): State<AppState>,
    _admin: BoardAdmin,
    Path((merchant, order_id)): Path<(MerchantId, String)>,
) -> ApiResult<Json<Timeline>> {
    let mut conn = state.conn().await?;
    let id = timeline::find_by_order(&mut conn, merchant, &order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("purchase"))?;
    timeline::of_purchase(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("purchase"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// A purchase id, an order id (of any merchant) or a shopper's email.
    pub q: String,
    /// At most this many, 1 to 100 (default 20); another value is a 400.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// Purchases matching a purchase id, an order id or a shopper's email, newest first.
#[utoipa::path(get, path = "/purchases/search", tag = "admin", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(SearchQuery), responses(
    (status = 200, body = Vec<Match>), (status = 400, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn search(
    State(state): State<AppState>,
    _admin: BoardAdmin,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Vec<Match>>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query_parameter",
            "limit must be from 1 to 100",
        ));
    }
    let mut conn = state.conn().await?;
    Ok(Json(timeline::search(&mut conn, &q.q, limit).await?))
}
