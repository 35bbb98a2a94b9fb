//! The outbox relay: moves due outbox rows into the apalis Redis queues.
//!
//! Per queue and pass, in one PostgreSQL transaction: take the queue's relay
//! lock (so runs for a queue never overlap, whatever the number of replicas),
//! measure how many jobs Redis already holds for it, claim at most that much
//! room of due rows with `FOR UPDATE SKIP LOCKED`, push them in one bulk call
//! and stamp them sent. A failed push touches only the claimed rows: their
//! attempt count, last error and a backed-off `next_attempt_at`. A crash
//! between push and commit re-pushes the same task ids, which Redis ignores.
//!
//! Before it claims, the pass reconciles: sent rows still open (their job's
//! outcome not yet recorded) are looked for in Redis `JOB_RECOVERY_AFTER_SECS`
//! after they were sent, and every as long after that. One Redis finished is
//! closed as done; one Redis no longer holds anywhere a worker will find it
//! (a flushed or replaced Redis, an in-flight set nobody will recover) has
//! its leftovers removed and is relayed again in this same pass. Jobs are
//! idempotent, so a job relayed again after it ran changes nothing.

use std::time::Duration;

use chrono::Utc;
use clicknback_core::{
    config::RelayConfig,
    db::{self, DbPool},
    jobs::{JobEnvelope, Queue},
    models::outbox::Outcome,
    models::outbox::{self, OutboxRow},
    queues::{self, Presence, Push},
    redis_conn::RedisHandle,
};
use diesel_async::AsyncConnection;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Relay {
    db: DbPool,
    redis: RedisHandle,
    namespace: String,
    cfg: RelayConfig,
}

/// What one pass over one queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueuePass {
    pub pushed: usize,
    pub failed: usize,
    /// Another relay held the queue, or Redis had no room.
    pub skipped: bool,
    /// Sent rows Redis had lost, relayed again.
    pub recovered: usize,
}

#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error("redis: {0}")]
    Redis(String),
}

/// Delay before a failed row is tried again: 1 s doubling per failure, capped,
/// with up to 20 % jitter so rows of many batches do not retry in lockstep.
pub fn row_backoff(relay_attempts: i32, cap: Duration) -> Duration {
    let exp = relay_attempts.clamp(0, 20) as u32;
    let base = Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(exp))
        .min(cap);
    let jitter = base.mul_f64(rand_fraction() * 0.2);
    base.saturating_sub(jitter)
}

fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64);
    (h.finish() % 10_000) as f64 / 10_000.0
}

impl Relay {
    pub fn new(db: DbPool, redis: RedisHandle, namespace: String, cfg: RelayConfig) -> Self {
        Self {
            db,
            redis,
            namespace,
            cfg,
        }
    }

    /// Runs until `shutdown`, sleeping between empty passes and backing off
    /// while PostgreSQL or Redis fail.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            batch = self.cfg.batch_size,
            bound = self.cfg.queue_bound,
            "outbox relay started"
        );
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let pause = match self.pass().await {
                Ok(moved) if moved > 0 => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    self.cfg.poll_interval
                }
                Err(e) => {
                    failures += 1;
                    let pause = row_backoff(failures as i32, self.cfg.max_backoff);
                    tracing::warn!(error = %e, failures, retry_in_ms = pause.as_millis() as u64, "outbox relay pass failed");
                    pause
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// One pass over every queue; returns how many rows were pushed.
    pub async fn pass(&self) -> anyhow::Result<usize> {
        let mut moved = 0;
        let mut first_error = None;
        for queue in Queue::ALL {
            match self.pass_queue(queue).await {
                Ok(p) => moved += p.pushed,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if moved == 0 => Err(e),
            _ => Ok(moved),
        }
    }

    pub async fn pass_queue(&self, queue: Queue) -> anyhow::Result<QueuePass> {
        let mut conn = self.db.get().await?;
        let config = queues::storage_config(&self.namespace, queue);
        let redis = self.redis.clone();
        let cfg = self.cfg.clone();
        let namespace = self.namespace.clone();
        let lock = db::lock_key(&format!(
            "outbox-relay:{}:{}",
            self.namespace,
            queue.as_str()
        ));
        let (result, redis_error) = conn
            .transaction::<(QueuePass, Option<String>), PassError, _>(async move |conn| {
                if !db::try_xact_lock(conn, lock).await? {
                    return Ok((
                        QueuePass {
                            skipped: true,
                            ..Default::default()
                        },
                        None,
                    ));
                }
                let mut rconn = redis
                    .get()
                    .await
                    .map_err(|e| PassError::Redis(e.to_string()))?;
                let depth = queues::depth(&mut rconn, &config)
                    .await
                    .map_err(|e| PassError::Redis(e.to_string()))?;
                metrics::gauge!("queue_depth", "queue" => queue.as_str(), "state" => "scheduled")
                    .set(depth.scheduled as f64);
                metrics::gauge!("queue_depth", "queue" => queue.as_str(), "state" => "ready")
                    .set(depth.ready as f64);
                let recovered =
                    reconcile(conn, &mut rconn, &namespace, &config, queue, &cfg).await?;
                let room = cfg.queue_bound.saturating_sub(depth.waiting()) as i64;
                if room == 0 {
                    return Ok((
                        QueuePass {
                            skipped: true,
                            recovered,
                            ..Default::default()
                        },
                        None,
                    ));
                }
                let now = Utc::now();
                let horizon = now + chrono::Duration::from_std(cfg.lookahead).unwrap_or_default();
                let limit = room.min(cfg.batch_size);
                let rows = outbox::claim_due(conn, queue, horizon, now, limit).await?;
                if rows.is_empty() {
                    return Ok((
                        QueuePass {
                            recovered,
                            ..Default::default()
                        },
                        None,
                    ));
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let pushes: Vec<Push> = rows.iter().map(to_push).collect();
                match queues::push(&mut rconn, &config, &pushes).await {
                    Ok(_) => {
                        outbox::mark_sent(conn, &ids).await?;
                        Ok((
                            QueuePass {
                                pushed: ids.len(),
                                recovered,
                                ..Default::default()
                            },
                            None,
                        ))
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for r in &rows {
                            let wait = row_backoff(r.relay_attempts, cfg.max_backoff);
                            let next =
                                Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                            outbox::mark_relay_failed(conn, r, &message, next).await?;
                        }
                        Ok((
                            QueuePass {
                                failed: ids.len(),
                                recovered,
                                ..Default::default()
                            },
                            Some(message),
                        ))
                    }
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{} relay: {e}", queue.as_str()))?;
        if result.pushed > 0 {
            metrics::counter!("outbox_relayed_total", "queue" => queue.as_str())
                .increment(result.pushed as u64);
            tracing::debug!(
                queue = queue.as_str(),
                rows = result.pushed,
                "outbox rows pushed"
            );
        }
        if result.recovered > 0 {
            metrics::counter!("jobs_recovered_total", "queue" => queue.as_str())
                .increment(result.recovered as u64);
            tracing::warn!(
                queue = queue.as_str(),
                jobs = result.recovered,
                "jobs open in PostgreSQL were missing from Redis; relayed again"
            );
        }
        if let Some(e) = redis_error {
            metrics::counter!("outbox_relay_failures_total", "queue" => queue.as_str())
                .increment(result.failed as u64);
            anyhow::bail!(
                "{} relay: push of {} rows failed: {e}",
                queue.as_str(),
                result.failed
            );
        }
        Ok(result)
    }
}

/// Rows checked per queue and pass by the reconciler.
const VERIFY_BATCH: i64 = 500;

/// Looks for the sent, open rows of `queue` that are due for it in Redis:
/// closes the ones Redis finished, checks the held ones again later, and
/// reopens the lost ones (after removing what Redis kept of them) so this
/// pass relays them again. Returns how many were reopened.
async fn reconcile<C: redis::aio::ConnectionLike>(
    conn: &mut diesel_async::AsyncPgConnection,
    rconn: &mut C,
    namespace: &str,
    config: &apalis_redis::Config,
    queue: Queue,
    cfg: &RelayConfig,
) -> Result<usize, PassError> {
    let seen_before =
        Utc::now() - chrono::Duration::from_std(cfg.recovery_after).unwrap_or_default();
    let due = outbox::due_for_verification(conn, queue, seen_before, VERIFY_BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let task_ids: Vec<String> = due.iter().map(|(_, t)| t.clone()).collect();
    let found = queues::presence(rconn, config, &task_ids)
        .await
        .map_err(|e| PassError::Redis(e.to_string()))?;
    let (mut held, mut done, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    for ((id, task_id), p) in due.into_iter().zip(found) {
        match p {
            Presence::Held => held.push(id),
            Presence::Done => done.push(id),
            Presence::Lost => lost.push((id, task_id)),
        }
    }
    outbox::verified(conn, &held).await?;
    outbox::finish_ids(conn, &done, Outcome::Done).await?;
    for (_, task_id) in &lost {
        clicknback_core::services::ops::delete_from_redis(rconn, namespace, queue, task_id)
            .await
            .map_err(|e| PassError::Redis(e.to_string()))?;
        tracing::info!(job_id = %task_id, queue = queue.as_str(), "job open in PostgreSQL is missing from Redis; relaying it again");
    }
    let ids: Vec<i64> = lost.iter().map(|(id, _)| *id).collect();
    outbox::reopen(conn, &ids).await?;
    Ok(ids.len())
}

fn to_push(r: &OutboxRow) -> Push {
    Push {
        task_id: r.task_id.clone(),
        envelope: JobEnvelope {
            job: r.payload["job"].as_str().unwrap_or_default().to_owned(),
            payload: r.payload["data"].clone(),
            attempt: r.attempt,
            task_id: r.task_id.clone(),
            enqueued_at: r.created_at,
        },
        run_at: r.run_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(30);
        assert!(row_backoff(0, cap) <= Duration::from_secs(1));
        assert!(row_backoff(3, cap) >= Duration::from_millis(6_400));
        assert!(row_backoff(30, cap) <= cap);
        assert!(row_backoff(30, cap) >= Duration::from_secs(24));
    }
}
