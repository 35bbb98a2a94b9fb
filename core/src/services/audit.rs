//! The audit log of admin actions. Written in the same transaction as the change.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{Actor, pagination::Cursor};
use crate::{
    ids::AuditEntryId,
    models::audit::{AuditEntry, NewAuditEntry},
    schema::audit_log,
};

pub async fn record(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    action: &str,
    entity_type: &str,
    entity_id: Option<Uuid>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(audit_log::table)
        .values(NewAuditEntry {
            id: AuditEntryId::new(),
            actor_id: Some(actor.user_id),
            action,
            entity_type,
            entity_id,
            before,
            after,
            request_id: actor.request_id.as_deref(),
        })
        .execute(conn)
        .await?;
    tracing::info!(
        audit.action = action,
        audit.entity_type = entity_type,
        audit.entity_id = ?entity_id,
        actor.id = %actor.user_id,
        "admin action"
    );
    Ok(())
}

/// Newest first, keyset-paginated over `(created_at, id)`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<AuditEntry>, diesel::result::Error> {
    let mut q = audit_log::table
        .select(AuditEntry::as_select())
        .order((audit_log::created_at.desc(), audit_log::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(c) = after {
        let (t, id): (DateTime<Utc>, Uuid) = (c.created_at, c.id);
        q = q.filter(
            audit_log::created_at
                .lt(t)
                .or(audit_log::created_at.eq(t).and(audit_log::id.lt(id))),
        );
    }
    q.load(conn).await
}
