//! Canary runs (`canary_runs`): what the `Canary` job records, so tests and
//! operators see how often a job ran, on which worker, and that its effect
//! happened once.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::canary_runs;

/// Counts one run of the canary `key` (attempt `attempt`, on `worker`);
/// returns whether an operator has marked it fixed.
pub async fn record_run(
    conn: &mut AsyncPgConnection,
    key: &str,
    attempt: i32,
    worker: &str,
) -> Result<bool, diesel::result::Error> {
    diesel::insert_into(canary_runs::table)
        .values((
            canary_runs::key.eq(key),
            canary_runs::runs.eq(1),
            canary_runs::last_attempt.eq(attempt),
            canary_runs::worker.eq(worker),
        ))
        .on_conflict(canary_runs::key)
        .do_update()
        .set((
            canary_runs::runs.eq(canary_runs::runs + 1),
            canary_runs::last_attempt.eq(attempt),
            canary_runs::worker.eq(worker),
            canary_runs::updated_at.eq(diesel::dsl::now),
        ))
        .returning(canary_runs::fixed)
        .get_result(conn)
        .await
}

/// The canary's effect: recorded once, however many runs reach it.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> Result<(), diesel::result::Error> {
    diesel::update(
        canary_runs::table
            .find(key)
            .filter(canary_runs::completed_at.is_null()),
    )
    .set((
        canary_runs::effects.eq(1),
        canary_runs::completed_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(())
}
