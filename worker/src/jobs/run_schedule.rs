//! `RunSchedule`: one run of a cron schedule, never two of the same schedule
//! at once cluster-wide (a session advisory lock held for the run).

use chrono::Utc;
use clicknback_core::{
    db,
    jobs::RunSchedule,
    schema::cron_runs,
    services::{idempotency, ledger},
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{JobError, JobResult};
use crate::{runtime::Ctx, schedules::Schedule};

pub async fn run(ctx: &Ctx, job: RunSchedule) -> JobResult {
    let schedule = Schedule::parse(&job.schedule).ok_or_else(|| {
        JobError::permanent(anyhow::anyhow!("unknown schedule {:?}", job.schedule))
    })?;
    let tick = chrono::DateTime::from_timestamp(job.tick, 0).unwrap_or_else(Utc::now);
    let mut conn = ctx.db.get().await?;
    let key = db::lock_key(&format!("schedule:{}", schedule.name()));
    let outcome = if !db::try_session_lock(&mut conn, key).await? {
        tracing::warn!(
            schedule = schedule.name(),
            "previous run still going; this tick is skipped"
        );
        Ok("skipped: previous run still going".to_owned())
    } else {
        let result = body(ctx, &mut conn, schedule).await;
        let _ = db::session_unlock(&mut conn, key).await;
        result
    };
    let text = match &outcome {
        Ok(s) => s.clone(),
        Err(e) => format!("error: {e}"),
    };
    diesel::update(cron_runs::table.find((schedule.name(), tick)))
        .set((
            cron_runs::finished_at.eq(Utc::now()),
            cron_runs::outcome.eq(&text),
        ))
        .execute(&mut conn)
        .await?;
    metrics::gauge!("cron_last_run_timestamp_seconds", "schedule" => schedule.name())
        .set(Utc::now().timestamp() as f64);
    outcome
        .map(|s| tracing::info!(schedule = schedule.name(), outcome = %s, "scheduled run finished"))
}

async fn body(
    ctx: &Ctx,
    conn: &mut diesel_async::AsyncPgConnection,
    schedule: Schedule,
) -> Result<String, JobError> {
    match schedule {
        Schedule::PurgeIdempotencyKeys => {
            let cutoff = Utc::now()
                - chrono::Duration::from_std(ctx.config.idempotency_retention).unwrap_or_default();
            let mut total = 0;
            loop {
                let n = idempotency::purge_older_than(conn, cutoff, 5_000).await?;
                total += n;
                if n < 5_000 {
                    break;
                }
            }
            metrics::counter!("idempotency_keys_purged_total").increment(total as u64);
            Ok(format!("purged {total} idempotency keys"))
        }
        Schedule::ReconcileLedger => {
            let breaches = ledger::reconcile(conn).await?;
            metrics::gauge!("ledger_reconciliation_breaches").set(breaches.len() as f64);
            for b in &breaches {
                tracing::error!(check = b.check, detail = %b.detail, "ledger invariant broken");
            }
            if !breaches.is_empty() {
                metrics::counter!("ledger_reconciliation_failures_total").increment(1);
            }
            Ok(format!("{} breach(es)", breaches.len()))
        }
        Schedule::SweepAttributions => {
            // Purchases whose job was lost, or that wait for a user, are
            // picked up once due (with a grace so the regular job goes first).
            use clicknback_core::{
                jobs::{self as job_types, AttributePurchase},
                models::purchase::Purchase,
                schema::purchases,
            };
            let ids: Vec<clicknback_core::ids::PurchaseId> =
                Purchase::due_for_attribution(Utc::now() - chrono::Duration::seconds(30))
                    .select(purchases::id)
                    .limit(100)
                    .load(conn)
                    .await?;
            let tick = Utc::now().timestamp();
            for id in &ids {
                let job = AttributePurchase {
                    purchase_id: *id,
                    reattribute: false,
                };
                job_types::enqueue_as(
                    conn,
                    &job,
                    &format!("attribute:{id}#s{tick}"),
                    1,
                    Utc::now(),
                )
                .await?;
            }
            metrics::gauge!("sweeper_enqueued").set(ids.len() as f64);
            Ok(format!("enqueued {} due purchase(s)", ids.len()))
        }
        Schedule::AutoConfirm => {
            // Enqueues the confirmation of pending rewards past the hold period
            // (a bounded batch per run; the jobs move the money).
            use clicknback_core::{
                jobs::{self as job_types, ApplyRewardTransition, RewardTransition},
                schema::rewards,
            };
            let cutoff = Utc::now()
                - chrono::Duration::from_std(ctx.config.attribution.hold_period)
                    .unwrap_or_default();
            let due: Vec<clicknback_core::ids::PurchaseId> = rewards::table
                .filter(rewards::status.eq(clicknback_core::models::reward::RewardStatus::Pending))
                .filter(rewards::created_at.le(cutoff))
                .order(rewards::created_at.asc())
                .select(rewards::purchase_id)
                .limit(1_000)
                .load(conn)
                .await?;
            for purchase_id in &due {
                let job = ApplyRewardTransition {
                    purchase_id: *purchase_id,
                    to: RewardTransition::Confirmed,
                    reason: Some("hold period elapsed".into()),
                    source: "auto_confirm".into(),
                };
                job_types::enqueue(conn, &job, Utc::now()).await?;
            }
            Ok(format!("enqueued {} confirmation(s)", due.len()))
        }
        Schedule::LinkQualityAlert => {
            let a = &ctx.config.attribution;
            let bad = clicknback_core::services::link_quality::alarming(
                conn,
                a.link_mismatch_rate,
                a.link_min_attempts,
            )
            .await?;
            for s in &bad {
                tracing::error!(
                    merchant.id = %s.merchant_id,
                    mismatch_rate = s.mismatch_rate,
                    matched = s.matched,
                    mismatched = s.mismatched,
                    "purchase-token mismatch rate above the alert threshold"
                );
                metrics::gauge!("link_mismatch_rate_alert", "merchant" => s.merchant_id.to_string()).set(s.mismatch_rate);
            }
            metrics::gauge!("link_quality_alerting_merchants").set(bad.len() as f64);
            Ok(format!("{} merchant(s) over the threshold", bad.len()))
        }
        Schedule::ResolvePayouts => resolve_payouts(ctx, conn).await,
    }
}

/// Settles payouts that have been unfinished for `PAYOUT_RECONCILE_AFTER_SECS`
/// through the same path as `ProcessPayout` (ask the provider first, send only
/// what it never received), at most 100 per run; stops early when the
/// provider is unreachable.
async fn resolve_payouts(
    ctx: &Ctx,
    conn: &mut diesel_async::AsyncPgConnection,
) -> Result<String, JobError> {
    use clicknback_core::services::payouts::{self, Processed};
    let cutoff = Utc::now()
        - chrono::Duration::from_std(ctx.config.payouts.reconcile_after).unwrap_or_default();
    let stuck = payouts::unresolved(conn, cutoff, 100)
        .await
        .map_err(JobError::retry)?;
    metrics::gauge!("payouts_unresolved").set(stuck.len() as f64);
    let (mut settled, mut waiting) = (0, 0);
    for id in &stuck {
        match payouts::process(&ctx.db, &ctx.keys, ctx.provider.as_ref(), *id).await {
            Ok(p) if p.is_final() => settled += 1,
            Ok(Processed::NotSent(reason)) => {
                tracing::warn!(payout.id = %id, %reason, "payout provider unreachable; resolution stops for this run");
                waiting += 1;
                break;
            }
            Ok(_) => waiting += 1,
            Err(e) => {
                tracing::error!(payout.id = %id, error = %e, "payout could not be resolved");
                waiting += 1;
            }
        }
    }
    if !stuck.is_empty() {
        tracing::info!(
            found = stuck.len(),
            settled,
            waiting,
            "unfinished payouts looked up"
        );
    }
    Ok(format!(
        "{} unfinished payout(s): {settled} settled, {waiting} still waiting",
        stuck.len()
    ))
}
