//! `AttributePurchase`: the delayed attribution of one purchase.

use clicknback_core::{
    jobs::AttributePurchase,
    services::{
        attribution::{self, AttributionError, Outcome},
        rewards::RewardError,
    },
};

use super::{JobError, JobResult};
use crate::runtime::Ctx;

pub async fn run(ctx: &Ctx, job: AttributePurchase) -> JobResult {
    let mut conn = ctx.db.get().await?;
    let (cfg, fraud) = (&ctx.config.attribution, ctx.fraud.as_ref());
    let result = if job.reattribute {
        attribution::reattribute(&mut conn, job.purchase_id, cfg, fraud, &ctx.cache).await
    } else {
        attribution::attribute(&mut conn, job.purchase_id, cfg, fraud, &ctx.cache).await
    };
    match result {
        Ok(Outcome::Rewarded {
            reward_id,
            amount_minor,
            flagged,
        }) => {
            tracing::info!(purchase.id = %job.purchase_id, reward.id = %reward_id, cashback.minor = amount_minor, flagged, "purchase attributed");
            Ok(())
        }
        Ok(Outcome::Waiting { recheck_at }) => {
            tracing::info!(purchase.id = %job.purchase_id, %recheck_at, "no user linked yet; the sweeper looks again later");
            Ok(())
        }
        Ok(Outcome::Unattributed { reason }) => {
            tracing::info!(purchase.id = %job.purchase_id, reason, "purchase unattributed");
            Ok(())
        }
        Ok(Outcome::AlreadyProcessed) => Ok(()),
        Err(AttributionError::NotFound) => Err(JobError::permanent(anyhow::anyhow!(
            "purchase {} does not exist",
            job.purchase_id
        ))),
        Err(e @ AttributionError::Reward(RewardError::IllegalTransition { .. })) => {
            Err(JobError::permanent(e))
        }
        Err(e) => Err(JobError::retry(e)),
    }
}
