//! Housekeeping that keeps Redis and the outbox bounded: finished jobs leave
//! Redis after `JOB_RETENTION_SECS` or beyond the newest `JOB_RETENTION_COUNT`
//! of their queue, finished outbox rows leave PostgreSQL after
//! `OUTBOX_RETENTION_SECS`, old cron claims are dropped, and jobs apalis put in
//! its own dead set (a handler that panicked) are recorded as dead jobs so
//! operators see and can re-queue them. One replica at a time does a round.

use std::time::Duration;

use chrono::Utc;
use clicknback_core::{
    db,
    jobs::Queue,
    models::outbox,
    services::{cron, ops},
};
use tokio_util::sync::CancellationToken;

use crate::runtime::SharedCtx;

pub async fn run(ctx: SharedCtx, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = round(&ctx).await {
            tracing::warn!(error = %format!("{e:#}"), "maintenance round failed");
        }
    }
}

pub async fn round(ctx: &SharedCtx) -> anyhow::Result<()> {
    let mut conn = ctx.db.get().await?;
    let key = db::lock_key(&format!("maintenance:{}", ctx.namespace));
    if !db::try_session_lock(&mut conn, key).await? {
        return Ok(());
    }
    let result = work(ctx, &mut conn).await;
    db::session_unlock(&mut conn, key).await?;
    result
}

async fn work(ctx: &SharedCtx, conn: &mut diesel_async::AsyncPgConnection) -> anyhow::Result<()> {
    let mut redis = ctx.redis.get().await?;
    let cutoff = Utc::now() - chrono::Duration::from_std(ctx.config.worker.job_retention)?;
    let mut pruned = 0;
    for q in Queue::ALL {
        pruned += ops::prune_done(
            &mut redis,
            &ctx.namespace,
            q,
            cutoff,
            ctx.config.worker.job_retention_count,
            100_000,
        )
        .await?;
        ops::adopt_crashed(conn, &mut redis, &ctx.namespace, q).await?;
    }
    let outbox_cutoff =
        Utc::now() - chrono::Duration::from_std(ctx.config.worker.outbox_retention)?;
    let outbox = outbox::prune_finished(conn, outbox_cutoff, 20_000).await?;
    cron::prune(conn).await?;
    if pruned + outbox > 0 {
        tracing::info!(
            redis_jobs_pruned = pruned,
            outbox_rows_pruned = outbox,
            "retention applied"
        );
    }
    metrics::counter!("retention_pruned_total", "store" => "redis").increment(pruned as u64);
    metrics::counter!("retention_pruned_total", "store" => "outbox").increment(outbox as u64);
    Ok(())
}
