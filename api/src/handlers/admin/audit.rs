use axum::extract::State;
use chrono::{DateTime, Utc};
use clicknback_core::{
    ids::{AuditEntryId, UserId},
    models::audit::AuditEntry,
    services::audit,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    auth::AdminUser,
    error::{ApiResult, Json, Problem, Query},
    handlers::{ListQuery, Page},
    state::AppState,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub id: AuditEntryId,
    pub actor_id: Option<UserId>,
    pub action: String,
    pub entity_type: String,
    pub entity_id: Option<Uuid>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> Self {
        Self {
            id: a.id,
            actor_id: a.actor_id,
            action: a.action,
            entity_type: a.entity_type,
            entity_id: a.entity_id,
            before: a.before,
            after: a.after,
            request_id: a.request_id,
            created_at: a.created_at,
        }
    }
}

/// Every admin action, newest first.
#[utoipa::path(get, path = "/v1/admin/audit-log", tag = "admin", security(("bearer" = [])),
    params(ListQuery), responses(
    (status = 200, body = Page<AuditView>), (status = 400, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<AuditView>>> {
    let (limit, cursor) = q.parse(&state.cursors)?;
    let mut conn = state.conn().await?;
    let rows = audit::list(&mut conn, cursor.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        &state.cursors,
        |a| (a.created_at, a.id),
        AuditView::from,
    )))
}
