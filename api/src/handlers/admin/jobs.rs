//! The job system for operators: queue counts, job lists, one job, live
//! workers, and the actions (re-queue dead jobs, delete a job, pause and
//! resume a queue). Served under `/v1/admin` and, for the board page, under
//! `/board/api`; both take an admin bearer token or Basic credentials. The
//! paths in the `#[utoipa::path]`s are below those two mount points.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use clicknback_core::services::{
    Actor, audit,
    ops::{self, JobState, JobView, OpsError, QueueStats, WorkerView},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    auth::BoardAdmin,
    error::{ApiError, ApiResult, Json, Path, Problem, Query},
    state::AppState,
};

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::NotFound => ApiError::not_found("job"),
            OpsError::UnknownQueue(_) => ApiError::not_found("queue"),
            OpsError::UnknownState(_) => ApiError::bad_request("invalid_state", e.to_string()),
            OpsError::Db(d) => d.into(),
            OpsError::Collision(_) => ApiError::internal(e),
            OpsError::Redis(r) => {
                tracing::error!(error = %r, "redis unavailable for the board");
                ApiError::unavailable("Redis is unavailable; retry shortly")
            }
        }
    }
}

async fn redis(state: &AppState) -> ApiResult<clicknback_core::redis_conn::RedisConn> {
    state
        .redis
        .get()
        .await
        .map_err(|e| OpsError::Redis(e).into())
}

/// Every queue with its counts by state and the outbox backlog in front of it.
#[utoipa::path(get, path = "/queues", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])), responses(
    (status = 200, body = Vec<QueueStats>), (status = 401, body = Problem), (status = 403, body = Problem),
    (status = 503, body = Problem),
))]
pub async fn queues(
    State(state): State<AppState>,
    _admin: BoardAdmin,
) -> ApiResult<Json<Vec<QueueStats>>> {
    let mut conn = state.conn().await?;
    let mut r = redis(&state).await?;
    Ok(Json(
        ops::stats(&mut conn, &mut r, &state.config.redis_namespace).await?,
    ))
}

/// The states jobs can be listed by, as a string enum.
fn listed_states() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(JobState::LISTED.map(JobState::as_str)))
        .build()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// The state to list (default `dead`); another value is a 400 `invalid_state`.
    #[param(schema_with = listed_states)]
    pub state: Option<String>,
    /// At most this many (default 50); values below 1 or above 200 are clamped to that range.
    pub limit: Option<i64>,
}

/// The new job created by a re-queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Requeued {
    pub task_id: String,
}

/// How many dead jobs were re-queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequeuedAll {
    pub requeued: u64,
}

/// A queue's pause state after the change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PauseState {
    pub queue: String,
    pub paused: bool,
}

/// Jobs of a queue in one state.
#[utoipa::path(get, path = "/queues/{queue}/jobs", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("queue" = clicknback_core::jobs::Queue, Path, description = "an unknown queue is a 404"), JobsQuery), responses(
    (status = 200, body = Vec<JobView>), (status = 400, body = Problem), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn jobs(
    State(state): State<AppState>,
    _admin: BoardAdmin,
    Path(queue): Path<String>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Vec<JobView>>> {
    let queue = ops::parse_queue(&queue)?;
    let mut conn = state.conn().await?;
    let mut r = redis(&state).await?;
    let list = ops::list(
        &mut conn,
        &mut r,
        &state.config.redis_namespace,
        queue,
        ops::parse_state(q.state.as_deref().unwrap_or(JobState::Dead.as_str()))?,
        q.limit.unwrap_or(50),
    )
    .await?;
    Ok(Json(list))
}

/// One job, wherever it is.
#[utoipa::path(get, path = "/queues/{queue}/jobs/{task_id}", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("queue" = clicknback_core::jobs::Queue, Path, description = "an unknown queue is a 404"), ("task_id" = String, Path)), responses(
    (status = 200, body = JobView), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn job(
    State(state): State<AppState>,
    _admin: BoardAdmin,
    Path((queue, task_id)): Path<(String, String)>,
) -> ApiResult<Json<JobView>> {
    let queue = ops::parse_queue(&queue)?;
    let mut conn = state.conn().await?;
    let mut r = redis(&state).await?;
    Ok(Json(
        ops::job(
            &mut conn,
            &mut r,
            &state.config.redis_namespace,
            queue,
            &task_id,
        )
        .await?,
    ))
}

/// Workers alive, with their last heartbeat.
#[utoipa::path(get, path = "/workers", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])), responses(
    (status = 200, body = Vec<WorkerView>), (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn workers(
    State(state): State<AppState>,
    _admin: BoardAdmin,
) -> ApiResult<Json<Vec<WorkerView>>> {
    let mut r = redis(&state).await?;
    Ok(Json(
        ops::workers(&mut r, &state.config.redis_namespace).await?,
    ))
}

async fn record(
    state: &AppState,
    admin: &BoardAdmin,
    action: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    let mut conn = state.conn().await?;
    let actor = Actor {
        user_id: admin.0,
        request_id: Some(crate::middleware::current_request_id()),
    };
    audit::record(&mut conn, &actor, action, "job", None, None, Some(detail)).await?;
    Ok(())
}

/// Re-queues one dead job (a fresh attempt 1, through the outbox).
#[utoipa::path(post, path = "/dead-jobs/{id}/requeue", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("id" = i64, Path)), responses(
    (status = 200, description = "the new job", body = Requeued), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn requeue_dead(
    State(state): State<AppState>,
    admin: BoardAdmin,
    Path(id): Path<i64>,
) -> ApiResult<Json<Requeued>> {
    let mut conn = state.conn().await?;
    let task_id = ops::requeue_dead(&mut conn, id).await?;
    record(
        &state,
        &admin,
        "job.requeue",
        json!({ "dead_id": id, "task_id": task_id }),
    )
    .await?;
    Ok(Json(Requeued { task_id }))
}

/// Re-queues every dead job of a queue.
#[utoipa::path(post, path = "/queues/{queue}/dead/requeue", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("queue" = clicknback_core::jobs::Queue, Path, description = "an unknown queue is a 404")), responses(
    (status = 200, body = RequeuedAll), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn requeue_all(
    State(state): State<AppState>,
    admin: BoardAdmin,
    Path(queue): Path<String>,
) -> ApiResult<Json<RequeuedAll>> {
    let q = ops::parse_queue(&queue)?;
    let mut conn = state.conn().await?;
    let n = ops::requeue_all_dead(&mut conn, q).await?;
    record(
        &state,
        &admin,
        "job.requeue_all",
        json!({ "queue": queue, "requeued": n }),
    )
    .await?;
    Ok(Json(RequeuedAll { requeued: n as u64 }))
}

/// Deletes a waiting, finished or dead job.
#[utoipa::path(delete, path = "/queues/{queue}/jobs/{task_id}", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("queue" = clicknback_core::jobs::Queue, Path, description = "an unknown queue is a 404"), ("task_id" = String, Path)), responses(
    (status = 204, description = "deleted"), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn delete(
    State(state): State<AppState>,
    admin: BoardAdmin,
    Path((queue, task_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let q = ops::parse_queue(&queue)?;
    let mut conn = state.conn().await?;
    let mut r = redis(&state).await?;
    ops::delete_job(
        &mut conn,
        &mut r,
        &state.config.redis_namespace,
        q,
        &task_id,
    )
    .await?;
    record(
        &state,
        &admin,
        "job.delete",
        json!({ "queue": queue, "task_id": task_id }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_paused(
    state: AppState,
    admin: BoardAdmin,
    queue: String,
    paused: bool,
) -> ApiResult<Json<PauseState>> {
    let q = ops::parse_queue(&queue)?;
    let mut r = redis(&state).await?;
    ops::set_paused(&mut r, &state.config.redis_namespace, q, paused)
        .await
        .map_err(OpsError::Redis)?;
    let action = if paused {
        "queue.pause"
    } else {
        "queue.resume"
    };
    record(&state, &admin, action, json!({ "queue": queue })).await?;
    Ok(Json(PauseState { queue, paused }))
}

/// Pauses a queue: its jobs wait (in the outbox and Redis) until it is resumed.
#[utoipa::path(post, path = "/queues/{queue}/pause", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("queue" = clicknback_core::jobs::Queue, Path, description = "an unknown queue is a 404")), responses(
    (status = 200, description = "paused", body = PauseState), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn pause(
    State(state): State<AppState>,
    admin: BoardAdmin,
    Path(queue): Path<String>,
) -> ApiResult<Json<PauseState>> {
    set_paused(state, admin, queue, true).await
}

/// Resumes a paused queue.
#[utoipa::path(post, path = "/queues/{queue}/resume", tag = "jobs", security(("bearer" = []), ("board_basic" = []), ("board_session" = [])),
    params(("queue" = clicknback_core::jobs::Queue, Path, description = "an unknown queue is a 404")), responses(
    (status = 200, description = "resumed", body = PauseState), (status = 404, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn resume(
    State(state): State<AppState>,
    admin: BoardAdmin,
    Path(queue): Path<String>,
) -> ApiResult<Json<PauseState>> {
    set_paused(state, admin, queue, false).await
}
