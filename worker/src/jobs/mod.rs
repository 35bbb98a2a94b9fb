//! Job handlers. Each is thin: decode the payload, call a core service, map
//! the error to "retry" or "permanent". The runner ([`crate::runtime`]) owns
//! retries, dead jobs, metrics and logs.

pub mod apply_reward_transition;
pub mod attribute_purchase;
pub mod canary;
pub mod process_payout;
pub mod recompute_user_stats;
pub mod run_schedule;
pub mod send_email;

/// How a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later (a dependency is down, a lock was busy).
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// Retrying cannot fix it (malformed payload, a row that will never exist).
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Not a failure: the job is kept and looked at again later without
    /// spending an attempt (a paused queue, work another worker holds).
    #[error("{reason}")]
    Defer {
        reason: String,
        after: std::time::Duration,
    },
}

impl JobError {
    pub fn retry(e: impl Into<anyhow::Error>) -> Self {
        JobError::Retry(e.into())
    }
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        JobError::Permanent(e.into())
    }
}

impl From<diesel::result::Error> for JobError {
    fn from(e: diesel::result::Error) -> Self {
        match e {
            diesel::result::Error::NotFound => JobError::Permanent(e.into()),
            other => JobError::Retry(other.into()),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for JobError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        JobError::Retry(e.into())
    }
}

pub type JobResult = Result<(), JobError>;
