use crate::{
    ids::{IdentityGroupId, OfferId, PurchaseId, RewardId, TouchpointId, UserId},
    money::{Currency, Money},
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
    /// Zero when the monthly cap left nothing.
    pub amount_minor: i64,
    pub currency: Currency,
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

    /// The cashback, or `None` when the monthly cap left nothing (the only
    /// amount the table allows besides a positive one).
    pub fn amount(&self) -> Option<Money> {
        Money::new(self.amount_minor, self.currency).ok()
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
    pub currency: Currency,
    pub status: &'a str,
    pub fraud_score: f64,
    pub fraud_reasons: serde_json::Value,
}
