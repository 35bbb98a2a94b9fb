use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::{
    ids::{MerchantId, OfferId},
    money::Currency,
    schema::offers,
};

#[derive(
    Debug, Clone, Queryable, Selectable, Identifiable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = offers, check_for_backend(diesel::pg::Pg))]
pub struct Offer {
    pub id: OfferId,
    pub merchant_id: MerchantId,
    pub name: String,
    pub rate_bps: i32,
    pub max_cashback_minor: Option<i64>,
    pub monthly_cap_minor: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The currency of the caps (required when the offer has a cap).
    pub currency: Option<Currency>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = offers)]
pub struct NewOffer<'a> {
    pub id: OfferId,
    pub merchant_id: MerchantId,
    pub name: &'a str,
    pub rate_bps: i32,
    pub max_cashback_minor: Option<i64>,
    pub monthly_cap_minor: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub currency: Option<Currency>,
}
