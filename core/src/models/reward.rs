use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::{
    ids::{IdentityGroupId, OfferId, PurchaseId, RewardId, TouchpointId, UserId},
    money::{Currency, Money},
    schema::rewards,
    text_enum::text_enum,
};

text_enum! {
    /// Where a reward is in its lifecycle (the money of each step is in
    /// `services::rewards`).
    pub enum RewardStatus {
        Pending = "pending",
        /// Held for an admin's fraud review; no money has moved.
        Flagged = "flagged",
        Confirmed = "confirmed",
        Reversed = "reversed",
        /// Replaced by a re-attribution after a late identity merge.
        Voided = "voided",
    }
}

text_enum! {
    /// An admin's fraud review of a flagged reward.
    pub enum Review {
        Approved = "approved",
        Rejected = "rejected",
    }
}

impl RewardStatus {
    /// Rewards whose cashback is credited to the user (counted in the
    /// statistics, and owed a credit transfer in the ledger).
    pub const CREDITED: [RewardStatus; 2] = [RewardStatus::Pending, RewardStatus::Confirmed];

    /// The legal steps: pending → confirmed, reversed or voided; flagged →
    /// pending (approved), reversed (rejected) or voided; confirmed →
    /// reversed. Reversed and voided are final.
    pub fn can_become(self, to: RewardStatus) -> bool {
        use RewardStatus::*;
        matches!(
            (self, to),
            (Pending, Confirmed | Reversed | Voided)
                | (Flagged, Pending | Reversed | Voided)
                | (Confirmed, Reversed)
        )
    }
}

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
    pub status: RewardStatus,
    pub fraud_score: f64,
    pub fraud_reasons: serde_json::Value,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub reversed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The fraud scorer held it for review (a fact of the attribution).
    pub flagged: bool,
    /// When its hold period ends (a fact of the attribution).
    pub hold_until: DateTime<Utc>,
    /// The admin's review of a flagged reward, by whom and when.
    pub review: Option<Review>,
    pub reviewed_by: Option<UserId>,
    pub reviewed_at: Option<DateTime<Utc>>,
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
pub struct NewReward {
    pub id: RewardId,
    pub purchase_id: PurchaseId,
    pub attribution_seq: i32,
    pub user_id: UserId,
    pub offer_id: OfferId,
    pub touchpoint_id: Option<TouchpointId>,
    pub identity_group_id: Option<IdentityGroupId>,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: RewardStatus,
    pub fraud_score: f64,
    pub fraud_reasons: serde_json::Value,
    pub flagged: bool,
    pub hold_until: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::RewardStatus::{self, *};

    #[test]
    fn final_states_go_nowhere_and_confirmation_needs_pending() {
        for to in RewardStatus::ALL {
            assert!(!Reversed.can_become(*to));
            assert!(!Voided.can_become(*to));
            assert!(!to.can_become(*to), "{to} → {to} is not a step");
        }
        assert!(Pending.can_become(Confirmed));
        assert!(
            !Flagged.can_become(Confirmed),
            "a flagged reward is reviewed first"
        );
        assert!(
            !Confirmed.can_become(Voided),
            "confirmed money is never re-attributed"
        );
        assert!(Confirmed.can_become(Reversed));
    }
}
