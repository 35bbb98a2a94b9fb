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
//!   has never seen is sent (again under the same idempotency key);
//! - the provider says paid → reserved → paid_out, `paid`, email;
//!   it refuses or reports failed → reserved → available, `failed`, email;
//!   a timeout or 5xx → `submitted_unknown`, the reservation stays, and the
//!   job (or the reconciliation schedule) asks again later.
//!
//! One payout is processed by one worker at a time (a transaction-scoped
//! advisory lock on a separate connection, released even if the worker dies).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::{
    FieldError,
    idempotency::{self, IdempotencyError, IdempotencyKey, Outcome},
    ledger::{self, AccountKind, AccountRef, LedgerError, Transfer},
    pagination::{Cursor, newest_first},
};
use crate::{
    crypto::{CryptoError, Keyring},
    db::{self, DbPool},
    ids::{PayoutId, UserId},
    jobs::{self, EmailKind, ProcessPayout, SendEmail},
    money::{Currency, Money, MoneyError},
    payout_provider::{
        Destination, PayoutOrder, PayoutProvider, ProviderError, ProviderPayout, ProviderStatus,
    },
    schema::{payouts, users},
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
    pub kind: &'static str,
    /// Normalised (IBAN without spaces, upper case; e-mail trimmed).
    pub destination: String,
}

impl PayoutRequest {
    pub fn validate(&self, min_amount_minor: i64) -> Result<ValidPayout, Vec<FieldError>> {
        let mut errors = Vec::new();
        let amount = Money::parse(self.amount_minor, &self.currency);
        let bad = amount.as_ref().err();
        if self.amount_minor < min_amount_minor || bad.is_some_and(|b| b.amount.is_some()) {
            errors.push(FieldError::new(
                "amount_minor",
                &format!("must be at least {min_amount_minor} (minor units)"),
            ));
        }
        if bad.is_some_and(|b| b.currency.is_some()) {
            errors.push(FieldError::new(
                "currency",
                "must be an ISO-4217 code of three capital letters",
            ));
        }
        let destination = match self.destination.kind.as_str() {
            "iban" => normalise_iban(&self.destination.value)
                .map(|v| ("iban", v))
                .ok_or_else(|| {
                    FieldError::new(
                        "destination.value",
                        "is not a valid IBAN (country, check digits and account, mod-97)",
                    )
                }),
            "paypal" => normalise_email(&self.destination.value)
                .map(|v| ("paypal", v))
                .ok_or_else(|| {
                    FieldError::new("destination.value", "is not a valid e-mail address")
                }),
            _ => Err(FieldError::new(
                "destination.type",
                "must be `iban` or `paypal`",
            )),
        };
        let destination = destination.map_err(|e| errors.push(e)).ok();
        match (amount, destination) {
            (Ok(amount), Some((kind, destination))) if errors.is_empty() => Ok(ValidPayout {
                amount,
                kind,
                destination,
            }),
            _ => Err(errors),
        }
    }
}

/// An IBAN without spaces in upper case, if its structure and mod-97 check hold.
pub fn normalise_iban(raw: &str) -> Option<String> {
    let iban: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let b = iban.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    let rearranged = b[4..].iter().chain(&b[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = if c.is_ascii_digit() {
            (c - b'0') as u32
        } else {
            (c - b'A') as u32 + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then_some(iban)
}

fn normalise_email(raw: &str) -> Option<String> {
    let v = raw.trim();
    let (local, domain) = v.split_once('@')?;
    let ok = !local.is_empty()
        && v.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@');
    ok.then(|| v.to_owned())
}

/// The masked form shown to users and admins.
pub fn mask(kind: &str, destination: &str) -> String {
    match kind {
        "iban" => {
            let n = destination.len();
            format!("{} •••• {}", &destination[..4], &destination[n - 4..])
        }
        _ => match destination.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}•••@{domain}")
            }
            None => "•••".into(),
        },
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
                    payouts::destination_type.eq(input.kind),
                    payouts::destination_encrypted
                        .eq(keys.seal(input.destination.as_bytes(), &aad(id))),
                    payouts::destination_masked.eq(mask(input.kind, &input.destination)),
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
    let q = newest_first!(q, payouts::created_at, payouts::id, after.map(Cursor::key));
    Ok(q.load(conn).await?)
}

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
        ledger::post(
            conn,
            &Transfer {
                id: format!("payout:{id}:{suffix}"),
                from: AccountRef::user(user, AccountKind::Reserved),
                to: AccountRef::user(user, to),
                amount,
                kind,
                user_id: Some(user),
                purchase_id: None,
                reward_id: None,
                payout_id: Some(id),
            },
        )
        .await?;
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
                dedupe_key: format!("payout:{id}:{suffix}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_checksum_and_masking() {
        let iban = normalise_iban("de89 3704 0044 0532 0130 00").unwrap();
        assert_eq!(iban, "DE89370400440532013000");
        assert_eq!(mask("iban", &iban), "DE89 •••• 3000");
        assert!(normalise_iban("DE88 3704 0044 0532 0130 00").is_none());
        assert!(normalise_iban("GB82 WEST 1234 5698 7654 32").is_some());
        assert!(normalise_iban("DE89").is_none());
        assert_eq!(mask("paypal", "jane@example.com"), "j•••@example.com");
    }

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
