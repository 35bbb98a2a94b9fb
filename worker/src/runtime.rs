//! Runs one job: find its type in the registry, run its handler, and apply
//! the job type's retry policy on top of apalis.
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
    jobs::{self, JobEnvelope, Queue, run_id},
    models::outbox::{self, Outcome},
    redis_conn::RedisHandle,
    retry,
    services::ops,
};
use diesel_async::AsyncConnection;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{jobs::JobError, registry::Registry};

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
    /// Explains flagged purchases to their reviewers; `None` when none is configured.
    pub explainer: Option<Arc<dyn clicknback_core::fraud_explainer::FraudExplainer>>,
    /// Opens destinations for the provider.
    pub keys: clicknback_core::crypto::Keyring,
    /// Paused flags per queue, read from Redis at most every
    /// [`PAUSE_CHECK_EVERY`].
    pub paused: std::sync::Mutex<std::collections::HashMap<jobs::Queue, (bool, Instant)>>,
    /// Every job type this worker runs, by name.
    pub jobs: Registry,
    /// Closes the outbox rows of jobs that succeeded, in batches.
    pub closer: crate::closer::Closer,
    /// Cancelled when the shutdown grace is over: a run still going (or not
    /// yet started) stops where it is and never reports to Redis, so the
    /// job can be handed back to the queue ([`crate::handback`]).
    pub hand_back: CancellationToken,
}

pub type SharedCtx = Arc<Ctx>;

/// The apalis handler for every queue; `queue` is the one it fetched from.
pub async fn handle(
    env: JobEnvelope,
    task_id: TaskId,
    queue: Data<Queue>,
    ctx: Data<SharedCtx>,
) -> Result<(), BoxDynError> {
    let ctx: SharedCtx = (*ctx).clone();
    let span = tracing::info_span!("job", job_id = %task_id, job = %env.job, attempt = env.attempt);
    let stop = ctx.hand_back.clone();
    tokio::select! {
        biased;
        _ = stop.cancelled() => {
            tracing::info!(job_id = %task_id, "shutting down: the job is handed back to the queue");
            std::future::pending().await
        }
        r = run_one(ctx, *queue, env).instrument(span) => r,
    }
}

/// Runs one job fetched from `queue`. Its retries, deferrals and dead record
/// stay in that queue; a job name the registry does not hold is a permanent
/// failure, recorded dead there like any other.
async fn run_one(ctx: SharedCtx, queue: Queue, env: JobEnvelope) -> Result<(), BoxDynError> {
    if is_paused(&ctx, queue).await {
        let later = Utc::now() + chrono::Duration::seconds(5);
        requeue(
            &ctx,
            queue,
            &env,
            &run_id::later(&env.task_id, 'p', Utc::now().timestamp_millis()),
            env.attempt,
            later,
        )
        .await?;
        tracing::debug!("queue paused; job put back");
        return Ok(());
    }
    let job = ctx.jobs.get(&env.job);
    let started = Instant::now();
    let outcome = match job {
        Some(job) => job.run(ctx.clone(), &env).await,
        None => Err(JobError::permanent(anyhow::anyhow!(
            "unknown job type {:?}",
            env.job
        ))),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let label = match &outcome {
        Ok(()) => "success",
        Err(JobError::Retry(_)) => "retry",
        Err(JobError::Permanent(_)) => "failed",
        Err(JobError::Defer { .. }) => "deferred",
    };
    metrics::histogram!("job_duration_seconds", "job" => env.job.clone()).record(elapsed);
    let permanent = matches!(outcome, Err(JobError::Permanent(_)));
    let attempt = env.attempt.max(1) as u32;
    let retry = job
        .map(|j| j.retry)
        .filter(|p| p.allows_retry_after(attempt));
    match (outcome, retry) {
        (Ok(()), _) => {
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => label)
                .increment(1);
            tracing::info!(duration_ms = (elapsed * 1000.0) as u64, "job succeeded");
            ctx.closer.done(queue, &env.task_id);
            Ok(())
        }
        (Err(JobError::Defer { reason, after }), _) => {
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => label)
                .increment(1);
            let later = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            let id = run_id::later(&env.task_id, 'd', later.timestamp_millis());
            requeue(&ctx, queue, &env, &id, env.attempt, later)
                .await
                .map_err(unrecorded)?;
            tracing::info!(%reason, after_ms = after.as_millis() as u64, "job deferred");
            Ok(())
        }
        (Err(JobError::Retry(e)), Some(policy)) => {
            let next = attempt + 1;
            let delay = policy.delay_before(next, retry::unit_random());
            let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            let id = run_id::attempt(&env.task_id, next);
            requeue(&ctx, queue, &env, &id, next as i32, at)
                .await
                .map_err(unrecorded)?;
            metrics::counter!("jobs_total", "job" => env.job.clone(), "outcome" => label)
                .increment(1);
            tracing::warn!(error = %format!("{e:#}"), next_attempt = next, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            Ok(())
        }
        (Err(JobError::Retry(e) | JobError::Permanent(e)), _) => {
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

/// Writes the job's next run (`task_id`, unique to the run) into the outbox
/// of `queue` and closes this run's row as superseded, in one transaction.
/// An id already written is this same next run, recorded by an earlier run
/// of this one (a job can run twice): logged, and the earlier row stands.
async fn requeue(
    ctx: &Ctx,
    queue: Queue,
    env: &JobEnvelope,
    task_id: &str,
    attempt: i32,
    at: chrono::DateTime<Utc>,
) -> Result<(), BoxDynError> {
    let mut conn = ctx.db.get().await?;
    let payload = serde_json::json!({ "job": env.job, "data": env.payload });
    let inserted = conn
        .transaction::<bool, diesel::result::Error, _>(async move |conn| {
            let inserted = jobs::enqueue_raw(conn, queue, task_id, payload, attempt, at).await?;
            outbox::finish(conn, &env.task_id, Outcome::Superseded).await?;
            Ok(inserted)
        })
        .await?;
    if !inserted {
        tracing::info!(job.next_id = %task_id, "next run already recorded by an earlier run of this one");
    }
    Ok(())
}

/// Records a dead job (idempotent by task id).
async fn bury(
    ctx: &Ctx,
    env: &JobEnvelope,
    queue: Queue,
    attempts: u32,
    error: &str,
) -> Result<(), BoxDynError> {
    let mut conn = ctx.db.get().await?;
    ops::record(
        &mut conn,
        queue,
        &env.task_id,
        Some(&env.job),
        Some(&env.payload),
        attempts as i32,
        error,
    )
    .await?;
    Ok(())
}

/// How long a queue's paused flag, once read, is taken as it stands: a pause
/// reaches the jobs that start at most this long after it (a job already
/// running when it came finishes either way), and a busy queue reads its
/// flag from Redis a few times a second instead of once per job.
pub const PAUSE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

async fn is_paused(ctx: &Ctx, queue: Queue) -> bool {
    let now = Instant::now();
    if let Some(&(paused, at)) = ctx.paused.lock().expect("paused flags").get(&queue)
        && now.duration_since(at) < PAUSE_CHECK_EVERY
    {
        return paused;
    }
    let paused = match ctx.redis.get().await {
        Ok(mut c) => ops::is_paused(&mut c, &ctx.namespace, queue)
            .await
            .unwrap_or(false),
        Err(_) => false,
    };
    ctx.paused
        .lock()
        .expect("paused flags")
        .insert(queue, (paused, now));
    paused
}
