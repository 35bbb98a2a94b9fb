//! Registration, login and the caller's own profile.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use clicknback_core::{
    crypto::sha256,
    models::user::{Role, User},
    services::{
        rate_limit::{self, Decision, Limit},
        users::{self, UserError},
    },
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    auth::{AuthUser, ClientIp},
    error::{ApiError, ApiResult, Json, Problem},
    state::AppState,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    /// `user` or `admin`.
    pub role: String,
    pub created_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            role: u.role,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Creates a shopper account and sends the welcome email in the background.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = Credentials, responses(
    (status = 201, body = UserView),
    (status = 409, description = "email already registered", body = Problem),
    (status = 422, description = "invalid email or password", body = Problem),
))]
pub async fn register(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.conn().await?;
    let user = users::create(&mut conn, &body.email, &body.password, Role::User).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(user))))
}

/// Exchanges email and password for an access token (shoppers and admins alike).
/// Five failures for one email from one address within 15 minutes lock that
/// pair out until the window ends (429 with `Retry-After`).
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials, responses(
    (status = 200, body = TokenResponse),
    (status = 401, description = "wrong email or password", body = Problem),
    (status = 429, description = "too many failed attempts", body = Problem),
))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    let limit = Limit {
        limit: state.config.login_max_failures,
        window: state.config.login_window,
    };
    let who: String = sha256(body.email.trim().to_lowercase().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = format!("{}:rl:login:{who}:{ip}", state.config.redis_namespace);
    let mut redis = state.redis.get().await.ok();
    if let Some(r) = redis.as_mut() {
        let d = rate_limit::peek(r, &key, limit).await;
        if !d.allowed {
            return Err(too_many(d));
        }
    }
    let mut conn = state.conn().await?;
    match users::authenticate(&mut conn, &body.email, &body.password).await {
        Ok(user) => {
            if let Some(r) = redis.as_mut() {
                rate_limit::reset(r, &key).await;
            }
            let role = Role::parse(&user.role).unwrap_or(Role::User);
            let issued = state.tokens.issue(user.id, role);
            Ok(Json(TokenResponse {
                access_token: issued.access_token,
                token_type: "Bearer".into(),
                expires_in: issued.expires_in,
            })
            .into_response())
        }
        Err(UserError::InvalidCredentials) => {
            let mut err: ApiError = UserError::InvalidCredentials.into();
            if let Some(r) = redis.as_mut() {
                let d = rate_limit::hit(r, &key, limit).await;
                err = with_limit_headers(err, &d);
            }
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}

fn with_limit_headers(err: ApiError, d: &Decision) -> ApiError {
    err.with_header(
        header::HeaderName::from_static("ratelimit-policy"),
        &d.policy_header(),
    )
    .with_header(
        header::HeaderName::from_static("ratelimit"),
        &d.limit_header(),
    )
}

fn too_many(d: Decision) -> ApiError {
    tracing::warn!("login locked out after repeated failures");
    metrics::counter!("rate_limited_total", "limit" => "login").increment(1);
    let err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_login_attempts",
        format!(
            "too many failed logins; try again in {} seconds",
            d.reset_secs.max(1)
        ),
    )
    .with_header(header::RETRY_AFTER, &d.reset_secs.max(1).to_string());
    with_limit_headers(err, &d)
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/me", tag = "me", security(("bearer" = [])), responses(
    (status = 200, body = UserView),
    (status = 401, body = Problem),
))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<UserView>> {
    let mut conn = state.conn().await?;
    Ok(Json(users::get(&mut conn, user.id).await?.into()))
}
