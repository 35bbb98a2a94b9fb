use crate::{
    ids::{IdentityGroupId, OfferId, PurchaseId, RewardId, TouchpointId, UserId},
    schema::rewards,
};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = rewards, check_for_backend(diesel::pg::Pg))]
pub struct Reward {
    pub id: RewardId,
    pub purchase_id: PurchaseId,
    pub attribution_seq: i32,
    pub user_id: UserId,
    pub offer_id: OfferId,
    pub touchpoint_id: Option<TouchpointId>,
    pub identity_group_id: Option<IdentityGroupId>,
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
    pub id: RewardId,
    pub purchase_id: PurchaseId,
    pub attribution_seq: i32,
    pub user_id: UserId,
    pub offer_id: OfferId,
    pub touchpoint_id: Option<TouchpointId>,
    pub identity_group_id: Option<IdentityGroupId>,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub status: &'a str,
    pub fraud_score: f64,
    pub fraud_reasons: serde_json::Value,
}
