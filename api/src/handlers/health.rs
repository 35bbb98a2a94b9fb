//! Liveness, readiness and the Prometheus scrape endpoint.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::state::AppState;

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Readiness and the state of each dependency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: ReadinessChecks,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadinessChecks {
    /// `ok`, `migrations_pending` or `unreachable`.
    pub database: &'static str,
    /// `ok` or `unreachable`.
    pub redis: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "alive", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

/// PostgreSQL and Redis are reachable and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "ready", body = Readiness),
    (status = 503, description = "a dependency is not ready; `checks` says which", body = Readiness),
    (status = 500, body = crate::error::Problem),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let timeout = std::time::Duration::from_secs(2);
    let database = match tokio::time::timeout(timeout, async {
        let mut conn = state.db.get().await.map_err(|e| e.to_string())?;
        clicknback_core::db::migrations_applied(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    {
        Ok(Ok(true)) => "ok",
        Ok(Ok(false)) => "migrations_pending",
        Ok(Err(_)) | Err(_) => "unreachable",
    };
    let redis = match tokio::time::timeout(timeout, state.redis.ping()).await {
        Ok(Ok(())) => "ok",
        _ => "unreachable",
    };
    let ready = database == "ok" && redis == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks: ReadinessChecks { database, redis },
        }),
    )
        .into_response()
}

/// Prometheus text format, served on the metrics listener (`METRICS_ADDR`),
/// not on the api's port.
pub async fn metrics(State(state): State<AppState>) -> Response {
    crate::observability::refresh_gauges(&state).await;
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
