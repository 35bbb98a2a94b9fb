//! Every cron schedule in one list, and how a tick becomes work.
//!
//! apalis-cron fires in every worker process. A tick therefore only claims
//! `(schedule, tick)` in `cron_runs` (the primary key lets exactly one replica
//! win) and, in the same transaction, enqueues one `RunSchedule` job through
//! the outbox. The job does the work on the maintenance queue, where a
//! per-schedule lock keeps a run that is still going from being overlapped.

use std::str::FromStr;

use apalis::prelude::{BoxDynError, Data};
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use clicknback_core::{config::ConfigError, services::cron::claim_tick};

use crate::runtime::SharedCtx;

/// The schedules: name and what a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Enqueues attribution for due, unprocessed purchases (batch 100).
    SweepAttributions,
    /// Pending rewards past the hold period become available.
    AutoConfirm,
    /// Idempotency records older than their retention are deleted.
    PurgeIdempotencyKeys,
    /// Every ledger invariant is checked; a breach is logged and counted.
    ReconcileLedger,
    /// Merchants whose purchase-token mismatch rate is too high raise an alert.
    LinkQualityAlert,
    /// Payouts left unfinished (`submitted_unknown`, `processing`, or a
    /// `requested` one whose job died) are looked up at the provider and settled.
    ResolvePayouts,
}

pub const ALL: [Schedule; 6] = [
    Schedule::SweepAttributions,
    Schedule::AutoConfirm,
    Schedule::PurgeIdempotencyKeys,
    Schedule::ReconcileLedger,
    Schedule::LinkQualityAlert,
    Schedule::ResolvePayouts,
];

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::SweepAttributions => "sweep_attributions",
            Schedule::AutoConfirm => "auto_confirm",
            Schedule::PurgeIdempotencyKeys => "purge_idempotency_keys",
            Schedule::ReconcileLedger => "reconcile_ledger",
            Schedule::LinkQualityAlert => "link_quality_alert",
            Schedule::ResolvePayouts => "resolve_payouts",
        }
    }

    pub fn parse(name: &str) -> Option<Schedule> {
        ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Parses every configured expression, naming the variable of a bad one.
pub fn parse_all(ctx: &SharedCtx) -> Result<Vec<(Schedule, cron::Schedule)>, ConfigError> {
    ALL.iter()
        .map(|s| {
            let expr = ctx.config.worker.schedule_of(s.name()).unwrap_or_default();
            cron::Schedule::from_str(expr)
                .map(|c| (*s, c))
                .map_err(|e| ConfigError {
                    var: format!("SCHEDULE_{}", s.name().to_uppercase()),
                    problem: format!("is {expr:?} ({e})"),
                    expected: "a cron expression with seconds first, like `*/30 * * * * *`".into(),
                })
        })
        .collect()
}

/// A tick: claim it cluster-wide and enqueue the run. Never does the work.
pub async fn on_tick(
    schedule: Schedule,
    tick: DateTime<Utc>,
    ctx: &SharedCtx,
) -> anyhow::Result<bool> {
    let mut conn = ctx.db.get().await?;
    let claimed = claim_tick(&mut conn, schedule.name(), tick, &ctx.instance).await?;
    metrics::gauge!("cron_last_tick_timestamp_seconds", "schedule" => schedule.name())
        .set(tick.timestamp() as f64);
    if claimed {
        tracing::info!(schedule = schedule.name(), tick = %tick, "cron tick claimed; run enqueued");
    }
    Ok(claimed)
}

/// The apalis-cron handler for one schedule.
pub async fn tick_handler(
    tick: Tick,
    schedule: Data<Schedule>,
    ctx: Data<SharedCtx>,
) -> Result<(), BoxDynError> {
    let at = DateTime::from_timestamp(tick.get_timestamp() as i64, 0).unwrap_or_else(Utc::now);
    if let Err(e) = on_tick(*schedule, at, &ctx).await {
        tracing::error!(schedule = schedule.name(), error = %format!("{e:#}"), "cron tick could not be claimed");
    }
    Ok(())
}
