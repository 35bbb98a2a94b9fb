//! Every error the API returns, rendered as RFC 9457 `application/problem+json`
//! with a stable machine `code` and the request id. The cause of a 500 is
//! logged once and never sent.

use axum::{
    extract::rejection::{BytesRejection, PathRejection, QueryRejection},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use clicknback_core::services::{
    FieldError, idempotency::IdempotencyError, merchants::MerchantError, offers::OfferError,
    pagination::CursorError, purchases::PurchaseError, users::UserError,
};
use serde::Serialize;

use crate::middleware::current_request_id;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The problem document (also used for the OpenAPI description).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the request has invalid fields",
        );
        e.errors = errors;
        e
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
    }

    pub fn forbidden(detail: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// An unexpected failure: logged here, once, with its cause; the client
    /// sees only that something went wrong.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an unexpected error occurred; it has been logged",
        )
    }

    /// More work than this process takes at once: 503 with `Retry-After`,
    /// answered at once instead of queued.
    pub fn overloaded(detail: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail)
            .with_header(header::RETRY_AFTER, "1")
    }

    pub fn unavailable(detail: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            detail,
        )
        .with_header(header::RETRY_AFTER, "5")
    }
}

fn title(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_owned()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            type_: format!("urn:clicknback:problem:{}", self.code),
            title: title(self.status),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            request_id: current_request_id(),
            errors: self.errors,
        };
        let mut res = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            serde_json::to_vec(&problem).unwrap_or_default(),
        )
            .into_response();
        for (k, v) in self.headers {
            res.headers_mut().insert(k, v);
        }
        res
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        if clicknback_core::db::is_unavailable(&e) {
            tracing::warn!(error = %e, "database connection lost");
            return Self::unavailable("the database is unavailable; retry shortly");
        }
        Self::internal(format!("database: {e}"))
    }
}

impl From<deadpool_error::PoolError> for ApiError {
    fn from(e: deadpool_error::PoolError) -> Self {
        tracing::error!(error = %e, "database pool unavailable");
        Self::unavailable("the database is unavailable; retry shortly")
    }
}

mod deadpool_error {
    pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is too large",
            )
        } else {
            Self::bad_request("invalid_body", r.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path_parameter", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query_parameter", r.body_text())
    }
}

impl From<CursorError> for ApiError {
    fn from(e: CursorError) -> Self {
        match e {
            CursorError::Invalid => Self::bad_request("invalid_cursor", e.to_string()),
            CursorError::BadLimit => Self::bad_request("invalid_limit", e.to_string()),
        }
    }
}

impl From<IdempotencyError> for ApiError {
    fn from(e: IdempotencyError) -> Self {
        let detail = e.to_string();
        match e {
            IdempotencyError::Missing => Self::bad_request("idempotency_key_missing", detail),
            IdempotencyError::Malformed => Self::bad_request("idempotency_key_invalid", detail),
            IdempotencyError::InProgress => Self::new(
                StatusCode::CONFLICT,
                "idempotency_request_in_progress",
                detail,
            )
            .with_header(header::RETRY_AFTER, "1"),
            IdempotencyError::KeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                detail,
            ),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let detail = e.to_string();
        match e {
            UserError::InvalidEmail => Self::validation(vec![FieldError::new("email", &detail)]),
            UserError::WeakPassword => Self::validation(vec![FieldError::new("password", &detail)]),
            UserError::DuplicateEmail => Self::new(StatusCode::CONFLICT, "email_taken", detail),
            UserError::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", detail)
            }
            UserError::NotFound => Self::not_found("user"),
            UserError::Busy => Self::overloaded(&detail),
            UserError::Db(e) => e.into(),
            UserError::Internal(e) => Self::internal(e),
        }
    }
}

impl From<MerchantError> for ApiError {
    fn from(e: MerchantError) -> Self {
        let detail = e.to_string();
        match e {
            MerchantError::NotFound => Self::not_found("merchant"),
            MerchantError::Stale => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                detail,
            ),
            MerchantError::Invalid(m) => Self::validation(vec![FieldError::new("body", &m)]),
            MerchantError::SecretUnreadable => Self::internal(detail),
            MerchantError::Db(e) => e.into(),
        }
    }
}

impl From<OfferError> for ApiError {
    fn from(e: OfferError) -> Self {
        let detail = e.to_string();
        match e {
            OfferError::NotFound => Self::not_found("offer"),
            OfferError::MerchantNotFound => Self::not_found("merchant"),
            OfferError::Stale => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                detail,
            ),
            OfferError::AnotherActive => {
                Self::new(StatusCode::CONFLICT, "offer_already_active", detail)
            }
            OfferError::Invalid(m) => Self::validation(vec![FieldError::new("body", &m)]),
            OfferError::Db(e) => e.into(),
        }
    }
}

impl From<PurchaseError> for ApiError {
    fn from(e: PurchaseError) -> Self {
        let detail = e.to_string();
        match e {
            PurchaseError::Idempotency(i) => i.into(),
            PurchaseError::DuplicateOrder => {
                Self::new(StatusCode::CONFLICT, "duplicate_order", detail)
            }
            PurchaseError::NotFound => Self::not_found("purchase"),
            PurchaseError::InvalidTransition { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", detail)
            }
            PurchaseError::Db(e) => e.into(),
        }
    }
}

/// A JSON request body with problem+json rejections: 415 without a JSON
/// content type, 413 over `MAX_BODY_BYTES`, 400 when the bytes are not JSON
/// (invalid UTF-8, syntax, nesting deeper than 128 levels), 422 when it is not
/// an object, a string holds a NUL character (PostgreSQL text cannot store
/// one) or the document does not have the expected fields and types.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// `application/json` or `application/<anything>+json`, parameters ignored.
pub fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

pub fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )
}

/// Parses a JSON document and refuses NUL characters anywhere in it.
pub fn parse_json(bytes: &[u8]) -> ApiResult<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not valid JSON"))?;
    if !value.is_object() {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "must be a JSON object",
        )]));
    }
    if let Some(field) = nul_path(&value, "body") {
        return Err(ApiError::validation(vec![FieldError::new(
            &field,
            "must not contain NUL characters",
        )]));
    }
    Ok(value)
}

/// The path (`body.destination.value`) of the first string or key with a NUL.
fn nul_path(v: &serde_json::Value, at: &str) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(at.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, &format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(at.to_owned())
            } else {
                nul_path(x, &format!("{at}.{k}"))
            }
        }),
        _ => None,
    }
    .map(|p| p.strip_prefix("body.").map(str::to_owned).unwrap_or(p))
}

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = axum::body::Bytes::from_request(req, state).await?;
        let value = parse_json(&bytes)?;
        T::deserialize(value).map(Json).map_err(|e| {
            let mut err = ApiError::validation(vec![FieldError::new("body", &e.to_string())]);
            err.detail = "the JSON body does not have the expected fields or types".into();
            err
        })
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Path<T>` with problem+json rejections; a percent-encoded NUL is refused
/// (400) before it can reach a query.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        if has_encoded_nul(parts.uri.path()) {
            return Err(ApiError::bad_request(
                "invalid_path_parameter",
                "path parameters must not contain NUL characters",
            ));
        }
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// `Query<T>` with problem+json rejections; a percent-encoded NUL is refused (400).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        if parts.uri.query().is_some_and(has_encoded_nul) {
            return Err(ApiError::bad_request(
                "invalid_query_parameter",
                "query parameters must not contain NUL characters",
            ));
        }
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

fn has_encoded_nul(s: &str) -> bool {
    s.as_bytes().windows(3).any(|w| w == b"%00")
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The raw request body, with problem+json rejections (e.g. 413 over the limit).
#[derive(Debug)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Ok(RawBody(axum::body::Bytes::from_request(req, state).await?))
    }
}
