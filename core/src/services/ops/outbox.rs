//! Jobs still in the outbox: rows not yet relayed into Redis, whether due,
//! scheduled for later, or a later attempt of a failed job.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{JobState, JobView};
use crate::{jobs::Queue, schema::outbox};

/// The unsent rows of one queue.
#[derive(QueryableByName)]
pub(super) struct Backlog {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub queue: String,
    /// Due and not yet in Redis.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub backlog: i64,
    /// Later attempts of failed jobs.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub retrying: i64,
    /// Seconds since the oldest due row became due.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub oldest: i64,
}

pub(super) async fn backlog(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<Backlog>, diesel::result::Error> {
    diesel::sql_query(
        "SELECT queue,
                count(*) FILTER (WHERE run_at <= now()) AS backlog,
                count(*) FILTER (WHERE attempt > 1) AS retrying,
                COALESCE(extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::bigint, 0) AS oldest
           FROM outbox WHERE sent_at IS NULL GROUP BY queue",
    )
    .load(conn)
    .await
}

type OutboxJobRow = (
    String,
    serde_json::Value,
    i32,
    DateTime<Utc>,
    Option<String>,
);

const COLUMNS: (
    outbox::task_id,
    outbox::payload,
    outbox::attempt,
    outbox::run_at,
    outbox::last_error,
) = (
    outbox::task_id,
    outbox::payload,
    outbox::attempt,
    outbox::run_at,
    outbox::last_error,
);

fn view(queue: Queue, state: JobState, row: OutboxJobRow) -> JobView {
    let (task_id, payload, attempt, run_at, last_error) = row;
    JobView {
        queue: queue.as_str().into(),
        task_id,
        state,
        job: payload["job"].as_str().map(str::to_owned),
        payload: Some(payload["data"].clone()),
        attempt: Some(attempt.into()),
        last_error,
        run_at: Some(run_at),
        finished_at: None,
        dead_id: None,
    }
}

/// The queue's unsent rows, soonest first, at most `limit`; with
/// [`JobState::Retrying`] only later attempts.
pub(super) async fn list(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    state: JobState,
    limit: i64,
) -> Result<Vec<JobView>, diesel::result::Error> {
    let mut q = outbox::table
        .filter(outbox::queue.eq(queue.as_str()))
        .filter(outbox::sent_at.is_null())
        .order(outbox::run_at.asc())
        .limit(limit)
        .select(COLUMNS)
        .into_boxed();
    if state == JobState::Retrying {
        q = q.filter(outbox::attempt.gt(1));
    }
    let rows: Vec<OutboxJobRow> = q.load(conn).await?;
    Ok(rows.into_iter().map(|r| view(queue, state, r)).collect())
}

/// The outbox row of a task id, if there is one.
pub(super) async fn find(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    task_id: &str,
) -> Result<Option<JobView>, diesel::result::Error> {
    let row: Option<OutboxJobRow> = outbox::table
        .filter(outbox::task_id.eq(task_id))
        .select(COLUMNS)
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|r| view(queue, JobState::Outbox, r)))
}

/// Deletes the unsent outbox row of a task id; returns how many rows went.
pub(super) async fn delete_unsent(
    conn: &mut AsyncPgConnection,
    task_id: &str,
) -> Result<usize, diesel::result::Error> {
    diesel::delete(
        outbox::table
            .filter(outbox::task_id.eq(task_id))
            .filter(outbox::sent_at.is_null()),
    )
    .execute(conn)
    .await
}
