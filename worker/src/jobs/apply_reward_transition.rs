//! `ApplyRewardTransition`: a merchant's (or admin's, or the hold period's)
//! confirm or reverse, applied to the purchase's reward in the ledger.

use clicknback_core::{
    jobs::ApplyRewardTransition,
    services::rewards::{self, Decision, RewardError},
};

use super::{JobError, JobResult};
use crate::runtime::Ctx;

pub async fn run(ctx: &Ctx, job: ApplyRewardTransition) -> JobResult {
    let mut conn = ctx.db.get().await?;
    match rewards::apply_decision(&mut conn, job.purchase_id, job.to).await {
        Ok(Decision::Applied(step)) => {
            tracing::info!(purchase.id = %job.purchase_id, to = job.to.as_str(), source = %job.source, ?step, "reward transition applied");
            Ok(())
        }
        Ok(Decision::Recorded) => {
            tracing::info!(purchase.id = %job.purchase_id, to = job.to.as_str(), "no reward yet; attribution will apply the decision");
            Ok(())
        }
        Ok(Decision::AwaitingReview) => {
            tracing::info!(purchase.id = %job.purchase_id, "reward awaits fraud review; decision recorded");
            Ok(())
        }
        Err(e @ RewardError::IllegalTransition { .. }) => Err(JobError::permanent(e)),
        Err(RewardError::Db(diesel::result::Error::NotFound)) => Err(JobError::permanent(
            anyhow::anyhow!("purchase {} does not exist", job.purchase_id),
        )),
        Err(e) => Err(JobError::retry(e)),
    }
}
