//! A reward's money converges from durable facts. Every input that decides
//! it is recorded in PostgreSQL in the transaction that accepts it (the
//! attribution's reward row with its amount, `flagged` and `hold_until`; the
//! merchant's decision on the purchase; the admin's review on the reward).
//! [`target`] is a pure function from those [`Facts`] to the reward's state;
//! [`settle`] is the one step that moves the ledger from the current state to
//! the target. Jobs, the review and the status webhook only record facts and
//! trigger settle; the settle sweep ([`settle_due`]) re-drives every purchase
//! whose `settle_due_at` has come (a lost job, or a hold period that ended).
//!
//! Each money step below runs inside the caller's transaction, with the
//! reward row locked, and posts transfers whose ids derive from the reward
//! (`reward:<purchase>:<seq>:...`), so running a step twice moves money once.
//!
//! | from → to | money |
//! | --- | --- |
//! | (new) → pending | cashback_expense → pending |
//! | flagged → pending (approved) | cashback_expense → pending |
//! | pending → confirmed | pending → receivable (what the user owes, first), rest → available |
//! | pending/flagged → reversed, or → voided | pending → cashback_expense |
//! | confirmed → reversed | available → cashback_expense, shortfall: receivable → cashback_expense |

use chrono::{DateTime, Datelike, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::ledger::{self, AccountKind::*, AccountRef, LedgerError, Transfer};
use crate::{
    ids::{PurchaseId, RewardId},
    jobs::{self, RewardTransition},
    models::{
        purchase::{Purchase, PurchaseStatus},
        reward::{Review, Reward, RewardStatus},
    },
    money::Money,
    schema::{merchants, purchases, rewards, users},
};

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("the reward is {from}; it cannot become {to}")]
    IllegalTransition {
        from: RewardStatus,
        to: RewardStatus,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Applied,
    /// The reward was already in the target state: nothing moved.
    AlreadyThere,
}

fn transfer(
    r: &Reward,
    suffix: &str,
    from: AccountRef,
    to: AccountRef,
    amount: Money,
    kind: &'static str,
) -> Transfer {
    Transfer {
        id: format!("{}:{suffix}", r.transfer_prefix()),
        from,
        to,
        amount,
        kind,
        user_id: Some(r.user_id),
        purchase_id: Some(r.purchase_id),
        reward_id: Some(r.id),
        payout_id: None,
    }
}

fn user(r: &Reward, k: ledger::AccountKind) -> AccountRef {
    AccountRef::user(r.user_id, k)
}

/// Re-reads the reward with a row lock.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    id: RewardId,
) -> Result<Reward, diesel::result::Error> {
    rewards::table
        .find(id)
        .select(Reward::as_select())
        .for_update()
        .first(conn)
        .await
}

/// Refuses a step [`RewardStatus::can_become`] does not allow.
fn check(r: &Reward, to: RewardStatus) -> Result<(), RewardError> {
    if r.status.can_become(to) {
        Ok(())
    } else {
        Err(RewardError::IllegalTransition { from: r.status, to })
    }
}

async fn set_status(
    conn: &mut AsyncPgConnection,
    r: &Reward,
    status: RewardStatus,
) -> Result<(), diesel::result::Error> {
    debug_assert!(r.status.can_become(status), "{} → {status}", r.status);
    let now = Some(Utc::now());
    let (confirmed_at, reversed_at) = match status {
        RewardStatus::Confirmed => (now, r.reversed_at),
        RewardStatus::Reversed | RewardStatus::Voided => (r.confirmed_at, now),
        RewardStatus::Pending | RewardStatus::Flagged => (r.confirmed_at, r.reversed_at),
    };
    diesel::update(rewards::table.find(r.id))
        .set((
            rewards::status.eq(status),
            rewards::confirmed_at.eq(confirmed_at),
            rewards::reversed_at.eq(reversed_at),
        ))
        .execute(conn)
        .await?;
    super::stats::schedule_recompute(conn, r.user_id).await
}

/// Credits a new `pending` reward: cashback_expense → pending.
pub async fn credit(conn: &mut AsyncPgConnection, r: &Reward) -> Result<(), RewardError> {
    credit_many(conn, std::slice::from_ref(r)).await
}

/// [`credit`] for several new rewards, posted together
/// ([`ledger::post_many`]) with one stats recompute per user.
pub async fn credit_many(conn: &mut AsyncPgConnection, rs: &[Reward]) -> Result<(), RewardError> {
    let credited: Vec<(&Reward, Money)> = rs
        .iter()
        .filter(|r| r.status == RewardStatus::Pending)
        .filter_map(|r| Some((r, r.amount()?)))
        .collect();
    if credited.is_empty() {
        return Ok(());
    }
    let transfers: Vec<Transfer> = credited
        .iter()
        .map(|&(r, amount)| {
            transfer(
                r,
                "credit",
                AccountRef::platform(CashbackExpense),
                user(r, Pending),
                amount,
                "reward_credit",
            )
        })
        .collect();
    ledger::post_many(conn, &transfers).await?;
    let users: Vec<_> = credited.iter().map(|(r, _)| r.user_id).collect();
    super::stats::schedule_recompute_many(conn, &users).await?;
    Ok(())
}

/// pending → confirmed: the amount becomes available, after settling what the
/// user owes on their receivable ([`ledger::credit_available`]).
pub async fn confirm(conn: &mut AsyncPgConnection, id: RewardId) -> Result<Step, RewardError> {
    let r = lock(conn, id).await?;
    if r.status == RewardStatus::Confirmed {
        return Ok(Step::AlreadyThere);
    }
    check(&r, RewardStatus::Confirmed)?;
    if let Some(amount) = r.amount() {
        let t = transfer(
            &r,
            "confirm",
            user(&r, Pending),
            user(&r, Available),
            amount,
            "reward_confirm",
        );
        ledger::credit_available(conn, &t, &format!("{}:settle", r.transfer_prefix())).await?;
    }
    set_status(conn, &r, RewardStatus::Confirmed).await?;
    Ok(Step::Applied)
}

/// → reversed (refund, chargeback, admin rejection), or → voided when a late
/// merge re-attributes the purchase. Pending money is voided; confirmed money
/// is taken back from available, the shortfall booked on the receivable.
pub async fn reverse(
    conn: &mut AsyncPgConnection,
    id: RewardId,
    to: RewardStatus,
) -> Result<Step, RewardError> {
    debug_assert!(matches!(to, RewardStatus::Reversed | RewardStatus::Voided));
    let r = lock(conn, id).await?;
    if r.status == to {
        return Ok(Step::AlreadyThere);
    }
    check(&r, to)?;
    match r.status {
        RewardStatus::Pending => {
            if let Some(amount) = r.amount() {
                ledger::post(
                    conn,
                    &transfer(
                        &r,
                        "void",
                        user(&r, Pending),
                        AccountRef::platform(CashbackExpense),
                        amount,
                        "reward_void",
                    ),
                )
                .await?;
            }
        }
        RewardStatus::Confirmed => {
            let available = ledger::balance(conn, user(&r, Available), r.currency).await?;
            let (take, shortfall) = r.amount().map_or((None, None), |a| a.split(available));
            if let Some(take) = take {
                ledger::post(
                    conn,
                    &transfer(
                        &r,
                        "reverse",
                        user(&r, Available),
                        AccountRef::platform(CashbackExpense),
                        take,
                        "reward_reverse",
                    ),
                )
                .await?;
            }
            if let Some(shortfall) = shortfall {
                ledger::post(
                    conn,
                    &transfer(
                        &r,
                        "reverse_shortfall",
                        user(&r, Receivable),
                        AccountRef::platform(CashbackExpense),
                        shortfall,
                        "reward_reverse_shortfall",
                    ),
                )
                .await?;
            }
        }
        // A flagged reward holds no money; reversed and voided ones never get here.
        RewardStatus::Flagged | RewardStatus::Reversed | RewardStatus::Voided => {}
    }
    set_status(conn, &r, to).await?;
    Ok(Step::Applied)
}

/// The facts that decide a reward's money, each recorded in PostgreSQL in the
/// transaction that accepted it, whatever order they arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The attribution's fraud score held the reward for review.
    pub flagged: bool,
    /// The admin's review of a flagged reward.
    pub review: Option<Review>,
    /// The merchant's last word (status webhook), recorded on the purchase
    /// even when it arrives before attribution.
    pub merchant: Option<RewardTransition>,
    /// The end of the hold period, stored when the reward is created.
    pub hold_until: DateTime<Utc>,
}

impl Facts {
    pub fn of(r: &Reward, p: &Purchase) -> Facts {
        Facts {
            flagged: r.flagged,
            review: r.review,
            merchant: p.merchant_decision,
            hold_until: r.hold_until,
        }
    }
}

/// The state a reward's facts call for, first rule that applies:
///
/// 1. the merchant reversed → reversed (over an approval, an elapsed hold or
///    a confirmation);
/// 2. the admin rejected → reversed;
/// 3. flagged and not reviewed → flagged (no money);
/// 4. the merchant confirmed, or the hold period is over → confirmed (a
///    flagged reward gets here only approved);
/// 5. otherwise → pending.
///
/// `voided` is never a target: it is what re-attribution makes of the
/// replaced reward, and settle leaves a voided reward alone.
pub fn target(f: &Facts, now: DateTime<Utc>) -> RewardStatus {
    if f.merchant == Some(RewardTransition::Reversed) || f.review == Some(Review::Rejected) {
        RewardStatus::Reversed
    } else if f.flagged && f.review.is_none() {
        RewardStatus::Flagged
    } else if f.merchant == Some(RewardTransition::Confirmed) || now >= f.hold_until {
        RewardStatus::Confirmed
    } else {
        RewardStatus::Pending
    }
}

/// The purchase status that goes with its live reward's.
pub fn purchase_status(r: RewardStatus) -> PurchaseStatus {
    match r {
        RewardStatus::Pending | RewardStatus::Voided => PurchaseStatus::Attributed,
        RewardStatus::Flagged => PurchaseStatus::Flagged,
        RewardStatus::Confirmed => PurchaseStatus::Confirmed,
        RewardStatus::Reversed => PurchaseStatus::Reversed,
    }
}

/// flagged → pending once approved: the credit attribution held back.
async fn release_flagged(conn: &mut AsyncPgConnection, id: RewardId) -> Result<(), RewardError> {
    let r = lock(conn, id).await?;
    if r.status != RewardStatus::Flagged {
        return Ok(());
    }
    set_status(conn, &r, RewardStatus::Pending).await?;
    let pending = lock(conn, id).await?;
    credit(conn, &pending).await
}

/// Gives the monthly cap a reward took back to the user (it ended reversed).
pub async fn release_monthly_cap(
    conn: &mut AsyncPgConnection,
    r: &Reward,
    purchased_at: DateTime<Utc>,
) -> Result<(), diesel::result::Error> {
    use crate::schema::monthly_cap_usage as m;
    if r.amount_minor <= 0 {
        return Ok(());
    }
    let month = chrono::NaiveDate::from_ymd_opt(purchased_at.year(), purchased_at.month(), 1)
        .expect("first of a month exists");
    diesel::update(m::table.find((r.user_id, r.offer_id, month, r.currency)))
        .set(
            m::used_minor.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "GREATEST(used_minor - ",
            )
            .bind::<diesel::sql_types::BigInt, _>(r.amount_minor)
            .sql(", 0)")),
        )
        .execute(conn)
        .await?;
    Ok(())
}

/// What one [`settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// No live reward (not attributed yet, or unattributed): the facts wait
    /// on the purchase for attribution.
    NoReward,
    /// The live reward went `from` → `to` (equal when nothing had to move).
    Reward {
        from: RewardStatus,
        to: RewardStatus,
    },
}

/// Moves a purchase's live reward to what its facts call for ([`target`]),
/// in one transaction (the caller's, when it has one) with the purchase and
/// reward rows locked: posts the ledger transfers from the current state to
/// the target, releases the monthly cap of a reward that ends reversed, keeps
/// the purchase's status in step, and sets `settle_due_at` to the hold's end
/// while the reward is pending (cleared otherwise). Transfer ids derive from
/// the reward, so settling twice moves money once. States only move forward:
/// a confirmed reward is never made pending again, reversed and voided ones
/// stay.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    purchase_id: PurchaseId,
) -> Result<Settled, RewardError> {
    use diesel_async::AsyncConnection;

    conn.transaction::<Settled, RewardError, _>(async move |conn| {
        let p: Purchase = purchases::table
            .find(purchase_id)
            .select(Purchase::as_select())
            .for_update()
            .first(conn)
            .await?;
        let live: Option<Reward> = rewards::table
            .filter(rewards::purchase_id.eq(purchase_id))
            .filter(rewards::status.ne(RewardStatus::Voided))
            .select(Reward::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some(r) = live else {
            if p.settle_due_at.is_some() {
                diesel::update(purchases::table.find(purchase_id))
                    .set(purchases::settle_due_at.eq(None::<DateTime<Utc>>))
                    .execute(conn)
                    .await?;
            }
            return Ok(Settled::NoReward);
        };
        let to = target(&Facts::of(&r, &p), Utc::now());
        let from = r.status;
        let mut now = from;
        loop {
            use RewardStatus::*;
            match (now, to) {
                (Flagged, Pending | Confirmed) => release_flagged(conn, r.id).await?,
                (Flagged | Pending | Confirmed, Reversed) => {
                    reverse(conn, r.id, Reversed).await?;
                    release_monthly_cap(conn, &r, p.purchased_at).await?;
                }
                (Pending, Confirmed) => {
                    confirm(conn, r.id).await?;
                }
                // Arrived, or behind: money only moves forward.
                _ => break,
            }
            now = lock(conn, r.id).await?.status;
        }
        let status = purchase_status(now);
        let due = (now == RewardStatus::Pending).then_some(r.hold_until);
        if status != p.status || due != p.settle_due_at {
            diesel::update(purchases::table.find(purchase_id))
                .set((
                    purchases::status.eq(status),
                    purchases::settle_due_at.eq(due),
                ))
                .execute(conn)
                .await?;
        }
        if now != from {
            tracing::info!(purchase.id = %purchase_id, reward.id = %r.id, from = from.as_str(), to = now.as_str(), "reward settled");
        }
        Ok(Settled::Reward { from, to: now })
    })
    .await
}

/// Records `settle` as due now for a purchase (a fact was just recorded).
pub async fn mark_due(
    conn: &mut AsyncPgConnection,
    purchase_id: PurchaseId,
) -> Result<(), diesel::result::Error> {
    diesel::update(purchases::table.find(purchase_id))
        .set(purchases::settle_due_at.eq(Utc::now()))
        .execute(conn)
        .await?;
    Ok(())
}

/// An admin's review of a flagged reward, recorded as a fact (approved or
/// rejected, by whom, when) and settled in the same transaction: approval
/// lets it follow the normal flow (pending, or confirmed when the merchant
/// confirmed or the hold is over), rejection reverses it, and a merchant's
/// reversal wins over an approval. A reward that was never flagged, or was
/// reviewed already, is refused. Audit-logged in the same transaction.
pub async fn review(
    conn: &mut AsyncPgConnection,
    actor: &super::Actor,
    purchase_id: PurchaseId,
    approve: bool,
) -> Result<Reward, RewardError> {
    use diesel_async::AsyncConnection;

    conn.transaction::<Reward, RewardError, _>(async move |conn| {
        // The purchase first, then the reward: the order settle locks them in.
        purchases::table
            .find(purchase_id)
            .select(purchases::id)
            .for_update()
            .first::<PurchaseId>(conn)
            .await?;
        let r: Reward = rewards::table
            .filter(rewards::purchase_id.eq(purchase_id))
            .filter(rewards::status.ne(RewardStatus::Voided))
            .select(Reward::as_select())
            .for_update()
            .first(conn)
            .await?;
        let (decision, action) = if approve {
            (Review::Approved, "purchase.approve")
        } else {
            (Review::Rejected, "purchase.reject")
        };
        if !r.flagged || r.review.is_some() {
            return Err(RewardError::IllegalTransition {
                from: r.status,
                to: if approve {
                    RewardStatus::Pending
                } else {
                    RewardStatus::Reversed
                },
            });
        }
        diesel::update(rewards::table.find(r.id))
            .set((
                rewards::review.eq(decision),
                rewards::reviewed_by.eq(actor.user_id),
                // The database's clock, as the transfers it causes are stamped.
                rewards::reviewed_at.eq(diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>>("now()")),
            ))
            .execute(conn)
            .await?;
        settle(conn, purchase_id).await?;
        let after = lock(conn, r.id).await?;
        if approve && RewardStatus::CREDITED.contains(&after.status) && after.amount_minor > 0 {
            enqueue_credited_email(conn, &after).await?;
        }
        super::audit::record(
            conn,
            actor,
            action,
            "purchase",
            Some(purchase_id.into()),
            Some(serde_json::json!({"reward_status": r.status, "fraud_score": r.fraud_score, "fraud_reasons": r.fraud_reasons})),
            Some(serde_json::json!({"reward_status": after.status, "review": decision})),
        )
        .await?;
        Ok(after)
    })
    .await
}

/// The "you earned" email of a flagged reward an admin approved, written
/// with the approval: its attribution sent none, since a flagged reward
/// credits nothing until it is reviewed.
async fn enqueue_credited_email(
    conn: &mut AsyncPgConnection,
    r: &Reward,
) -> Result<(), RewardError> {
    let (order_id, merchant): (String, String) = purchases::table
        .find(r.purchase_id)
        .inner_join(merchants::table)
        .select((purchases::order_id, merchants::name))
        .first(conn)
        .await?;
    let to: String = users::table
        .find(r.user_id)
        .select(users::email)
        .first(conn)
        .await?;
    let email = jobs::SendEmail::reward_credited(
        r.id,
        &to,
        r.amount_minor,
        r.currency,
        &order_id,
        &merchant,
    );
    jobs::enqueue(conn, &email, Utc::now()).await?;
    Ok(())
}

/// What one pass of the settle sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sweep {
    /// Purchases whose settle was due (at most the batch).
    pub due: usize,
    /// Settled now.
    pub settled: usize,
    /// Failed; looked at again a minute later.
    pub failed: usize,
}

/// The settle sweep: settles at most `batch` purchases whose `settle_due_at`
/// is at or before `now` (a fact recorded whose job was lost or has not run,
/// or a hold period that ended), oldest first. Served by the partial index
/// `purchases_settle_due_idx`, so its cost does not grow with the table. A
/// purchase that fails is put back a minute later so it cannot hold up the
/// rest.
pub async fn settle_due(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<Sweep, diesel::result::Error> {
    let due: Vec<PurchaseId> = purchases::table
        .filter(purchases::settle_due_at.is_not_null())
        .filter(purchases::settle_due_at.le(now))
        .order((purchases::settle_due_at.asc(), purchases::id.asc()))
        .select(purchases::id)
        .limit(batch)
        .load(conn)
        .await?;
    let mut s = Sweep {
        due: due.len(),
        ..Default::default()
    };
    for id in due {
        match settle(conn, id).await {
            Ok(_) => s.settled += 1,
            Err(e) => {
                tracing::error!(purchase.id = %id, error = %e, "reward could not be settled; retried in a minute");
                s.failed += 1;
                diesel::update(purchases::table.find(id))
                    .set(purchases::settle_due_at.eq(Utc::now() + chrono::Duration::minutes(1)))
                    .execute(conn)
                    .await?;
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RewardStatus::{Confirmed, Flagged, Reversed};

    /// Every combination of the facts, before and after the hold period.
    #[test]
    fn the_target_of_every_combination_of_facts() {
        let now = Utc::now();
        let mut seen = 0;
        for flagged in [false, true] {
            for review in [None, Some(Review::Approved), Some(Review::Rejected)] {
                if review.is_some() && !flagged {
                    continue; // only a flagged reward is reviewed
                }
                for merchant in [
                    None,
                    Some(RewardTransition::Confirmed),
                    Some(RewardTransition::Reversed),
                ] {
                    for held in [true, false] {
                        let f = Facts {
                            flagged,
                            review,
                            merchant,
                            hold_until: if held {
                                now + chrono::Duration::hours(1)
                            } else {
                                now
                            },
                        };
                        let expected = if merchant == Some(RewardTransition::Reversed)
                            || review == Some(Review::Rejected)
                        {
                            Reversed
                        } else if flagged && review.is_none() {
                            Flagged
                        } else if merchant == Some(RewardTransition::Confirmed) || !held {
                            Confirmed
                        } else {
                            RewardStatus::Pending
                        };
                        assert_eq!(target(&f, now), expected, "{f:?}");
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(
            seen,
            2 * 3 * 4,
            "unflagged: 1 review × 3 × 2; flagged: 3 × 3 × 2"
        );
    }

    #[test]
    fn a_merchant_reversal_wins_over_everything() {
        let now = Utc::now();
        for review in [None, Some(Review::Approved), Some(Review::Rejected)] {
            let f = Facts {
                flagged: true,
                review,
                merchant: Some(RewardTransition::Reversed),
                hold_until: now - chrono::Duration::days(1),
            };
            assert_eq!(target(&f, now), Reversed);
        }
    }

    #[test]
    fn a_flagged_reward_waits_for_its_review_whatever_the_merchant_or_the_hold_say() {
        let now = Utc::now();
        let f = Facts {
            flagged: true,
            review: None,
            merchant: Some(RewardTransition::Confirmed),
            hold_until: now - chrono::Duration::days(1),
        };
        assert_eq!(target(&f, now), Flagged);
        let approved = Facts {
            review: Some(Review::Approved),
            ..f
        };
        assert_eq!(target(&approved, now), Confirmed);
    }
}
