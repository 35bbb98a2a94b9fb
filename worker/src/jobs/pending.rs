//! Jobs whose business logic ships in a later version of the worker
//! (attribution, reward transitions, payouts, statistics). They are kept, not
//! dropped: the runner re-enqueues them without spending an attempt.

use super::{JobError, JobResult};

pub fn not_in_this_version(job: &str) -> JobResult {
    Err(JobError::Defer(format!(
        "{job} is not handled by this worker version"
    )))
}
