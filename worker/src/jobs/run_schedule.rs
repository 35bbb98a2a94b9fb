//! `RunSchedule`: one run of a cron schedule, never two of the same schedule
//! at once cluster-wide (a session advisory lock held for the run). What a
//! run does is a core service; this decides which, records the outcome in
//! `cron_runs`, and logs and measures it.

use chrono::{DateTime, Utc};
use clicknback_core::{
    db,
    jobs::RunSchedule,
    services::{attribution, cron, idempotency, ledger, link_quality, payouts, rewards},
};
use diesel_async::AsyncPgConnection;

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::{
    runtime::{Ctx, SharedCtx},
    schedules::Schedule,
};

impl JobHandler for RunSchedule {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let schedule = Schedule::parse(&self.schedule).ok_or_else(|| {
            JobError::permanent(anyhow::anyhow!("unknown schedule {:?}", self.schedule))
        })?;
        let tick = DateTime::from_timestamp(self.tick, 0).unwrap_or_else(Utc::now);
        let mut conn = ctx.db.get().await?;
        let key = db::lock_key(&format!("schedule:{}", schedule.name()));
        let outcome = if !db::try_session_lock(&mut conn, key).await? {
            tracing::warn!(
                schedule = schedule.name(),
                "previous run still going; this tick is skipped"
            );
            Ok("skipped: previous run still going".to_owned())
        } else {
            let result = body(&ctx, &mut conn, schedule).await;
            let _ = db::session_unlock(&mut conn, key).await;
            result
        };
        let text = match &outcome {
            Ok(s) => s.clone(),
            Err(e) => format!("error: {e}"),
        };
        cron::record_outcome(&mut conn, schedule.name(), tick, &text).await?;
        metrics::gauge!("cron_last_run_timestamp_seconds", "schedule" => schedule.name())
            .set(Utc::now().timestamp() as f64);
        outcome.map(
            |s| tracing::info!(schedule = schedule.name(), outcome = %s, "scheduled run finished"),
        )
    }
}

/// `now` less a configured age.
fn ago(age: std::time::Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(age).unwrap_or_default()
}

async fn body(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    schedule: Schedule,
) -> Result<String, JobError> {
    match schedule {
        Schedule::PurgeIdempotencyKeys => {
            let total =
                idempotency::purge_expired(conn, ago(ctx.config.idempotency_retention), 5_000)
                    .await?;
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
            let n = attribution::sweep_due(conn, Utc::now(), 100).await?;
            metrics::gauge!("sweeper_enqueued").set(n as f64);
            Ok(format!("enqueued {n} due purchase(s)"))
        }
        Schedule::SettleRewards => {
            let s = rewards::settle_due(conn, Utc::now(), 1_000).await?;
            metrics::gauge!("settle_sweep_due").set(s.due as f64);
            if s.failed > 0 {
                metrics::counter!("settle_sweep_failures_total").increment(s.failed as u64);
            }
            Ok(format!(
                "settled {} of {} due purchase(s), {} failed",
                s.settled, s.due, s.failed
            ))
        }
        Schedule::LinkQualityAlert => {
            let a = &ctx.config.attribution;
            let bad =
                link_quality::alarming(conn, a.link_mismatch_rate, a.link_min_attempts).await?;
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
        Schedule::ResolvePayouts => {
            // Payouts unfinished for `PAYOUT_RECONCILE_AFTER_SECS`, at most
            // 100 per run.
            let cutoff = ago(ctx.config.payouts.reconcile_after);
            let r = payouts::resolve_unfinished(
                conn,
                &ctx.db,
                &ctx.keys,
                ctx.provider.as_ref(),
                cutoff,
                100,
            )
            .await
            .map_err(JobError::retry)?;
            metrics::gauge!("payouts_unresolved").set(r.found as f64);
            if r.found > 0 {
                tracing::info!(
                    found = r.found,
                    settled = r.settled,
                    waiting = r.waiting,
                    "unfinished payouts looked up"
                );
            }
            Ok(format!(
                "{} unfinished payout(s): {} settled, {} still waiting",
                r.found, r.settled, r.waiting
            ))
        }
    }
}
