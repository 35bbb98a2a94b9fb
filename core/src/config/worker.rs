//! How the worker runs jobs.

use std::time::Duration;

use super::env::{ConfigError, Env};

/// How the worker runs jobs. Each job type's retry policy and each
/// schedule's cron expression are declared with the job or schedule itself;
/// their overrides (`JOB_RETRY_<JOB>`, `SCHEDULE_<NAME>`) are read by the
/// worker at start, through [`Env`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Workers heartbeat this often; a worker silent for
    /// `heartbeat × missed_heartbeats` has its in-flight jobs re-queued.
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    /// How often an idle worker asks Redis for due jobs.
    pub poll_interval: Duration,
    pub fetch_batch: usize,
    /// Concurrency per queue, in `Queue::ALL` order.
    pub concurrency: Vec<(crate::jobs::Queue, usize)>,
    /// How long running jobs may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Completed jobs are removed from Redis after this long.
    pub job_retention: Duration,
    /// And beyond the newest this many of each queue, whatever their age.
    pub job_retention_count: usize,
    /// Finished outbox rows are deleted after this long (open ones stay).
    pub outbox_retention: Duration,
    /// The rows of jobs that succeeded are closed in batches of at most this
    /// many task ids...
    pub close_batch: usize,
    /// ...written at the latest this long after the first id of the batch.
    pub close_linger: Duration,
}

impl WorkerConfig {
    pub fn concurrency_of(&self, q: crate::jobs::Queue) -> usize {
        self.concurrency
            .iter()
            .find(|(x, _)| *x == q)
            .map(|(_, n)| *n)
            .unwrap_or(1)
    }
}

/// Default concurrency per queue.
const DEFAULT_CONCURRENCY: &[(crate::jobs::Queue, &str, u64)] = &[
    (
        crate::jobs::Queue::Attribution,
        "QUEUE_CONCURRENCY_ATTRIBUTION",
        8,
    ),
    (crate::jobs::Queue::Rewards, "QUEUE_CONCURRENCY_REWARDS", 8),
    (crate::jobs::Queue::Emails, "QUEUE_CONCURRENCY_EMAILS", 4),
    (crate::jobs::Queue::Payouts, "QUEUE_CONCURRENCY_PAYOUTS", 4),
    (crate::jobs::Queue::Stats, "QUEUE_CONCURRENCY_STATS", 4),
    (
        crate::jobs::Queue::Maintenance,
        "QUEUE_CONCURRENCY_MAINTENANCE",
        16,
    ),
    (
        crate::jobs::Queue::Explanations,
        "QUEUE_CONCURRENCY_EXPLANATIONS",
        2,
    ),
];

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<WorkerConfig, ConfigError> {
    let mut concurrency = Vec::new();
    for (q, var, default) in DEFAULT_CONCURRENCY {
        concurrency.push((*q, env.int_in(var, *default, 1..=1_000)? as usize));
    }
    Ok(WorkerConfig {
        heartbeat: env.secs("JOB_HEARTBEAT_SECS", 5, 1..=300)?,
        missed_heartbeats: env.int_in("JOB_MISSED_HEARTBEATS", 3, 2..=100)? as usize,
        poll_interval: env.millis("JOB_POLL_INTERVAL_MS", 200, 10..=30_000)?,
        fetch_batch: env.int_in("JOB_FETCH_BATCH", 100, 1..=500)? as usize,
        concurrency,
        shutdown_grace: env.secs("SHUTDOWN_GRACE_SECS", 30, 0..=3_600)?,
        job_retention: env.secs("JOB_RETENTION_SECS", 3_600, 10..=2_592_000)?,
        job_retention_count: env.int_in("JOB_RETENTION_COUNT", 5_000, 0..=10_000_000)? as usize,
        outbox_retention: env.secs("OUTBOX_RETENTION_SECS", 86_400, 60..=2_592_000)?,
        close_batch: env.int_in("JOB_CLOSE_BATCH", 500, 1..=10_000)? as usize,
        close_linger: env.millis("JOB_CLOSE_LINGER_MS", 5, 0..=600_000)?,
    })
}
