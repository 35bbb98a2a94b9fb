//! `AttributePurchase`: the delayed attribution of one purchase.

use clicknback_core::{
    jobs::AttributePurchase,
    services::{
        attribution::{self, AttributionError, Outcome},
        rewards::RewardError,
    },
};

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for AttributePurchase {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let mut conn = ctx.db.get().await?;
        let (cfg, fraud) = (&ctx.config.attribution, ctx.fraud.as_ref());
        let result = if self.reattribute {
            attribution::reattribute(&mut conn, self.purchase_id, cfg, fraud, &ctx.cache).await
        } else {
            attribution::attribute(&mut conn, self.purchase_id, cfg, fraud, &ctx.cache).await
        };
        match result {
            Ok(Outcome::Rewarded {
                reward_id,
                amount_minor,
                flagged,
            }) => {
                tracing::info!(purchase.id = %self.purchase_id, reward.id = %reward_id, cashback.minor = amount_minor, flagged, "purchase attributed");
                Ok(())
            }
            Ok(Outcome::Waiting { recheck_at }) => {
                tracing::info!(purchase.id = %self.purchase_id, %recheck_at, "no user linked yet; the sweeper looks again later");
                Ok(())
            }
            Ok(Outcome::Unattributed { reason }) => {
                tracing::info!(purchase.id = %self.purchase_id, reason, "purchase unattributed");
                Ok(())
            }
            Ok(Outcome::AlreadyProcessed) => Ok(()),
            Err(AttributionError::NotFound) => Err(JobError::permanent(anyhow::anyhow!(
                "purchase {} does not exist",
                self.purchase_id
            ))),
            Err(e @ AttributionError::Reward(RewardError::IllegalTransition { .. })) => {
                Err(JobError::permanent(e))
            }
            Err(e) => Err(JobError::retry(e)),
        }
    }
}
