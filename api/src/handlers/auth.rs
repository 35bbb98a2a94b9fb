//! Registration, login and the caller's own profile.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use clicknback_core::{
    ids::UserId,
    models::user::{Role, User},
    services::{
        rate_limit::{Decision, Limit},
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

/// Creates a shopper account and sends the welcome email in the background
/// (at most one welcome per address and day). Registrations are limited per
/// client address (`REGISTER_PER_IP_PER_HOUR`, 429 past it).
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = Credentials, extensions(("x-rate-limited" = json!(true))), responses(
    (status = 201, body = UserView),
    (status = 409, description = "email already registered", body = Problem),
    (status = 422, description = "invalid email or password", body = Problem),
    (status = 429, description = "too many registrations from this address (`rate_limited`)", body = Problem),
    (status = 503, description = "too many passwords are being hashed (`overloaded`) or a dependency is down; see `Retry-After`", body = Problem),
))]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    let limit = Limit {
        limit: state.config.sign_in.register_per_ip_per_hour,
        window: std::time::Duration::from_secs(3_600),
    };
    let d = limits::hit_always(&state, "register", &ip, limit).await?;
    // Hash first, with no connection held; then store.
    let account = users::prepare(&body.email, &body.password, Role::User).await?;
    let mut conn = state.conn().await?;
    let user = users::insert(&mut conn, account).await?;
    Ok(limits::annotate(
        (StatusCode::CREATED, Json(UserView::from(user))).into_response(),
        Some(&d),
    ))
}

/// Exchanges email and password for an access token (shoppers and admins alike).
/// Every attempt is counted before the password is checked: five for one
/// email from one address within 15 minutes (a success starts the count
/// again), and `LOGIN_PER_IP_PER_MINUTE` from one address whatever the email;
/// past either, 429 with `Retry-After`.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials, extensions(("x-rate-limited" = json!(true))), responses(
    (status = 200, body = TokenResponse, headers(("Cache-Control"))),
    (status = 401, description = "wrong email or password", body = Problem),
    (status = 429, description = "too many attempts (`too_many_login_attempts`)", body = Problem),
    (status = 503, description = "too many passwords are being checked (`overloaded`) or a dependency is down; see `Retry-After`", body = Problem),
))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    let user = sign_in(&state, &ip, &body.email, &body.password).await?;
    let issued = state.tokens.issue(user.0.id, user.0.role);
    let mut res = Json(TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer".into(),
        expires_in: issued.expires_in,
    })
    .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(limits::annotate(res, Some(&user.1)))
}

/// Checks a sign-in however the credentials came (the login endpoint, Basic
/// credentials, the board's form): counted first ([`limits::sign_in_attempt`]),
/// the account looked up with a connection that is given back before the
/// password is checked on a hashing thread.
pub async fn sign_in(
    state: &AppState,
    ip: &str,
    email: &str,
    password: &str,
) -> ApiResult<(User, Decision)> {
    let d = limits::sign_in_attempt(state, ip, email).await?;
    let account = {
        let mut conn = state.conn().await?;
        users::find_by_email(&mut conn, email).await?
    };
    match users::check_credentials(account, password).await {
        Ok(user) => {
            limits::sign_in_succeeded(state, ip, email).await;
            Ok((user, d))
        }
        Err(UserError::InvalidCredentials) => {
            let err: ApiError = UserError::InvalidCredentials.into();
            Err(limits::with_headers(err, &d))
        }
        Err(e) => Err(e.into()),
    }
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
