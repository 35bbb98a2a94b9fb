//! Request handlers, one module per resource. Each validates input, calls a
//! core service, and shapes the response; none holds business rules.

pub mod admin;
pub mod auth;
pub mod board;
pub mod files;
pub mod health;
pub mod me;
pub mod payouts;
pub mod track;
pub mod webhooks;

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use clicknback_core::services::{
    FieldError,
    idempotency::Outcome,
    pagination::{self, Cursor, CursorCodec, TextCursor},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// `?limit=&cursor=`; another parameter is a 400.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20); another value is a 400 `invalid_limit`.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page: opaque and signed; an altered
    /// cursor is a 400 `invalid_cursor`.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The validated limit and decoded cursor.
    pub fn parse(&self, codec: &CursorCodec) -> ApiResult<(i64, Option<Cursor>)> {
        let limit = pagination::limit(self.limit)?;
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| codec.decode(c))
            .transpose()?;
        Ok((limit, cursor))
    }

    /// The validated limit and decoded cursor over `(created_at, text id)`.
    pub fn parse_text(&self, codec: &CursorCodec) -> ApiResult<(i64, Option<TextCursor>)> {
        let limit = pagination::limit(self.limit)?;
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| codec.decode_text(c))
            .transpose()?;
        Ok((limit, cursor))
    }
}

/// A page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` rows.
    pub fn from_rows<R, I: Into<Uuid>>(
        rows: Vec<R>,
        limit: i64,
        codec: &CursorCodec,
        key: impl Fn(&R) -> (DateTime<Utc>, I),
        view: impl Fn(R) -> T,
    ) -> Self {
        let (rows, next_cursor) = pagination::page(rows, limit, codec, |r| {
            let (created_at, id) = key(r);
            Cursor {
                created_at,
                id: id.into(),
            }
        });
        Page {
            data: rows.into_iter().map(view).collect(),
            next_cursor,
        }
    }
}

pub fn etag(version: i32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// The version an `If-Match` header names. Updates require it.
pub fn if_match(headers: &HeaderMap) -> ApiResult<i32> {
    let raw = headers
        .get(header::IF_MATCH)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                "send If-Match with the ETag of the resource you are changing",
            )
        })?
        .to_str()
        .unwrap_or_default()
        .trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    raw.trim_matches('"').parse().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "If-Match does not name a current ETag of this resource",
        )
    })
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A JSON value as a typed request body; 422 naming the problem when it does not fit.
pub fn typed<T: DeserializeOwned>(json: &serde_json::Value) -> ApiResult<T> {
    T::deserialize(json)
        .map_err(|e| ApiError::validation(vec![FieldError::new("body", &e.to_string())]))
}

/// The `Idempotency-Key` header: `None` when absent, a 400 when present but
/// not text (e.g. a control character or a byte above 0x7e).
pub fn idempotency_key_header(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::bad_request(
                "idempotency_key_invalid",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            )
        }),
    }
}

/// The response of an idempotent request; `Idempotent-Replayed: true` on a replay.
pub fn respond(outcome: Outcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::ACCEPTED);
    let mut res = (status, axum::Json(outcome.body)).into_response();
    if outcome.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}
