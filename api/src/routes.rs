//! Every route of the API in one list, which is also the list the OpenAPI
//! description is built from: an endpoint is its handler, with its
//! `#[utoipa::path]`, and one `.routes(routes!(...))` line in [`api`]. Handlers
//! sharing a path share a line, and only they: `routes!` serves every handler
//! it is given at each of their paths.

use axum::{Router, extract::DefaultBodyLimit, middleware};
use utoipa::{OpenApi, openapi::path::Paths};
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouter},
    routes,
};

use crate::{
    handlers::{admin, auth, board, files, health, me, payouts, track, webhooks},
    openapi,
    state::AppState,
};

/// Where the job system's operator routes live; the board page calls the same
/// handlers again under `/board/api`.
const JOBS_AT: &str = "/v1/admin";

/// The api, with what every request passes through, outermost first: the
/// security headers, the request id, the HTTP metrics, CORS on the SDK's
/// routes (`/v1/track/*`, the only ones other origins may call from a
/// browser; errors and shed requests included), the request timeout and
/// in-flight limit, panics caught, the same-origin rule of the board and
/// admin API, the body limit.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let production = !state.config.is_development();
    let guard = crate::middleware::Guard::new(&state.config.http);
    let sdk = crate::security::sdk_cors(&state.config.http.sdk_allowed_origins);
    let described: Router<AppState> = api().into();
    let mut sandbox = Router::new();
    if state.config.payouts.sandbox {
        sandbox = sandbox.merge(crate::sandbox::routes());
    }
    if state.config.explainer.sandbox {
        sandbox = sandbox.merge(crate::sandbox::explainer_routes());
    }
    described
        .merge(sandbox)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::security::same_origin,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn_with_state(
            guard,
            crate::middleware::guard,
        ))
        .layer(middleware::from_fn_with_state(
            sdk,
            crate::security::sdk_routes,
        ))
        .layer(middleware::from_fn(crate::middleware::http_metrics))
        .layer(middleware::from_fn(crate::middleware::request_id))
        .layer(middleware::from_fn_with_state(
            production,
            crate::security::headers,
        ))
        .with_state(state)
}

/// `/metrics`, for the listener of its own at `METRICS_ADDR`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(health::metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The routes the OpenAPI description lists (all but the development-only
/// sandbox provider), each served as its `#[utoipa::path]` says.
pub fn api() -> OpenApiRouter<AppState> {
    use admin::{audit, merchants, offers, purchases};
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        // shoppers
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::me))
        .routes(routes!(me::wallet))
        .routes(routes!(me::purchases))
        .routes(routes!(me::transactions))
        .routes(routes!(me::stats))
        .routes(routes!(payouts::create, payouts::list))
        .routes(routes!(payouts::get))
        // shoppers' browsers (SDK), from any allowed origin
        .routes(routes!(track::click))
        .routes(routes!(track::identify))
        .routes(routes!(track::purchase))
        .routes(routes!(files::sdk))
        // the SDK's demo shop, on the api's own origin (development only)
        .routes(routes!(files::demo_shop_index))
        .routes(routes!(files::demo_shop))
        // merchants' servers
        .routes(routes!(webhooks::purchase))
        .routes(routes!(webhooks::purchase_status))
        // admins
        .routes(routes!(merchants::create, merchants::list))
        .routes(routes!(merchants::get, merchants::update))
        .routes(routes!(merchants::suspend))
        .routes(routes!(merchants::reactivate))
        .routes(routes!(merchants::rotate_secret))
        .routes(routes!(merchants::revoke_previous_secret))
        .routes(routes!(offers::create, offers::list))
        .routes(routes!(offers::get, offers::update))
        .routes(routes!(offers::activate))
        .routes(routes!(offers::deactivate))
        .routes(routes!(audit::list))
        .routes(routes!(purchases::list))
        .routes(routes!(purchases::approve))
        .routes(routes!(purchases::reject))
        .routes(routes!(purchases::link_stats))
        .nest(JOBS_AT, job_routes())
        // the job board
        .routes(routes!(board::page))
        .routes(at("/board/", routes!(board::page)))
        .routes(routes!(board::login))
        .routes(routes!(board::logout))
        .routes(routes!(board::asset))
        .nest("/board/api", openapi::board_copies(job_routes(), JOBS_AT))
        // operations
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::docs_page))
        .routes(routes!(openapi::docs_file))
}

/// The operator routes (the job system, a purchase's timeline and the
/// purchase search), mounted at [`JOBS_AT`] and `/board/api` (their
/// `#[utoipa::path]`s name the path below the mount point).
fn job_routes() -> OpenApiRouter<AppState> {
    use admin::{jobs, timeline};
    OpenApiRouter::default()
        .routes(routes!(timeline::search))
        .routes(routes!(timeline::purchase))
        .routes(routes!(timeline::order))
        .routes(routes!(jobs::queues))
        .routes(routes!(jobs::jobs))
        .routes(routes!(jobs::job, jobs::delete))
        .routes(routes!(jobs::requeue_all))
        .routes(routes!(jobs::pause))
        .routes(routes!(jobs::resume))
        .routes(routes!(jobs::workers))
        .routes(routes!(jobs::requeue_dead))
}

/// The same handlers served, and described, at `path` instead of the path
/// their `#[utoipa::path]` names.
fn at(
    path: &str,
    (schemas, described, handlers): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    debug_assert_eq!(described.paths.len(), 1, "one path per routes! line");
    let mut paths = Paths::new();
    for (_, item) in described.paths {
        paths.paths.insert(path.to_owned(), item);
    }
    (schemas, paths, handlers)
}

async fn not_found() -> crate::error::ApiError {
    crate::error::ApiError::not_found("route")
}

/// A known path with another method: 405 problem+json; axum adds `Allow`.
async fn method_not_allowed() -> crate::error::ApiError {
    crate::error::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept that method; see the Allow header",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::error::ApiError::internal("handler panicked").into_response()
}
