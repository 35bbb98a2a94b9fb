//! Every route of the API in one list.

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, patch, post},
};

use crate::{
    handlers::{admin, auth, board, health, me, payouts, track, webhooks},
    openapi,
    state::AppState,
};

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let v1 = Router::new()
        // shoppers
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/me", get(auth::me))
        .route("/me/wallet", get(me::wallet))
        .route("/me/purchases", get(me::purchases))
        .route("/me/transactions", get(me::transactions))
        .route("/me/stats", get(me::stats))
        .route("/payouts", post(payouts::create).get(payouts::list))
        .route("/payouts/{id}", get(payouts::get))
        // shoppers' browsers (SDK)
        .route("/track/click", post(track::click))
        .route("/track/identify", post(track::identify))
        .route("/track/purchase", post(track::purchase))
        // merchants' servers
        .route(
            "/webhooks/{merchant_id}/purchases",
            post(webhooks::purchase),
        )
        .route(
            "/webhooks/{merchant_id}/purchases/{order_id}/status",
            post(webhooks::purchase_status),
        )
        // admins
        .route(
            "/admin/merchants",
            post(admin::merchants::create).get(admin::merchants::list),
        )
        .route(
            "/admin/merchants/{id}",
            get(admin::merchants::get).patch(admin::merchants::update),
        )
        .route(
            "/admin/merchants/{id}/suspend",
            post(admin::merchants::suspend),
        )
        .route(
            "/admin/merchants/{id}/reactivate",
            post(admin::merchants::reactivate),
        )
        .route(
            "/admin/merchants/{id}/rotate-secret",
            post(admin::merchants::rotate_secret),
        )
        .route(
            "/admin/merchants/{id}/offers",
            post(admin::offers::create).get(admin::offers::list),
        )
        .route("/admin/offers/{id}", get(admin::offers::get))
        .route("/admin/offers/{id}", patch(admin::offers::update))
        .route("/admin/offers/{id}/activate", post(admin::offers::activate))
        .route(
            "/admin/offers/{id}/deactivate",
            post(admin::offers::deactivate),
        )
        .route("/admin/audit-log", get(admin::audit::list))
        .route("/admin/purchases", get(admin::purchases::list))
        .route(
            "/admin/purchases/{id}/approve",
            post(admin::purchases::approve),
        )
        .route(
            "/admin/purchases/{id}/reject",
            post(admin::purchases::reject),
        )
        .route(
            "/admin/merchants/{id}/link-stats",
            get(admin::purchases::link_stats),
        )
        .merge(job_routes("/admin"));

    let sandbox = if state.config.payouts.sandbox {
        crate::sandbox::routes()
    } else {
        Router::new()
    };
    Router::new()
        .nest("/v1", v1)
        .merge(sandbox)
        .route("/board", get(board::page))
        .route("/board/", get(board::page))
        .nest("/board/api", job_routes(""))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(crate::middleware::http_metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn(crate::middleware::request_id))
        .with_state(state)
}

/// The job system's operator routes, mounted under `/v1/admin` and `/board/api`.
fn job_routes(prefix: &str) -> Router<AppState> {
    use admin::jobs;
    Router::new()
        .route(&format!("{prefix}/queues"), get(jobs::queues))
        .route(&format!("{prefix}/queues/{{queue}}/jobs"), get(jobs::jobs))
        .route(
            &format!("{prefix}/queues/{{queue}}/jobs/{{task_id}}"),
            get(jobs::job).delete(jobs::delete),
        )
        .route(
            &format!("{prefix}/queues/{{queue}}/dead/requeue"),
            post(jobs::requeue_all),
        )
        .route(
            &format!("{prefix}/queues/{{queue}}/pause"),
            post(jobs::pause),
        )
        .route(
            &format!("{prefix}/queues/{{queue}}/resume"),
            post(jobs::resume),
        )
        .route(&format!("{prefix}/workers"), get(jobs::workers))
        .route(
            &format!("{prefix}/dead-jobs/{{id}}/requeue"),
            post(jobs::requeue_dead),
        )
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
