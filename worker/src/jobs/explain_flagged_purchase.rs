//! `ExplainFlaggedPurchase`: asks the fraud explainer about one flagged
//! reward (see `clicknback_core::services::explanations`). An outage (a
//! timeout, a 5xx, the breaker open) is retried under the job's policy; after
//! the last attempt, or on a refusal for good, the explanation is `failed`.

use clicknback_core::{
    jobs::{ExplainFlaggedPurchase, Job},
    services::explanations::{self, ExplainError, ExplanationStatus},
};

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for ExplainFlaggedPurchase {
    async fn run(self, ctx: SharedCtx, meta: JobMeta) -> JobResult {
        let id = self.reward_id;
        let Some(explainer) = ctx.explainer.as_deref() else {
            let mut conn = ctx.db.get().await?;
            explanations::give_up(&mut conn, id, ExplanationStatus::Disabled).await?;
            tracing::info!(reward.id = %id, "no fraud explainer is configured; explanation disabled");
            return Ok(());
        };
        let last = ctx
            .jobs
            .get(Self::NAME)
            .is_none_or(|j| !j.retry.allows_retry_after(meta.attempt.max(1) as u32));
        match explanations::explain(&ctx.db, explainer, id).await {
            Ok(_) => Ok(()),
            Err(ExplainError::NotFound) => Err(JobError::permanent(anyhow::anyhow!(
                "reward {id} does not exist"
            ))),
            Err(ExplainError::Explainer(e)) if e.is_retryable() && !last => Err(JobError::retry(e)),
            Err(ExplainError::Explainer(e)) => {
                let mut conn = ctx.db.get().await?;
                explanations::give_up(&mut conn, id, ExplanationStatus::Failed).await?;
                Err(JobError::permanent(e))
            }
            Err(e) => Err(JobError::retry(e)),
        }
    }
}
