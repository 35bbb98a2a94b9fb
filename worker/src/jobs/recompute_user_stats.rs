//! `RecomputeUserStats`: refreshes one user's statistics and their cache entry.

use clicknback_core::{jobs::RecomputeUserStats, services::stats};

use super::JobResult;
use crate::runtime::Ctx;

pub async fn run(ctx: &Ctx, job: RecomputeUserStats) -> JobResult {
    let mut conn = ctx.db.get().await?;
    let rows = stats::recompute(&mut conn, &ctx.cache, job.user_id).await?;
    tracing::debug!(user.id = %job.user_id, currencies = rows, "statistics recomputed");
    Ok(())
}
