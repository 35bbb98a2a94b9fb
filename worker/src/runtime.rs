//! Runs one job: decode the envelope, dispatch to its handler, and apply the
//! job type's retry policy on top of apalis.
//!
//! apalis-redis would retry a failed job itself, linearly and up to a
//! hard-coded 25 attempts, and tower's retry layer lives only in the process.
//! So a handler's failure never reaches apalis as an error: a retryable one
//! writes the next attempt into the outbox (durable, exponential backoff with
//! jitter, bounded by the relay like every other job); an exhausted or
//! permanent one is recorded in `dead_jobs` with its last error and attempt
//! count. Either way the Redis job then completes. Only when PostgreSQL itself
//! cannot take that record does the error go back to apalis, whose own retry
//! brings the job back later.

use std::{sync::Arc, time::Instant};

use apalis::prelude::{BoxDynError, Data, TaskId};
use chrono::Utc;
use clicknback_core::{
    config::Config,
    db::DbPool,
    jobs::{
        self, ApplyRewardTransition, AttributePurchase, Canary, Job, JobEnvelope, ProcessPayout,
        RecomputeUserStats, RunSchedule, SendEmail,
    },
    redis_conn::RedisHandle,
    retry,
    schema::dead_jobs,
    services::ops,
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::jobs::{
    JobError, JobResult, apply_reward_transition, attribute_purchase, canary, process_payout,
    recompute_user_stats, run_schedule, send_email,
};

/// What every job handler shares.
pub struct Ctx {
    pub db: DbPool,
    pub redis: RedisHandle,
    pub namespace: String,
    pub config: Config,
    pub mailer: AsyncSmtpTransport<Tokio1Executor>,
    /// This process's name, for logs and canaries.
    pub instance: String,
    /// Scores purchases before they are rewarded.
    pub fraud: Box<dyn clicknback_core::services::fraud::FraudScorer>,
    /// Read-through caches (the active offer on the attribution path).
    pub cache: clicknback_core::cache::Cache,
    /// Where payouts are sent.
    pub provider: Arc<dyn clicknback_core::payout_provider::PayoutProvider>,
    /// Opens destinations for the provider.
    pub keys: clicknback_core::crypto::Keyring,
    /// Paused flags per queue, read from Redis at most once a second.
    pub paused: std::sync::Mutex<std::collections::HashMap<jobs::Queue, (bool, Instant)>>,
}

pub type SharedCtx = Arc<Ctx>;

fn decode<T: DeserializeOwned>(env: &JobEnvelope) -> Result<T, JobError> {
    serde_json::from_value(env.payload.clone())
        .map_err(|e| JobError::permanent(anyhow::anyhow!("malformed {} payload: {e}", env.job)))
}

async fn dispatch(ctx: &SharedCtx, env: &JobEnvelope) -> JobResult {
    match env.job.as_str() {
        SendEmail::NAME => send_email::run(ctx.clone(), decode(env)?).await,
        RunSchedule::NAME => run_schedule::run(ctx, decode(env)?).await,
        Canary::NAME => canary::run(ctx, decode(env)?, env.attempt).await,
        AttributePurchase::NAME => attribute_purchase::run(ctx, decode(env)?).await,
        ApplyRewardTransition::NAME => apply_reward_transition::run(ctx, decode(env)?).await,
        ProcessPayout::NAME => process_payout::run(ctx, decode(env)?).await,
        RecomputeUserStats::NAME => recompute_user_stats::run(ctx, decode(env)?).await,
        other => Err(JobError::permanent(anyhow::anyhow!(
            "unknown job type {other:?}"
        ))),
    }
}

/// The apalis handler for every queue.
pub async fn handle(
    env: JobEnvelope,
    task_id: TaskId,
    ctx: Data<SharedCtx>,
) -> Result<(), BoxDynError> {
    let ctx: SharedCtx = (*ctx).clone();
    let span = tracing::info_span!("job", job_id = %task_id, job = %env.job, attempt = env.attempt);
    run_one(ctx, env).instrument(span).await
}

async fn run_one(ctx: SharedCtx, env: JobEnvelope) -> Result<(), BoxDynError> {
    let queue = jobs::queue_of(&env.job).unwrap_or(jobs::Queue::Maintenance);
    if is_paused(&ctx, queue).await {
        let later = Utc::now() + chrono::Duration::seconds(5);
        requeue(
            &ctx,
            &env,
            &format!(
                "{}#p{}",
                ops::base_task_id(&env.task_id),
                Utc::now().timestamp_millis()
            ),
            env.attempt,
            later,
        )
        .await?;
        tracing::debug!("queue paused; job put back");
        return Ok(());
    }
    let started = Instant::now();
    let outcome = dispatch(&ctx, &env).await;
    let elapsed = started.elapsed().as_secs_f64();
    let label = match &outcome {
        Ok(()) => "success",
        Err(JobError::Retry(_)) => "retry",
        Err(JobError::Permanent(_)) => "failed",
        Err(JobError::Defer { .. }) => "deferred",
    };
    metrics::histogram!("job_duration_seconds", "job" => env.job.clone()).record(elapsed);
    let policy = ctx.config.worker.retry_of(&env.job);
    let attempt = env.attempt.max(1) as u32;
    match outcome {
        Ok(()) => {
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => label)
                .increment(1);
            tracing::info!(duration_ms = (elapsed * 1000.0) as u64, "job succeeded");
            Ok(())
        }
        Err(JobError::Defer { reason, after }) => {
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => label)
                .increment(1);
            let later = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            let id = format!(
                "{}#d{}",
                ops::base_task_id(&env.task_id),
                later.timestamp_millis()
            );
            requeue(&ctx, &env, &id, env.attempt, later)
                .await
                .map_err(unrecorded)?;
            tracing::info!(%reason, after_ms = after.as_millis() as u64, "job deferred");
            Ok(())
        }
        Err(JobError::Retry(e)) if policy.allows_retry_after(attempt) => {
            let next = attempt + 1;
            let delay = policy.delay_before(next, retry::unit_random());
            let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            let id = format!("{}#a{next}", ops::base_task_id(&env.task_id));
            requeue(&ctx, &env, &id, next as i32, at)
                .await
                .map_err(unrecorded)?;
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => label)
                .increment(1);
            tracing::warn!(error = %format!("{e:#}"), next_attempt = next, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            Ok(())
        }
        Err(JobError::Retry(e)) | Err(JobError::Permanent(e)) => {
            let permanent = label == "failed";
            bury(&ctx, &env, queue, attempt, &format!("{e:#}"))
                .await
                .map_err(unrecorded)?;
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => "dead")
                .increment(1);
            tracing::error!(error = %format!("{e:#}"), permanent, attempts = attempt, "job is dead");
            Ok(())
        }
    }
}

/// The outcome of a failed run could not be written to PostgreSQL (it is
/// unreachable): the error goes back to apalis, which runs the job again from
/// Redis. Logged, so an outage's failed runs are visible.
fn unrecorded(e: BoxDynError) -> BoxDynError {
    tracing::warn!(error = %e, "job failed and its outcome could not be recorded in PostgreSQL; it runs again from Redis");
    e
}

/// Writes the job's next run into the outbox.
async fn requeue(
    ctx: &Ctx,
    env: &JobEnvelope,
    task_id: &str,
    attempt: i32,
    at: chrono::DateTime<Utc>,
) -> Result<(), BoxDynError> {
    let queue = jobs::queue_of(&env.job).unwrap_or(jobs::Queue::Maintenance);
    let mut conn = ctx.db.get().await?;
    let payload = serde_json::json!({ "job": env.job, "data": env.payload });
    jobs::enqueue_raw(&mut conn, queue, task_id, payload, attempt, at).await?;
    Ok(())
}

/// Records a dead job (idempotent by task id).
async fn bury(
    ctx: &Ctx,
    env: &JobEnvelope,
    queue: jobs::Queue,
    attempts: u32,
    error: &str,
) -> Result<(), BoxDynError> {
    let mut conn = ctx.db.get().await?;
    diesel::insert_into(dead_jobs::table)
        .values((
            dead_jobs::queue.eq(queue.as_str()),
            dead_jobs::task_id.eq(&env.task_id),
            dead_jobs::payload.eq(serde_json::json!({ "job": env.job, "data": env.payload })),
            dead_jobs::attempts.eq(attempts as i32),
            dead_jobs::last_error.eq(error),
        ))
        .on_conflict(dead_jobs::task_id)
        .do_nothing()
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn is_paused(ctx: &Ctx, queue: jobs::Queue) -> bool {
    match ctx.redis.get().await {
        Ok(mut c) => ops::is_paused(&mut c, &ctx.namespace, queue)
            .await
            .unwrap_or(false),
        Err(_) => false,
    }
}
