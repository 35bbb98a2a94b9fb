//! Processing a payout: a small state machine that never sends a payout
//! twice and never releases money that might have gone out (the steps are in
//! the doc of [`super`]). One payout is processed by one worker at a time (a
//! transaction-scoped advisory lock on a separate connection, released even
//! if the worker dies).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::{Payout, PayoutError, PayoutStatus, aad};
use crate::{
    crypto::{CryptoError, Keyring},
    db::{self, DbPool},
    ids::PayoutId,
    jobs::{self, EmailKind, SendEmail},
    payout_provider::{
        Destination, PayoutOrder, PayoutProvider, ProviderError, ProviderPayout, ProviderStatus,
    },
    schema::{payouts, users},
    services::ledger::{self, AccountKind, AccountRef, Transfer},
};

/// What one processing pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Paid,
    Failed(String),
    /// Already `paid` or `failed`; nothing to do.
    AlreadyFinal,
    /// The provider accepted it and has not finished; ask again later.
    PendingAtProvider,
    /// The call may have reached the provider; the payout is `submitted_unknown`.
    Unknown(String),
    /// Nothing reached the provider (it is down, or the breaker is open).
    NotSent(String),
    /// Another worker is processing this payout right now.
    Busy,
}

impl Processed {
    /// Whether the payout still needs another pass.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Processed::Paid | Processed::Failed(_) | Processed::AlreadyFinal
        )
    }
}

/// Moves a payout as far as the provider allows (see the module doc).
pub async fn process(
    pool: &DbPool,
    keys: &Keyring,
    provider: &dyn PayoutProvider,
    payout_id: PayoutId,
) -> Result<Processed, PayoutError> {
    let mut lock_conn = pool
        .get()
        .await
        .map_err(|e| PayoutError::Pool(e.to_string()))?;
    let lock = db::lock_key(&format!("payout:{payout_id}"));
    lock_conn
        .transaction::<Processed, PayoutError, _>(async move |lc| {
            if !db::try_xact_lock(lc, lock).await? {
                return Ok(Processed::Busy);
            }
            let mut conn = pool
                .get()
                .await
                .map_err(|e| PayoutError::Pool(e.to_string()))?;
            process_locked(&mut conn, keys, provider, payout_id).await
        })
        .await
}

async fn load(conn: &mut AsyncPgConnection, id: PayoutId) -> Result<Payout, PayoutError> {
    payouts::table
        .find(id)
        .select(Payout::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(PayoutError::NotFound)
}

async fn set_status(
    conn: &mut AsyncPgConnection,
    id: PayoutId,
    from: PayoutStatus,
    to: PayoutStatus,
    bump_attempts: bool,
) -> Result<(), PayoutError> {
    debug_assert!(from.can_become(to), "payout {from} cannot become {to}");
    diesel::update(payouts::table.find(id))
        .set((
            payouts::status.eq(to),
            payouts::provider_attempts.eq(payouts::provider_attempts + i32::from(bump_attempts)),
            payouts::submitted_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

async fn process_locked(
    conn: &mut AsyncPgConnection,
    keys: &Keyring,
    provider: &dyn PayoutProvider,
    id: PayoutId,
) -> Result<Processed, PayoutError> {
    let p = load(conn, id).await?;
    // A resend follows an attempt that may have reached the provider.
    let resend = matches!(
        p.status,
        PayoutStatus::Processing | PayoutStatus::SubmittedUnknown
    );
    match p.status {
        PayoutStatus::Paid | PayoutStatus::Failed => return Ok(Processed::AlreadyFinal),
        PayoutStatus::Requested => {}
        // An earlier attempt may have reached the provider: ask before sending.
        PayoutStatus::Processing | PayoutStatus::SubmittedUnknown => {
            match provider.find(id).await {
                Ok(Some(found)) => return settle(conn, &p, &found).await,
                Ok(None) => {
                    tracing::info!(payout.id = %id, "the provider has never seen this payout; sending it");
                }
                Err(e) => return Ok(not_settled(e)),
            }
        }
    }
    let destination = String::from_utf8(keys.open(&p.destination_encrypted, &aad(id))?)
        .map_err(|_| PayoutError::Destination(CryptoError::Malformed))?;
    // Durable before the call: a crash from here on makes the next pass ask first.
    set_status(conn, id, p.status, PayoutStatus::Processing, true).await?;
    let order = PayoutOrder {
        reference: id,
        amount_minor: p.amount_minor,
        currency: p.currency,
        destination: Destination {
            kind: p.destination_type.clone(),
            value: destination,
        },
    };
    match provider.create(&order).await {
        Ok(found) => settle(conn, &p, &found).await,
        // A refused resend may be the provider refusing a second copy of a
        // payout it took the first time: it is asked before anything is
        // released.
        Err(ProviderError::Rejected(reason)) if resend => match provider.find(id).await {
            Ok(Some(found)) => settle(conn, &p, &found).await,
            Ok(None) => fail(conn, &p, None, &reason).await,
            Err(e) => {
                let unknown = PayoutStatus::SubmittedUnknown;
                set_status(conn, id, PayoutStatus::Processing, unknown, false).await?;
                tracing::warn!(payout.id = %id, %reason, error = %e, "resend refused and the provider could not be asked; the reservation stays");
                Ok(Processed::Unknown(reason))
            }
        },
        Err(ProviderError::Rejected(reason)) => fail(conn, &p, None, &reason).await,
        Err(ProviderError::Unknown(reason)) => {
            let unknown = PayoutStatus::SubmittedUnknown;
            set_status(conn, id, PayoutStatus::Processing, unknown, false).await?;
            tracing::warn!(payout.id = %id, %reason, "payout outcome unknown; the reservation stays until the provider is asked");
            metrics::counter!("payouts_total", "outcome" => unknown.as_str()).increment(1);
            Ok(Processed::Unknown(reason))
        }
        Err(e) => Ok(not_settled(e)),
    }
}

fn not_settled(e: ProviderError) -> Processed {
    match e {
        ProviderError::Unknown(r) => Processed::Unknown(r),
        other => Processed::NotSent(other.to_string()),
    }
}

/// Applies what the provider reports.
async fn settle(
    conn: &mut AsyncPgConnection,
    p: &Payout,
    found: &ProviderPayout,
) -> Result<Processed, PayoutError> {
    match found.status {
        ProviderStatus::Paid => pay(conn, p, &found.id).await,
        ProviderStatus::Failed => {
            let reason = found
                .failure_reason
                .clone()
                .unwrap_or_else(|| "the provider could not complete it".into());
            fail(conn, p, Some(&found.id), &reason).await
        }
        ProviderStatus::Pending => {
            diesel::update(payouts::table.find(p.id))
                .set((
                    payouts::status.eq(PayoutStatus::Processing),
                    payouts::provider_reference.eq(&found.id),
                ))
                .execute(conn)
                .await?;
            Ok(Processed::PendingAtProvider)
        }
    }
}

/// Finishes a payout: posts its ledger transfer, records the outcome and
/// enqueues the email, in one transaction; idempotent.
async fn finish(
    conn: &mut AsyncPgConnection,
    p: &Payout,
    provider_ref: Option<&str>,
    paid: bool,
    reason: Option<&str>,
) -> Result<bool, PayoutError> {
    let (id, user) = (p.id, p.user_id);
    let amount = p.amount()?;
    let masked = p.destination_masked.clone();
    let provider_ref = provider_ref.map(str::to_owned);
    let reason = reason.map(str::to_owned);
    conn.transaction::<bool, PayoutError, _>(async move |conn| {
        let (status, known_ref): (PayoutStatus, Option<String>) = payouts::table
            .find(id)
            .select((payouts::status, payouts::provider_reference))
            .for_update()
            .first(conn)
            .await?;
        if status.is_final() {
            return Ok(false);
        }
        let (suffix, to, kind, new_status, email) = if paid {
            (
                "paid",
                AccountKind::PaidOut,
                "payout_paid",
                PayoutStatus::Paid,
                EmailKind::PayoutPaid,
            )
        } else {
            (
                "release",
                AccountKind::Available,
                "payout_released",
                PayoutStatus::Failed,
                EmailKind::PayoutFailed,
            )
        };
        debug_assert!(
            status.can_become(new_status),
            "payout {status} cannot become {new_status}"
        );
        let t = Transfer {
            id: format!("payout:{id}:{suffix}"),
            from: AccountRef::user(user, AccountKind::Reserved),
            to: AccountRef::user(user, to),
            amount,
            kind,
            user_id: Some(user),
            purchase_id: None,
            reward_id: None,
            payout_id: Some(id),
        };
        if paid {
            ledger::post(conn, &t).await?;
        } else {
            // Back to available: what the user owes is settled first.
            ledger::credit_available(conn, &t, &format!("payout:{id}:release_settle")).await?;
        }
        diesel::update(payouts::table.find(id))
            .set((
                payouts::status.eq(new_status),
                payouts::completed_at.eq(diesel::dsl::now),
                payouts::failure_reason.eq(&reason),
                payouts::provider_reference.eq(provider_ref.or(known_ref)),
            ))
            .execute(conn)
            .await?;
        let to_email: String = users::table
            .find(user)
            .select(users::email)
            .first(conn)
            .await?;
        jobs::enqueue(
            conn,
            &SendEmail {
                kind: email,
                to: to_email,
                data: serde_json::json!({
                    "amount_minor": amount.amount_minor(),
                    "currency": amount.currency(),
                    "destination": masked,
                    "reason": reason,
                }),
                dedupe_key: SendEmail::payout_key(id, suffix),
            },
            Utc::now(),
        )
        .await?;
        Ok(true)
    })
    .await
}

async fn pay(
    conn: &mut AsyncPgConnection,
    p: &Payout,
    provider_ref: &str,
) -> Result<Processed, PayoutError> {
    if !finish(conn, p, Some(provider_ref), true, None).await? {
        return Ok(Processed::AlreadyFinal);
    }
    tracing::info!(payout.id = %p.id, provider.reference = provider_ref, "payout paid");
    metrics::counter!("payouts_total", "outcome" => PayoutStatus::Paid.as_str()).increment(1);
    Ok(Processed::Paid)
}

async fn fail(
    conn: &mut AsyncPgConnection,
    p: &Payout,
    provider_ref: Option<&str>,
    reason: &str,
) -> Result<Processed, PayoutError> {
    if !finish(conn, p, provider_ref, false, Some(reason)).await? {
        return Ok(Processed::AlreadyFinal);
    }
    tracing::warn!(payout.id = %p.id, reason, "payout failed; the amount is available again");
    metrics::counter!("payouts_total", "outcome" => PayoutStatus::Failed.as_str()).increment(1);
    Ok(Processed::Failed(reason.to_owned()))
}

/// Payouts not finished `older_than` after their last change, oldest first:
/// what the reconciliation schedule looks at.
pub async fn unresolved(
    conn: &mut AsyncPgConnection,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<PayoutId>, PayoutError> {
    Ok(payouts::table
        .filter(payouts::status.eq_any(PayoutStatus::UNRESOLVED))
        .filter(payouts::updated_at.lt(older_than))
        .order(payouts::updated_at.asc())
        .limit(limit)
        .select(payouts::id)
        .load(conn)
        .await?)
}

/// What one pass over unfinished payouts did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Unfinished payouts found (at most the pass's limit).
    pub found: usize,
    /// Paid or failed now, or found already final.
    pub settled: usize,
    /// Looked at and still unfinished (pending at the provider, outcome
    /// unknown, busy, provider unreachable, or an error).
    pub waiting: usize,
}

/// Settles at most `limit` payouts unfinished since before `older_than`
/// (found over `conn`; each processed over connections of `pool`) through the same path as `ProcessPayout` ([`process`]: the provider is
/// asked first, only what it never received is sent). Stops at the first
/// payout the provider cannot be reached for; the rest wait for the next pass.
pub async fn resolve_unfinished(
    conn: &mut AsyncPgConnection,
    pool: &DbPool,
    keys: &Keyring,
    provider: &dyn PayoutProvider,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Resolution, PayoutError> {
    let stuck = unresolved(conn, older_than, limit).await?;
    let mut r = Resolution {
        found: stuck.len(),
        ..Default::default()
    };
    for id in &stuck {
        match process(pool, keys, provider, *id).await {
            Ok(p) if p.is_final() => r.settled += 1,
            Ok(Processed::NotSent(reason)) => {
                tracing::warn!(payout.id = %id, %reason, "payout provider unreachable; resolution stops for this run");
                r.waiting += 1;
                break;
            }
            Ok(_) => r.waiting += 1,
            Err(e) => {
                tracing::error!(payout.id = %id, error = %e, "payout could not be resolved");
                r.waiting += 1;
            }
        }
    }
    Ok(r)
}
