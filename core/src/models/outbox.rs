//! The outbox: jobs written in the transaction that causes them, relayed
//! into Redis when due.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::{jobs::Queue, schema::outbox};

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
/// another relay holds are skipped.
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

/// Stamps rows sent (they are in Redis).
pub async fn mark_sent(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<usize, diesel::result::Error> {
    diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
        .set(outbox::sent_at.eq(Utc::now()))
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

/// Deletes at most `max` rows sent before `before`, oldest first; returns how many.
pub async fn prune_sent(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    max: i64,
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(
        "DELETE FROM outbox WHERE id = ANY(ARRAY(
            SELECT id FROM outbox WHERE sent_at < $1 ORDER BY sent_at LIMIT $2))",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(max)
    .execute(conn)
    .await
}
