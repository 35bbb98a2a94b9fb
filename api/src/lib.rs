//! The ClickNBack HTTP API: authenticates callers, validates input, persists
//! what arrives and enqueues jobs through the outbox. It never does slow work
//! inside a request.

pub mod auth;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod middleware;
pub mod observability;
pub mod openapi;
pub mod routes;
pub mod sandbox;
pub mod security;
pub mod server;
pub mod session;
pub mod state;

use clicknback_core::{config::Config, db, redis_conn::RedisHandle};
use metrics_exporter_prometheus::PrometheusHandle;

pub use routes::router;
pub use state::AppState;

/// Builds the state from configuration (no migrations, no listener).
pub fn build_state(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<AppState> {
    let pool = db::pool(&config.database_url, config.database_pool_size)?;
    let redis = RedisHandle::new(&config.redis_url)?;
    Ok(AppState::new(config, pool, redis, metrics))
}

/// Installs the Prometheus recorder once per process.
pub fn install_metrics() -> Option<PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .ok()?
        .install_recorder()
        .ok()
}

/// Serves until SIGINT or SIGTERM, then drains in-flight requests. `/metrics`
/// is served on `METRICS_ADDR` (loopback by default), never on the api's port.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    if config.run_migrations_on_start {
        let applied = db::run_migrations(&config.database_url).await?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "migrations applied");
        }
    }
    let addr = config.api_addr;
    let http = config.http.clone();
    let limits = server::Limits {
        header_read_timeout: http.header_read_timeout,
        idle_timeout: http.idle_timeout,
        max_connections: http.max_connections,
    };
    let state = build_state(config, install_metrics())?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics = match http.metrics_addr {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await?;
            tracing::info!(addr = %listener.local_addr()?, "metrics listening");
            let mut stopped = stopped.clone();
            Some(tokio::spawn(server::run(
                listener,
                routes::metrics_router(state.clone()),
                limits,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    server::run(listener, router(state), limits, shutdown_signal()).await?;
    let _ = stop.send(true);
    if let Some(m) = metrics {
        let _ = m.await;
    }
    drop(stopped);
    tracing::info!("api stopped");
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
