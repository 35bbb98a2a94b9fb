//! Metrics that are read at scrape time from the database: the outbox backlog
//! in front of the queues (rows due but not yet in Redis) and how long the
//! oldest of them has been due, and the dead jobs waiting for an operator.

use clicknback_core::services::ops;

use crate::state::AppState;

pub async fn refresh_gauges(state: &AppState) {
    let Ok(mut conn) = state.db.get().await else {
        return;
    };
    if let Ok(b) = ops::totals(&mut conn).await {
        metrics::gauge!("outbox_backlog").set(b.pending as f64);
        metrics::gauge!("outbox_oldest_age_seconds").set(b.oldest_age_secs as f64);
        metrics::gauge!("dead_jobs").set(b.dead as f64);
    }
}
