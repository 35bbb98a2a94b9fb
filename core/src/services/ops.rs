//! Operations on the job system for the board, the admin API and the worker
//! CLI: counts per queue and state, job lists, one job, live workers, and the
//! actions (re-queue dead jobs, delete a job, pause and resume a queue).
//!
//! Dead jobs live in PostgreSQL (`dead_jobs`), written by the worker when a job
//! exhausts its retries or fails permanently; re-queueing writes a fresh outbox
//! row, so it reaches Redis through the same bounded relay as everything else.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::{
    jobs::{self, Queue},
    queues,
    schema::{dead_jobs, outbox},
    text_enum::text_enum,
};

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
        /// Finished, still kept in Redis.
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
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerView {
    pub queue: String,
    pub name: String,
    pub last_heartbeat: DateTime<Utc>,
    pub in_flight: u64,
}

pub fn paused_key(namespace: &str, q: Queue) -> String {
    format!("{namespace}:paused:{}", q.as_str())
}

pub async fn is_paused<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    q: Queue,
) -> redis::RedisResult<bool> {
    redis::cmd("EXISTS")
        .arg(paused_key(namespace, q))
        .query_async(redis)
        .await
}

pub async fn set_paused<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    q: Queue,
    paused: bool,
) -> redis::RedisResult<()> {
    let key = paused_key(namespace, q);
    if paused {
        redis::cmd("SET")
            .arg(key)
            .arg(Utc::now().to_rfc3339())
            .query_async(redis)
            .await
    } else {
        redis::cmd("DEL").arg(key).query_async(redis).await
    }
}

#[derive(QueryableByName)]
struct Backlog {
    #[diesel(sql_type = diesel::sql_types::Text)]
    queue: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    backlog: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    retrying: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    oldest: i64,
}

async fn worker_names<C: ConnectionLike>(
    redis: &mut C,
    cfg: &apalis_redis::Config,
) -> redis::RedisResult<Vec<(String, f64)>> {
    redis::cmd("ZRANGE")
        .arg(cfg.workers_set())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(redis)
        .await
}

pub async fn stats<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
) -> Result<Vec<QueueStats>, OpsError> {
    let backlog: Vec<Backlog> = diesel::sql_query(
        "SELECT queue,
                count(*) FILTER (WHERE run_at <= now()) AS backlog,
                count(*) FILTER (WHERE attempt > 1) AS retrying,
                COALESCE(extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::bigint, 0) AS oldest
           FROM outbox WHERE sent_at IS NULL GROUP BY queue",
    )
    .load(conn)
    .await?;
    let dead: Vec<(String, i64)> = dead_jobs::table
        .filter(dead_jobs::requeued_at.is_null())
        .group_by(dead_jobs::queue)
        .select((dead_jobs::queue, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let mut out = Vec::new();
    for q in Queue::ALL {
        let cfg = queues::storage_config(namespace, q);
        let depth = queues::depth(redis, &cfg).await?;
        let mut running = 0;
        for (name, _) in worker_names(redis, &cfg).await? {
            let n: u64 = redis::cmd("SCARD")
                .arg(format!("{}:{name}", cfg.inflight_jobs_set()))
                .query_async(redis)
                .await?;
            running += n;
        }
        let b = backlog.iter().find(|b| b.queue == q.as_str());
        out.push(QueueStats {
            queue: q.as_str().into(),
            scheduled: depth.scheduled,
            ready: depth.ready,
            running,
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

fn envelope_parts(data: Option<&str>) -> (Option<String>, Option<serde_json::Value>, Option<i64>) {
    let Some(v) = data.and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()) else {
        return (None, None, None);
    };
    (
        v["job"].as_str().map(str::to_owned),
        Some(v["payload"].clone()),
        v["attempt"].as_i64(),
    )
}

async fn redis_job<C: ConnectionLike>(
    redis: &mut C,
    cfg: &apalis_redis::Config,
    queue: Queue,
    task_id: &str,
    state: JobState,
    run_at: Option<DateTime<Utc>>,
) -> Result<JobView, OpsError> {
    let (data, meta): (Option<String>, std::collections::HashMap<String, String>) = redis::pipe()
        .hget(cfg.job_data_hash(), task_id)
        .hgetall(format!("{}:{task_id}", cfg.job_meta_hash()))
        .query_async(redis)
        .await?;
    let (job, payload, attempt) = envelope_parts(data.as_deref());
    let last_error = meta
        .get("result")
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|r| r.get("Err").and_then(|e| e.as_str()).map(str::to_owned));
    let finished_at = meta
        .get("done_at")
        .and_then(|d| d.parse::<i64>().ok())
        .and_then(|s| DateTime::from_timestamp(s, 0));
    Ok(JobView {
        queue: queue.as_str().into(),
        task_id: task_id.to_owned(),
        state,
        job,
        payload,
        attempt,
        last_error,
        run_at,
        finished_at,
        dead_id: None,
    })
}

fn dead_view(d: DeadJob) -> JobView {
    JobView {
        queue: d.queue,
        task_id: d.task_id,
        state: JobState::Dead,
        job: d.payload["job"].as_str().map(str::to_owned),
        payload: Some(d.payload["data"].clone()),
        attempt: Some(d.attempts.into()),
        last_error: Some(d.last_error),
        run_at: None,
        finished_at: Some(d.died_at),
        dead_id: Some(d.id),
    }
}

type OutboxJobRow = (
    String,
    serde_json::Value,
    i32,
    DateTime<Utc>,
    Option<String>,
);

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = dead_jobs, check_for_backend(diesel::pg::Pg))]
pub struct DeadJob {
    pub id: i64,
    pub queue: String,
    pub task_id: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub last_error: String,
    pub died_at: DateTime<Utc>,
    pub requeued_at: Option<DateTime<Utc>>,
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
    let cfg = queues::storage_config(namespace, queue);
    let limit = limit.clamp(1, 200);
    let mut out = Vec::new();
    match state {
        JobState::Scheduled => {
            let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(cfg.scheduled_jobs_set())
                .arg(0)
                .arg(limit - 1)
                .arg("WITHSCORES")
                .query_async(redis)
                .await?;
            for (id, score) in ids {
                let at = DateTime::from_timestamp(score as i64, 0);
                out.push(redis_job(redis, &cfg, queue, &id, state, at).await?);
            }
        }
        JobState::Ready => {
            let ids: Vec<String> = redis::cmd("LRANGE")
                .arg(cfg.active_jobs_list())
                .arg(0)
                .arg(limit - 1)
                .query_async(redis)
                .await?;
            for id in ids {
                out.push(redis_job(redis, &cfg, queue, &id, state, None).await?);
            }
        }
        JobState::Running => {
            for (name, _) in worker_names(redis, &cfg).await? {
                let ids: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(format!("{}:{name}", cfg.inflight_jobs_set()))
                    .query_async(redis)
                    .await?;
                for id in ids.into_iter().take(limit as usize) {
                    out.push(redis_job(redis, &cfg, queue, &id, state, None).await?);
                }
            }
        }
        JobState::Done => {
            let (_, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(cfg.done_jobs_set())
                .arg(0)
                .arg("COUNT")
                .arg(limit)
                .query_async(redis)
                .await?;
            for id in ids.into_iter().take(limit as usize) {
                out.push(redis_job(redis, &cfg, queue, &id, state, None).await?);
            }
        }
        JobState::Dead => {
            let rows: Vec<DeadJob> = dead_jobs::table
                .filter(dead_jobs::queue.eq(queue.as_str()))
                .filter(dead_jobs::requeued_at.is_null())
                .order(dead_jobs::died_at.desc())
                .limit(limit)
                .select(DeadJob::as_select())
                .load(conn)
                .await?;
            out.extend(rows.into_iter().map(dead_view));
        }
        JobState::Retrying | JobState::Outbox => {
            let mut q = outbox::table
                .filter(outbox::queue.eq(queue.as_str()))
                .filter(outbox::sent_at.is_null())
                .order(outbox::run_at.asc())
                .limit(limit)
                .select((
                    outbox::task_id,
                    outbox::payload,
                    outbox::attempt,
                    outbox::run_at,
                    outbox::last_error,
                ))
                .into_boxed();
            if state == JobState::Retrying {
                q = q.filter(outbox::attempt.gt(1));
            }
            let rows: Vec<OutboxJobRow> = q.load(conn).await?;
            out.extend(
                rows.into_iter()
                    .map(|(task_id, payload, attempt, run_at, last_error)| JobView {
                        queue: queue.as_str().into(),
                        task_id,
                        state,
                        job: payload["job"].as_str().map(str::to_owned),
                        payload: Some(payload["data"].clone()),
                        attempt: Some(attempt.into()),
                        last_error,
                        run_at: Some(run_at),
                        finished_at: None,
                        dead_id: None,
                    }),
            );
        }
        JobState::ReadyOrRunning => return Err(OpsError::UnknownState(state.to_string())),
    }
    Ok(out)
}

/// One job by task id, wherever it is.
pub async fn job<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    task_id: &str,
) -> Result<JobView, OpsError> {
    let dead: Option<DeadJob> = dead_jobs::table
        .filter(dead_jobs::task_id.eq(task_id))
        .select(DeadJob::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(d) = dead {
        return Ok(dead_view(d));
    }
    let cfg = queues::storage_config(namespace, queue);
    let (score, done, exists): (Option<f64>, bool, bool) = redis::pipe()
        .zscore(cfg.scheduled_jobs_set(), task_id)
        .sismember(cfg.done_jobs_set(), task_id)
        .hexists(cfg.job_data_hash(), task_id)
        .query_async(redis)
        .await?;
    if exists {
        let state = if score.is_some() {
            JobState::Scheduled
        } else if done {
            JobState::Done
        } else {
            JobState::ReadyOrRunning
        };
        return redis_job(
            redis,
            &cfg,
            queue,
            task_id,
            state,
            score.and_then(|s| DateTime::from_timestamp(s as i64, 0)),
        )
        .await;
    }
    let row: Option<(serde_json::Value, i32, DateTime<Utc>, Option<String>)> = outbox::table
        .filter(outbox::task_id.eq(task_id))
        .select((
            outbox::payload,
            outbox::attempt,
            outbox::run_at,
            outbox::last_error,
        ))
        .first(conn)
        .await
        .optional()?;
    let (payload, attempt, run_at, last_error) = row.ok_or(OpsError::NotFound)?;
    Ok(JobView {
        queue: queue.as_str().into(),
        task_id: task_id.to_owned(),
        state: JobState::Outbox,
        job: payload["job"].as_str().map(str::to_owned),
        payload: Some(payload["data"].clone()),
        attempt: Some(attempt.into()),
        last_error,
        run_at: Some(run_at),
        finished_at: None,
        dead_id: None,
    })
}

pub async fn workers<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
) -> Result<Vec<WorkerView>, OpsError> {
    let mut out = Vec::new();
    for q in Queue::ALL {
        let cfg = queues::storage_config(namespace, q);
        for (name, score) in worker_names(redis, &cfg).await? {
            let in_flight: u64 = redis::cmd("SCARD")
                .arg(format!("{}:{name}", cfg.inflight_jobs_set()))
                .query_async(redis)
                .await?;
            out.push(WorkerView {
                queue: q.as_str().into(),
                name,
                last_heartbeat: DateTime::from_timestamp(score as i64, 0).unwrap_or_default(),
                in_flight,
            });
        }
    }
    Ok(out)
}

/// The task id a job had before any retry or re-queue suffix.
pub fn base_task_id(task_id: &str) -> &str {
    task_id.split('#').next().unwrap_or(task_id)
}

/// Puts a dead job back: a fresh outbox row (attempt 1) and the dead record
/// marked re-queued, in one transaction. Returns the new task id.
pub async fn requeue_dead(conn: &mut AsyncPgConnection, dead_id: i64) -> Result<String, OpsError> {
    conn.transaction::<String, OpsError, _>(async move |conn| {
        let d: DeadJob = dead_jobs::table
            .find(dead_id)
            .filter(dead_jobs::requeued_at.is_null())
            .select(DeadJob::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(OpsError::NotFound)?;
        let queue = parse_queue(&d.queue)?;
        let task_id = format!("{}#q{}", base_task_id(&d.task_id), d.id);
        jobs::enqueue_raw(conn, queue, &task_id, d.payload.clone(), 1, Utc::now()).await?;
        diesel::update(dead_jobs::table.find(d.id))
            .set(dead_jobs::requeued_at.eq(Utc::now()))
            .execute(conn)
            .await?;
        tracing::info!(job.id = %d.task_id, job.new_id = %task_id, queue = %d.queue, "dead job re-queued");
        Ok(task_id)
    })
    .await
}

/// Re-queues every dead job of a queue; returns how many.
pub async fn requeue_all_dead(
    conn: &mut AsyncPgConnection,
    queue: Queue,
) -> Result<usize, OpsError> {
    let ids: Vec<i64> = dead_jobs::table
        .filter(dead_jobs::queue.eq(queue.as_str()))
        .filter(dead_jobs::requeued_at.is_null())
        .select(dead_jobs::id)
        .load(conn)
        .await?;
    let mut n = 0;
    for id in ids {
        match requeue_dead(conn, id).await {
            Ok(_) => n += 1,
            Err(OpsError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

const DELETE_JOB: &str = r"
-- KEYS: scheduled, active, done, dead, data ; ARGV: meta key, task id
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('LREM', KEYS[2], 0, ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('SREM', KEYS[4], ARGV[2])
local removed = redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('DEL', ARGV[1])
return removed
";

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
    let dead = diesel::delete(dead_jobs::table.filter(dead_jobs::task_id.eq(task_id)))
        .execute(conn)
        .await?;
    let unsent = diesel::delete(
        outbox::table
            .filter(outbox::task_id.eq(task_id))
            .filter(outbox::sent_at.is_null()),
    )
    .execute(conn)
    .await?;
    let removed = delete_from_redis(redis, namespace, queue, task_id).await?;
    if dead + unsent == 0 && !removed {
        return Err(OpsError::NotFound);
    }
    tracing::info!(job.id = %task_id, queue = queue.as_str(), "job deleted");
    Ok(())
}

/// Removes a job from every Redis structure of its queue; true if it had data.
pub async fn delete_from_redis<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    task_id: &str,
) -> Result<bool, OpsError> {
    let cfg = queues::storage_config(namespace, queue);
    let removed: i64 = redis::Script::new(DELETE_JOB)
        .key(cfg.scheduled_jobs_set())
        .key(cfg.active_jobs_list())
        .key(cfg.done_jobs_set())
        .key(cfg.dead_jobs_set())
        .key(cfg.job_data_hash())
        .arg(format!("{}:{task_id}", cfg.job_meta_hash()))
        .arg(task_id)
        .invoke_async(redis)
        .await?;
    Ok(removed > 0)
}

/// Removes finished jobs older than `before` from Redis, at most `max` per call.
pub async fn prune_done<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    before: DateTime<Utc>,
    max: usize,
) -> Result<usize, OpsError> {
    let cfg = queues::storage_config(namespace, queue);
    let mut cursor: u64 = 0;
    let mut pruned = 0;
    loop {
        let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(cfg.done_jobs_set())
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(redis)
            .await?;
        for id in ids {
            let done_at: Option<i64> = redis::cmd("HGET")
                .arg(format!("{}:{id}", cfg.job_meta_hash()))
                .arg("done_at")
                .query_async(redis)
                .await?;
            if done_at.is_none_or(|t| t < before.timestamp()) {
                delete_from_redis(redis, namespace, queue, &id).await?;
                pruned += 1;
                if pruned >= max {
                    return Ok(pruned);
                }
            }
        }
        if next == 0 {
            return Ok(pruned);
        }
        cursor = next;
    }
}
