//! The job board page. It and its API (`/board/api/...`, the same handlers as
//! `/v1/admin/...`) require an admin: Basic credentials from the browser's
//! prompt, or an admin bearer token.
//!
//! apalis-board 1.0 was not used: with apalis-redis 1.0 most of its data pages
//! answer 500 or empty lists and it has no re-queue, delete or pause actions,
//! and dead jobs here live in PostgreSQL, which it cannot see.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

use crate::auth::BoardAdmin;

const PAGE: &str = include_str!("../board/index.html");

/// The job board (an HTML page). A browser without credentials gets a Basic
/// challenge; an admin bearer token works too. `/board/` serves the same page.
#[utoipa::path(get, path = "/board", tag = "jobs", security(("bearer" = []), ("board_basic" = [])), responses(
    (status = 200, description = "the board page", content_type = "text/html"),
    (status = 401, description = "no or wrong credentials (`WWW-Authenticate: Basic` without a bearer token)", body = crate::error::Problem),
    (status = 403, description = "the credentials are not an admin's", body = crate::error::Problem),
))]
pub async fn page(_admin: BoardAdmin) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}
