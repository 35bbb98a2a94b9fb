//! The worker's own small HTTP listener: `/healthz` and Prometheus `/metrics`
//! (jobs by type and outcome, durations, relay throughput, queue depth).

use std::net::SocketAddr;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

pub fn install_metrics() -> Option<PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".into()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
        )
        .ok()?
        .install_recorder()
        .ok()
}

/// Serves `/healthz` and `/metrics` (from `handle`, installed at start-up
/// before anything records a metric).
pub async fn serve(
    addr: SocketAddr,
    handle: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = handle.as_ref().map(|h| h.render()).unwrap_or_default();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
                }
            }),
        );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "worker metrics listener could not bind; continuing without it");
            return;
        }
    };
    tracing::info!(addr = %addr, "worker metrics listening");
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}
