//! The job board page, its login form and its files. The page and its API
//! (`/board/api/...`, the same handlers as `/v1/admin/...`) require an admin:
//! the session the login form starts (see [`crate::session`]), an admin
//! bearer token, or Basic credentials from a script.
//!
//! apalis-board 1.0 was not used: with apalis-redis 1.0 most of its data pages
//! answer 500 or empty lists and it has no re-queue, delete or pause actions,
//! and dead jobs here live in PostgreSQL, which it cannot see.

use axum::{
    extract::{FromRequest, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use clicknback_core::models::user::Role;
use serde::Deserialize;

use crate::{
    auth::{BoardAdmin, ClientIp, board_session},
    error::{ApiError, Path},
    state::AppState,
};

const PAGE: &str = include_str!("../board/index.html");
const LOGIN: &str = include_str!("../board/login.html");
const CSS: &str = include_str!("../board/board.css");
const JS: &str = include_str!("../board/board.js");

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The login form with `message` (HTML-escaped) above it.
fn login_form(status: StatusCode, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    html(status, LOGIN.replace("{{message}}", &escaped))
}

/// The job board (an HTML page). Without credentials: 401 with the login
/// form. `/board/` serves the same page.
#[utoipa::path(get, path = "/board", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])), responses(
    (status = 200, description = "the board page", content_type = "text/html"),
    (status = 401, description = "no or wrong credentials: the login form (an HTML page)"),
    (status = 403, description = "the credentials are not an admin's", body = crate::error::Problem),
))]
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    admin: Result<BoardAdmin, ApiError>,
) -> Response {
    match admin {
        Ok(_) => {
            let csrf = board_session(&headers, &state)
                .map(|s| state.sessions.csrf_token(&s))
                .unwrap_or_default();
            html(StatusCode::OK, PAGE.replace("{{csrf_token}}", &csrf))
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => login_form(StatusCode::UNAUTHORIZED, ""),
        Err(e) => e.into_response(),
    }
}

/// The login form's fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginForm {
    pub email: String,
    pub password: String,
}

/// Signs an admin in from the login form: counted like every sign-in
/// (`LOGIN_PER_IP_PER_MINUTE`, `LOGIN_MAX_FAILURES`), then the session cookie
/// and a redirect to the board. Refused answers are the form again, with
/// what went wrong.
#[utoipa::path(post, path = "/board/login", tag = "jobs",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"), responses(
    (status = 303, description = "signed in: `Set-Cookie` holds the session, `Location` is `/board`"),
    (status = 401, description = "wrong email or password: the form again (HTML)"),
    (status = 403, description = "another origin's form (`cross_origin_request`), or not an admin account (the form again)", body = crate::error::Problem),
    (status = 429, description = "too many attempts: the form again (HTML), with `Retry-After`"),
))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Response {
    let form = match axum::Form::<LoginForm>::from_request(req, &state).await {
        Ok(axum::Form(f)) => f,
        Err(r) => {
            let status = r.status();
            let code = match status {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
                _ => "invalid_body",
            };
            return ApiError::new(status, code, r.body_text()).into_response();
        }
    };
    match crate::handlers::auth::sign_in(&state, &ip, &form.email, &form.password).await {
        Ok((user, _)) if user.role == Role::Admin => {
            let cookie = state.sessions.set_cookie(
                &state
                    .sessions
                    .issue(user.id, chrono::Utc::now().timestamp()),
            );
            tracing::info!(user.id = %user.id, "board session started");
            let mut res = (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/board"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Ok(_) => login_form(StatusCode::FORBIDDEN, "the board requires an admin account"),
        Err(e) => {
            let message = if e.code == "invalid_credentials" {
                "wrong email or password".to_owned()
            } else {
                e.detail.clone()
            };
            let mut res = login_form(e.status, &message);
            for (k, v) in e.headers {
                if k != header::WWW_AUTHENTICATE {
                    res.headers_mut().insert(k, v);
                }
            }
            res
        }
    }
}

/// Ends the board session in this browser, and back to the login form.
#[utoipa::path(post, path = "/board/logout", tag = "jobs", responses(
    (status = 303, description = "signed out: the cookie is cleared, `Location` is `/board`"),
    (status = 403, description = "another origin's form (`cross_origin_request`)", body = crate::error::Problem),
))]
pub async fn logout(State(state): State<AppState>) -> Response {
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/board")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&state.sessions.clear_cookie()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// The board's script and style sheet (no credentials: they hold no data).
#[utoipa::path(get, path = "/board/assets/{file}", tag = "jobs",
    params(("file" = String, Path, description = "`board.js` or `board.css`")), responses(
    (status = 200, description = "the file"),
    (status = 404, description = "no such file (`not_found`)", body = crate::error::Problem),
))]
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "board.js" => (JS, "text/javascript; charset=utf-8"),
        "board.css" => (CSS, "text/css; charset=utf-8"),
        _ => return ApiError::not_found("file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
