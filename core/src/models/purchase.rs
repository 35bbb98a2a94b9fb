use crate::{
    ids::{IdentityGroupId, MerchantId, PurchaseId, UserId},
    money::Currency,
    schema::purchases,
};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = purchases, check_for_backend(diesel::pg::Pg))]
pub struct Purchase {
    pub id: PurchaseId,
    pub merchant_id: MerchantId,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: String,
    pub purchased_at: DateTime<Utc>,
    pub customer_ref: Option<String>,
    pub purchase_token: Option<String>,
    pub sub_id: Option<String>,
    pub identity_group_id: Option<IdentityGroupId>,
    pub user_id: Option<UserId>,
    pub attribute_after: DateTime<Utc>,
    pub rewards_processed_at: Option<DateTime<Utc>>,
    pub status_reason: Option<String>,
    pub merchant_decision: Option<String>,
    pub merchant_decision_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When attribution first found no user for it (it has waited out its delay).
    pub waiting_since: Option<DateTime<Utc>>,
}

impl Purchase {
    /// Purchases whose delayed attribution is due and has not run, oldest first.
    /// Served by the partial index `purchases_due_attribution_idx`.
    pub fn due_for_attribution(
        now: DateTime<Utc>,
    ) -> purchases::BoxedQuery<'static, diesel::pg::Pg> {
        purchases::table
            .filter(purchases::rewards_processed_at.is_null())
            .filter(purchases::status.eq("received"))
            .filter(purchases::attribute_after.le(now))
            .order((purchases::attribute_after.asc(), purchases::id.asc()))
            .into_boxed()
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
