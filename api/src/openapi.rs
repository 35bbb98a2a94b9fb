//! The OpenAPI description (`/openapi.json`) and a browsable UI (`/docs`).
//!
//! The handlers' annotations describe each operation; [`document`] then adds
//! what every operation shares, so that the description stays true without
//! repeating it on each handler: the error responses the extractors produce
//! (400, 401, 403, 413, 415, 422, 500, 503) as `application/problem+json`, the
//! `X-Request-ID` header on every response, the rate-limit, `ETag` and
//! `Idempotent-Replayed` headers where they are sent, the `/board/api` twins of
//! the job routes, and one unique `operationId` per operation.

use std::sync::OnceLock;

use axum::{Router, routing::get};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa_scalar::{Scalar, Servable};

use crate::{error::Problem, handlers, state::AppState};

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
`/v1/admin/workers` and `/v1/admin/dead-jobs/...`, mounted a second time for the board \
page; each is listed under both paths.

**Not described here:** in development only (`PAYOUT_SANDBOX`), the api also serves a \
sandbox payout provider under `/sandbox/provider/v1/payouts`. It speaks the external \
provider's protocol with the provider's key, is called by the worker, and is not part \
of this API.";

#[derive(OpenApi)]
#[openapi(
    info(title = "ClickNBack API", description = "see DESCRIPTION"),
    paths(
        handlers::health::healthz,
        handlers::health::readyz,
        handlers::health::metrics,
        openapi_json,
        docs_page,
        handlers::auth::register,
        handlers::auth::login,
        handlers::auth::me,
        handlers::me::wallet,
        handlers::me::purchases,
        handlers::me::transactions,
        handlers::me::stats,
        handlers::payouts::create,
        handlers::payouts::list,
        handlers::payouts::get,
        handlers::track::click,
        handlers::track::identify,
        handlers::track::purchase,
        handlers::webhooks::purchase,
        handlers::webhooks::purchase_status,
        handlers::admin::merchants::create,
        handlers::admin::merchants::list,
        handlers::admin::merchants::get,
        handlers::admin::merchants::update,
        handlers::admin::merchants::suspend,
        handlers::admin::merchants::reactivate,
        handlers::admin::merchants::rotate_secret,
        handlers::admin::offers::create,
        handlers::admin::offers::list,
        handlers::admin::offers::get,
        handlers::admin::offers::update,
        handlers::admin::offers::activate,
        handlers::admin::offers::deactivate,
        handlers::admin::audit::list,
        handlers::admin::purchases::list,
        handlers::admin::purchases::approve,
        handlers::admin::purchases::reject,
        handlers::admin::purchases::link_stats,
        handlers::admin::jobs::queues,
        handlers::admin::jobs::jobs,
        handlers::admin::jobs::job,
        handlers::admin::jobs::workers,
        handlers::admin::jobs::requeue_dead,
        handlers::admin::jobs::requeue_all,
        handlers::admin::jobs::delete,
        handlers::admin::jobs::pause,
        handlers::admin::jobs::resume,
        handlers::board::page,
    ),
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
async fn openapi_json() -> axum::Json<Value> {
    axum::Json(document().clone())
}

/// A browsable UI for this description (an HTML page).
#[utoipa::path(get, path = "/docs", tag = "ops", responses(
    (status = 200, description = "the UI", content_type = "text/html"),
))]
#[allow(dead_code)]
async fn docs_page() {}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The job routes the board page calls under `/board/api`.
const BOARD_TWINS: [&str; 3] = ["/queues", "/workers", "/dead-jobs"];

/// The description as served, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the description serializes");
        doc["info"]["description"] = json!(DESCRIPTION);
        security_schemes(&mut doc);
        board_twins(&mut doc);
        conventions(&mut doc);
        doc
    })
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
            "description": "An admin's email and password; accepted by the job board and its API only."
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

/// Lists the job routes a second time under `/board/api`, where the board
/// page calls them; both accept an admin bearer token or Basic credentials.
fn board_twins(doc: &mut Value) {
    let paths = doc["paths"].as_object_mut().expect("paths");
    let mut twins = Vec::new();
    for (path, item) in paths.iter_mut() {
        let Some(rest) = path.strip_prefix("/v1/admin") else {
            continue;
        };
        if !BOARD_TWINS.iter().any(|p| rest.starts_with(p)) {
            continue;
        }
        let mut twin = item.clone();
        for (_, op) in ops_mut(item) {
            op["security"] = json!([{"bearer": []}, {"board_basic": []}]);
        }
        for (_, op) in ops_mut(&mut twin) {
            op["security"] = json!([{"bearer": []}, {"board_basic": []}]);
            let d = op["description"].as_str().unwrap_or_default().to_owned();
            op["description"] = json!(format!(
                "{d}\n\nThe same operation as `/v1/admin{rest}`, for the board page."
            ));
        }
        twins.push((format!("/board/api{rest}"), twin));
    }
    paths.extend(twins);
    if let Some(board) = paths.get("/board").cloned() {
        paths.insert("/board/".into(), board);
    }
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

/// Operations behind a Redis rate limit (they send `RateLimit` headers).
fn rate_limited(path: &str) -> bool {
    path == "/v1/auth/login" || path.starts_with("/v1/track/") || path.starts_with("/v1/webhooks/")
}

/// Operations that answer with the resource's `ETag`.
fn sends_etag(method: &str, path: &str) -> bool {
    match method {
        "post" => {
            path == "/v1/admin/merchants"
                || path == "/v1/admin/merchants/{id}/offers"
                || path.starts_with("/v1/admin/merchants/{id}/")
                    && ["suspend", "reactivate", "rotate-secret"]
                        .iter()
                        .any(|a| path.ends_with(a))
                || path.starts_with("/v1/admin/offers/{id}/")
        }
        "get" | "patch" => path == "/v1/admin/merchants/{id}" || path == "/v1/admin/offers/{id}",
        _ => false,
    }
}

fn conventions(doc: &mut Value) {
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        let path = path.as_str();
        for (method, op) in ops_mut(item) {
            let method = method.as_str();
            op["operationId"] = json!(operation_id(method, path));
            let schemes: Vec<String> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|o| o.keys().cloned())
                .collect();
            let has_body = op.get("requestBody").is_some();
            let has_params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| matches!(p["in"].as_str(), Some("path" | "query")));
            let admin = path.starts_with("/v1/admin") || path.starts_with("/board");
            let bearer = schemes.iter().any(|s| s == "bearer");
            let infrastructure = matches!(
                path,
                "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs"
            );

            let responses = op["responses"].as_object_mut().expect("responses");
            let mut wanted: Vec<&str> = Vec::new();
            if has_body || has_params {
                wanted.push("400");
            }
            if has_body {
                wanted.extend(["413", "415", "422"]);
            }
            if bearer || admin {
                wanted.push("401");
            }
            if admin {
                wanted.push("403");
            }
            if !infrastructure {
                wanted.extend(["500", "503"]);
            } else if path != "/healthz" && path != "/openapi.json" && path != "/docs" {
                wanted.push("500");
            }
            for status in wanted {
                responses
                    .entry(status)
                    .or_insert_with(|| problem_response(default_description(status)));
            }
            for (status, response) in responses.iter_mut() {
                shape_response(method, path, status, response);
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

fn shape_response(method: &str, path: &str, status: &str, response: &mut Value) {
    let r = response.as_object_mut().expect("a response");
    if r.get("description")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        r.insert("description".into(), json!(default_description(status)));
    }
    // Problem documents are application/problem+json.
    if let Some(content) = r.get_mut("content").and_then(Value::as_object_mut)
        && content
            .get("application/json")
            .is_some_and(|c| c["schema"] == problem_ref())
    {
        let c = content.remove("application/json").expect("present");
        content.insert("application/problem+json".into(), c);
    }
    let headers = r
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("headers");
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
        "503" if path != "/readyz" => {
            headers.insert(
                "Retry-After".into(),
                header("seconds to wait before retrying", true, seconds.clone()),
            );
        }
        _ => {}
    }
    if rate_limited(path) {
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
    let ok = status.starts_with('2');
    if ok && sends_etag(method, path) {
        headers.insert(
            "ETag".into(),
            header(
                "the resource's version; send it back as `If-Match` to change it",
                true,
                json!({"type": "string", "pattern": "^\"[0-9]+\"$"}),
            ),
        );
    }
    if ok && method == "post" && (path == "/v1/payouts" || path.starts_with("/v1/webhooks/")) {
        headers.insert(
            "Idempotent-Replayed".into(),
            header(
                "`true` when this is the stored answer to an earlier request with the same key",
                false,
                json!({"type": "string", "enum": ["true"]}),
            ),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .merge(Scalar::with_url("/docs", document().clone()))
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
            if path.starts_with("/v1/admin") || path.starts_with("/board") {
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
