//! Metrics that are read at scrape time from the database: the outbox backlog
//! in front of the queues (rows due but not yet in Redis) and how long the
//! oldest of them has been due, and the dead jobs waiting for an operator.

use clicknback_core::services::ops;

use crate::state::AppState;

/// When the gauges were last recomputed; a scrape within
/// `METRICS_GAUGE_REFRESH_SECS` of it serves those values, and only one
/// scrape at a time recomputes, so scrapes cost no query beyond that.
static REFRESHED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

pub async fn refresh_gauges(state: &AppState) {
    {
        let Ok(mut last) = REFRESHED.try_lock() else {
            return; // another scrape is recomputing
        };
        if last.is_some_and(|t| t.elapsed() < state.config.http.metrics_refresh) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    let Ok(mut conn) = state.db.get().await else {
        return;
    };
    if let Ok(b) = ops::totals(&mut conn).await {
        metrics::gauge!("outbox_backlog").set(b.pending as f64);
        metrics::gauge!("outbox_oldest_age_seconds").set(b.oldest_age_secs as f64);
        metrics::gauge!("dead_jobs").set(b.dead as f64);
    }
}
