//! `ProcessPayout`: sends one payout through the provider (see
//! `clicknback_core::services::payouts` for the state machine).

use std::time::Duration;

use clicknback_core::{
    jobs::ProcessPayout,
    services::payouts::{self, PayoutError, Processed},
};

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for ProcessPayout {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let id = self.payout_id;
        match payouts::process(&ctx.db, &ctx.keys, ctx.provider.as_ref(), id).await {
            Ok(Processed::Paid) | Ok(Processed::Failed(_)) | Ok(Processed::AlreadyFinal) => Ok(()),
            Ok(Processed::Busy) => Err(JobError::Defer {
                reason: format!("payout {id} is being processed by another worker"),
                after: Duration::from_secs(5),
            }),
            Ok(Processed::PendingAtProvider) => Err(JobError::retry(anyhow::anyhow!(
                "payout {id} is pending at the provider; asking again later"
            ))),
            Ok(Processed::Unknown(reason)) => Err(JobError::retry(anyhow::anyhow!(
                "payout {id} outcome unknown ({reason}); the provider is asked before any resend"
            ))),
            Ok(Processed::NotSent(reason)) => Err(JobError::retry(anyhow::anyhow!(
                "payout {id} not sent: {reason}"
            ))),
            Err(PayoutError::NotFound) => Err(JobError::permanent(anyhow::anyhow!(
                "payout {id} does not exist"
            ))),
            Err(e @ PayoutError::Destination(_)) => Err(JobError::permanent(e)),
            Err(e) => Err(JobError::retry(e)),
        }
    }
}
