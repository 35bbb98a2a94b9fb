//! The Redis side of the queues, as apalis-redis lays it out: counts, the
//! jobs in one state, one job by id, live workers, the paused flags, and
//! removal of a job or of finished jobs past their retention.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;

use super::{JobState, JobView, OpsError, WorkerView};
use crate::{jobs::Queue, queues};

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

/// The queue's registered workers with their last heartbeat (unix seconds).
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

fn inflight_set(cfg: &apalis_redis::Config, worker: &str) -> String {
    format!("{}:{worker}", cfg.inflight_jobs_set())
}

/// How many jobs one worker has fetched and not finished.
async fn in_flight<C: ConnectionLike>(
    redis: &mut C,
    cfg: &apalis_redis::Config,
    worker: &str,
) -> redis::RedisResult<u64> {
    redis::cmd("SCARD")
        .arg(inflight_set(cfg, worker))
        .query_async(redis)
        .await
}

/// How many jobs the queue's workers have fetched and not finished.
pub(super) async fn running<C: ConnectionLike>(
    redis: &mut C,
    cfg: &apalis_redis::Config,
) -> redis::RedisResult<u64> {
    let mut running = 0;
    for (name, _) in worker_names(redis, cfg).await? {
        running += in_flight(redis, cfg, &name).await?;
    }
    Ok(running)
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
        chains: None,
    })
}

/// Jobs of a queue in one of the states Redis holds (scheduled, ready,
/// running, done), at most `limit`; the other states hold none here.
pub(super) async fn list<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    state: JobState,
    limit: i64,
) -> Result<Vec<JobView>, OpsError> {
    let cfg = queues::storage_config(namespace, queue);
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
                    .arg(inflight_set(&cfg, &name))
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
        JobState::Retrying | JobState::Dead | JobState::Outbox | JobState::ReadyOrRunning => {}
    }
    Ok(out)
}

/// One job by task id, if Redis holds its data or has it as done (a finished
/// job's payload leaves Redis once its row is closed: the view then has none,
/// and [`super::job`] reads it from the outbox).
pub(super) async fn find<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    task_id: &str,
) -> Result<Option<JobView>, OpsError> {
    let cfg = queues::storage_config(namespace, queue);
    let (score, done, exists): (Option<f64>, bool, bool) = redis::pipe()
        .zscore(cfg.scheduled_jobs_set(), task_id)
        .sismember(cfg.done_jobs_set(), task_id)
        .hexists(cfg.job_data_hash(), task_id)
        .query_async(redis)
        .await?;
    if !exists && !done {
        return Ok(None);
    }
    let state = if score.is_some() {
        JobState::Scheduled
    } else if done {
        JobState::Done
    } else {
        JobState::ReadyOrRunning
    };
    let run_at = score.and_then(|s| DateTime::from_timestamp(s as i64, 0));
    redis_job(redis, &cfg, queue, task_id, state, run_at)
        .await
        .map(Some)
}

pub async fn workers<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
) -> Result<Vec<WorkerView>, OpsError> {
    let mut out = Vec::new();
    for q in Queue::ALL {
        let cfg = queues::storage_config(namespace, q);
        for (name, score) in worker_names(redis, &cfg).await? {
            let in_flight = in_flight(redis, &cfg, &name).await?;
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

/// Up to `max` ids apalis put in its own dead set (a handler that panicked).
pub(super) async fn crashed<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    max: usize,
) -> Result<Vec<String>, OpsError> {
    let cfg = queues::storage_config(namespace, queue);
    Ok(redis::cmd("SRANDMEMBER")
        .arg(cfg.dead_jobs_set())
        .arg(max)
        .query_async(redis)
        .await?)
}

const DELETE_JOB: &str = r"
-- KEYS: scheduled, active, done, dead, data ; ARGV: meta key, task id
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('LREM', KEYS[2], 0, ARGV[2])
-- A finished job may have no data left: its place in the done set and its
-- meta count as Redis holding it.
local removed = redis.call('SREM', KEYS[3], ARGV[2])
redis.call('SREM', KEYS[4], ARGV[2])
removed = removed + redis.call('HDEL', KEYS[5], ARGV[2])
removed = removed + redis.call('DEL', ARGV[1])
return removed
";

/// Removes a job from every Redis structure of its queue; true if Redis held
/// it (its data, or, once finished, its place in the done set or its meta).
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

/// Removes finished jobs from Redis: those that finished before `before`,
/// and beyond the newest `keep` of the queue whatever their age; at most
/// `max` per call. Returns how many went.
pub async fn prune_done<C: ConnectionLike>(
    redis: &mut C,
    namespace: &str,
    queue: Queue,
    before: DateTime<Utc>,
    keep: usize,
    max: usize,
) -> Result<usize, OpsError> {
    let cfg = queues::storage_config(namespace, queue);
    // Every finished id with when it finished (none: taken as oldest).
    let mut done: Vec<(i64, String)> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(cfg.done_jobs_set())
            .arg(cursor)
            .arg("COUNT")
            .arg(1_000)
            .query_async(redis)
            .await?;
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hget(format!("{}:{id}", cfg.job_meta_hash()), "done_at");
            }
            let at: Vec<Option<i64>> = pipe.query_async(redis).await?;
            done.extend(ids.into_iter().zip(at).map(|(id, t)| (t.unwrap_or(0), id)));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // Newest first: the first `keep` young enough stay.
    done.sort_unstable_by(|a, b| b.cmp(a));
    let doomed: Vec<String> = done
        .into_iter()
        .enumerate()
        .filter(|(i, (at, _))| *i >= keep || *at < before.timestamp())
        .map(|(_, (_, id))| id)
        .take(max)
        .collect();
    for chunk in doomed.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("EVAL")
                .arg(DELETE_JOB)
                .arg(5)
                .arg(cfg.scheduled_jobs_set())
                .arg(cfg.active_jobs_list())
                .arg(cfg.done_jobs_set())
                .arg(cfg.dead_jobs_set())
                .arg(cfg.job_data_hash())
                .arg(format!("{}:{id}", cfg.job_meta_hash()))
                .arg(id);
        }
        let _: Vec<i64> = pipe.query_async(redis).await?;
    }
    Ok(doomed.len())
}
