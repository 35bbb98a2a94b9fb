//! The OpenAPI description (`/openapi.json`) and a browsable UI (`/docs`):
//! Swagger UI, whose files are inside the binary (utoipa-swagger-ui's
//! vendored copy), so the page loads nothing from another origin.
//!
//! The description is built from the route list, [`crate::routes::api`]: each
//! handler's `#[utoipa::path]` describes its operation, including the headers
//! it sends. A response names the header it carries, `headers(("ETag"))` or
//! `headers(("Idempotent-Replayed"))`, and [`named_header`] gives each such
//! header its one definition; an operation behind a rate limit says
//! `extensions(("x-rate-limited" = json!(true)))` and is described with the
//! `RateLimit-Policy` and `RateLimit` headers on every answer.
//!
//! [`document`] then adds what every operation shares, so that it is not
//! repeated on each handler: the error responses the extractors produce (400,
//! 401, 413, 415, 422, 500, 503) as `application/problem+json`, `Retry-After`
//! on a 429 and on a 503 problem, the `X-Request-ID` header on every response,
//! and one unique `operationId` per operation, made of its method and path.

use std::sync::OnceLock;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::Problem;

const DESCRIPTION: &str = "\
Cashback rewards: merchants report purchases, shoppers earn and withdraw cashback.

**Errors** are RFC 9457 `application/problem+json` documents (`Problem`) with a stable \
machine `code`; validation errors list the fields in `errors`. Every response carries \
`X-Request-ID` (the caller's, when it sends an acceptable one, else a generated one).

**Credentials.** Shoppers and admins send `Authorization: Bearer <access token>` from \
`POST /v1/auth/login`; admin routes also require `role: admin`. The SDK's click and \
purchase calls send the merchant's `X-Publishable-Key`. Merchant webhooks are signed the \
Standard Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature`). The job \
board and its API also accept an admin's email and password as HTTP Basic credentials.

**Pagination.** Lists take `limit` (1 to 100, default 20) and `cursor` (the previous \
page's `next_cursor`, opaque and signed) and answer `{data, next_cursor}`.

**The board's API.** `/board/api/...` are the same handlers as `/v1/admin/queues`, \
`/v1/admin/workers`, `/v1/admin/dead-jobs/...`, `/v1/admin/purchases/search` and the \
timelines (`/v1/admin/purchases/{id}/timeline`, `/v1/admin/merchants/{id}/orders/{order_id}/timeline`), mounted a second time for the board \
page; each is listed under both paths.

**Not described here:** in development only (`PAYOUT_SANDBOX`), the api also serves a \
sandbox payout provider under `/sandbox/provider/v1/payouts`. It speaks the external \
provider's protocol with the provider's key, is called by the worker, and is not part \
of this API. Likewise (`FRAUD_EXPLAINER_SANDBOX`) a sandbox fraud explainer speaks the \
chat-completions protocol under `/sandbox/explainer/v1/chat/completions`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "ClickNBack API", description = "see DESCRIPTION"),
    components(schemas(
        Problem,
        clicknback_core::jobs::Queue,
        clicknback_core::services::ops::JobState,
        clicknback_core::models::purchase::PurchaseStatus,
    )),
    tags(
        (name = "webhooks", description = "Signed server-to-server calls from merchants"),
        (name = "auth", description = "Accounts and tokens"),
        (name = "sdk", description = "Tracking from the shopper's browser (publishable key)"),
        (name = "me", description = "The shopper's own data"),
        (name = "payouts", description = "The shopper's payouts"),
        (name = "admin", description = "Merchants, offers, review and the audit log (admin token)"),
        (name = "jobs", description = "The job system: queues, dead jobs, workers, the board (admin)"),
        (name = "ops", description = "Health, readiness, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses(
    (status = 200, description = "the OpenAPI 3.1 description", content_type = "application/json", body = Object),
))]
pub(crate) async fn openapi_json() -> axum::Json<Value> {
    axum::Json(document().clone())
}

/// The docs page's policy: its scripts and styles come from the binary;
/// Swagger UI sets some styles inline and draws icons from `data:` URLs.
pub const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ClickNBack API · OpenAPI</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<noscript>This page needs JavaScript; the description itself is <a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script src="/docs/swagger-initializer.js"></script>
</body>
</html>
"#;

fn with_docs_policy(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    res
}

/// A browsable UI for this description (an HTML page; its files are under `/docs/`).
#[utoipa::path(get, path = "/docs", tag = "ops", responses(
    (status = 200, description = "the UI", content_type = "text/html"),
))]
pub(crate) async fn docs_page() -> Response {
    with_docs_policy(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            DOCS_PAGE,
        )
            .into_response(),
    )
}

/// A file of the UI (Swagger UI's scripts, styles and icons, from the binary).
#[utoipa::path(get, path = "/docs/{file}", tag = "ops", params(("file" = String, Path, description = "e.g. `swagger-ui-bundle.js`")), responses(
    (status = 200, description = "the file"),
    (status = 404, description = "no such file (`not_found`)", body = Problem),
))]
pub(crate) async fn docs_file(crate::error::Path(file): crate::error::Path<String>) -> Response {
    static CONFIG: OnceLock<std::sync::Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| std::sync::Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"])))
        .clone();
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(f)) if !file.is_empty() && file != "index.html" => with_docs_policy(
            (
                [
                    (header::CONTENT_TYPE, f.content_type),
                    (header::CACHE_CONTROL, "public, max-age=3600".to_owned()),
                ],
                f.bytes.into_owned(),
            )
                .into_response(),
        ),
        _ => crate::error::ApiError::not_found("file").into_response(),
    }
}

/// The board's paths that take no credentials: its login form's target, its
/// sign-out, and its script and style sheet.
pub const PUBLIC_BOARD_PATHS: [&str; 3] = ["/board/login", "/board/logout", "/board/assets/{file}"];

/// The extension marking an operation behind a rate limit.
const RATE_LIMITED: &str = "x-rate-limited";

/// The tag of the operations that serve operators rather than callers of the
/// API (health, readiness, metrics, this description): they get no shared 500
/// and 503 problems and declare the error responses they have.
const INFRASTRUCTURE: &str = "ops";

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The description as served, built once from the route list.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let api = crate::routes::api().into_openapi();
        let mut doc = serde_json::to_value(api).expect("the description serializes");
        doc["info"]["description"] = json!(DESCRIPTION);
        security_schemes(&mut doc);
        conventions(&mut doc);
        doc
    })
}

/// `router`'s operations described as the board page's copies of the same
/// handlers mounted at `original`.
pub fn board_copies<S>(mut router: OpenApiRouter<S>, original: &str) -> OpenApiRouter<S>
where
    S: Send + Sync + Clone + 'static,
{
    for (path, item) in router.get_openapi_mut().paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in operations.into_iter().flatten() {
            let d = op.description.take().unwrap_or_default();
            op.description = Some(format!(
                "{d}\n\nThe same operation as `{original}{path}`, for the board page."
            ));
        }
    }
    router
}

fn security_schemes(doc: &mut Value) {
    let components = doc
        .as_object_mut()
        .expect("an object")
        .entry("components")
        .or_insert_with(|| json!({}));
    components["securitySchemes"] = json!({
        "bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An access token from `POST /v1/auth/login` (HS256 with iss, aud, typ=access, \
                iat, exp, jti, sub and role; every claim is required). Admin routes also require role `admin`."
        },
        "board_basic": {
            "type": "http", "scheme": "basic",
            "description": "An admin's email and password; accepted by the job board and its API only \
                (counted as sign-in attempts, like `POST /v1/auth/login`)."
        },
        "board_session": {
            "type": "apiKey", "in": "cookie", "name": "cnb_board",
            "description": "The session `POST /board/login` starts (HttpOnly, SameSite=Strict). Calls that \
                change something must also send its CSRF token in `X-CSRF-Token`."
        },
        "publishable_key": {
            "type": "apiKey", "in": "header", "name": "X-Publishable-Key",
            "description": "The merchant's publishable key (from merchant creation); safe to embed in a web page."
        },
        "webhook_signature": {
            "type": "apiKey", "in": "header", "name": "webhook-signature",
            "description": "Standard Webhooks: `v1,<base64 HMAC-SHA256(secret, \"{webhook-id}.{webhook-timestamp}.{raw body}\")>` \
                with the merchant's `whsec_` secret (base64 after the prefix); several space-separated signatures \
                are accepted (secret rotation). The timestamp must be within 5 minutes of now."
        }
    });
}

fn ops_mut(item: &mut Value) -> impl Iterator<Item = (String, &mut Value)> {
    item.as_object_mut()
        .into_iter()
        .flat_map(|m| m.iter_mut())
        .filter(|(k, _)| METHODS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v))
}

fn problem_ref() -> Value {
    json!({"$ref": "#/components/schemas/Problem"})
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": problem_ref()}}
    })
}

fn default_description(status: &str) -> &'static str {
    match status {
        "400" => {
            "a malformed request: a body that is not JSON or not UTF-8 (`invalid_json`), a bad path or \
             query parameter (`invalid_path_parameter`, `invalid_query_parameter`, `invalid_limit`, \
             `invalid_cursor`)"
        }
        "401" => "missing, invalid or expired credentials (`unauthorized`)",
        "403" => "the credentials do not allow this (`forbidden`; admin routes need an admin)",
        "404" => "not found (`not_found`)",
        "409" => "conflict with the current state",
        "412" => "`If-Match` does not name the current `ETag` (`precondition_failed`)",
        "413" => "the body is larger than `MAX_BODY_BYTES` (`payload_too_large`)",
        "415" => "the body is not sent as `application/json` (`unsupported_media_type`)",
        "422" => {
            "the JSON does not have the expected fields and types, a string holds a NUL character, or a \
             value is out of range (`validation_failed`, with `errors`)"
        }
        "428" => "`If-Match` is required (`precondition_required`)",
        "429" => "over a rate limit; retry after `Retry-After` seconds",
        "200" => "success",
        "201" => "created",
        "202" => "accepted; the work continues in the background",
        "204" => "done; no content",
        "500" => "an unexpected error (`internal_error`); logged, with no internals in the body",
        "503" => {
            "PostgreSQL or Redis is unavailable (`service_unavailable`); retry after `Retry-After`"
        }
        _ => "",
    }
}

fn header(description: &str, required: bool, schema: Value) -> Value {
    json!({"description": description, "required": required, "schema": schema})
}

/// The one definition of each header a handler names on a response it sends
/// (`headers(("ETag"))`); `None` for a header described where it is named.
fn named_header(name: &str) -> Option<Value> {
    Some(match name {
        "ETag" => header(
            "the resource's version; send it back as `If-Match` to change it",
            true,
            json!({"type": "string", "pattern": "^\"[0-9]+\"$"}),
        ),
        "Cache-Control" => header(
            "`no-store`: the response carries a secret that no cache may keep",
            true,
            json!({"type": "string", "enum": ["no-store"]}),
        ),
        "Idempotent-Replayed" => header(
            "`true` when this is the stored answer to an earlier request with the same key",
            false,
            json!({"type": "string", "enum": ["true"]}),
        ),
        _ => return None,
    })
}

fn conventions(doc: &mut Value) {
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        let path = path.as_str();
        for (method, op) in ops_mut(item) {
            let method = method.as_str();
            op["operationId"] = json!(operation_id(method, path));
            let op = op.as_object_mut().expect("an operation");
            let rate_limited = op.remove(RATE_LIMITED).is_some_and(|v| v == true);
            let schemes: Vec<String> = op
                .get("security")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|o| o.keys().cloned())
                .collect();
            let has_body = op.contains_key("requestBody");
            let has_params = op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|p| matches!(p["in"].as_str(), Some("path" | "query")));
            let bearer = schemes.iter().any(|s| s == "bearer");
            let infrastructure = op
                .get("tags")
                .and_then(Value::as_array)
                .is_some_and(|tags| tags.iter().any(|t| t == INFRASTRUCTURE));

            let responses = op
                .get_mut("responses")
                .and_then(Value::as_object_mut)
                .expect("responses");
            let mut wanted: Vec<&str> = Vec::new();
            if has_body || has_params {
                wanted.push("400");
            }
            if has_body {
                wanted.extend(["413", "415", "422"]);
            }
            if bearer {
                wanted.push("401");
            }
            if !infrastructure {
                wanted.extend(["500", "503"]);
            }
            for status in wanted {
                responses
                    .entry(status)
                    .or_insert_with(|| problem_response(default_description(status)));
            }
            for (status, response) in responses.iter_mut() {
                shape_response(status, response, rate_limited);
            }
        }
    }
}

/// `post_v1_admin_merchants_id_offers` for `POST /v1/admin/merchants/{id}/offers`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.push_str(
            &seg.trim_matches(|c| c == '{' || c == '}')
                .replace(['-', '.'], "_"),
        );
    }
    if path.ends_with('/') && path.len() > 1 {
        id.push_str("_slash");
    }
    id
}

fn shape_response(status: &str, response: &mut Value, rate_limited: bool) {
    let r = response.as_object_mut().expect("a response");
    if r.get("description")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        r.insert("description".into(), json!(default_description(status)));
    }
    // Problem documents are application/problem+json.
    let mut problem = false;
    if let Some(content) = r.get_mut("content").and_then(Value::as_object_mut) {
        if content
            .get("application/json")
            .is_some_and(|c| c["schema"] == problem_ref())
        {
            let c = content.remove("application/json").expect("present");
            content.insert("application/problem+json".into(), c);
        }
        problem = content.contains_key("application/problem+json");
    }
    let headers = r
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("headers");
    for (name, definition) in headers.iter_mut() {
        if let Some(named) = named_header(name) {
            *definition = named;
        }
    }
    headers.insert(
        "X-Request-ID".into(),
        header(
            "the request's id (the caller's `X-Request-ID` when acceptable, else generated); also in logs",
            true,
            json!({"type": "string", "minLength": 1, "maxLength": 128}),
        ),
    );
    let seconds = json!({"type": "string", "pattern": "^[0-9]+$"});
    match status {
        "429" => {
            headers.insert(
                "Retry-After".into(),
                header("seconds until the window resets", true, seconds.clone()),
            );
        }
        "503" if problem => {
            headers.insert(
                "Retry-After".into(),
                header("seconds to wait before retrying", true, seconds.clone()),
            );
        }
        _ => {}
    }
    if rate_limited {
        let required = status == "429";
        headers.insert(
            "RateLimit-Policy".into(),
            header(
                "the limit that applies, e.g. `100;w=60` (sent while Redis answers)",
                required,
                json!({"type": "string"}),
            ),
        );
        headers.insert(
            "RateLimit".into(),
            header(
                "what is left of it, e.g. `limit=100, remaining=99, reset=42`",
                required,
                json!({"type": "string"}),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    fn operations() -> Vec<(String, String, Value)> {
        let doc = super::document();
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if super::METHODS.contains(&method.as_str()) {
                    out.push((method.clone(), path.clone(), op.clone()));
                }
            }
        }
        out
    }

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_described_the_same_way() {
        if let Ok(path) = std::env::var("OPENAPI_DUMP") {
            std::fs::write(path, serde_json::to_vec_pretty(super::document()).unwrap()).unwrap();
        }
        let ops = operations();
        assert!(ops.len() > 50, "{} operations", ops.len());
        let mut ids = HashSet::new();
        for (method, path, op) in &ops {
            let at = format!("{method} {path}");
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                "{at}: duplicate operationId"
            );
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                assert!(
                    !r["description"].as_str().unwrap().is_empty(),
                    "{at} {status}: no description"
                );
                assert_eq!(
                    r["headers"]["X-Request-ID"]["required"], true,
                    "{at} {status}"
                );
                if let Some(content) = r["content"].as_object() {
                    if let Some(c) = content.get("application/json") {
                        assert_ne!(
                            c["schema"]["$ref"], "#/components/schemas/Problem",
                            "{at} {status}"
                        );
                    }
                    if (status.starts_with('4') || status.starts_with('5')) && path != "/readyz" {
                        assert!(
                            content.contains_key("application/problem+json"),
                            "{at} {status}"
                        );
                    }
                }
            }
            let has = |s: &str| responses.contains_key(s);
            if op.get("requestBody").is_some() {
                for s in ["400", "413", "415", "422"] {
                    assert!(has(s), "{at}: no {s}");
                }
            }
            let secured = op["security"].as_array().is_some_and(|a| !a.is_empty());
            if secured {
                assert!(has("401"), "{at}: no 401");
            }
            if (path.starts_with("/v1/admin") || path.starts_with("/board"))
                && !super::PUBLIC_BOARD_PATHS.contains(&path.as_str())
            {
                assert!(secured && has("403"), "{at}: not an admin operation");
            }
        }
        let mut all = Vec::new();
        refs(super::document(), &mut all);
        let schemas = super::document()["components"]["schemas"]
            .as_object()
            .unwrap();
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a schema ref");
            assert!(schemas.contains_key(name), "{r} is not defined");
        }
        for twin in [
            "/board/api/queues",
            "/board/api/workers",
            "/board/api/dead-jobs/{id}/requeue",
            "/board/",
        ] {
            assert!(super::document()["paths"].get(twin).is_some(), "{twin}");
        }
    }
}
