//! Dead jobs: the PostgreSQL records (`dead_jobs`) of jobs that exhausted
//! their retries, failed permanently or crashed their handler. They wait
//! there for an operator; re-queueing writes a fresh outbox row, so the job
//! reaches Redis through the same bounded relay as everything else.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use redis::aio::ConnectionLike;

use super::{JobState, JobView, OpsError, parse_queue, queues};
use crate::{
    jobs::{self, Queue, run_id},
    models::outbox,
    schema::dead_jobs,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = dead_jobs, check_for_backend(diesel::pg::Pg))]
pub struct DeadJob {
    pub id: i64,
    pub queue: String,
    pub task_id: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub last_error: String,
    pub died_at: DateTime<Utc>,
    pub requeued_at: Option<DateTime<Utc>>,
}

impl From<DeadJob> for JobView {
    fn from(d: DeadJob) -> Self {
        JobView {
            queue: d.queue,
            task_id: d.task_id,
            state: JobState::Dead,
            job: d.payload["job"].as_str().map(str::to_owned),
            payload: Some(d.payload["data"].clone()),
            attempt: Some(d.attempts.into()),
            last_error: Some(d.last_error),
            run_at: None,
            finished_at: Some(d.died_at),
            dead_id: Some(d.id),
            chains: None,
        }
    }
}

/// Records a dead job with its last error and attempt count, and closes its
/// outbox row as dead, in one transaction; a task id already recorded is
/// left as it is (the same run, recorded twice).
pub async fn record(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    task_id: &str,
    job: Option<&str>,
    data: Option<&serde_json::Value>,
    attempts: i32,
    error: &str,
) -> Result<(), diesel::result::Error> {
    let payload = serde_json::json!({ "job": job, "data": data });
    conn.transaction::<(), diesel::result::Error, _>(async move |conn| {
        let inserted = diesel::insert_into(dead_jobs::table)
            .values((
                dead_jobs::queue.eq(queue.as_str()),
                dead_jobs::task_id.eq(task_id),
                dead_jobs::payload.eq(payload),
                dead_jobs::attempts.eq(attempts),
                dead_jobs::last_error.eq(error),
            ))
            .on_conflict(dead_jobs::task_id)
            .do_nothing()
            .execute(conn)
            .await?;
        if inserted == 0 {
            tracing::info!(job.id = %task_id, "dead job already recorded under this id");
        }
        outbox::finish(conn, task_id, outbox::Outcome::Dead).await?;
        Ok(())
    })
    .await
}

/// Moves the jobs apalis put in its own dead set (a handler that panicked)
/// into `dead_jobs`, then out of Redis, at most 500 per call; returns how many.
pub async fn adopt_crashed<C: ConnectionLike>(
    conn: &mut AsyncPgConnection,
    redis: &mut C,
    namespace: &str,
    queue: Queue,
) -> Result<usize, OpsError> {
    let ids = queues::crashed(redis, namespace, queue, 500).await?;
    let n = ids.len();
    for id in ids {
        if let Ok(v) = super::job(conn, redis, namespace, queue, &id).await {
            let error = v.last_error.as_deref().unwrap_or("the handler crashed");
            let attempts = v.attempt.unwrap_or(1) as i32;
            record(
                conn,
                queue,
                &id,
                v.job.as_deref(),
                v.payload.as_ref(),
                attempts,
                error,
            )
            .await?;
            tracing::error!(job_id = %id, queue = queue.as_str(), "job crashed its handler; recorded as dead");
        }
        queues::delete_from_redis(redis, namespace, queue, &id).await?;
    }
    Ok(n)
}

/// Dead jobs not re-queued, per queue name.
pub(super) async fn counts(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<(String, i64)>, diesel::result::Error> {
    dead_jobs::table
        .filter(dead_jobs::requeued_at.is_null())
        .group_by(dead_jobs::queue)
        .select((dead_jobs::queue, diesel::dsl::count_star()))
        .load(conn)
        .await
}

/// The queue's dead jobs not re-queued, most recent first, at most `limit`.
pub(super) async fn list(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    limit: i64,
) -> Result<Vec<JobView>, diesel::result::Error> {
    let rows: Vec<DeadJob> = dead_jobs::table
        .filter(dead_jobs::queue.eq(queue.as_str()))
        .filter(dead_jobs::requeued_at.is_null())
        .order(dead_jobs::died_at.desc())
        .limit(limit)
        .select(DeadJob::as_select())
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(JobView::from).collect())
}

/// The dead-job record of a task id, if there is one.
pub(super) async fn find(
    conn: &mut AsyncPgConnection,
    task_id: &str,
) -> Result<Option<JobView>, diesel::result::Error> {
    let dead: Option<DeadJob> = dead_jobs::table
        .filter(dead_jobs::task_id.eq(task_id))
        .select(DeadJob::as_select())
        .first(conn)
        .await
        .optional()?;
    Ok(dead.map(JobView::from))
}

/// Deletes the dead-job record of a task id; returns how many rows went.
pub(super) async fn delete(
    conn: &mut AsyncPgConnection,
    task_id: &str,
) -> Result<usize, diesel::result::Error> {
    diesel::delete(dead_jobs::table.filter(dead_jobs::task_id.eq(task_id)))
        .execute(conn)
        .await
}

/// The task id a job had before any retry or re-queue suffix.
pub fn base_task_id(task_id: &str) -> &str {
    run_id::job_key(task_id)
}

/// Puts a dead job back as a new chain of its own (`<job>#q<dead id>`,
/// attempt 1, which retries and dies again by the job's policy): a fresh
/// outbox row and the dead record marked re-queued, in one transaction.
/// Returns the new task id; an id already taken is an error, never a
/// silent success.
pub async fn requeue_dead(conn: &mut AsyncPgConnection, dead_id: i64) -> Result<String, OpsError> {
    conn.transaction::<String, OpsError, _>(async move |conn| {
        let d: DeadJob = dead_jobs::table
            .find(dead_id)
            .filter(dead_jobs::requeued_at.is_null())
            .select(DeadJob::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(OpsError::NotFound)?;
        let queue = parse_queue(&d.queue)?;
        let task_id = run_id::requeue(&d.task_id, d.id);
        if !jobs::enqueue_raw(conn, queue, &task_id, d.payload.clone(), 1, Utc::now()).await? {
            return Err(OpsError::Collision(task_id));
        }
        diesel::update(dead_jobs::table.find(d.id))
            .set(dead_jobs::requeued_at.eq(Utc::now()))
            .execute(conn)
            .await?;
        tracing::info!(job.id = %d.task_id, job.new_id = %task_id, queue = %d.queue, "dead job re-queued");
        Ok(task_id)
    })
    .await
}

/// Re-queues every dead job of a queue; returns how many.
pub async fn requeue_all_dead(
    conn: &mut AsyncPgConnection,
    queue: Queue,
) -> Result<usize, OpsError> {
    let ids: Vec<i64> = dead_jobs::table
        .filter(dead_jobs::queue.eq(queue.as_str()))
        .filter(dead_jobs::requeued_at.is_null())
        .select(dead_jobs::id)
        .load(conn)
        .await?;
    let mut n = 0;
    for id in ids {
        match requeue_dead(conn, id).await {
            Ok(_) => n += 1,
            Err(OpsError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
