//! Closes the outbox rows of finished jobs in batches, then drops their
//! payloads from Redis.
//!
//! A job that succeeded hands its queue and task id to the closer and is
//! acknowledged in Redis at once; the closer writes one
//! `UPDATE ... WHERE task_id = ANY` per batch, when it holds `JOB_CLOSE_BATCH`
//! ids (500) or `JOB_CLOSE_LINGER_MS` (5 ms) after the first id of the batch
//! arrived, whichever comes first, and once more on shutdown. Each row is
//! closed with the time its job finished, not the time of the batch.
//! One statement per batch instead of one per job is what lets a worker drain
//! at Redis speed.
//!
//! Once PostgreSQL has taken a batch, the jobs' payloads leave Redis: one
//! script per queue removes each job's field from the queue's data hash, and
//! the fields of its metadata nothing reads once it is done, keeping its
//! status, `done_at` (retention and the ops views read them) and its place in
//! the done set. PostgreSQL's outbox row is the record of what ran. Only a
//! job already in the done set loses its payload: one whose acknowledgement
//! has not reached Redis yet could still be handed back to the queue (a
//! shutdown, a crash), and a worker must never fetch an id without its data.
//! Those are tried again shortly after ([`LATER_EVERY`], at most
//! [`LATER_TRIES`] times); one still not done by then keeps its payload until
//! retention removes the job. A failure here is logged and counted, never
//! fails the close.
//!
//! Nothing is lost when a batch is never written (the process dies before the
//! flush, or PostgreSQL refuses it): Redis holds those jobs as done, with
//! their payloads, and the relay's reconciler, which looks at every sent and
//! still open row `JOB_RECOVERY_AFTER_SECS` after it was sent, closes them as
//! done from there. It never runs them again: a job Redis finished is not
//! relayed.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};

use clicknback_core::{
    db::DbPool,
    jobs::Queue,
    models::outbox::{self, Outcome},
    queues,
    redis_conn::RedisHandle,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long after a batch the payloads of its jobs not yet done in Redis are
/// tried again.
pub const LATER_EVERY: Duration = Duration::from_millis(250);
/// How many times they are.
pub const LATER_TRIES: u8 = 8;

/// Where finished jobs' task ids go; cheap to clone.
#[derive(Clone)]
pub struct Closer {
    tx: mpsc::UnboundedSender<Finished>,
}

/// A job that succeeded: its queue, task id, and when it finished (the time
/// its row is closed with, however late the batch is written).
type Finished = (Queue, String, DateTime<Utc>);

/// The closer's task: [`Closer::spawn`] returns it; await it after `stop` is
/// cancelled to have every id received so far written.
pub type CloserTask = tokio::task::JoinHandle<()>;

/// Where the closer drops payloads: the Redis of the queues, and their namespace.
#[derive(Clone)]
pub struct PayloadStore {
    pub redis: RedisHandle,
    pub namespace: String,
}

impl Closer {
    /// Starts the closing task on `db` and `store`. When `stop` is cancelled
    /// it writes what it holds and what is waiting in the channel, then ends.
    pub fn spawn(
        db: DbPool,
        store: PayloadStore,
        max_batch: usize,
        linger: Duration,
        stop: CancellationToken,
    ) -> (Self, CloserTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(db, store, rx, max_batch.max(1), linger, stop));
        (Self { tx }, task)
    }

    /// Hands over the task id of a job of `queue` that succeeded; its row is
    /// closed as done with the next batch, and its payload then leaves Redis.
    /// After the closer stopped, the reconciler closes it.
    pub fn done(&self, queue: Queue, task_id: &str) {
        if self
            .tx
            .send((queue, task_id.to_owned(), Utc::now()))
            .is_err()
        {
            tracing::debug!(job_id = %task_id, "the closer has stopped; the reconciler closes this row");
        }
    }
}

/// Jobs whose rows are closed and whose payloads are still to drop, with how
/// many times that was tried.
type Later = Vec<(Queue, String, u8)>;

async fn run(
    db: DbPool,
    store: PayloadStore,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    max_batch: usize,
    linger: Duration,
    stop: CancellationToken,
) {
    let mut batch: Vec<Finished> = Vec::with_capacity(max_batch);
    let mut later: Later = Vec::new();
    loop {
        // The first id of a batch (or, while some payloads wait, their retry).
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, max_batch) => n,
            _ = tokio::time::sleep(LATER_EVERY), if !later.is_empty() => {
                later = drop_payloads(&store, std::mem::take(&mut later)).await;
                continue;
            }
            _ = stop.cancelled() => 0,
        };
        if got == 0 {
            break;
        }
        // Then what arrives until the batch is full or has lingered enough.
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max_batch {
            let room = max_batch - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.cancelled() => break,
            }
        }
        flush(&db, &store, &mut batch, &mut later).await;
    }
    // Shutting down: everything already handed over.
    while let Ok(item) = rx.try_recv() {
        batch.push(item);
        if batch.len() >= max_batch {
            flush(&db, &store, &mut batch, &mut later).await;
        }
    }
    flush(&db, &store, &mut batch, &mut later).await;
    // The last acknowledgements have reached Redis by now (the workers have
    // stopped): one more try for what was waiting.
    if !later.is_empty() {
        later = drop_payloads(&store, later).await;
    }
    if !later.is_empty() {
        metrics::counter!("job_payloads_kept_total").increment(later.len() as u64);
    }
}

async fn flush(db: &DbPool, store: &PayloadStore, batch: &mut Vec<Finished>, later: &mut Later) {
    if batch.is_empty() {
        return;
    }
    let runs: Vec<(&str, DateTime<Utc>)> =
        batch.iter().map(|(_, id, at)| (id.as_str(), *at)).collect();
    let result = match db.get().await {
        Ok(mut conn) => outbox::finish_at(&mut conn, &runs, Outcome::Done)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(_) => {
            metrics::histogram!("outbox_close_batch_size").record(batch.len() as f64);
            // PostgreSQL has the record: the payloads can go (with those of
            // earlier batches still waiting for their acknowledgement).
            let mut jobs: Later = std::mem::take(later);
            jobs.extend(batch.drain(..).map(|(q, id, _)| (q, id, 0)));
            *later = drop_payloads(store, jobs).await;
        }
        Err(e) => {
            // The rows stay open, so the payloads stay: the reconciler
            // closes these from Redis.
            metrics::counter!("outbox_close_failures_total").increment(batch.len() as u64);
            tracing::warn!(error = %e, jobs = batch.len(), "jobs succeeded but their outbox rows could not be closed; the reconciler closes them");
        }
    }
    batch.clear();
}

/// One queue's jobs with their tries.
type QueueJobs = (Queue, Vec<(String, u8)>);

/// Drops the payloads of `jobs` (rows closed) from Redis, one script per
/// queue; returns those to try again (not done in Redis yet, or Redis
/// failed), each with one more try, less those out of tries.
async fn drop_payloads(store: &PayloadStore, jobs: Later) -> Later {
    let mut by_queue: BTreeMap<&'static str, QueueJobs> = BTreeMap::new();
    for (q, id, tries) in jobs {
        by_queue
            .entry(q.as_str())
            .or_insert_with(|| (q, Vec::new()))
            .1
            .push((id, tries));
    }
    let mut again: Later = Vec::new();
    let mut conn = match store.redis.get().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "redis unreachable; finished jobs keep their payloads for now");
            None
        }
    };
    for (_, (queue, items)) in by_queue {
        let cfg = queues::storage_config(&store.namespace, queue);
        let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
        let outcome = match conn.as_mut() {
            Some(c) => queues::drop_finished_payloads(c, &cfg, &ids)
                .await
                .map_err(|e| e.to_string()),
            None => Err("redis unreachable".to_owned()),
        };
        let dropped: Vec<bool> = match outcome {
            Ok(d) => {
                let n = d.iter().filter(|x| **x).count();
                metrics::counter!("job_payloads_dropped_total", "queue" => queue.as_str())
                    .increment(n as u64);
                d
            }
            Err(e) => {
                metrics::counter!("job_payload_drop_failures_total", "queue" => queue.as_str())
                    .increment(items.len() as u64);
                tracing::warn!(error = %e, queue = queue.as_str(), jobs = items.len(), "could not drop finished jobs' payloads from Redis; retention removes them");
                vec![false; items.len()]
            }
        };
        for ((id, tries), dropped) in items.into_iter().zip(dropped) {
            if dropped {
                continue;
            }
            if tries + 1 >= LATER_TRIES {
                metrics::counter!("job_payloads_kept_total").increment(1);
                tracing::debug!(job_id = %id, "finished job keeps its payload in Redis until retention");
            } else {
                again.push((queue, id, tries + 1));
            }
        }
    }
    again
}
