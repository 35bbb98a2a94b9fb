//! Housekeeping that keeps Redis and the outbox bounded: finished jobs leave
//! Redis after `JOB_RETENTION_SECS`, sent outbox rows leave PostgreSQL after
//! `OUTBOX_RETENTION_SECS`, old cron claims are dropped, and jobs apalis put in
//! its own dead set (a handler that panicked) are recorded as dead jobs so
//! operators see and can re-queue them. One replica at a time does a round.

use std::time::Duration;

use chrono::Utc;
use clicknback_core::{db, jobs::Queue, queues, schema::dead_jobs, services::ops};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
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
        pruned += ops::prune_done(&mut redis, &ctx.namespace, q, cutoff, 20_000).await?;
        adopt_redis_dead(ctx, conn, &mut redis, q).await?;
    }
    let outbox_cutoff =
        Utc::now() - chrono::Duration::from_std(ctx.config.worker.outbox_retention)?;
    let outbox = diesel::sql_query(
        "DELETE FROM outbox WHERE id = ANY(ARRAY(
            SELECT id FROM outbox WHERE sent_at < $1 ORDER BY sent_at LIMIT 20000))",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(outbox_cutoff)
    .execute(conn)
    .await?;
    diesel::sql_query("DELETE FROM cron_runs WHERE tick < now() - interval '7 days'")
        .execute(conn)
        .await?;
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

/// Moves ids from apalis's dead set into `dead_jobs`, then out of Redis.
async fn adopt_redis_dead(
    ctx: &SharedCtx,
    conn: &mut diesel_async::AsyncPgConnection,
    redis: &mut redis::aio::ConnectionManager,
    q: Queue,
) -> anyhow::Result<()> {
    let cfg = queues::storage_config(&ctx.namespace, q);
    let ids: Vec<String> = redis::cmd("SRANDMEMBER")
        .arg(cfg.dead_jobs_set())
        .arg(500)
        .query_async(redis)
        .await?;
    for id in ids {
        let view = ops::job(conn, redis, &ctx.namespace, q, &id).await;
        if let Ok(v) = view {
            diesel::insert_into(dead_jobs::table)
                .values((
                    dead_jobs::queue.eq(q.as_str()),
                    dead_jobs::task_id.eq(&id),
                    dead_jobs::payload.eq(serde_json::json!({ "job": v.job, "data": v.payload })),
                    dead_jobs::attempts.eq(v.attempt.unwrap_or(1) as i32),
                    dead_jobs::last_error
                        .eq(v.last_error.unwrap_or_else(|| "the handler crashed".into())),
                ))
                .on_conflict(dead_jobs::task_id)
                .do_nothing()
                .execute(conn)
                .await?;
            tracing::error!(job_id = %id, queue = q.as_str(), "job crashed its handler; recorded as dead");
        }
        ops::delete_from_redis(redis, &ctx.namespace, q, &id).await?;
    }
    Ok(())
}
