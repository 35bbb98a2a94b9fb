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
