use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::{
    ids::{IdentityGroupId, MerchantId, PurchaseId, UserId},
    jobs::RewardTransition,
    money::Currency,
    schema::purchases,
    text_enum::text_enum,
};

text_enum! {
    /// Where a purchase is: received, then attributed (or flagged for review,
    /// or unattributed), then confirmed or reversed with its reward.
    pub enum PurchaseStatus {
        Received = "received",
        Attributed = "attributed",
        Unattributed = "unattributed",
        Flagged = "flagged",
        Confirmed = "confirmed",
        Reversed = "reversed",
    }
}

impl PurchaseStatus {
    /// The legal steps: received → attributed, flagged or unattributed;
    /// attributed → confirmed, reversed, or back to received when a late
    /// merge re-attributes it; flagged → attributed (approved), confirmed
    /// (approved after the merchant confirmed or the hold ended) or reversed;
    /// confirmed → reversed. Unattributed and reversed are final. Staying
    /// put is always allowed (a decision applied twice).
    pub fn can_become(self, to: PurchaseStatus) -> bool {
        use PurchaseStatus::*;
        self == to
            || matches!(
                (self, to),
                (Received, Attributed | Flagged | Unattributed)
                    | (Attributed, Confirmed | Reversed | Received)
                    | (Flagged, Attributed | Confirmed | Reversed)
                    | (Confirmed, Reversed)
            )
    }

    /// `to`, checked (in debug builds) to be a legal step from `self`.
    pub fn becoming(self, to: PurchaseStatus) -> PurchaseStatus {
        debug_assert!(self.can_become(to), "purchase {self} cannot become {to}");
        to
    }
}

/// The purchase status a merchant's decision leads to.
impl From<RewardTransition> for PurchaseStatus {
    fn from(t: RewardTransition) -> Self {
        match t {
            RewardTransition::Confirmed => PurchaseStatus::Confirmed,
            RewardTransition::Reversed => PurchaseStatus::Reversed,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = purchases, check_for_backend(diesel::pg::Pg))]
pub struct Purchase {
    pub id: PurchaseId,
    pub merchant_id: MerchantId,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PurchaseStatus,
    pub purchased_at: DateTime<Utc>,
    pub customer_ref: Option<String>,
    pub purchase_token: Option<String>,
    pub sub_id: Option<String>,
    pub identity_group_id: Option<IdentityGroupId>,
    pub user_id: Option<UserId>,
    pub attribute_after: DateTime<Utc>,
    pub rewards_processed_at: Option<DateTime<Utc>>,
    pub status_reason: Option<String>,
    pub merchant_decision: Option<RewardTransition>,
    pub merchant_decision_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When attribution first found no user for it (it has waited out its delay).
    pub waiting_since: Option<DateTime<Utc>>,
    /// When its ledger may lag its facts: `settle` is due (set when a fact is
    /// recorded or to the hold period's end, cleared by `settle`).
    pub settle_due_at: Option<DateTime<Utc>>,
}

impl Purchase {
    /// Purchases whose delayed attribution is due and has not run, oldest first.
    /// Served by the partial index `purchases_due_attribution_idx`.
    pub fn due_for_attribution(
        now: DateTime<Utc>,
    ) -> purchases::BoxedQuery<'static, diesel::pg::Pg> {
        purchases::table
            .filter(purchases::rewards_processed_at.is_null())
            .filter(purchases::status.eq(PurchaseStatus::Received))
            .filter(purchases::attribute_after.le(now))
            .order((purchases::attribute_after.asc(), purchases::id.asc()))
            .into_boxed()
    }

    /// Whether the merchant may still decide `to`: a reversal is final, so
    /// nothing confirms a reversed purchase or one the merchant reversed.
    pub fn accepts_decision(&self, to: RewardTransition) -> bool {
        to == RewardTransition::Reversed
            || (self.status != PurchaseStatus::Reversed
                && self.merchant_decision != Some(RewardTransition::Reversed))
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = purchases)]
pub struct NewPurchase<'a> {
    pub id: PurchaseId,
    pub merchant_id: MerchantId,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: Currency,
    pub purchased_at: DateTime<Utc>,
    pub customer_ref: Option<&'a str>,
    pub purchase_token: Option<&'a str>,
    pub sub_id: Option<&'a str>,
    pub identity_group_id: Option<IdentityGroupId>,
    pub user_id: Option<UserId>,
    pub attribute_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::PurchaseStatus::{self, *};

    #[test]
    fn the_lifecycle_and_its_final_states() {
        for path in [
            [Received, Attributed, Confirmed, Reversed],
            [Received, Flagged, Attributed, Confirmed],
            [Received, Attributed, Received, Flagged],
        ] {
            for step in path.windows(2) {
                assert!(step[0].can_become(step[1]), "{} → {}", step[0], step[1]);
            }
        }
        for to in PurchaseStatus::ALL {
            assert_eq!(Reversed.can_become(*to), *to == Reversed);
            assert_eq!(Unattributed.can_become(*to), *to == Unattributed);
        }
        assert!(!Received.can_become(Confirmed));
    }
}
