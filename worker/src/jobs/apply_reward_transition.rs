//! `ApplyRewardTransition`: a merchant's (or admin's, or the hold period's)
//! confirm or reverse, applied to the purchase's reward in the ledger.

use clicknback_core::{
    jobs::ApplyRewardTransition,
    services::rewards::{self, Decision, RewardError},
};

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for ApplyRewardTransition {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let mut conn = ctx.db.get().await?;
        match rewards::apply_decision(&mut conn, self.purchase_id, self.to).await {
            Ok(Decision::Applied(step)) => {
                tracing::info!(purchase.id = %self.purchase_id, to = self.to.as_str(), source = %self.source, ?step, "reward transition applied");
                Ok(())
            }
            Ok(Decision::Recorded) => {
                tracing::info!(purchase.id = %self.purchase_id, to = self.to.as_str(), "no reward yet; attribution will apply the decision");
                Ok(())
            }
            Ok(Decision::AwaitingReview) => {
                tracing::info!(purchase.id = %self.purchase_id, "reward awaits fraud review; decision recorded");
                Ok(())
            }
            Err(e @ RewardError::IllegalTransition { .. }) => Err(JobError::permanent(e)),
            Err(RewardError::Db(diesel::result::Error::NotFound)) => Err(JobError::permanent(
                anyhow::anyhow!("purchase {} does not exist", self.purchase_id),
            )),
            Err(e) => Err(JobError::retry(e)),
        }
    }
}
