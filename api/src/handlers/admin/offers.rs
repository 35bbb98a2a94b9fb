use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use chrono::{DateTime, Utc};
use clicknback_core::{
    ids::{MerchantId, OfferId},
    models::offer::Offer,
    money::Currency,
    services::offers::{self, OfferInput, OfferPatch},
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::AdminUser,
    error::{ApiResult, Json, Path, Problem, Query},
    handlers::{ListQuery, Page, double_option, etag, if_match},
    state::AppState,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OfferView {
    pub id: OfferId,
    pub merchant_id: MerchantId,
    pub name: String,
    /// Cashback rate in basis points (0..=10000).
    pub rate_bps: i32,
    pub max_cashback_minor: Option<i64>,
    pub monthly_cap_minor: Option<i64>,
    /// The currency of the caps.
    pub currency: Option<Currency>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Offer> for OfferView {
    fn from(o: Offer) -> Self {
        Self {
            id: o.id,
            merchant_id: o.merchant_id,
            name: o.name,
            rate_bps: o.rate_bps,
            max_cashback_minor: o.max_cashback_minor,
            monthly_cap_minor: o.monthly_cap_minor,
            currency: o.currency,
            starts_at: o.starts_at,
            ends_at: o.ends_at,
            active: o.active,
            version: o.version,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOffer {
    pub name: String,
    pub rate_bps: i32,
    pub max_cashback_minor: Option<i64>,
    pub monthly_cap_minor: Option<i64>,
    /// The ISO-4217 currency of the caps; required when the offer has a cap.
    pub currency: Option<Currency>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// Activate at once (default false). At most one offer per merchant is active.
    pub active: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOffer {
    pub name: Option<String>,
    pub rate_bps: Option<i32>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub max_cashback_minor: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub monthly_cap_minor: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Currency>)]
    pub currency: Option<Option<Currency>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub ends_at: Option<Option<DateTime<Utc>>>,
}

fn with_etag(o: Offer) -> impl IntoResponse {
    let tag = etag(o.version);
    ([(header::ETAG, tag)], Json(OfferView::from(o)))
}

/// Creates an offer for a merchant.
#[utoipa::path(post, path = "/v1/admin/merchants/{id}/offers", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "merchant id")), request_body = CreateOffer, responses(
    (status = 201, body = OfferView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 409, description = "another offer is active", body = Problem),
    (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(merchant_id): Path<MerchantId>,
    Json(body): Json<CreateOffer>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let input = OfferInput {
        name: body.name,
        rate_bps: body.rate_bps,
        max_cashback_minor: body.max_cashback_minor,
        monthly_cap_minor: body.monthly_cap_minor,
        currency: body.currency,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
    };
    let o = offers::create(
        &mut conn,
        &admin.actor(),
        merchant_id,
        input,
        body.active.unwrap_or(false),
    )
    .await?;
    offers::invalidate_cache(&state.cache, o.merchant_id).await;
    Ok((StatusCode::CREATED, with_etag(o)))
}

/// A merchant's offers, newest first.
#[utoipa::path(get, path = "/v1/admin/merchants/{id}/offers", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "merchant id"), ListQuery), responses(
    (status = 200, body = Page<OfferView>), (status = 404, body = Problem), (status = 400, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(merchant_id): Path<MerchantId>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<OfferView>>> {
    let (limit, cursor) = q.parse(&state.cursors)?;
    let mut conn = state.conn().await?;
    let rows =
        offers::list_for_merchant(&mut conn, merchant_id, cursor.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        &state.cursors,
        |o| (o.created_at, o.id),
        OfferView::from,
    )))
}

/// One offer, with its `ETag`.
#[utoipa::path(get, path = "/v1/admin/offers/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = OfferView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<OfferId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    Ok(with_etag(offers::get(&mut conn, id).await?))
}

/// Changes an offer. Requires `If-Match` with its current `ETag`.
#[utoipa::path(patch, path = "/v1/admin/offers/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("If-Match" = String, Header)), request_body = UpdateOffer, responses(
    (status = 200, body = OfferView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 412, description = "stale ETag", body = Problem),
    (status = 428, description = "If-Match missing", body = Problem),
    (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn update(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<OfferId>,
    headers: HeaderMap,
    Json(body): Json<UpdateOffer>,
) -> ApiResult<impl IntoResponse> {
    let version = if_match(&headers)?;
    let mut conn = state.conn().await?;
    let patch = OfferPatch {
        name: body.name,
        rate_bps: body.rate_bps,
        max_cashback_minor: body.max_cashback_minor,
        monthly_cap_minor: body.monthly_cap_minor,
        currency: body.currency,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
    };
    let o = offers::update(&mut conn, &admin.actor(), id, version, patch).await?;
    offers::invalidate_cache(&state.cache, o.merchant_id).await;
    Ok(with_etag(o))
}

/// Makes the offer the merchant's active one (409 if another is active).
#[utoipa::path(post, path = "/v1/admin/offers/{id}/activate", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = OfferView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 409, description = "another offer is active", body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn activate(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<OfferId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let o = offers::set_active(&mut conn, &admin.actor(), id, true).await?;
    offers::invalidate_cache(&state.cache, o.merchant_id).await;
    Ok(with_etag(o))
}

/// Stops the offer; purchases made from now on do not get it.
#[utoipa::path(post, path = "/v1/admin/offers/{id}/deactivate", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses(
    (status = 200, body = OfferView, headers(("ETag"))), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn deactivate(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<OfferId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let o = offers::set_active(&mut conn, &admin.actor(), id, false).await?;
    offers::invalidate_cache(&state.cache, o.merchant_id).await;
    Ok(with_etag(o))
}
