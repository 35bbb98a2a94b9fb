use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::schema::outbox;

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
