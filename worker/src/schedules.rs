//! Every cron schedule in one list, each with its name and default cron
//! expression, and how a tick becomes work.
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
use clicknback_core::{
    config::{ConfigError, Env},
    services::cron::claim_tick,
};

use crate::runtime::SharedCtx;

/// Declares the schedules from one list: each variant with its name (in
/// `cron_runs`, in `RunSchedule` and, upper-cased, in `SCHEDULE_<NAME>`) and
/// its default expression (seconds, minutes, hours, day of month, month, day
/// of week), and [`ALL`].
macro_rules! schedules {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $cron:literal;)*) => {
        /// The schedules; what a run does is in `crate::jobs::run_schedule`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Schedule {
            $($(#[doc = $doc])* $variant,)*
        }

        /// Every schedule.
        pub const ALL: &[Schedule] = &[$(Schedule::$variant,)*];

        impl Schedule {
            const fn spec(self) -> (&'static str, &'static str) {
                match self {
                    $(Schedule::$variant => ($name, $cron),)*
                }
            }
        }
    };
}

schedules! {
    /// Enqueues attribution for due, unprocessed purchases (batch 100).
    SweepAttributions = "sweep_attributions", "*/30 * * * * *";
    /// Purchases whose ledger lags their facts (`settle_due_at` passed: a
    /// decision whose job was lost, a hold period that ended) are settled
    /// (batch 1000).
    SettleRewards = "settle_rewards", "*/30 * * * * *";
    /// Idempotency records older than their retention are deleted.
    PurgeIdempotencyKeys = "purge_idempotency_keys", "0 5 * * * *";
    /// Every ledger invariant is checked; a breach is logged and counted.
    ReconcileLedger = "reconcile_ledger", "0 10 * * * *";
    /// Merchants whose purchase-token mismatch rate is too high raise an alert.
    LinkQualityAlert = "link_quality_alert", "0 15 * * * *";
    /// Payouts left unfinished (`submitted_unknown`, `processing`, or a
    /// `requested` one whose job died) are looked up at the provider and settled.
    ResolvePayouts = "resolve_payouts", "0 */5 * * * *";
}

const CRON_EXPECTED: &str = "a cron expression with seconds first, like `*/30 * * * * *`";

impl Schedule {
    pub fn name(self) -> &'static str {
        self.spec().0
    }

    pub fn default_cron(self) -> &'static str {
        self.spec().1
    }

    /// The variable overriding its expression.
    pub fn env_var(self) -> String {
        format!("SCHEDULE_{}", self.name().to_uppercase())
    }

    pub fn parse(name: &str) -> Option<Schedule> {
        ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Its expression: `SCHEDULE_<NAME>` or the default, validated.
    pub fn cron<F: Fn(&str) -> Option<String>>(
        self,
        env: &Env<F>,
    ) -> Result<cron::Schedule, ConfigError> {
        let var = self.env_var();
        let expr = env.or(&var, self.default_cron());
        let bad = |problem: String| ConfigError {
            var: var.clone(),
            problem,
            expected: CRON_EXPECTED.into(),
        };
        if expr.split_whitespace().count() < 6 {
            return Err(bad(format!("is {expr:?}")));
        }
        cron::Schedule::from_str(&expr).map_err(|e| bad(format!("is {expr:?} ({e})")))
    }
}

/// Every schedule with its expression, naming the variable of a bad one.
pub fn configured<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Vec<(Schedule, cron::Schedule)>, ConfigError> {
    ALL.iter().map(|&s| Ok((s, s.cron(env)?))).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env as env;

    #[test]
    fn names_are_unique_and_defaults_parse() {
        let configured = configured(&env(&[])).unwrap();
        assert_eq!(configured.len(), ALL.len());
        for &s in ALL {
            assert_eq!(Schedule::parse(s.name()), Some(s));
        }
        assert_eq!(
            Schedule::ResolvePayouts.env_var(),
            "SCHEDULE_RESOLVE_PAYOUTS"
        );
    }

    #[test]
    fn an_override_is_validated_and_names_its_variable() {
        let ok = env(&[("SCHEDULE_SETTLE_REWARDS", "* * * * * *")]);
        assert!(Schedule::SettleRewards.cron(&ok).is_ok());
        for bad in ["*/5 * * * *", "61 * * * * *"] {
            let e = configured(&env(&[("SCHEDULE_SETTLE_REWARDS", bad)])).unwrap_err();
            assert_eq!(e.var, "SCHEDULE_SETTLE_REWARDS", "{bad}");
            assert!(e.problem.starts_with(&format!("is {bad:?}")), "{e}");
        }
    }
}
