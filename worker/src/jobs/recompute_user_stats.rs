//! `RecomputeUserStats`: refreshes one user's statistics and their cache entry.

use clicknback_core::{jobs::RecomputeUserStats, services::stats};

use super::{JobHandler, JobMeta, JobResult};
use crate::runtime::SharedCtx;

impl JobHandler for RecomputeUserStats {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let mut conn = ctx.db.get().await?;
        let rows = stats::recompute(&mut conn, &ctx.cache, self.user_id).await?;
        tracing::debug!(user.id = %self.user_id, currencies = rows, "statistics recomputed");
        Ok(())
    }
}
