//! Payouts: a shopper moves available cashback out through the provider.
//!
//! Requesting reserves the amount (available → reserved) in the same
//! transaction that records the payout and enqueues `ProcessPayout`; the
//! database's non-negative balance check makes "more than available" fail
//! whatever the concurrency. The destination is sealed with the data key
//! (AES-256-GCM, key id prefixed so keys can rotate) and only its masked form
//! is ever shown.
//!
//! Processing is a small state machine that never sends a payout twice and
//! never releases money that might have gone out:
//!
//! - `requested`: marked `processing` (committed) *before* the provider call,
//!   then sent with our payout id as the provider's idempotency key;
//! - `processing` or `submitted_unknown`: an earlier attempt may have reached
//!   the provider, so it is first looked up by id; only a payout the provider
//!   has never seen is sent (again under the same idempotency key), and a
//!   refusal of that resend is checked with the provider once more before
//!   anything is released (the refusal may be of a second copy);
//! - the provider says paid → reserved → paid_out, `paid`, email;
//!   it refuses or reports failed → reserved → available (settling what the
//!   user owes on their receivable first), `failed`, email;
//!   a timeout or 5xx → `submitted_unknown`, the reservation stays, and the
//!   job (or the reconciliation schedule) asks again later.
//!
//! One payout is processed by one worker at a time (a transaction-scoped
//! advisory lock on a separate connection, released even if the worker dies).
//!
//! [`destination`] parses where the money goes, [`request`] reserves and
//! enqueues, [`process`] runs the state machine; this module holds the
//! payout row, its status and its views.

mod destination;
mod process;
mod request;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

pub use destination::{Iban, PayoutDestination, PaypalEmail};
pub use process::{Processed, Resolution, process, resolve_unfinished, unresolved};
pub use request::{DestinationInput, PayoutRequest, ValidPayout, request};

use super::{
    idempotency::IdempotencyError,
    ledger::LedgerError,
    pagination::{Cursor, newest_first},
};
use crate::{
    crypto::CryptoError,
    ids::{PayoutId, UserId},
    money::{Currency, Money, MoneyError},
    schema::payouts,
    text_enum::text_enum,
};

text_enum! {
    /// Where a payout is (see the module doc for what each step does).
    pub enum PayoutStatus {
        Requested = "requested",
        /// Marked before the provider is called: it may have reached the provider.
        Processing = "processing",
        /// The provider's answer was lost (timeout, 5xx); the money stays reserved.
        SubmittedUnknown = "submitted_unknown",
        Paid = "paid",
        Failed = "failed",
    }
}

impl PayoutStatus {
    /// Not finished: what the reconciliation schedule looks at.
    pub const UNRESOLVED: [PayoutStatus; 3] = [
        PayoutStatus::Requested,
        PayoutStatus::Processing,
        PayoutStatus::SubmittedUnknown,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, PayoutStatus::Paid | PayoutStatus::Failed)
    }

    /// The legal steps: requested → processing; processing and
    /// submitted_unknown → processing (sent again, or pending at the
    /// provider), submitted_unknown, paid or failed. Paid and failed are final.
    pub fn can_become(self, to: PayoutStatus) -> bool {
        use PayoutStatus::*;
        matches!(
            (self, to),
            (Requested, Processing)
                | (
                    Processing | SubmittedUnknown,
                    Processing | SubmittedUnknown | Paid | Failed
                )
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayoutError {
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error("the available balance does not cover this payout")]
    InsufficientFunds,
    #[error("payout not found")]
    NotFound,
    #[error("the payout destination cannot be decrypted: {0}")]
    Destination(#[from] CryptoError),
    #[error("the stored payout amount is not money: {0}")]
    Amount(#[from] MoneyError),
    #[error("database pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

impl From<LedgerError> for PayoutError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::InsufficientFunds => PayoutError::InsufficientFunds,
            LedgerError::Db(d) => PayoutError::Db(d),
        }
    }
}

/// A payout as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PayoutView {
    pub id: PayoutId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PayoutStatus,
    pub destination: MaskedDestination,
    /// Why the payout failed, when it did.
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MaskedDestination {
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(example = "DE89 •••• 3000")]
    pub masked: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = payouts, check_for_backend(diesel::pg::Pg))]
pub struct Payout {
    pub id: PayoutId,
    pub user_id: UserId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PayoutStatus,
    pub destination_type: String,
    pub destination_encrypted: Vec<u8>,
    pub destination_masked: String,
    pub provider_reference: Option<String>,
    pub failure_reason: Option<String>,
    pub provider_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Payout {
    /// What the payout moves (the table holds only positive amounts).
    pub fn amount(&self) -> Result<Money, MoneyError> {
        Money::new(self.amount_minor, self.currency)
    }
}

impl From<&Payout> for PayoutView {
    fn from(p: &Payout) -> Self {
        Self {
            id: p.id,
            amount_minor: p.amount_minor,
            currency: p.currency,
            status: p.status,
            destination: MaskedDestination {
                kind: p.destination_type.clone(),
                masked: p.destination_masked.clone(),
            },
            failure_reason: p.failure_reason.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

fn aad(payout: PayoutId) -> String {
    format!("payout:{payout}:destination")
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    user: UserId,
    id: PayoutId,
) -> Result<PayoutView, PayoutError> {
    payouts::table
        .find(id)
        .filter(payouts::user_id.eq(user))
        .select(Payout::as_select())
        .first(conn)
        .await
        .optional()?
        .map(|p| PayoutView::from(&p))
        .ok_or(PayoutError::NotFound)
}

/// The user's payouts, newest first, `limit + 1` rows to detect a next page.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user: UserId,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Payout>, PayoutError> {
    let q = payouts::table
        .filter(payouts::user_id.eq(user))
        .limit(limit)
        .select(Payout::as_select())
        .into_boxed();
    let q = newest_first!(q, payouts, after.map(Cursor::key));
    Ok(q.load(conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payout_lifecycle() {
        use PayoutStatus::*;
        for to in PayoutStatus::ALL {
            assert!(!Paid.can_become(*to) && !Failed.can_become(*to));
            assert_eq!(PayoutStatus::UNRESOLVED.contains(to), !to.is_final());
        }
        assert!(Requested.can_become(Processing));
        assert!(
            !Requested.can_become(Paid),
            "nothing is paid before it is sent"
        );
        assert!(SubmittedUnknown.can_become(Paid));
    }
}
