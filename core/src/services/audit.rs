//! The audit log of admin actions. Written in the same transaction as the change.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    Actor,
    pagination::{Cursor, newest_first},
};
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
    let q = audit_log::table
        .select(AuditEntry::as_select())
        .limit(limit)
        .into_boxed();
    let q = newest_first!(q, audit_log, after.map(Cursor::key));
    q.load(conn).await
}
