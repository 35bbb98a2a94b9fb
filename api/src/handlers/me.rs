//! The shopper's own data.

use axum::extract::State;
use clicknback_core::services::{
    ledger::{self, TransferView, WalletBalance},
    pagination,
    purchases::{self, PurchaseView},
    stats::{self, UserStats},
};
use serde::Serialize;

use crate::{
    auth::AuthUser,
    error::{ApiError, ApiResult, Json, Problem, Query},
    handlers::{ListQuery, Page},
    state::AppState,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Wallet {
    /// One entry per currency the user has touched.
    pub data: Vec<WalletBalance>,
}

/// Balances per currency: pending, available, reserved (payout in flight),
/// paid out, and any receivable (owed after a reversal of spent cashback).
#[utoipa::path(get, path = "/v1/me/wallet", tag = "me", security(("bearer" = [])), responses(
    (status = 200, body = Wallet), (status = 401, body = Problem),
))]
pub async fn wallet(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Wallet>> {
    let mut conn = state.conn().await?;
    Ok(Json(Wallet {
        data: ledger::wallet(&mut conn, user.id).await?,
    }))
}

/// Cashback statistics per currency (total, count, average, best day),
/// computed in the background after reward movements and served from a cache.
#[utoipa::path(get, path = "/v1/me/stats", tag = "me", security(("bearer" = [])), responses(
    (status = 200, body = UserStats), (status = 401, body = Problem),
))]
pub async fn stats(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<UserStats>> {
    let figures = state
        .cache
        .get_or_load(
            stats::CACHE_KIND,
            &user.id.to_string(),
            state.config.cache.stats_ttl,
            || async {
                let mut conn = state.conn().await?;
                Ok::<_, ApiError>(stats::read(&mut conn, user.id).await?)
            },
        )
        .await?;
    Ok(Json(figures))
}

/// The user's purchases, newest first.
#[utoipa::path(get, path = "/v1/me/purchases", tag = "me", security(("bearer" = [])),
    params(ListQuery), responses(
    (status = 200, body = Page<PurchaseView>), (status = 400, description = "bad cursor or limit", body = Problem),
    (status = 401, body = Problem),
))]
pub async fn purchases(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<PurchaseView>>> {
    let (limit, cursor) = q.parse(&state.cursors)?;
    let mut conn = state.conn().await?;
    let rows = purchases::list_for_user(&mut conn, user.id, cursor.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        &state.cursors,
        |p| (p.created_at, p.id),
        |p| PurchaseView::from(&p),
    )))
}

/// The user's ledger movements (credits, confirmations, reversals, payouts), newest first.
#[utoipa::path(get, path = "/v1/me/transactions", tag = "me", security(("bearer" = [])),
    params(ListQuery), responses(
    (status = 200, body = Page<TransferView>), (status = 400, description = "bad cursor or limit", body = Problem),
    (status = 401, body = Problem),
))]
pub async fn transactions(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<TransferView>>> {
    let (limit, cursor) = q.parse_text(&state.cursors)?;
    let mut conn = state.conn().await?;
    let rows = ledger::transfers(&mut conn, user.id, cursor, limit + 1).await?;
    let (data, next_cursor) = pagination::page_by(rows, limit, |t| {
        state.cursors.encode_text(t.created_at, &t.id)
    });
    Ok(Json(Page { data, next_cursor }))
}
