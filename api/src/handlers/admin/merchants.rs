use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use chrono::{DateTime, Utc};
use clicknback_core::{
    ids::MerchantId,
    models::merchant::{Merchant, MerchantStatus},
    services::merchants,
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::AdminUser,
    error::{ApiResult, Json, Path, Problem, Query},
    handlers::{ListQuery, Page, etag, if_match},
    state::AppState,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MerchantView {
    pub id: MerchantId,
    pub name: String,
    pub status: MerchantStatus,
    pub publishable_key: String,
    /// Per-merchant override of the webhook rate limit (requests per minute).
    pub webhook_rate_limit_per_minute: Option<i32>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Merchant> for MerchantView {
    fn from(m: Merchant) -> Self {
        Self {
            id: m.id,
            name: m.name,
            status: m.status,
            publishable_key: m.publishable_key,
            webhook_rate_limit_per_minute: m.webhook_rate_limit_per_minute,
            version: m.version,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A merchant with its webhook secret, shown only at creation and rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MerchantWithSecret {
    #[serde(flatten)]
    pub merchant: MerchantView,
    /// `whsec_` + base64 of 32 random bytes. Store it now: it is not shown again.
    pub webhook_secret: String,
    /// Until when the previous secret keeps verifying (after a rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    pub name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMerchant {
    pub name: Option<String>,
    /// Requests per minute for this merchant's webhooks; `null` returns to the default.
    #[serde(default, deserialize_with = "crate::handlers::double_option")]
    #[schema(value_type = Option<i32>)]
    pub webhook_rate_limit_per_minute: Option<Option<i32>>,
}

fn with_etag(m: Merchant) -> impl IntoResponse {
    let tag = etag(m.version);
    ([(header::ETAG, tag)], Json(MerchantView::from(m)))
}

fn with_secret(w: merchants::WithSecret) -> MerchantWithSecret {
    let previous_secret_expires_at = w.merchant.previous_secret_expires_at;
    MerchantWithSecret {
        merchant: w.merchant.into(),
        webhook_secret: w.webhook_secret,
        previous_secret_expires_at,
    }
}

/// Creates a merchant. The response carries the webhook secret and publishable key, once.
#[utoipa::path(post, path = "/v1/admin/merchants", tag = "admin", security(("bearer" = [])),
    request_body = CreateMerchant, responses(
    (status = 201, body = MerchantWithSecret, headers(("ETag"), ("Cache-Control"))),
    (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem),
))]
pub async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    Json(body): Json<CreateMerchant>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let created = merchants::create(&mut conn, &state.keys, &admin.actor(), &body.name).await?;
    let tag = etag(created.merchant.version);
    Ok((
        StatusCode::CREATED,
        [(header::ETAG, tag), (header::CACHE_CONTROL, no_store())],
        Json(with_secret(created)),
    ))
}

/// Lists merchants, newest first.
#[utoipa::path(get, path = "/v1/admin/merchants", tag = "admin", security(("bearer" = [])),
    params(ListQuery), responses(
    (status = 200, body = Page<MerchantView>),
    (status = 400, description = "bad cursor or limit", body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<MerchantView>>> {
    let (limit, cursor) = q.parse(&state.cursors)?;
    let mut conn = state.conn().await?;
    let rows = merchants::list(&mut conn, cursor.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        &state.cursors,
        |m| (m.created_at, m.id),
        MerchantView::from,
    )))
}

/// One merchant, with its `ETag`.
#[utoipa::path(get, path = "/v1/admin/merchants/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = MerchantView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<MerchantId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    Ok(with_etag(merchants::get(&mut conn, id).await?))
}

/// Changes a merchant. Requires `If-Match` with its current `ETag`.
#[utoipa::path(patch, path = "/v1/admin/merchants/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = String, Header)), request_body = UpdateMerchant, responses(
    (status = 200, body = MerchantView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 412, description = "stale ETag", body = Problem),
    (status = 428, description = "If-Match missing", body = Problem),
    (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn update(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<MerchantId>,
    headers: HeaderMap,
    Json(body): Json<UpdateMerchant>,
) -> ApiResult<impl IntoResponse> {
    let version = if_match(&headers)?;
    let mut conn = state.conn().await?;
    let m = merchants::update(
        &mut conn,
        &admin.actor(),
        id,
        version,
        merchants::MerchantUpdate {
            name: body.name,
            webhook_rate_limit_per_minute: body.webhook_rate_limit_per_minute,
        },
    )
    .await?;
    merchants::invalidate_cache(&state.cache, &m).await;
    Ok(with_etag(m))
}

/// Suspends a merchant: its webhooks are refused with 403 until reactivated.
#[utoipa::path(post, path = "/v1/admin/merchants/{id}/suspend", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = MerchantView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn suspend(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<MerchantId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let m = merchants::set_status(&mut conn, &admin.actor(), id, true).await?;
    merchants::invalidate_cache(&state.cache, &m).await;
    Ok(with_etag(m))
}

/// Lifts a suspension.
#[utoipa::path(post, path = "/v1/admin/merchants/{id}/reactivate", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = MerchantView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn reactivate(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<MerchantId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let m = merchants::set_status(&mut conn, &admin.actor(), id, false).await?;
    merchants::invalidate_cache(&state.cache, &m).await;
    Ok(with_etag(m))
}

/// Issues a new webhook secret; the previous one keeps verifying for a grace period.
#[utoipa::path(post, path = "/v1/admin/merchants/{id}/rotate-secret", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = MerchantWithSecret, headers(("ETag"), ("Cache-Control"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<MerchantId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let rotated = merchants::rotate_secret(
        &mut conn,
        &state.keys,
        &admin.actor(),
        id,
        state.config.webhook_secret_grace,
    )
    .await?;
    merchants::invalidate_cache(&state.cache, &rotated.merchant).await;
    let tag = etag(rotated.merchant.version);
    Ok((
        [(header::ETAG, tag), (header::CACHE_CONTROL, no_store())],
        Json(with_secret(rotated)),
    ))
}

/// Responses that carry a secret are kept by no cache.
fn no_store() -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_static("no-store")
}

/// Ends the previous webhook secret's grace period now (after a leak): only
/// the current secret verifies from this answer on. Audited.
#[utoipa::path(post, path = "/v1/admin/merchants/{id}/revoke-previous-secret", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = MerchantView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn revoke_previous_secret(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<MerchantId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let m = merchants::revoke_previous_secret(&mut conn, &admin.actor(), id).await?;
    merchants::invalidate_cache(&state.cache, &m).await;
    Ok(with_etag(m))
}
