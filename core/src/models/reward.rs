use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::rewards;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = rewards, check_for_backend(diesel::pg::Pg))]
pub struct Reward {
    pub id: Uuid,
    pub purchase_id: Uuid,
    pub attribution_seq: i32,
    pub user_id: Uuid,
    pub offer_id: Uuid,
    pub touchpoint_id: Option<Uuid>,
    pub identity_group_id: Option<Uuid>,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub fraud_score: f64,
    pub fraud_reasons: serde_json::Value,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub reversed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Reward {
    /// The prefix of every transfer this reward causes.
    pub fn transfer_prefix(&self) -> String {
        format!("reward:{}:{}", self.purchase_id, self.attribution_seq)
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = rewards)]
pub struct NewReward<'a> {
    pub id: Uuid,
    pub purchase_id: Uuid,
    pub attribution_seq: i32,
    pub user_id: Uuid,
    pub offer_id: Uuid,
    pub touchpoint_id: Option<Uuid>,
    pub identity_group_id: Option<Uuid>,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub status: &'a str,
    pub fraud_score: f64,
    pub fraud_reasons: serde_json::Value,
}
