//! `ApplyRewardTransition`: a merchant's decision was recorded on the
//! purchase (a fact); this settles the purchase's reward to what its facts
//! call for (`rewards::settle`). The payload's `to` is only logged: the
//! recorded facts decide, so a late or repeated job cannot undo a later
//! decision.

use clicknback_core::{
    jobs::ApplyRewardTransition,
    services::rewards::{self, RewardError, Settled},
};

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for ApplyRewardTransition {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let mut conn = ctx.db.get().await?;
        match rewards::settle(&mut conn, self.purchase_id).await {
            Ok(Settled::Reward { from, to }) => {
                tracing::info!(purchase.id = %self.purchase_id, requested = self.to.as_str(), source = %self.source, from = from.as_str(), to = to.as_str(), "reward settled");
                Ok(())
            }
            Ok(Settled::NoReward) => {
                tracing::info!(purchase.id = %self.purchase_id, requested = self.to.as_str(), "no reward yet; attribution settles the recorded decision");
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
