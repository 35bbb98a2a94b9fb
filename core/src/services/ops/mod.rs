//! Operations on the job system for the board, the admin API and the worker
//! CLI: counts per queue and state, job lists, one job, live workers, and the
//! actions (re-queue dead jobs, delete a job, pause and resume a queue).
//!
//! A job is in one of three places, one module each: Redis ([`queues`]:
//! scheduled, ready, running, done), the outbox ([`outbox`]: not yet relayed,
//! or a later attempt), or `dead_jobs` ([`dead`]: waiting for an operator).
//! This module puts the three together.

mod dead;
mod outbox;
mod queues;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use redis::aio::ConnectionLike;
use serde::Serialize;

pub use dead::{DeadJob, adopt_crashed, base_task_id, record, requeue_all_dead, requeue_dead};
pub use outbox::chains;
pub use queues::{delete_from_redis, is_paused, paused_key, prune_done, set_paused, workers};

use crate::{jobs::Queue, queues as storage, text_enum::text_enum};

text_enum! {
    /// Where a job is: in Redis (scheduled, ready, running, done), in the
    /// outbox (outbox, or retrying when it is a later attempt), or dead.
    pub enum JobState {
        /// Waiting for its due time in Redis.
        Scheduled = "scheduled",
        /// Due and waiting for a worker.
        Ready = "ready",
        /// Fetched by a worker.
        Running = "running",
        /// Failed, its next attempt waiting in the outbox.
        Retrying = "retrying",
        /// Finished, still kept in Redis (its status and when it finished;
        /// its payload is read from the outbox row).
        Done = "done",
        /// Exhausted or permanently failed, waiting for an operator.
        Dead = "dead",
        /// Due or scheduled in the outbox, not yet in Redis.
        Outbox = "outbox",
        /// Looked up by id in Redis, due but neither scheduled nor done: it
        /// is waiting or running (only a single job's view says this).
        ReadyOrRunning = "ready_or_running",
    }
}

impl JobState {
    /// The states a queue's jobs are listed by.
    pub const LISTED: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Running,
        JobState::Retrying,
        JobState::Done,
        JobState::Dead,
        JobState::Outbox,
    ];
}

/// A state to list jobs by.
pub fn parse_state(s: &str) -> Result<JobState, OpsError> {
    JobState::parse(s)
        .filter(|state| JobState::LISTED.contains(state))
        .ok_or_else(|| OpsError::UnknownState(s.to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no such job")]
    NotFound,
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    #[error(
        "unknown state {0:?}; expected scheduled, ready, running, retrying, done, dead or outbox"
    )]
    UnknownState(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A new run's id was already taken: nothing was enqueued.
    #[error("a job with id {0:?} already exists; nothing was enqueued")]
    Collision(String),
}

pub fn parse_queue(s: &str) -> Result<Queue, OpsError> {
    Queue::parse(s).ok_or_else(|| OpsError::UnknownQueue(s.to_owned()))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub queue: String,
    /// Waiting for their due time in Redis.
    pub scheduled: u64,
    /// Due and waiting for a worker.
    pub ready: u64,
    /// Fetched by a worker (running or about to).
    pub running: u64,
    /// Failed and waiting for their next attempt (in the outbox).
    pub retrying: i64,
    /// Finished, still kept in Redis (until the retention setting removes them).
    pub done: u64,
    /// Exhausted or permanently failed, waiting for an operator.
    pub dead: i64,
    /// Outbox rows that are due but not yet in Redis.
    pub outbox_backlog: i64,
    /// How long (seconds) the oldest of those has been due.
    pub outbox_oldest_age_secs: i64,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub queue: String,
    pub task_id: String,
    pub state: JobState,
    pub job: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub attempt: Option<i64>,
    pub last_error: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The id of the dead-job record (for re-queue and delete), when dead.
    pub dead_id: Option<i64>,
    /// Every chain of runs of this job the outbox still holds, oldest first,
    /// each with its runs in order (only in a single job's view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<Vec<JobChain>>,
}

/// One chain of runs of a job: its first run and every retry, deferral and
/// put-back that followed; a re-queued dead job starts a new chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobChain {
    /// The chain's id: its first run's task id.
    pub chain: String,
    /// What started it: `enqueue`, `requeue`, `sweep`, `reattribute`, `late` or `other`.
    pub cause: String,
    pub runs: Vec<JobRun>,
}

/// One run of a job, as the outbox and the dead-job records know it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRun {
    pub task_id: String,
    /// 1 for a chain's first run.
    pub attempt: i64,
    pub run_at: DateTime<Utc>,
    /// When the relay last put it into Redis.
    pub sent_at: Option<DateTime<Utc>>,
    /// When its outcome was recorded; none while it is open.
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<crate::models::outbox::Outcome>,
    /// How often it was relayed again because Redis had lost it.
    pub recovered: i32,
    /// The dead-job record of this run, when it died.
    pub dead_id: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerView {
    pub queue: String,
    pub name: String,
    pub last_heartbeat: DateTime<Utc>,
    pub in_flight: u64,
}

/// Totals over every queue, for the metrics read at scrape time.
#[derive(Debug, Clone, Copy, diesel::QueryableByName)]
pub struct Totals {
    /// Outbox rows due and not yet in Redis.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub pending: i64,
    /// How long (seconds) the oldest of those has been due.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub oldest_age_secs: i64,
    /// Dead jobs waiting for an operator.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub dead: i64,
}

pub async fn totals(conn: &mut AsyncPgConnection) -> Result<Totals, diesel::result::Error> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND run_at <= now()) AS pending,
                COALESCE((SELECT extract(epoch FROM now() - min(run_at))::bigint
                          FROM outbox WHERE sent_at IS NULL AND run_at <= now()), 0) AS oldest_age_secs,
                (SELECT count(*) FROM dead_jobs WHERE requeued_at IS NULL) AS dead",
    )
    .get_result(conn)
    .await
}

/// Counts per queue and state.
pub async fn stats<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
) -> Result<Vec<QueueStats>, OpsError> {
    let backlog = outbox::backlog(conn).await?;
    let dead = dead::counts(conn).await?;
    let mut out = Vec::new();
    for q in Queue::ALL {
        let cfg = storage::storage_config(namespace, q);
        let depth = storage::depth(redis, &cfg).await?;
        let b = backlog.iter().find(|b| b.queue == q.as_str());
        out.push(QueueStats {
            queue: q.as_str().into(),
            scheduled: depth.scheduled,
            ready: depth.ready,
            running: queues::running(redis, &cfg).await?,
            retrying: b.map(|b| b.retrying).unwrap_or(0),
            done: depth.done,
            dead: dead
                .iter()
                .find(|(n, _)| n == q.as_str())
                .map(|(_, c)| *c)
                .unwrap_or(0),
            outbox_backlog: b.map(|b| b.backlog).unwrap_or(0),
            outbox_oldest_age_secs: b.map(|b| b.oldest).unwrap_or(0),
            paused: is_paused(redis, namespace, q).await?,
        });
    }
    Ok(out)
}

/// Jobs of a queue in one state, newest or soonest first, at most `limit`.
pub async fn list<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    state: JobState,
    limit: i64,
) -> Result<Vec<JobView>, OpsError> {
    let limit = limit.clamp(1, 200);
    match state {
        JobState::Scheduled | JobState::Ready | JobState::Running => {
            queues::list(redis, namespace, queue, state, limit).await
        }
        JobState::Done => {
            let mut views = queues::list(redis, namespace, queue, state, limit).await?;
            outbox::fill_payloads(conn, &mut views).await?;
            Ok(views)
        }
        JobState::Dead => Ok(dead::list(conn, queue, limit).await?),
        JobState::Retrying | JobState::Outbox => Ok(outbox::list(conn, queue, state, limit).await?),
        JobState::ReadyOrRunning => Err(OpsError::UnknownState(state.to_string())),
    }
}

/// One job by task id, wherever it is.
pub async fn job<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    task_id: &str,
) -> Result<JobView, OpsError> {
    let mut view = match dead::find(conn, task_id).await? {
        Some(d) => d,
        None => match queues::find(redis, namespace, queue, task_id).await? {
            Some(mut r) => {
                outbox::fill_payloads(conn, std::slice::from_mut(&mut r)).await?;
                r
            }
            None => outbox::find(conn, queue, task_id)
                .await?
                .ok_or(OpsError::NotFound)?,
        },
    };
    view.chains = Some(outbox::chains(conn, crate::jobs::run_id::job_key(task_id)).await?);
    Ok(view)
}

/// Removes a job that is waiting or finished from Redis (ids leave the
/// queues before their data, so no worker fetches an id without data), or a
/// dead job's record, or an unsent outbox row.
pub async fn delete_job<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    task_id: &str,
) -> Result<(), OpsError> {
    let dead = dead::delete(conn, task_id).await?;
    let unsent = outbox::delete_unsent(conn, task_id).await?;
    let removed = delete_from_redis(redis, namespace, queue, task_id).await?;
    if dead + unsent == 0 && !removed {
        return Err(OpsError::NotFound);
    }
    tracing::info!(job.id = %task_id, queue = queue.as_str(), "job deleted");
    Ok(())
}
