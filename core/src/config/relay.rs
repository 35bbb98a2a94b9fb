//! The outbox relay.

use std::time::Duration;

use super::env::{ConfigError, Env};

/// How the outbox relay moves rows into Redis.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    /// Upper bound on jobs held in Redis per queue (scheduled + ready); the
    /// outbox keeps the rest until there is room.
    pub queue_bound: u64,
    /// Rows due further ahead than this stay in the outbox.
    pub lookahead: Duration,
    /// A relayed job still open in PostgreSQL is looked for in Redis this
    /// long after it was sent (and again every as long while Redis holds
    /// it); one Redis no longer holds is relayed again.
    pub recovery_after: Duration,
}

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<RelayConfig, ConfigError> {
    Ok(RelayConfig {
        batch_size: env.int_in("OUTBOX_BATCH_SIZE", 2_000, 1..=10_000)? as i64,
        poll_interval: env.millis("OUTBOX_POLL_INTERVAL_MS", 200, 10..=60_000)?,
        max_backoff: env.secs("OUTBOX_MAX_BACKOFF_SECS", 30, 1..=3_600)?,
        queue_bound: env.int_in("QUEUE_MAX_IN_REDIS", 5_000, 100..=7_000)?,
        lookahead: env.secs("OUTBOX_LOOKAHEAD_SECS", 300, 0..=86_400)?,
        recovery_after: env.secs("JOB_RECOVERY_AFTER_SECS", 30, 1..=86_400)?,
    })
}
