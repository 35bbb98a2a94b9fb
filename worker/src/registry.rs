//! The job registry: from a job's name (what the outbox and Redis carry) to
//! its queue, its retry policy and a runner that decodes the payload and runs
//! the handler. [`crate::jobs::registry`] fills it; the runtime dispatches
//! through it, and a name it does not hold is a permanent failure.

use std::collections::HashMap;

use clicknback_core::{
    config::{ConfigError, Env},
    jobs::{JobEnvelope, Queue},
    retry::RetryPolicy,
};
use futures::future::BoxFuture;

use crate::{
    jobs::{JobError, JobHandler, JobMeta, JobResult},
    runtime::SharedCtx,
};

type Runner = fn(SharedCtx, &JobEnvelope) -> BoxFuture<'static, JobResult>;

/// One registered job type.
pub struct Registered {
    pub queue: Queue,
    /// Its default policy, or `JOB_RETRY_<JOB>` once [`Registry::configure`]d.
    pub retry: RetryPolicy,
    runner: Runner,
}

impl Registered {
    /// Decodes the envelope's payload and runs the handler; a payload that
    /// does not decode is a permanent failure.
    pub fn run(&self, ctx: SharedCtx, env: &JobEnvelope) -> BoxFuture<'static, JobResult> {
        (self.runner)(ctx, env)
    }
}

#[derive(Default)]
pub struct Registry {
    entries: HashMap<&'static str, Registered>,
}

impl Registry {
    /// Adds a job type under its name, with its queue and default retry policy.
    ///
    /// # Panics
    /// When a job type of that name is already registered.
    pub fn register<J: JobHandler>(mut self) -> Self {
        let previous = self.entries.insert(
            J::NAME,
            Registered {
                queue: J::QUEUE,
                retry: J::RETRY,
                runner: runner::<J>,
            },
        );
        assert!(previous.is_none(), "job type {} registered twice", J::NAME);
        self
    }

    /// Applies every `JOB_RETRY_<JOB>` override, naming the variable of a bad one.
    pub fn configure<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        for (name, entry) in &mut self.entries {
            entry.retry = RetryPolicy::from_env(env, name, entry.retry)?;
        }
        Ok(self)
    }

    pub fn get(&self, job: &str) -> Option<&Registered> {
        self.entries.get(job)
    }

    /// Every registered job name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.keys().copied().collect();
        names.sort_unstable();
        names
    }
}

fn runner<J: JobHandler>(ctx: SharedCtx, env: &JobEnvelope) -> BoxFuture<'static, JobResult> {
    let decoded = serde_json::from_value::<J>(env.payload.clone())
        .map_err(|e| JobError::permanent(anyhow::anyhow!("malformed {} payload: {e}", J::NAME)));
    let meta = JobMeta {
        attempt: env.attempt,
    };
    Box::pin(async move { decoded?.run(ctx, meta).await })
}

#[cfg(test)]
mod tests {
    use clicknback_core::jobs::{Job, SendEmail};

    use super::*;
    use crate::test_env as env;

    #[test]
    fn every_job_is_registered_with_its_queue_and_default_policy() {
        let r = crate::jobs::registry();
        assert_eq!(
            r.names(),
            [
                "ApplyRewardTransition",
                "AttributePurchase",
                "Canary",
                "ExplainFlaggedPurchase",
                "ProcessPayout",
                "RecomputeUserStats",
                "RunSchedule",
                "SendEmail",
            ]
        );
        let email = r.get(SendEmail::NAME).unwrap();
        assert_eq!(
            (email.queue, email.retry),
            (Queue::Emails, SendEmail::RETRY)
        );
        assert!(r.get("NoSuchJob").is_none());
    }

    #[test]
    fn overrides_apply_per_job_and_a_bad_one_names_its_variable() {
        let r = crate::jobs::registry()
            .configure(&env(&[("JOB_RETRY_SEND_EMAIL", "attempts=2,base=1s")]))
            .unwrap();
        let email = r.get(SendEmail::NAME).unwrap().retry;
        assert_eq!(email.max_attempts, 2);
        assert_eq!(email.cap, SendEmail::RETRY.cap);
        let e = crate::jobs::registry()
            .configure(&env(&[("JOB_RETRY_PROCESS_PAYOUT", "jitter=2")]))
            .err()
            .unwrap();
        assert_eq!(e.var, "JOB_RETRY_PROCESS_PAYOUT");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_registers_once() {
        let _ = crate::jobs::registry().register::<SendEmail>();
    }
}
