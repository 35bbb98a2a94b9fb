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

/// `<namespace>:<queue>`: the prefix of every key apalis keeps for the queue.
pub fn queue_name(namespace: &str, queue: Queue) -> String {
    format!("{namespace}:{}", queue.as_str())
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
