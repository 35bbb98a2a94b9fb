//! Jobs still in the outbox: rows not yet relayed into Redis, whether due,
//! scheduled for later, or a later attempt of a failed job.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{JobChain, JobRun, JobState, JobView};
use crate::{
    jobs::{Queue, run_id},
    models::outbox::Outcome,
    schema::{dead_jobs, outbox},
};

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
        chains: None,
    }
}

/// Runs kept per job in a job's view.
const HISTORY: i64 = 200;

type RunRow = (
    String,
    String,
    i32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<Outcome>,
    i32,
    Option<String>,
);

/// Every chain of runs of the job `job_key` the outbox holds, oldest first,
/// with the dead-job record of each run that died.
pub async fn chains(
    conn: &mut AsyncPgConnection,
    job_key: &str,
) -> Result<Vec<JobChain>, diesel::result::Error> {
    let rows: Vec<RunRow> = outbox::table
        .filter(outbox::job_key.eq(job_key))
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .limit(HISTORY)
        .select((
            outbox::chain,
            outbox::task_id,
            outbox::attempt,
            outbox::run_at,
            outbox::sent_at,
            outbox::finished_at,
            outbox::outcome,
            outbox::recovered,
            outbox::last_error,
        ))
        .load(conn)
        .await?;
    let dead: Vec<(String, i64, String)> = dead_jobs::table
        .filter(dead_jobs::job_key.eq(job_key))
        .order(dead_jobs::died_at.asc())
        .limit(HISTORY)
        .select((dead_jobs::task_id, dead_jobs::id, dead_jobs::last_error))
        .load(conn)
        .await?;
    let mut out: Vec<JobChain> = Vec::new();
    for (chain, task_id, attempt, run_at, sent_at, finished_at, outcome, recovered, relay_error) in
        rows
    {
        let died = dead.iter().find(|(t, _, _)| *t == task_id);
        let run = JobRun {
            attempt: attempt.into(),
            run_at,
            sent_at,
            finished_at,
            outcome,
            recovered,
            dead_id: died.map(|(_, id, _)| *id),
            last_error: died.map(|(_, _, e)| e.clone()).or(relay_error),
            task_id,
        };
        match out.iter_mut().find(|c| c.chain == chain) {
            Some(c) => c.runs.push(run),
            None => out.push(JobChain {
                cause: run_id::cause(&chain).to_owned(),
                chain,
                runs: vec![run],
            }),
        }
    }
    Ok(out)
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

/// Fills in, from their outbox rows, the job, payload and attempt of views
/// Redis has no payload for (finished jobs: theirs left Redis when their row
/// was closed). A view whose row is gone too (past the outbox retention)
/// stays without.
pub(super) async fn fill_payloads(
    conn: &mut AsyncPgConnection,
    views: &mut [JobView],
) -> Result<(), diesel::result::Error> {
    let ids: Vec<&str> = views
        .iter()
        .filter(|v| v.payload.is_none())
        .map(|v| v.task_id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, serde_json::Value, i32)> = outbox::table
        .filter(outbox::task_id.eq_any(&ids))
        .select((outbox::task_id, outbox::payload, outbox::attempt))
        .load(conn)
        .await?;
    for v in views.iter_mut().filter(|v| v.payload.is_none()) {
        if let Some((_, payload, attempt)) = rows.iter().find(|(t, _, _)| *t == v.task_id) {
            v.job = payload["job"].as_str().map(str::to_owned);
            v.payload = Some(payload["data"].clone());
            v.attempt = v.attempt.or(Some((*attempt).into()));
        }
    }
    Ok(())
}

/// Deletes the unsent outbox row of a task id, and closes a sent one as
/// deleted (so it is not relayed again); returns how many rows went or closed.
pub(super) async fn delete_unsent(
    conn: &mut AsyncPgConnection,
    task_id: &str,
) -> Result<usize, diesel::result::Error> {
    let deleted = diesel::delete(
        outbox::table
            .filter(outbox::task_id.eq(task_id))
            .filter(outbox::sent_at.is_null()),
    )
    .execute(conn)
    .await?;
    let closed =
        crate::models::outbox::finish(conn, task_id, crate::models::outbox::Outcome::Deleted)
            .await?;
    Ok(deleted + usize::from(closed))
}
