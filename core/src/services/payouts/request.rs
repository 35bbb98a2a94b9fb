//! Requesting a payout: the request validated into money and a destination,
//! then the amount reserved (available → reserved) in the same transaction
//! that records the payout and enqueues `ProcessPayout`. The database's
//! non-negative balance check makes "more than available" fail whatever the
//! concurrency.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Deserialize;

use super::{Payout, PayoutError, PayoutView, aad, destination::PayoutDestination};
use crate::{
    crypto::Keyring,
    ids::{PayoutId, UserId},
    jobs::{self, ProcessPayout},
    money::Money,
    schema::payouts,
    services::{
        FieldError,
        idempotency::{self, IdempotencyKey, Outcome},
        ledger::{self, AccountKind, AccountRef, Transfer},
    },
};

/// Where the money goes, as the client sends it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationInput {
    /// `iban` or `paypal`.
    #[serde(rename = "type")]
    #[schema(example = "iban")]
    pub kind: String,
    /// The IBAN (spaces allowed) or the PayPal e-mail address.
    #[schema(example = "DE89 3704 0044 0532 0130 00")]
    pub value: String,
}

/// `POST /v1/payouts` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    pub amount_minor: i64,
    /// An ISO-4217 code.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    pub destination: DestinationInput,
}

/// A payout request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidPayout {
    pub amount: Money,
    /// Normalised (IBAN without spaces, upper case; e-mail trimmed).
    pub destination: PayoutDestination,
}

impl PayoutRequest {
    pub fn validate(&self, min_amount_minor: i64) -> Result<ValidPayout, Vec<FieldError>> {
        let mut errors = Vec::new();
        let amount = Money::parse(self.amount_minor, &self.currency);
        let bad = amount.as_ref().err();
        if self.amount_minor < min_amount_minor || bad.is_some_and(|b| b.amount.is_some()) {
            errors.push(FieldError::new(
                "amount_minor",
                &format!(
                    "must be at least {min_amount_minor} and at most {} (minor units)",
                    crate::money::MAX_AMOUNT_MINOR
                ),
            ));
        }
        if bad.is_some_and(|b| b.currency.is_some()) {
            errors.push(FieldError::new(
                "currency",
                "must be an ISO-4217 code of three capital letters",
            ));
        }
        let destination = PayoutDestination::parse(&self.destination);
        let destination = destination.map_err(|e| errors.push(e)).ok();
        match (amount, destination) {
            (Ok(amount), Some(destination)) if errors.is_empty() => Ok(ValidPayout {
                amount,
                destination,
            }),
            _ => Err(errors),
        }
    }
}

/// Records a payout request, reserves its amount and enqueues `ProcessPayout`,
/// in one transaction under the idempotency key.
pub async fn request(
    conn: &mut AsyncPgConnection,
    keys: &Keyring,
    user: UserId,
    key: &IdempotencyKey,
    input: ValidPayout,
) -> Result<Outcome, PayoutError> {
    let amount = input.amount;
    let outcome = conn
        .transaction::<Outcome, PayoutError, _>(async move |conn| {
            if let Some(replay) = idempotency::begin::<PayoutError>(conn, key).await? {
                return Ok(replay);
            }
            let id = PayoutId::new();
            let p: Payout = diesel::insert_into(payouts::table)
                .values((
                    payouts::id.eq(id),
                    payouts::user_id.eq(user),
                    payouts::amount_minor.eq(amount.amount_minor()),
                    payouts::currency.eq(amount.currency()),
                    payouts::destination_type.eq(input.destination.kind()),
                    payouts::destination_encrypted
                        .eq(keys.seal(input.destination.as_str().as_bytes(), &aad(id))),
                    payouts::destination_masked.eq(input.destination.masked()),
                ))
                .returning(Payout::as_returning())
                .get_result(conn)
                .await?;
            ledger::post(
                conn,
                &Transfer {
                    id: format!("payout:{id}:reserve"),
                    from: AccountRef::user(user, AccountKind::Available),
                    to: AccountRef::user(user, AccountKind::Reserved),
                    amount,
                    kind: "payout_reserve",
                    user_id: Some(user),
                    purchase_id: None,
                    reward_id: None,
                    payout_id: Some(id),
                },
            )
            .await?;
            jobs::enqueue_as(
                conn,
                &ProcessPayout { payout_id: id },
                &format!("payout:{id}"),
                1,
                Utc::now(),
            )
            .await?;
            let body = serde_json::to_value(PayoutView::from(&p)).expect("views serialize");
            Ok(idempotency::finish(conn, key, 202, body).await?)
        })
        .await?;
    if !outcome.replayed {
        tracing::info!(
            user.id = %user,
            payout.id = %outcome.body["id"].as_str().unwrap_or_default(),
            amount.minor = amount.amount_minor(),
            "payout requested; amount reserved"
        );
        metrics::counter!("payouts_requested_total").increment(1);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_every_bad_field() {
        let r = PayoutRequest {
            amount_minor: 5,
            currency: "eur".into(),
            destination: DestinationInput {
                kind: "cash".into(),
                value: "x".into(),
            },
        };
        let fields: Vec<String> = r
            .validate(100)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["amount_minor", "currency", "destination.type"]);
    }
}
