//! A reward's money: the ledger transfers of each lifecycle step. Each step
//! runs inside the caller's transaction, with the reward row locked, and posts
//! transfers whose ids derive from the reward (`reward:<purchase>:<seq>:...`),
//! so running a step twice moves money once.
//!
//! | from → to | money |
//! | --- | --- |
//! | (new) → pending | cashback_expense → pending |
//! | pending → confirmed | pending → receivable (what the user owes, first), rest → available |
//! | pending/flagged → reversed, or → voided | pending → cashback_expense |
//! | confirmed → reversed | available → cashback_expense, shortfall: receivable → cashback_expense |

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::ledger::{self, AccountKind::*, AccountRef, LedgerError, Transfer};
use crate::{
    ids::{PurchaseId, RewardId},
    jobs::RewardTransition,
    models::{
        purchase::PurchaseStatus,
        reward::{Reward, RewardStatus},
    },
    money::Money,
    schema::{purchases, rewards},
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
    if let Some(amount) = r.amount()
        && r.status == RewardStatus::Pending
    {
        ledger::post(
            conn,
            &transfer(
                r,
                "credit",
                AccountRef::platform(CashbackExpense),
                user(r, Pending),
                amount,
                "reward_credit",
            ),
        )
        .await?;
        super::stats::schedule_recompute(conn, r.user_id).await?;
    }
    Ok(())
}

/// pending → confirmed: the amount becomes available, after settling what the
/// user owes on their receivable.
pub async fn confirm(conn: &mut AsyncPgConnection, id: RewardId) -> Result<Step, RewardError> {
    let r = lock(conn, id).await?;
    if r.status == RewardStatus::Confirmed {
        return Ok(Step::AlreadyThere);
    }
    check(&r, RewardStatus::Confirmed)?;
    if let Some(amount) = r.amount() {
        let owed = -ledger::balance(conn, user(&r, Receivable), r.currency).await?;
        let (settle, rest) = amount.split(owed);
        if let Some(settle) = settle {
            ledger::post(
                conn,
                &transfer(
                    &r,
                    "settle",
                    user(&r, Pending),
                    user(&r, Receivable),
                    settle,
                    "receivable_settlement",
                ),
            )
            .await?;
        }
        if let Some(rest) = rest {
            ledger::post(
                conn,
                &transfer(
                    &r,
                    "confirm",
                    user(&r, Pending),
                    user(&r, Available),
                    rest,
                    "reward_confirm",
                ),
            )
            .await?;
        }
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

/// What applying a merchant's or an admin's decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The live reward moved (or already had).
    Applied(Step),
    /// No reward yet (attribution has not run): the decision stays recorded
    /// on the purchase and attribution applies it.
    Recorded,
    /// The reward awaits fraud review; the decision is recorded for the reviewer.
    AwaitingReview,
}

/// Applies `to` to a purchase's live reward and keeps the purchase's status in
/// step, in one transaction. Idempotent: applying it twice moves money once.
pub async fn apply_decision(
    conn: &mut AsyncPgConnection,
    purchase_id: PurchaseId,
    to: crate::jobs::RewardTransition,
) -> Result<Decision, RewardError> {
    use diesel_async::AsyncConnection;

    conn.transaction::<Decision, RewardError, _>(async move |conn| {
        let status: PurchaseStatus = purchases::table
            .find(purchase_id)
            .select(purchases::status)
            .for_update()
            .first(conn)
            .await?;
        let live: Option<Reward> = rewards::table
            .filter(rewards::purchase_id.eq(purchase_id))
            .filter(rewards::status.ne(RewardStatus::Voided))
            .select(Reward::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(r) = live else {
            return Ok(Decision::Recorded);
        };
        if r.status == RewardStatus::Flagged && to == RewardTransition::Confirmed {
            return Ok(Decision::AwaitingReview);
        }
        let step = match to {
            RewardTransition::Confirmed => confirm(conn, r.id).await?,
            RewardTransition::Reversed => reverse(conn, r.id, RewardStatus::Reversed).await?,
        };
        diesel::update(purchases::table.find(purchase_id))
            .set(purchases::status.eq(status.becoming(to.into())))
            .execute(conn)
            .await?;
        Ok(Decision::Applied(step))
    })
    .await
}

/// An admin's review of a flagged reward: approval credits it and it follows
/// the normal pending flow; rejection reverses it (no money had moved).
/// Audit-logged in the same transaction.
pub async fn review(
    conn: &mut AsyncPgConnection,
    actor: &super::Actor,
    purchase_id: PurchaseId,
    approve: bool,
) -> Result<Reward, RewardError> {
    use diesel_async::AsyncConnection;

    conn.transaction::<Reward, RewardError, _>(async move |conn| {
        let r: Reward = rewards::table
            .filter(rewards::purchase_id.eq(purchase_id))
            .filter(rewards::status.ne(RewardStatus::Voided))
            .select(Reward::as_select())
            .for_update()
            .first(conn)
            .await?;
        let (reward_status, purchase_status, action) = if approve {
            (RewardStatus::Pending, PurchaseStatus::Attributed, "purchase.approve")
        } else {
            (RewardStatus::Reversed, PurchaseStatus::Reversed, "purchase.reject")
        };
        // Only a flagged reward is reviewed (a pending one may be reversed, but not here).
        if r.status != RewardStatus::Flagged {
            return Err(RewardError::IllegalTransition {
                from: r.status,
                to: reward_status,
            });
        }
        set_status(conn, &r, reward_status).await?;
        let after = lock(conn, r.id).await?;
        credit(conn, &after).await?;
        diesel::update(purchases::table.find(purchase_id))
            .set(purchases::status.eq(purchase_status))
            .execute(conn)
            .await?;
        let decision: Option<RewardTransition> = purchases::table
            .find(purchase_id)
            .select(purchases::merchant_decision)
            .first(conn)
            .await?;
        if approve && decision == Some(RewardTransition::Confirmed) {
            confirm(conn, r.id).await?;
            diesel::update(purchases::table.find(purchase_id))
                .set(purchases::status.eq(purchase_status.becoming(PurchaseStatus::Confirmed)))
                .execute(conn)
                .await?;
        }
        super::audit::record(
            conn,
            actor,
            action,
            "purchase",
            Some(purchase_id.into()),
            Some(serde_json::json!({"reward_status": r.status, "fraud_score": r.fraud_score, "fraud_reasons": r.fraud_reasons})),
            Some(serde_json::json!({"reward_status": reward_status})),
        )
        .await?;
        Ok(lock(conn, r.id).await?)
    })
    .await
}

/// Enqueues the confirmation of at most `batch` pending rewards created at or
/// before `cutoff` (their hold period is over), oldest first; the jobs move
/// the money. Returns how many.
pub async fn confirm_due(
    conn: &mut AsyncPgConnection,
    cutoff: chrono::DateTime<Utc>,
    batch: i64,
) -> Result<usize, diesel::result::Error> {
    use crate::jobs::{self, ApplyRewardTransition, RewardTransition};
    let due: Vec<crate::ids::PurchaseId> = rewards::table
        .filter(rewards::status.eq(RewardStatus::Pending))
        .filter(rewards::created_at.le(cutoff))
        .order(rewards::created_at.asc())
        .select(rewards::purchase_id)
        .limit(batch)
        .load(conn)
        .await?;
    for purchase_id in &due {
        let job = ApplyRewardTransition {
            purchase_id: *purchase_id,
            to: RewardTransition::Confirmed,
            reason: Some("hold period elapsed".into()),
            source: "auto_confirm".into(),
        };
        jobs::enqueue(conn, &job, Utc::now()).await?;
    }
    Ok(due.len())
}
