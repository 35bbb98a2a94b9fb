//! `AttributePurchase`: the delayed attribution of one purchase.

use clicknback_core::{
    ids::PurchaseId,
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
            // Other due purchases ride along in this job's transaction; their
            // own jobs then find them processed.
            let others = cfg.batch.saturating_sub(1);
            attribution::attribute_due(&mut conn, self.purchase_id, others, cfg, fraud, &ctx.cache)
                .await
                .map(|done| {
                    for (purchase, outcome) in &done.others {
                        log(*purchase, outcome, Some(self.purchase_id));
                    }
                    done.outcome
                })
        };
        match result {
            Ok(outcome) => {
                log(self.purchase_id, &outcome, None);
                Ok(())
            }
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

/// One line per attributed purchase; `with` is the purchase whose job
/// attributed it, when that was another's.
fn log(purchase: PurchaseId, outcome: &Outcome, with: Option<PurchaseId>) {
    let with = with.map(|w| w.to_string());
    match outcome {
        Outcome::Rewarded {
            reward_id,
            amount_minor,
            flagged,
        } => {
            tracing::info!(purchase.id = %purchase, reward.id = %reward_id, cashback.minor = amount_minor, flagged, in_batch_of = with.as_deref(), "purchase attributed");
        }
        Outcome::Waiting { recheck_at } => {
            tracing::info!(purchase.id = %purchase, %recheck_at, in_batch_of = with.as_deref(), "no user linked yet; the sweeper looks again later");
        }
        Outcome::Unattributed { reason } => {
            tracing::info!(purchase.id = %purchase, reason, in_batch_of = with.as_deref(), "purchase unattributed");
        }
        Outcome::AlreadyProcessed => {}
    }
}
