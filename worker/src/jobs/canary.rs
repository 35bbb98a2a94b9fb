//! `Canary`: fails as told, then records its one effect.

use std::time::Duration;

use clicknback_core::{jobs::Canary, schema::canary_runs};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

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
        let fixed: bool = diesel::insert_into(canary_runs::table)
            .values((
                canary_runs::key.eq(&self.key),
                canary_runs::runs.eq(1),
                canary_runs::last_attempt.eq(attempt),
                canary_runs::worker.eq(&ctx.instance),
            ))
            .on_conflict(canary_runs::key)
            .do_update()
            .set((
                canary_runs::runs.eq(canary_runs::runs + 1),
                canary_runs::last_attempt.eq(attempt),
                canary_runs::worker.eq(&ctx.instance),
                canary_runs::updated_at.eq(diesel::dsl::now),
            ))
            .returning(canary_runs::fixed)
            .get_result(&mut conn)
            .await?;
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
        diesel::update(
            canary_runs::table
                .find(&self.key)
                .filter(canary_runs::completed_at.is_null()),
        )
        .set((
            canary_runs::effects.eq(1),
            canary_runs::completed_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}
