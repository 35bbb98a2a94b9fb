//! Review of flagged purchases, and merchants' link quality.

use axum::extract::State;
use clicknback_core::{
    ids::{MerchantId, PurchaseId},
    models::{purchase::PurchaseStatus, reward::RewardStatus},
    services::{
        link_quality::{self, LinkStats},
        purchases::{self, ReviewItem},
        rewards::{self as reward_svc, RewardError},
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::AdminUser,
    error::{ApiError, ApiResult, Json, Path, Problem, Query},
    handlers::{ListQuery, Page},
    state::AppState,
};

impl From<RewardError> for ApiError {
    fn from(e: RewardError) -> Self {
        match e {
            RewardError::IllegalTransition { .. } => ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "invalid_transition",
                e.to_string(),
            ),
            RewardError::Db(diesel::result::Error::NotFound) => ApiError::not_found("reward"),
            RewardError::Db(d) => d.into(),
            RewardError::Ledger(l) => ApiError::internal(l),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    /// Purchase status to list (default `flagged`); another value is a 400.
    pub status: Option<PurchaseStatus>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (opaque and signed; altered → 400).
    pub cursor: Option<String>,
}

/// Purchases by status, newest first (flagged ones by default).
#[utoipa::path(get, path = "/v1/admin/purchases", tag = "admin", security(("bearer" = [])),
    params(ReviewQuery), responses(
    (status = 200, body = Page<ReviewItem>), (status = 400, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<ReviewQuery>,
) -> ApiResult<Json<Page<ReviewItem>>> {
    let (limit, cursor) = ListQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse(&state.cursors)?;
    let status = q.status.unwrap_or(PurchaseStatus::Flagged);
    let mut conn = state.conn().await?;
    let rows = purchases::list_by_status(&mut conn, status, cursor.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        &state.cursors,
        |r| (r.created_at, r.purchase_id),
        |r| r,
    )))
}

/// The reward of a reviewed purchase.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReviewOutcome {
    pub purchase_id: PurchaseId,
    /// The reward's status after the review (`pending` when approved, `reversed` when rejected).
    pub reward_status: RewardStatus,
    pub cashback_minor: i64,
}

async fn review(
    state: AppState,
    admin: AdminUser,
    id: PurchaseId,
    approve: bool,
) -> ApiResult<Json<ReviewOutcome>> {
    let mut conn = state.conn().await?;
    let r = reward_svc::review(&mut conn, &admin.actor(), id, approve).await?;
    Ok(Json(ReviewOutcome {
        purchase_id: id,
        reward_status: r.status,
        cashback_minor: r.amount_minor,
    }))
}

/// Approves a flagged purchase: its reward is credited and follows the normal flow.
#[utoipa::path(post, path = "/v1/admin/purchases/{id}/approve", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = ReviewOutcome), (status = 404, body = Problem),
    (status = 409, description = "not flagged", body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn approve(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<PurchaseId>,
) -> ApiResult<Json<ReviewOutcome>> {
    review(state, admin, id, true).await
}

/// Rejects a flagged purchase: its reward is reversed (no money had moved).
#[utoipa::path(post, path = "/v1/admin/purchases/{id}/reject", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = ReviewOutcome), (status = 404, body = Problem),
    (status = 409, description = "not flagged", body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn reject(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<PurchaseId>,
) -> ApiResult<Json<ReviewOutcome>> {
    review(state, admin, id, false).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DaysQuery {
    /// Days to cover, today included (1 to 90, default 1); another value is a 400.
    #[param(minimum = 1, maximum = 90)]
    pub days: Option<i64>,
}

/// Purchase-token link quality of a merchant: matched, mismatched, rate.
#[utoipa::path(get, path = "/v1/admin/merchants/{id}/link-stats", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path), DaysQuery), responses(
    (status = 200, body = LinkStats), (status = 400, body = Problem), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn link_stats(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<MerchantId>,
    Query(q): Query<DaysQuery>,
) -> ApiResult<Json<LinkStats>> {
    let days = q.days.unwrap_or(1);
    if !(1..=90).contains(&days) {
        return Err(ApiError::bad_request(
            "invalid_query_parameter",
            "days must be from 1 to 90",
        ));
    }
    let mut conn = state.conn().await?;
    clicknback_core::services::merchants::get(&mut conn, id).await?;
    Ok(Json(link_quality::stats(&mut conn, id, days).await?))
}
