use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::{ids::MerchantId, schema::merchants, text_enum::text_enum};

text_enum! {
    /// A suspended merchant's webhooks and SDK calls are refused until it is
    /// reactivated.
    pub enum MerchantStatus {
        Active = "active",
        Suspended = "suspended",
    }
}

#[derive(
    Debug, Clone, Queryable, Selectable, Identifiable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = merchants, check_for_backend(diesel::pg::Pg))]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub status: MerchantStatus,
    pub publishable_key: String,
    pub webhook_secret_encrypted: Vec<u8>,
    pub previous_secret_encrypted: Option<Vec<u8>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub webhook_rate_limit_per_minute: Option<i32>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Merchant {
    pub fn is_active(&self) -> bool {
        self.status == MerchantStatus::Active
    }

    /// The view of a merchant that may be shown and audited: no secrets.
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "publishable_key": self.publishable_key,
            "webhook_rate_limit_per_minute": self.webhook_rate_limit_per_minute,
            "version": self.version,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = merchants)]
pub struct NewMerchant<'a> {
    pub id: MerchantId,
    pub name: &'a str,
    pub publishable_key: &'a str,
    pub webhook_secret_encrypted: Vec<u8>,
}
