//! The record of cron ticks (`cron_runs`): which replica claimed a tick, and
//! how its run ended. The primary key `(schedule, tick)` lets exactly one
//! replica claim a tick, whatever the number of replicas firing it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{
    jobs::{self, RunSchedule},
    schema::cron_runs,
};

/// Claims `(schedule, tick)` for `instance` and, in the same transaction,
/// enqueues its run. Returns false when another replica had claimed it.
pub async fn claim_tick(
    conn: &mut AsyncPgConnection,
    schedule: &str,
    tick: DateTime<Utc>,
    instance: &str,
) -> Result<bool, diesel::result::Error> {
    conn.transaction::<bool, diesel::result::Error, _>(async move |conn| {
        let inserted = diesel::insert_into(cron_runs::table)
            .values((
                cron_runs::schedule.eq(schedule),
                cron_runs::tick.eq(tick),
                cron_runs::claimed_by.eq(instance),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if inserted == 1 {
            let job = RunSchedule {
                schedule: schedule.to_owned(),
                tick: tick.timestamp(),
            };
            jobs::enqueue(conn, &job, Utc::now()).await?;
        }
        Ok(inserted == 1)
    })
    .await
}

/// Records how the run of a claimed tick ended.
pub async fn record_outcome(
    conn: &mut AsyncPgConnection,
    schedule: &str,
    tick: DateTime<Utc>,
    outcome: &str,
) -> Result<(), diesel::result::Error> {
    diesel::update(cron_runs::table.find((schedule, tick)))
        .set((
            cron_runs::finished_at.eq(Utc::now()),
            cron_runs::outcome.eq(outcome),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets ticks older than a week; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection) -> Result<usize, diesel::result::Error> {
    diesel::sql_query("DELETE FROM cron_runs WHERE tick < now() - interval '7 days'")
        .execute(conn)
        .await
}
