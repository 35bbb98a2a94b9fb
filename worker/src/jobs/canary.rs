//! `Canary`: fails as told, then records its one effect.

use std::time::Duration;

use clicknback_core::{jobs::Canary, services::canary};

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for Canary {
    async fn run(self, ctx: SharedCtx, meta: JobMeta) -> JobResult {
        let attempt = meta.attempt;
        if self.noop {
            return if attempt <= self.fail_times {
                Err(JobError::retry(anyhow::anyhow!(
                    "noop canary failing on attempt {attempt}"
                )))
            } else {
                Ok(())
            };
        }
        let mut conn = ctx.db.get().await?;
        let fixed = canary::record_run(&mut conn, &self.key, attempt, &ctx.instance).await?;
        drop(conn);
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        if self.permanent {
            return Err(JobError::permanent(anyhow::anyhow!(
                "canary {} fails for good",
                self.key
            )));
        }
        if self.fail_until_fixed && !fixed {
            return Err(JobError::retry(anyhow::anyhow!(
                "canary {} is broken until fixed",
                self.key
            )));
        }
        if attempt <= self.fail_times {
            return Err(JobError::retry(anyhow::anyhow!(
                "canary {} failing on attempt {attempt}",
                self.key
            )));
        }
        // The effect: happens once, whatever the number of runs.
        let mut conn = ctx.db.get().await?;
        canary::complete(&mut conn, &self.key).await?;
        Ok(())
    }
}
