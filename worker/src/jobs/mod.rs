//! Job handlers: one file per job type, implementing [`JobHandler`] for the
//! job's payload (declared with its name, queue and retry policy in
//! `clicknback_core::jobs`), and one line in [`registry`]. Each is thin: call
//! a core service, map the error to "retry" or "permanent". The runner
//! ([`crate::runtime`]) owns decoding, retries, dead jobs, metrics and logs.

pub mod apply_reward_transition;
pub mod attribute_purchase;
pub mod canary;
pub mod explain_flagged_purchase;
pub mod process_payout;
pub mod recompute_user_stats;
pub mod run_schedule;
pub mod send_email;

use std::future::Future;

use clicknback_core::jobs::{
    ApplyRewardTransition, AttributePurchase, Canary, ExplainFlaggedPurchase, Job, ProcessPayout,
    RecomputeUserStats, RunSchedule, SendEmail,
};

use crate::{registry::Registry, runtime::SharedCtx};

/// Every job type the worker runs.
pub fn registry() -> Registry {
    Registry::default()
        .register::<AttributePurchase>()
        .register::<ApplyRewardTransition>()
        .register::<SendEmail>()
        .register::<ProcessPayout>()
        .register::<RecomputeUserStats>()
        .register::<RunSchedule>()
        .register::<Canary>()
        .register::<ExplainFlaggedPurchase>()
}

/// What a job does when it runs.
pub trait JobHandler: Job {
    fn run(self, ctx: SharedCtx, meta: JobMeta) -> impl Future<Output = JobResult> + Send;
}

/// What the runner knows of a run besides the payload.
#[derive(Debug, Clone, Copy)]
pub struct JobMeta {
    /// 1 for the first run, counting retries (a re-queued dead job starts again at 1).
    pub attempt: i32,
}

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
