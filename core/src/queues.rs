//! The apalis Redis queues as the rest of the system sees them: their names
//! under the deployment's namespace, the storage settings every process uses,
//! bulk pushes for the outbox relay, and depth counts.
//!
//! The number of jobs held in Redis per queue is kept under a bound by the
//! relay (the outbox holds the rest), because apalis-redis 1.0 promotes every
//! due job in one Lua call and fails once more than ~8,000 are due together.

use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskId};
use apalis_redis::{Config as StorageConfig, RedisTask};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;

use crate::jobs::{JobEnvelope, Queue};

/// The Redis Cluster hash tag of every queue's keys. apalis-redis 1.0's
/// worker registration script also writes one key it does not declare,
/// `core:apalis:queues:list`, and a cluster node refuses a script that
/// touches a key of a slot it does not hold; so every queue's keys hash to
/// that key's slot (its whole name is the tag) and each script runs on the
/// node that holds all it touches. Queues thus share one primary (each holds
/// at most `QUEUE_MAX_IN_REDIS` jobs, the outbox the rest); rate limits and
/// caches spread over the cluster.
pub const QUEUE_HASH_TAG: &str = "{core:apalis:queues:list}";

/// `<namespace>:<queue>{core:apalis:queues:list}`: the prefix of every key
/// apalis keeps for the queue (see [`QUEUE_HASH_TAG`]).
pub fn queue_name(namespace: &str, queue: Queue) -> String {
    format!("{namespace}:{}{QUEUE_HASH_TAG}", queue.as_str())
}

/// Storage settings shared by pushers and workers of a queue.
pub fn storage_config(namespace: &str, queue: Queue) -> StorageConfig {
    StorageConfig::default().queue(queue_name(namespace, queue))
}

/// One job to push: its task id, envelope and due time.
pub struct Push {
    pub task_id: String,
    pub envelope: JobEnvelope,
    pub run_at: DateTime<Utc>,
}

/// Pushes jobs in one round trip. A task id that Redis already holds is
/// ignored by apalis-redis, so pushing a row twice runs it once.
pub async fn push<C: ConnectionLike>(
    conn: &mut C,
    config: &StorageConfig,
    items: &[Push],
) -> Result<(u32, u32), apalis_redis::Error> {
    let tasks: Vec<RedisTask> = items
        .iter()
        .map(|p| {
            let bytes = serde_json::to_vec(&p.envelope).expect("envelopes serialize");
            TaskBuilder::new(bytes)
                .task_id(TaskId::from_string(p.task_id.clone()))
                .attempt(0)
                .run_at_timestamp(p.run_at.timestamp().max(0) as u64)
                .build()
        })
        .collect();
    apalis_redis::queries::push_tasks(conn, config, &tasks).await
}

/// How many jobs of a queue Redis holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    pub scheduled: u64,
    pub ready: u64,
    pub dead: u64,
    pub done: u64,
}

impl Depth {
    /// Jobs that will still be fetched: the quantity the relay keeps bounded.
    pub fn waiting(&self) -> u64 {
        self.scheduled + self.ready
    }
}

pub async fn depth<C: ConnectionLike>(
    conn: &mut C,
    config: &StorageConfig,
) -> redis::RedisResult<Depth> {
    let (scheduled, ready, dead, done): (u64, u64, u64, u64) = redis::pipe()
        .zcard(config.scheduled_jobs_set())
        .llen(config.active_jobs_list())
        .scard(config.dead_jobs_set())
        .scard(config.done_jobs_set())
        .query_async(conn)
        .await?;
    Ok(Depth {
        scheduled,
        ready,
        dead,
        done,
    })
}

/// How long a process may stay silent before its in-flight jobs go back to
/// the queue (heartbeat interval × missed heartbeats).
pub fn orphan_after(heartbeat: Duration, missed: usize) -> Duration {
    heartbeat * missed as u32
}

/// Where Redis holds a job of a queue, as the reconciler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Scheduled, ready, fetched by a registered worker, or in apalis's own
    /// dead set: it will run (or be recorded) from there.
    Held,
    /// Finished: the handler reported success.
    Done,
    /// Nowhere a worker will find it (Redis lost it, or it sits in the
    /// in-flight set of a worker that is gone and deregistered).
    Lost,
}

const PRESENCE: &str = r"
-- KEYS: scheduled, active, done, dead, workers, inflight prefix, data hash
-- ARGV: task ids. Returns per id 1 held, 2 done, 0 lost.
local active = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do active[id] = true end
local workers = redis.call('ZRANGE', KEYS[5], 0, -1)
local out = {}
for i, id in ipairs(ARGV) do
  local state = 0
  if redis.call('SISMEMBER', KEYS[3], id) == 1 then
    state = 2
  elseif redis.call('HEXISTS', KEYS[7], id) == 1 then
    if active[id] or redis.call('ZSCORE', KEYS[1], id)
        or redis.call('SISMEMBER', KEYS[4], id) == 1 then
      state = 1
    else
      for _, w in ipairs(workers) do
        if redis.call('SISMEMBER', KEYS[6] .. ':' .. w, id) == 1 then
          state = 1
          break
        end
      end
    end
  end
  out[i] = state
end
return out
";

/// Where Redis holds each of `task_ids`: a job in the done set is done (a
/// finished job's payload leaves Redis once its row is closed); any other job
/// whose data Redis lost is lost wherever its id still is.
pub async fn presence<C: ConnectionLike>(
    conn: &mut C,
    config: &StorageConfig,
    task_ids: &[String],
) -> redis::RedisResult<Vec<Presence>> {
    if task_ids.is_empty() {
        return Ok(Vec::new());
    }
    let codes: Vec<i64> = redis::Script::new(PRESENCE)
        .key(config.scheduled_jobs_set())
        .key(config.active_jobs_list())
        .key(config.done_jobs_set())
        .key(config.dead_jobs_set())
        .key(config.workers_set())
        .key(config.inflight_jobs_set())
        .key(config.job_data_hash())
        .arg(task_ids)
        .invoke_async(conn)
        .await?;
    Ok(codes
        .into_iter()
        .map(|c| match c {
            1 => Presence::Held,
            2 => Presence::Done,
            _ => Presence::Lost,
        })
        .collect())
}

const DROP_FINISHED: &str = r"
-- KEYS: done set, data hash, meta prefix. ARGV: task ids.
-- Returns per id 1 when its payload went (it is done), 0 when it is not done.
local out = {}
for i, id in ipairs(ARGV) do
  if redis.call('SISMEMBER', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3] .. ':' .. id, 'result', 'attempts', 'max_attempts', 'idempotency_key')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
";

/// Removes the payloads of finished jobs from the queue's data hash, with the
/// fields of their metadata nothing reads once a job is done (its result,
/// attempts, max attempts and idempotency key; its status and `done_at`
/// stay), in one call. Only a job in the done set loses them: one not yet
/// acknowledged could still be handed back to the queue, and a worker must
/// never fetch an id without its data. Returns per id whether it went.
///
/// The outbox row of each job must be closed first: the relay pushes only
/// open rows, so no push can bring a closed job back once its data is gone.
pub async fn drop_finished_payloads<C: ConnectionLike>(
    conn: &mut C,
    config: &StorageConfig,
    task_ids: &[&str],
) -> redis::RedisResult<Vec<bool>> {
    if task_ids.is_empty() {
        return Ok(Vec::new());
    }
    let codes: Vec<i64> = redis::Script::new(DROP_FINISHED)
        .key(config.done_jobs_set())
        .key(config.job_data_hash())
        .key(config.job_meta_hash())
        .arg(task_ids)
        .invoke_async(conn)
        .await?;
    Ok(codes.into_iter().map(|c| c == 1).collect())
}

const HAND_BACK: &str = r"
-- KEYS: in-flight set, active list, signal list. Returns how many moved.
local ids = redis.call('SMEMBERS', KEYS[1])
if #ids == 0 then return 0 end
for i = 1, #ids, 500 do
  redis.call('LPUSH', KEYS[2], unpack(ids, i, math.min(i + 499, #ids)))
end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[3], 1)
return #ids
";

/// Moves every job in the in-flight set of `worker` back to the front of
/// the queue's ready list, for any worker to fetch at once; returns how many.
pub async fn hand_back<C: ConnectionLike>(
    conn: &mut C,
    config: &StorageConfig,
    worker: &str,
) -> redis::RedisResult<u64> {
    redis::Script::new(HAND_BACK)
        .key(format!("{}:{worker}", config.inflight_jobs_set()))
        .key(config.active_jobs_list())
        .key(config.signal_list())
        .invoke_async(conn)
        .await
}
