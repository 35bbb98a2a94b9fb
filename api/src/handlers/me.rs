//! The shopper's own data.

use axum::extract::State;
use clicknback_core::services::{
    ledger::{self, WalletBalance},
    stats::{self, UserStats},
};
use serde::Serialize;

use crate::{
    auth::AuthUser,
    error::{ApiResult, Json, Problem},
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

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use clicknback_core::{
    schema::{ledger_transfers, purchases},
    services::{ledger::TransferView, pagination, purchases::PurchaseView},
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::{
    error::{ApiError, Query},
    handlers::{ListQuery, Page},
};

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
    let mut query = purchases::table
        .filter(purchases::user_id.eq(user.id))
        .order((purchases::created_at.desc(), purchases::id.desc()))
        .limit(limit + 1)
        .select(clicknback_core::models::purchase::Purchase::as_select())
        .into_boxed();
    if let Some(c) = cursor {
        query = query.filter(
            purchases::created_at
                .lt(c.created_at)
                .or(purchases::created_at
                    .eq(c.created_at)
                    .and(purchases::id.lt(c.id))),
        );
    }
    let rows = query.load(&mut conn).await?;
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
    let limit = pagination::limit(q.limit)?;
    let cursor: Option<(DateTime<Utc>, String)> = q
        .cursor
        .as_deref()
        .map(|c| state.cursors.decode_text(c))
        .transpose()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor is malformed or has been altered",
            )
        })?;
    let mut conn = state.conn().await?;
    let mut query = ledger_transfers::table
        .filter(ledger_transfers::user_id.eq(user.id))
        .order((
            ledger_transfers::created_at.desc(),
            ledger_transfers::id.desc(),
        ))
        .limit(limit + 1)
        .select((
            ledger_transfers::id,
            ledger_transfers::kind,
            ledger_transfers::amount_minor,
            ledger_transfers::currency,
            ledger_transfers::purchase_id,
            ledger_transfers::payout_id,
            ledger_transfers::created_at,
        ))
        .into_boxed();
    if let Some((at, id)) = cursor {
        query = query.filter(
            ledger_transfers::created_at
                .lt(at)
                .or(ledger_transfers::created_at
                    .eq(at)
                    .and(ledger_transfers::id.lt(id))),
        );
    }
    let mut rows: Vec<TransferView> = query.load(&mut conn).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last()
            .map(|t| state.cursors.encode_text(t.created_at, &t.id))
    } else {
        None
    };
    Ok(Json(Page {
        data: rows,
        next_cursor,
    }))
}
