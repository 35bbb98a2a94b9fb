//! Delayed purchase attribution (`AttributePurchase`).
//!
//! In one transaction, with the purchase locked: resolve its identity group
//! and user, the group's last touchpoint for the merchant inside the
//! attribution window, and the offer active when the purchase was made; compute
//! the cashback (rate, per-purchase cap, then the user's remaining monthly cap,
//! taken under a row lock so two attributions cannot both take the last of
//! it); score fraud; write the reward (its amount, whether it is flagged, and
//! the end of its hold period: the attribution's facts) and its ledger
//! credit, mark the purchase processed, settle it (a merchant decision that
//! arrived first applies now, see `rewards::target`), and enqueue the reward
//! email. Idempotent: a purchase already processed is left alone.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::{
    explanations,
    fraud::{FraudInput, FraudScorer},
    identity, offers,
    rewards::{self as reward_money, RewardError},
};
use crate::{
    cache::Cache,
    config::AttributionConfig,
    ids::{IdentityGroupId, OfferId, PurchaseId, RewardId, TouchpointId, UserId},
    jobs::{self, EmailKind, RewardTransition, SendEmail},
    models::{
        purchase::{Purchase, PurchaseStatus},
        reward::{NewReward, Reward, RewardStatus},
    },
    money::{Currency, cashback_minor},
    schema::{
        identity_groups, merchants, monthly_cap_usage, purchases, rewards, touchpoints, users,
    },
};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    AlreadyProcessed,
    /// No user known yet: looked at again at `recheck_at`.
    Waiting {
        recheck_at: DateTime<Utc>,
    },
    /// No user, touchpoint or offer: no cashback.
    Unattributed {
        reason: &'static str,
    },
    Rewarded {
        reward_id: RewardId,
        amount_minor: i64,
        flagged: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("purchase not found")]
    NotFound,
    #[error(transparent)]
    Reward(#[from] RewardError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// The group a (possibly merged) group id now lives in.
pub async fn surviving_group(
    conn: &mut AsyncPgConnection,
    mut group: IdentityGroupId,
) -> Result<IdentityGroupId, diesel::result::Error> {
    for _ in 0..32 {
        let next: Option<IdentityGroupId> = identity_groups::table
            .find(group)
            .select(identity_groups::merged_into_id)
            .first(conn)
            .await?;
        match next {
            Some(n) => group = n,
            None => return Ok(group),
        }
    }
    Ok(group)
}

fn month_of(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).expect("first of a month exists")
}

/// Takes up to `wanted` from the user's monthly cap for the offer; returns what was granted.
async fn take_from_monthly_cap(
    conn: &mut AsyncPgConnection,
    user: UserId,
    offer: OfferId,
    month: NaiveDate,
    currency: Currency,
    cap: i64,
    wanted: i64,
) -> Result<i64, diesel::result::Error> {
    diesel::insert_into(monthly_cap_usage::table)
        .values((
            monthly_cap_usage::user_id.eq(user),
            monthly_cap_usage::offer_id.eq(offer),
            monthly_cap_usage::month.eq(month),
            monthly_cap_usage::currency.eq(currency),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let used: i64 = monthly_cap_usage::table
        .find((user, offer, month, currency))
        .select(monthly_cap_usage::used_minor)
        .for_update()
        .first(conn)
        .await?;
    let granted = wanted.min((cap - used).max(0));
    if granted > 0 {
        diesel::update(monthly_cap_usage::table.find((user, offer, month, currency)))
            .set(monthly_cap_usage::used_minor.eq(used + granted))
            .execute(conn)
            .await?;
    }
    Ok(granted)
}

/// The user's purchase history the fraud score reads.
#[derive(QueryableByName)]
struct History {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    avg: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    recent: i64,
}

async fn history(
    mut conn: &AsyncPgConnection,
    p: &Purchase,
    user: UserId,
) -> Result<History, diesel::result::Error> {
    diesel::sql_query(
        "SELECT avg(amount_minor)::float8 AS avg,
                count(*) FILTER (WHERE purchased_at > $3 - interval '1 hour' AND purchased_at <= $3) AS recent
           FROM purchases WHERE user_id = $1 AND id <> $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(user)
    .bind::<diesel::sql_types::Uuid, _>(p.id)
    .bind::<diesel::sql_types::Timestamptz, _>(p.purchased_at)
    .get_result(&mut conn)
    .await
}

/// What attribution reads once it knows the purchase's user, in one
/// pipeline: the group's last touchpoint for the merchant inside the window,
/// the user's history for the fraud score, the merchant's name and age, the
/// user's email, and the purchase's next attribution sequence number.
struct Reads {
    touchpoint: Option<TouchpointId>,
    history: History,
    merchant_name: String,
    merchant_created: DateTime<Utc>,
    email: String,
    seq: i32,
}

async fn reads(
    mut conn: &AsyncPgConnection,
    p: &Purchase,
    group: Option<IdentityGroupId>,
    user: UserId,
    cfg: &AttributionConfig,
) -> Result<Reads, diesel::result::Error> {
    let window_start = p.purchased_at - Duration::from_std(cfg.window).unwrap_or_default();
    let touchpoint = touchpoints::table
        .filter(touchpoints::group_id.eq(group.unwrap_or_default()))
        .filter(touchpoints::merchant_id.eq(p.merchant_id))
        .filter(touchpoints::created_at.ge(window_start))
        .filter(touchpoints::created_at.le(p.created_at))
        .order(touchpoints::created_at.desc())
        .select(touchpoints::id)
        .first::<TouchpointId>(&mut conn);
    let merchant = merchants::table
        .find(p.merchant_id)
        .select((merchants::name, merchants::created_at))
        .first::<(String, DateTime<Utc>)>(&mut conn);
    let email = users::table
        .find(user)
        .select(users::email)
        .first::<String>(&mut conn);
    let seq = rewards::table
        .filter(rewards::purchase_id.eq(p.id))
        .select(diesel::dsl::max(rewards::attribution_seq))
        .first::<Option<i32>>(&mut conn);
    let (touchpoint, history, (merchant_name, merchant_created), email, seq) = futures::try_join!(
        async { touchpoint.await.optional() },
        history(conn, p, user),
        merchant,
        email,
        seq,
    )?;
    Ok(Reads {
        touchpoint,
        history,
        merchant_name,
        merchant_created,
        email,
        seq: seq.unwrap_or(0) + 1,
    })
}

fn fraud_input(p: &Purchase, r: &Reads, rate_bps: i32, at_max: bool) -> FraudInput {
    FraudInput {
        amount_minor: p.amount_minor,
        user_average_minor: r.history.avg.map(|a| a as i64),
        user_purchases_last_hour: r.history.recent,
        merchant_age_days: (p.purchased_at - r.merchant_created).num_days(),
        hour_utc: p.purchased_at.hour(),
        rate_bps,
        at_max_cashback: at_max,
    }
}

/// Attributes a purchase (see the module doc).
pub async fn attribute(
    conn: &mut AsyncPgConnection,
    purchase_id: PurchaseId,
    cfg: &AttributionConfig,
    scorer: &dyn FraudScorer,
    cache: &Cache,
) -> Result<Outcome, AttributionError> {
    conn.transaction::<Outcome, AttributionError, _>(async move |conn| {
        let p: Purchase = purchases::table
            .find(purchase_id)
            .select(Purchase::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(AttributionError::NotFound)?;
        if p.rewards_processed_at.is_some() || p.status != PurchaseStatus::Received {
            return Ok(Outcome::AlreadyProcessed);
        }
        let now = Utc::now();
        let group = match p.identity_group_id {
            Some(g) => Some(surviving_group(conn, g).await?),
            None => None,
        };
        // A group holds at most one user: no user yet is not attributable yet.
        let user: Option<UserId> = match group {
            Some(g) => identity::user_of(conn, g).await?,
            None => None,
        };
        let Some(user) = user else {
            let give_up =
                p.created_at + Duration::from_std(cfg.unattributed_after).unwrap_or_default();
            if now >= give_up {
                return unattributed(conn, p.id, group, "no user").await;
            }
            let recheck_at =
                (now + Duration::from_std(cfg.recheck).unwrap_or_default()).min(give_up);
            diesel::update(purchases::table.find(p.id))
                .set((
                    purchases::attribute_after.eq(recheck_at),
                    purchases::identity_group_id.eq(group),
                    purchases::waiting_since.eq(p.waiting_since.unwrap_or(now)),
                ))
                .execute(conn)
                .await?;
            return Ok(Outcome::Waiting { recheck_at });
        };
        let r = reads(conn, &p, group, user, cfg).await?;
        let Some(touchpoint) = r.touchpoint else {
            return unattributed(conn, p.id, group, "no touchpoint in the attribution window")
                .await;
        };
        let Some(offer) =
            offers::active_at_cached(conn, cache, p.merchant_id, p.purchased_at).await?
        else {
            return unattributed(conn, p.id, group, "no active offer").await;
        };

        let capped = offer.max_cashback_minor.is_some() || offer.monthly_cap_minor.is_some();
        if capped && offer.currency.is_some_and(|c| c != p.currency) {
            return unattributed(
                conn,
                p.id,
                group,
                "the offer's caps are in another currency",
            )
            .await;
        }
        let mut amount = cashback_minor(p.amount_minor, offer.rate_bps);
        let at_max = offer.max_cashback_minor.is_some_and(|m| amount >= m);
        if let Some(max) = offer.max_cashback_minor {
            amount = amount.min(max);
        }
        if let Some(cap) = offer.monthly_cap_minor {
            amount = take_from_monthly_cap(
                conn,
                user,
                offer.id,
                month_of(p.purchased_at),
                p.currency,
                cap,
                amount,
            )
            .await?;
        }
        let fraud = scorer.score(&fraud_input(&p, &r, offer.rate_bps, at_max));
        let flagged = fraud.score >= cfg.fraud_threshold;
        let reward: Reward = diesel::insert_into(rewards::table)
            .values(NewReward {
                id: RewardId::new(),
                purchase_id: p.id,
                attribution_seq: r.seq,
                user_id: user,
                offer_id: offer.id,
                touchpoint_id: Some(touchpoint),
                identity_group_id: group,
                amount_minor: amount,
                currency: p.currency,
                status: if flagged {
                    RewardStatus::Flagged
                } else {
                    RewardStatus::Pending
                },
                fraud_score: fraud.score,
                fraud_reasons: serde_json::to_value(&fraud.reasons).unwrap_or_default(),
                flagged,
                hold_until: now + Duration::from_std(cfg.hold_period).unwrap_or_default(),
            })
            .returning(Reward::as_returning())
            .get_result(conn)
            .await?;
        if flagged {
            explanations::request(conn, reward.id, cfg.explain_flagged, now).await?;
        }
        if !flagged && amount > 0 && p.merchant_decision != Some(RewardTransition::Reversed) {
            let job = SendEmail {
                kind: EmailKind::RewardCredited,
                to: r.email.clone(),
                data: serde_json::json!({
                    "amount_minor": amount,
                    "currency": p.currency,
                    "order_id": p.order_id,
                    "merchant": r.merchant_name,
                }),
                dedupe_key: SendEmail::reward_key(reward.id),
            };
            jobs::enqueue(conn, &job, now).await?;
        }
        // What settling would leave when no earlier fact moves the new
        // reward (the common case): its status as created, due again at
        // the end of its hold while pending. Written with the purchase, so
        // that only a purchase with a merchant decision already recorded
        // (or a hold already over) needs `settle`.
        let settled_as_created =
            reward_money::target(&reward_money::Facts::of(&reward, &p), now) == reward.status;
        let (status, settle_due_at) = if settled_as_created {
            (
                reward_money::purchase_status(reward.status),
                (reward.status == RewardStatus::Pending).then_some(reward.hold_until),
            )
        } else {
            (
                if flagged {
                    PurchaseStatus::Flagged
                } else {
                    PurchaseStatus::Attributed
                },
                Some(now),
            )
        };
        diesel::update(purchases::table.find(p.id))
            .set((
                purchases::status.eq(p.status.becoming(status)),
                purchases::user_id.eq(user),
                purchases::identity_group_id.eq(group),
                purchases::rewards_processed_at.eq(now),
                purchases::settle_due_at.eq(settle_due_at),
            ))
            .execute(conn)
            .await?;
        // The ledger last: the user's account rows (and the platform
        // stripe of the user) stay locked from here to the commit only,
        // so attributions of one shopper queue on them for as little as
        // possible.
        reward_money::credit(conn, &reward).await?;
        if !settled_as_created {
            // A merchant decision that arrived before attribution applies now.
            reward_money::settle(conn, p.id).await?;
        }
        metrics::counter!("rewards_total", "status" => reward.status.as_str()).increment(1);
        Ok(Outcome::Rewarded {
            reward_id: reward.id,
            amount_minor: amount,
            flagged,
        })
    })
    .await
}

async fn unattributed(
    conn: &mut AsyncPgConnection,
    purchase: PurchaseId,
    group: Option<IdentityGroupId>,
    reason: &'static str,
) -> Result<Outcome, AttributionError> {
    diesel::update(purchases::table.find(purchase))
        .set((
            purchases::status.eq(PurchaseStatus::Unattributed),
            purchases::rewards_processed_at.eq(Utc::now()),
            purchases::identity_group_id.eq(group),
            purchases::status_reason.eq(reason),
        ))
        .execute(conn)
        .await?;
    Ok(Outcome::Unattributed { reason })
}

/// Re-attribution after a late merge: a processed purchase whose reward is
/// still pending moves to the group's latest click if that changed. The old
/// reward is voided (its money returned, its monthly cap usage released) and
/// a new attribution is credited, in one transaction (attribution's own
/// transaction nests as a savepoint); an admin's review of the old reward
/// carries over to the new one. Confirmed, flagged or
/// reversed rewards are never re-attributed.
pub async fn reattribute(
    conn: &mut AsyncPgConnection,
    purchase_id: PurchaseId,
    cfg: &AttributionConfig,
    scorer: &dyn FraudScorer,
    cache: &Cache,
) -> Result<Outcome, AttributionError> {
    conn.transaction::<Outcome, AttributionError, _>(async move |conn| {
            let p: Purchase = purchases::table
                .find(purchase_id)
                .select(Purchase::as_select())
                .for_update()
                .first(conn)
                .await
                .optional()?
                .ok_or(AttributionError::NotFound)?;
            let Some(group) = p.identity_group_id else { return Ok(Outcome::AlreadyProcessed) };
            let live: Option<Reward> = rewards::table
                .filter(rewards::purchase_id.eq(p.id))
                .filter(rewards::status.eq(RewardStatus::Pending))
                .select(Reward::as_select())
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some(old) = live else {
                tracing::info!(purchase.id = %p.id, "no pending reward; nothing to re-attribute");
                return Ok(Outcome::AlreadyProcessed);
            };
            let group = surviving_group(conn, group).await?;
            let window_start = p.purchased_at - Duration::from_std(cfg.window).unwrap_or_default();
            let latest: Option<TouchpointId> = touchpoints::table
                .filter(touchpoints::group_id.eq(group))
                .filter(touchpoints::merchant_id.eq(p.merchant_id))
                .filter(touchpoints::created_at.ge(window_start))
                .filter(touchpoints::created_at.le(p.created_at))
                .order(touchpoints::created_at.desc())
                .select(touchpoints::id)
                .first(conn)
                .await
                .optional()?;
            if latest.is_none() || latest == old.touchpoint_id {
                tracing::info!(purchase.id = %p.id, "the latest click is unchanged; nothing to re-attribute");
                return Ok(Outcome::AlreadyProcessed);
            }
            reward_money::reverse(conn, old.id, RewardStatus::Voided).await?;
            reward_money::release_monthly_cap(conn, &old, p.purchased_at).await?;
            diesel::update(purchases::table.find(p.id))
                .set((purchases::rewards_processed_at.eq(None::<DateTime<Utc>>), purchases::status.eq(p.status.becoming(PurchaseStatus::Received)), purchases::identity_group_id.eq(group)))
                .execute(conn)
                .await?;
            tracing::info!(purchase.id = %p.id, reward.id = %old.id, "late merge: reward voided for re-attribution");
            // The new reward in the same transaction: a crash leaves either
            // the old reward or the new one, never none, and the cap the old
            // one freed cannot be taken in between.
            let outcome = attribute(conn, purchase_id, cfg, scorer, cache).await?;
            // The admin's review is a fact of the purchase, not of the click
            // it was attributed to: a new reward flagged again keeps it, and
            // is settled with it.
            if let Outcome::Rewarded { reward_id, flagged: true, .. } = outcome
                && old.review.is_some()
            {
                diesel::update(rewards::table.find(reward_id))
                    .set((
                        rewards::review.eq(old.review),
                        rewards::reviewed_by.eq(old.reviewed_by),
                        rewards::reviewed_at.eq(old.reviewed_at),
                    ))
                    .execute(conn)
                    .await?;
                reward_money::settle(conn, purchase_id).await?;
            }
            Ok(outcome)
        })
        .await
}

/// How long past its due time a purchase is left to its own job before the
/// sweep enqueues it again.
const SWEEP_GRACE: Duration = Duration::seconds(30);

/// The sweep: enqueues attribution for at most `batch` purchases due before
/// `now` (less a grace) and still unprocessed: their job was lost, or they
/// wait for a user. Each is enqueued under a task id of this tick, so a
/// purchase still due at a later sweep is enqueued again. Returns how many.
pub async fn sweep_due(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<usize, diesel::result::Error> {
    let ids: Vec<PurchaseId> = Purchase::due_for_attribution(now - SWEEP_GRACE)
        .select(purchases::id)
        .limit(batch)
        .load(conn)
        .await?;
    let tick = now.timestamp();
    for id in &ids {
        let job = jobs::AttributePurchase {
            purchase_id: *id,
            reattribute: false,
        };
        jobs::enqueue_as(conn, &job, &format!("attribute:{id}#s{tick}"), 1, now).await?;
    }
    Ok(ids.len())
}
