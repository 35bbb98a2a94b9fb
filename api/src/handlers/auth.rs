//! Registration, login and the caller's own profile.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use clicknback_core::{
    crypto::sha256,
    ids::UserId,
    models::user::{Role, User},
    services::{
        rate_limit::{self, Decision, Limit},
        users::{self, UserError},
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::{AuthUser, ClientIp},
    error::{ApiError, ApiResult, Json, Problem},
    limits,
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
    pub id: UserId,
    pub email: String,
    pub role: Role,
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
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials, extensions(("x-rate-limited" = json!(true))), responses(
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
    let key = limits::key(&state, "login", &format!("{who}:{ip}"));
    let mut redis = state.redis.get().await.ok();
    let mut standing = None;
    if let Some(r) = redis.as_mut() {
        let d = rate_limit::peek(r, &key, limit).await;
        if !d.allowed {
            return Err(too_many(d));
        }
        standing = Some(d);
    }
    let mut conn = state.conn().await?;
    match users::authenticate(&mut conn, &body.email, &body.password).await {
        Ok(user) => {
            if let Some(r) = redis.as_mut() {
                rate_limit::reset(r, &key).await;
            }
            let issued = state.tokens.issue(user.id, user.role);
            let res = Json(TokenResponse {
                access_token: issued.access_token,
                token_type: "Bearer".into(),
                expires_in: issued.expires_in,
            })
            .into_response();
            Ok(limits::annotate(res, standing.as_ref()))
        }
        Err(UserError::InvalidCredentials) => {
            let mut err: ApiError = UserError::InvalidCredentials.into();
            if let Some(r) = redis.as_mut() {
                let d = rate_limit::hit(r, &key, limit).await;
                err = limits::with_headers(err, &d);
            }
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}

fn too_many(d: Decision) -> ApiError {
    tracing::warn!("login locked out after repeated failures");
    limits::too_many(
        "login",
        &d,
        "too_many_login_attempts",
        "too many failed logins",
    )
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/me", tag = "me", security(("bearer" = [])), responses(
    (status = 200, body = UserView),
    (status = 401, body = Problem),
    (status = 404, description = "the token's user no longer exists", body = Problem),
))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<UserView>> {
    let mut conn = state.conn().await?;
    Ok(Json(users::get(&mut conn, user.id).await?.into()))
}
