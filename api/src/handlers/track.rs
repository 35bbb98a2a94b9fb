//! The SDK's endpoints, called from the shopper's browser or app with the
//! merchant's publishable key (click, purchase) or the user's token
//! (identify). Rate limited per client address, in Redis, before anything
//! else is done with the request (the publishable key's lookup included):
//! [`TrackLimited`] comes first among each handler's extractors. Browsers on
//! other origins may call them (see [`crate::security::sdk_cors`]).

use axum::{
    extract::{FromRequestParts, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use clicknback_core::{
    ids::OfferId,
    models::merchant::Merchant,
    services::{
        merchants,
        rate_limit::{Decision, Limit},
        tracking::{self, LinkOutcome, TouchpointView, TrackError},
    },
};
use serde::Deserialize;

use crate::{
    auth::{AuthUser, ClientIp},
    error::{ApiError, ApiResult, Json, Problem},
    limits,
    state::AppState,
};

impl From<TrackError> for ApiError {
    fn from(e: TrackError) -> Self {
        match e {
            TrackError::Invalid(fields) => ApiError::validation(fields),
            TrackError::UnknownUser => ApiError::unauthorized("the token's user does not exist"),
            TrackError::Db(d) => d.into(),
        }
    }
}

/// The merchant named by `X-Publishable-Key`.
pub struct PublishableMerchant(pub Merchant);

impl FromRequestParts<AppState> for PublishableMerchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get("x-publishable-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 128)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_publishable_key",
                    "send the merchant's X-Publishable-Key",
                )
            })?;
        let m = state
            .cache
            .get_or_load(
                merchants::PK_CACHE_KIND,
                key,
                state.config.cache.merchant_ttl,
                || async {
                    let mut conn = state.conn().await?;
                    Ok::<_, ApiError>(merchants::find_by_publishable_key(&mut conn, key).await?)
                },
            )
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_publishable_key",
                    "unknown publishable key",
                )
            })?;
        if !m.is_active() {
            return Err(ApiError::forbidden("this merchant is suspended"));
        }
        Ok(PublishableMerchant(m))
    }
}

/// The call counted against its client address's limit (429 past it). An
/// extractor, so that it runs before the ones that read the database.
pub struct TrackLimited(pub Option<Decision>);

impl FromRequestParts<AppState> for TrackLimited {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Ok(ClientIp(ip)) = ClientIp::from_request_parts(parts, state).await;
        let l = Limit {
            limit: state.config.track_per_minute,
            window: std::time::Duration::from_secs(60),
        };
        Ok(TrackLimited(limits::hit(state, "track", &ip, l).await?))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickRequest {
    pub anon_id: String,
    pub offer_id: Option<OfferId>,
    pub landing_url: Option<String>,
}

/// Records a click on a referral link (a touchpoint) for the browser's anonymous id.
#[utoipa::path(post, path = "/v1/track/click", tag = "sdk", extensions(("x-rate-limited" = json!(true))),
    security(("publishable_key" = [])), request_body = ClickRequest, responses(
    (status = 201, body = TouchpointView),
    (status = 401, description = "missing or unknown publishable key (`invalid_publishable_key`)", body = Problem),
    (status = 403, description = "the merchant is suspended", body = Problem),
    (status = 422, description = "invalid fields (`validation_failed`)", body = Problem),
    (status = 429, description = "over the per-address tracking limit (`rate_limited`)", body = Problem),
))]
pub async fn click(
    State(state): State<AppState>,
    TrackLimited(d): TrackLimited,
    PublishableMerchant(m): PublishableMerchant,
    Json(body): Json<ClickRequest>,
) -> ApiResult<Response> {
    let mut conn = state.conn().await?;
    let t = tracking::click(
        &mut conn,
        &m,
        &body.anon_id,
        body.offer_id,
        body.landing_url.as_deref(),
    )
    .await?;
    Ok(limits::annotate(
        (StatusCode::CREATED, Json(t)).into_response(),
        d.as_ref(),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyRequest {
    pub anon_id: String,
}

/// Links the browser's anonymous id to the signed-in user. An id another
/// user identified before moves to this user (the browser belongs to whoever
/// signed in last); two users are never merged into one identity.
#[utoipa::path(post, path = "/v1/track/identify", tag = "sdk", security(("bearer" = [])), extensions(("x-rate-limited" = json!(true))),
    request_body = IdentifyRequest, responses(
    (status = 204, description = "linked (also when the id moved from another user)"),
    (status = 401, body = Problem),
    (status = 422, description = "invalid fields (`validation_failed`)", body = Problem),
    (status = 429, description = "over the per-address tracking limit (`rate_limited`)", body = Problem),
))]
pub async fn identify(
    State(state): State<AppState>,
    TrackLimited(d): TrackLimited,
    user: AuthUser,
    Json(body): Json<IdentifyRequest>,
) -> ApiResult<Response> {
    let mut conn = state.conn().await?;
    tracking::identify(&mut conn, user.id, &body.anon_id).await?;
    Ok(limits::annotate(
        StatusCode::NO_CONTENT.into_response(),
        d.as_ref(),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseConfirmation {
    pub anon_id: String,
    pub order_id: String,
    pub purchase_token: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PurchaseConfirmationResult {
    /// `linked`, `pending` (the purchase has not arrived yet) or `mismatch`.
    pub result: LinkOutcome,
}

/// The checkout page's purchase confirmation, with the token that must match
/// the merchant's webhook for the purchase to be linked to this browser.
#[utoipa::path(post, path = "/v1/track/purchase", tag = "sdk", extensions(("x-rate-limited" = json!(true))),
    security(("publishable_key" = [])), request_body = PurchaseConfirmation, responses(
    (status = 202, body = PurchaseConfirmationResult),
    (status = 401, description = "missing or unknown publishable key (`invalid_publishable_key`)", body = Problem),
    (status = 403, description = "the merchant is suspended", body = Problem),
    (status = 422, description = "invalid fields (`validation_failed`)", body = Problem),
    (status = 429, description = "over the per-address tracking limit (`rate_limited`)", body = Problem),
))]
pub async fn purchase(
    State(state): State<AppState>,
    TrackLimited(d): TrackLimited,
    PublishableMerchant(m): PublishableMerchant,
    Json(body): Json<PurchaseConfirmation>,
) -> ApiResult<Response> {
    let mut conn = state.conn().await?;
    let result = tracking::confirm_purchase(
        &mut conn,
        &m,
        &body.anon_id,
        &body.order_id,
        &body.purchase_token,
    )
    .await?;
    Ok(limits::annotate(
        (
            StatusCode::ACCEPTED,
            Json(PurchaseConfirmationResult { result }),
        )
            .into_response(),
        d.as_ref(),
    ))
}
