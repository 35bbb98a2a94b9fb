//! The outbox: jobs written in the transaction that causes them, relayed
//! into Redis when due, and kept open until their outcome is recorded
//! ([`finish`]). Redis holds a copy of the open rows; a sent row Redis has
//! lost is relayed again ([`due_for_verification`], [`reopen`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::{jobs::Queue, schema::outbox, text_enum::text_enum};

text_enum! {
    /// How a job's outbox row was closed.
    pub enum Outcome {
        /// Its handler succeeded.
        Done = "done",
        /// Recorded in `dead_jobs`.
        Dead = "dead",
        /// Its next run (a retry, a deferral, a paused put-back) is a row of its own.
        Superseded = "superseded",
        /// An operator deleted it.
        Deleted = "deleted",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub queue: String,
    pub task_id: String,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub run_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub relay_attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Claims at most `limit` due rows of `queue` (run by `horizon`, next relay
/// attempt by `now`), soonest first, locked for this transaction; rows
/// another relay holds are skipped. A closed row is never claimed (one
/// closed while its push was being committed has run): Redis may no longer
/// hold its data, and pushing it would run it again.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    horizon: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OutboxRow>, diesel::result::Error> {
    outbox::table
        .filter(outbox::queue.eq(queue.as_str()))
        .filter(outbox::sent_at.is_null())
        .filter(outbox::finished_at.is_null())
        .filter(outbox::run_at.le(horizon))
        .filter(outbox::next_attempt_at.le(now))
        .order((outbox::run_at.asc(), outbox::id.asc()))
        .limit(limit)
        .select(OutboxRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Stamps rows sent (they are in Redis, as of now).
pub async fn mark_sent(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<usize, diesel::result::Error> {
    let now = Utc::now();
    diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
        .set((outbox::sent_at.eq(now), outbox::checked_at.eq(now)))
        .execute(conn)
        .await
}

/// Closes the open row of a run with its outcome; returns whether a row was
/// open (a run that ran twice closes it once).
pub async fn finish(
    conn: &mut AsyncPgConnection,
    task_id: &str,
    outcome: Outcome,
) -> Result<bool, diesel::result::Error> {
    Ok(finish_many(conn, &[task_id], outcome).await? == 1)
}

/// The columns a row's outcome sets: when it was closed, and how.
fn closing(
    outcome: Outcome,
) -> (
    diesel::dsl::Eq<outbox::finished_at, DateTime<Utc>>,
    diesel::dsl::Eq<outbox::outcome, Outcome>,
) {
    (
        outbox::finished_at.eq(Utc::now()),
        outbox::outcome.eq(outcome),
    )
}

/// Closes the open rows of these task ids with `outcome`, in one statement;
/// returns how many it closed (a row closed already is left as it is).
pub async fn finish_many<S: AsRef<str>>(
    conn: &mut AsyncPgConnection,
    task_ids: &[S],
    outcome: Outcome,
) -> Result<usize, diesel::result::Error> {
    if task_ids.is_empty() {
        return Ok(0);
    }
    let task_ids: Vec<&str> = task_ids.iter().map(AsRef::as_ref).collect();
    diesel::update(
        outbox::table
            .filter(outbox::task_id.eq_any(task_ids))
            .filter(outbox::finished_at.is_null()),
    )
    .set(closing(outcome))
    .execute(conn)
    .await
}

/// Closes the open rows of these runs, each `(task id, when it finished)`,
/// with `outcome`, in one statement; returns how many it closed. For runs
/// closed in batches after they finished: each row keeps its own time.
pub async fn finish_at(
    conn: &mut AsyncPgConnection,
    runs: &[(&str, DateTime<Utc>)],
    outcome: Outcome,
) -> Result<usize, diesel::result::Error> {
    use diesel::sql_types::{Array, Text, Timestamptz};
    if runs.is_empty() {
        return Ok(0);
    }
    let (task_ids, at): (Vec<&str>, Vec<DateTime<Utc>>) = runs.iter().copied().unzip();
    diesel::sql_query(
        "UPDATE outbox AS o SET finished_at = u.at, outcome = $3
           FROM unnest($1::text[], $2::timestamptz[]) AS u(task_id, at)
          WHERE o.task_id = u.task_id AND o.finished_at IS NULL",
    )
    .bind::<Array<Text>, _>(task_ids)
    .bind::<Array<Timestamptz>, _>(at)
    .bind::<Text, _>(outcome.as_str())
    .execute(conn)
    .await
}

/// Sent, still open rows of `queue` last seen in Redis (or sent) before
/// `seen_before`, at most `limit`, locked for this transaction.
pub async fn due_for_verification(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    seen_before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(i64, String)>, diesel::result::Error> {
    outbox::table
        .filter(outbox::queue.eq(queue.as_str()))
        .filter(outbox::sent_at.is_not_null())
        .filter(outbox::finished_at.is_null())
        .filter(outbox::checked_at.le(seen_before))
        .order(outbox::checked_at.asc())
        .limit(limit)
        .select((outbox::id, outbox::task_id))
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Redis still holds these rows, as of now.
pub async fn verified(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<usize, diesel::result::Error> {
    diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
        .set(outbox::checked_at.eq(Utc::now()))
        .execute(conn)
        .await
}

/// Redis has lost these rows: they are due for the relay again, at once.
pub async fn reopen(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<usize, diesel::result::Error> {
    diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
        .set((
            outbox::sent_at.eq(None::<DateTime<Utc>>),
            outbox::checked_at.eq(None::<DateTime<Utc>>),
            outbox::next_attempt_at.eq(Utc::now()),
            outbox::recovered.eq(outbox::recovered + 1),
        ))
        .execute(conn)
        .await
}

/// Rows Redis finished (its done set) while PostgreSQL could not take the
/// outcome: closed as done.
pub async fn finish_ids(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    outcome: Outcome,
) -> Result<usize, diesel::result::Error> {
    diesel::update(
        outbox::table
            .filter(outbox::id.eq_any(ids))
            .filter(outbox::finished_at.is_null()),
    )
    .set(closing(outcome))
    .execute(conn)
    .await
}

/// Records a failed push of a row: one more relay attempt, its error, and
/// when to try again.
pub async fn mark_relay_failed(
    conn: &mut AsyncPgConnection,
    row: &OutboxRow,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<usize, diesel::result::Error> {
    diesel::update(outbox::table.find(row.id))
        .set((
            outbox::relay_attempts.eq(row.relay_attempts + 1),
            outbox::last_error.eq(error),
            outbox::next_attempt_at.eq(next_attempt_at),
        ))
        .execute(conn)
        .await
}

/// Deletes at most `max` rows finished before `before`, oldest first; returns
/// how many. Open rows stay, however old.
pub async fn prune_finished(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    max: i64,
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(
        "DELETE FROM outbox WHERE id = ANY(ARRAY(
            SELECT id FROM outbox WHERE finished_at < $1 ORDER BY finished_at LIMIT $2))",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(max)
    .execute(conn)
    .await
}
