//! Closes the outbox rows of finished jobs in batches.
//!
//! A job that succeeded hands its task id to the closer and is acknowledged
//! in Redis at once; the closer writes one `UPDATE ... WHERE task_id = ANY`
//! per batch, when it holds `JOB_CLOSE_BATCH` ids (500) or `JOB_CLOSE_LINGER_MS`
//! (5 ms) after the first id of the batch arrived, whichever comes first, and
//! once more on shutdown.
//! One statement per batch instead of one per job is what lets a worker drain
//! at Redis speed.
//!
//! Nothing is lost when a batch is never written (the process dies before the
//! flush, or PostgreSQL refuses it): Redis holds those jobs as done, and the
//! relay's reconciler, which looks at every sent and still open row
//! `JOB_RECOVERY_AFTER_SECS` after it was sent, closes them as done from
//! there. It never runs them again: a job Redis finished is not relayed.

use std::time::Duration;

use clicknback_core::{
    db::DbPool,
    models::outbox::{self, Outcome},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where finished jobs' task ids go; cheap to clone.
#[derive(Clone)]
pub struct Closer {
    tx: mpsc::UnboundedSender<String>,
}

/// The closer's task: [`Closer::spawn`] returns it; await it after `stop` is
/// cancelled to have every id received so far written.
pub type CloserTask = tokio::task::JoinHandle<()>;

impl Closer {
    /// Starts the closing task on `db`. When `stop` is cancelled it writes
    /// what it holds and what is waiting in the channel, then ends.
    pub fn spawn(
        db: DbPool,
        max_batch: usize,
        linger: Duration,
        stop: CancellationToken,
    ) -> (Self, CloserTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(db, rx, max_batch.max(1), linger, stop));
        (Self { tx }, task)
    }

    /// Hands over the task id of a job that succeeded; its row is closed as
    /// done with the next batch. After the closer stopped, the reconciler
    /// closes it.
    pub fn done(&self, task_id: &str) {
        if self.tx.send(task_id.to_owned()).is_err() {
            tracing::debug!(job_id = %task_id, "the closer has stopped; the reconciler closes this row");
        }
    }
}

async fn run(
    db: DbPool,
    mut rx: mpsc::UnboundedReceiver<String>,
    max_batch: usize,
    linger: Duration,
    stop: CancellationToken,
) {
    let mut batch: Vec<String> = Vec::with_capacity(max_batch);
    loop {
        // The first id of a batch.
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, max_batch) => n,
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
        flush(&db, &mut batch).await;
    }
    // Shutting down: everything already handed over.
    while let Ok(id) = rx.try_recv() {
        batch.push(id);
        if batch.len() >= max_batch {
            flush(&db, &mut batch).await;
        }
    }
    flush(&db, &mut batch).await;
}

async fn flush(db: &DbPool, batch: &mut Vec<String>) {
    if batch.is_empty() {
        return;
    }
    let result = match db.get().await {
        Ok(mut conn) => outbox::finish_many(&mut conn, batch, Outcome::Done)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(_) => metrics::histogram!("outbox_close_batch_size").record(batch.len() as f64),
        Err(e) => {
            metrics::counter!("outbox_close_failures_total").increment(batch.len() as u64);
            tracing::warn!(error = %e, jobs = batch.len(), "jobs succeeded but their outbox rows could not be closed; the reconciler closes them");
        }
    }
    batch.clear();
}
