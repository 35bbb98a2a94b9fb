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
//!
//! A job attributes its purchase together with other due purchases no other
//! transaction holds ([`attribute_due`], `ATTRIBUTION_BATCH`): each is read
//! and decided on its own, and the batch's rows are written with one
//! statement per table, so a burst costs a few statements per purchase
//! rather than a transaction each.

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
    jobs::{self, Job, RewardTransition, SendEmail},
    models::{
        offer::Offer,
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
    mut conn: &AsyncPgConnection,
    mut group: IdentityGroupId,
) -> Result<IdentityGroupId, diesel::result::Error> {
    for _ in 0..32 {
        let next: Option<IdentityGroupId> = identity_groups::table
            .find(group)
            .select(identity_groups::merged_into_id)
            .first(&mut conn)
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
#[derive(QueryableByName, Clone, Copy)]
struct History {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    avg: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    recent: i64,
}

impl History {
    /// The history as it would be had the user's purchases decided earlier
    /// in the same batch (`(amount, purchased_at)`) been attributed before
    /// this one, at `at`: a burst of one shopper scores as it would one by one.
    fn with_earlier(self, earlier: &[(i64, DateTime<Utc>)], at: DateTime<Utc>) -> History {
        if earlier.is_empty() {
            return self;
        }
        let k = earlier.len() as i64;
        let sum: i64 = earlier.iter().map(|(a, _)| a).sum();
        let n = self.n + k;
        let avg = (self.avg.unwrap_or(0.0) * self.n as f64 + sum as f64) / n as f64;
        let recent = earlier
            .iter()
            .filter(|(_, t)| *t > at - Duration::hours(1) && *t <= at)
            .count() as i64;
        History {
            avg: Some(avg),
            n,
            recent: self.recent + recent,
        }
    }
}

async fn history(
    mut conn: &AsyncPgConnection,
    p: &Purchase,
    user: UserId,
) -> Result<History, diesel::result::Error> {
    diesel::sql_query(
        "SELECT avg(amount_minor)::float8 AS avg, count(*) AS n,
                count(*) FILTER (WHERE purchased_at > $3 - interval '1 hour' AND purchased_at <= $3) AS recent
           FROM purchases WHERE user_id = $1 AND id <> $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(user)
    .bind::<diesel::sql_types::Uuid, _>(p.id)
    .bind::<diesel::sql_types::Timestamptz, _>(p.purchased_at)
    .get_result(&mut conn)
    .await
}

/// What attribution reads of a purchase once it knows its user: the
/// group's last touchpoint for the merchant inside the window, the user's
/// history for the fraud score, the merchant's name and age, the user's
/// email, and the purchase's next attribution sequence number.
struct Reads {
    touchpoint: Option<TouchpointId>,
    history: History,
    merchant_name: String,
    merchant_created: DateTime<Utc>,
    email: String,
    seq: i32,
}

/// The last touchpoint of `group` for the purchase's merchant inside the
/// attribution window before the purchase arrived.
async fn touchpoint(
    mut conn: &AsyncPgConnection,
    p: &Purchase,
    group: Option<IdentityGroupId>,
    cfg: &AttributionConfig,
) -> Result<Option<TouchpointId>, diesel::result::Error> {
    let window_start = p.purchased_at - Duration::from_std(cfg.window).unwrap_or_default();
    touchpoints::table
        .filter(touchpoints::group_id.eq(group.unwrap_or_default()))
        .filter(touchpoints::merchant_id.eq(p.merchant_id))
        .filter(touchpoints::created_at.ge(window_start))
        .filter(touchpoints::created_at.le(p.created_at))
        .order(touchpoints::created_at.desc())
        .select(touchpoints::id)
        .first(&mut conn)
        .await
        .optional()
}

/// Distinct values, in first-seen order.
fn distinct<T: PartialEq + Copy>(xs: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for x in xs {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Reads a batch of purchases for attribution, in two pipelines: first
/// every group's surviving group and user (once per group), then per
/// purchase with a user its touchpoint and history, per merchant its name
/// and age, per user its email, and every purchase's sequence number in one
/// query. What purchases share is read once.
async fn take(
    mut conn: &AsyncPgConnection,
    batch: Vec<Purchase>,
    cfg: &AttributionConfig,
) -> Result<Vec<Taken>, diesel::result::Error> {
    let groups = distinct(batch.iter().filter_map(|p| p.identity_group_id));
    // A group holds at most one user: no user yet is not attributable yet.
    let resolved: Vec<(IdentityGroupId, Option<UserId>)> =
        futures::future::try_join_all(groups.iter().map(|&g| async move {
            let group = surviving_group(conn, g).await?;
            Ok::<_, diesel::result::Error>((group, identity::user_of(conn, group).await?))
        }))
        .await?;
    let resolved_of = |g: IdentityGroupId| {
        resolved[groups
            .iter()
            .position(|x| *x == g)
            .expect("every group was resolved")]
    };
    let of: Vec<(Option<IdentityGroupId>, Option<UserId>)> = batch
        .iter()
        .map(|p| match p.identity_group_id.map(resolved_of) {
            Some((group, user)) => (Some(group), user),
            None => (None, None),
        })
        .collect();
    let with_user: Vec<(&Purchase, Option<IdentityGroupId>, UserId)> = batch
        .iter()
        .zip(&of)
        .filter_map(|(p, &(group, user))| Some((p, group, user?)))
        .collect();
    let merchants = distinct(with_user.iter().map(|(p, _, _)| p.merchant_id));
    let users = distinct(with_user.iter().map(|&(_, _, u)| u));
    let ids: Vec<PurchaseId> = with_user.iter().map(|(p, _, _)| p.id).collect();
    let (per_purchase, merchant_rows, emails, seqs) = futures::try_join!(
        futures::future::try_join_all(with_user.iter().map(|&(p, group, user)| async move {
            futures::try_join!(touchpoint(conn, p, group, cfg), history(conn, p, user))
        })),
        futures::future::try_join_all(merchants.iter().map(|&m| {
            merchants::table
                .find(m)
                .select((merchants::name, merchants::created_at))
                .first::<(String, DateTime<Utc>)>(&mut conn)
        })),
        futures::future::try_join_all(users.iter().map(|&u| {
            users::table
                .find(u)
                .select(users::email)
                .first::<String>(&mut conn)
        })),
        rewards::table
            .filter(rewards::purchase_id.eq_any(ids))
            .group_by(rewards::purchase_id)
            .select((
                rewards::purchase_id,
                diesel::dsl::max(rewards::attribution_seq)
            ))
            .load::<(PurchaseId, Option<i32>)>(&mut conn),
    )?;
    let mut per_purchase = per_purchase.into_iter();
    let mut taken = Vec::with_capacity(batch.len());
    for (p, (group, user)) in batch.into_iter().zip(of) {
        let reads = match user {
            Some(u) => {
                let (touchpoint, history) = per_purchase
                    .next()
                    .expect("read for every purchase with a user");
                let (merchant_name, merchant_created) = merchant_rows[merchants
                    .iter()
                    .position(|m| *m == p.merchant_id)
                    .expect("read")]
                .clone();
                let seq = seqs
                    .iter()
                    .find(|(id, _)| *id == p.id)
                    .and_then(|(_, s)| *s);
                Some(Reads {
                    touchpoint,
                    history,
                    merchant_name,
                    merchant_created,
                    email: emails[users.iter().position(|x| *x == u).expect("read")].clone(),
                    seq: seq.unwrap_or(0) + 1,
                })
            }
            None => None,
        };
        taken.push(Taken {
            p,
            group,
            user,
            reads,
            offer: None,
        });
    }
    Ok(taken)
}

fn fraud_input(
    p: &Purchase,
    r: &Reads,
    history: History,
    rate_bps: i32,
    at_max: bool,
) -> FraudInput {
    FraudInput {
        amount_minor: p.amount_minor,
        user_average_minor: history.avg.map(|a| a as i64),
        user_purchases_last_hour: history.recent,
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
    Ok(attribute_due(conn, purchase_id, 0, cfg, scorer, cache)
        .await?
        .outcome)
}

/// What [`attribute_due`] did: to its purchase, and to the others it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Attributed {
    pub outcome: Outcome,
    pub others: Vec<(PurchaseId, Outcome)>,
}

/// A purchase taken for attribution, with what was read of it before any
/// row but its own is written: its surviving group, the group's user and,
/// when there is one, the reads the reward needs.
struct Taken {
    p: Purchase,
    group: Option<IdentityGroupId>,
    user: Option<UserId>,
    reads: Option<Reads>,
    /// The offer active when it was made, looked up for a purchase with a
    /// user and a touchpoint.
    offer: Option<Offer>,
}

/// A reward decided for a purchase, written with the others of its batch.
struct Decided {
    p: Purchase,
    group: Option<IdentityGroupId>,
    reward: NewReward,
    email: Option<SendEmail>,
}

/// Attributes `purchase_id` and, in the same transaction, up to `others`
/// other due purchases that no other transaction holds (the newest due
/// first: their own jobs come last, and find them done). Each is decided as
/// in the module doc; the rows of the batch are then written together: the
/// rewards in one insert, the purchases in one update, the reward emails in
/// one outbox insert, and the credits through one [`ledger::post_many`]
/// (one balance update per account), last before the commit. A purchase
/// already processed is seen without opening a transaction.
pub async fn attribute_due(
    conn: &mut AsyncPgConnection,
    purchase_id: PurchaseId,
    others: usize,
    cfg: &AttributionConfig,
    scorer: &dyn FraudScorer,
    cache: &Cache,
) -> Result<Attributed, AttributionError> {
    let done = |outcome| Attributed {
        outcome,
        others: Vec::new(),
    };
    let state: Option<(Option<DateTime<Utc>>, PurchaseStatus)> = purchases::table
        .find(purchase_id)
        .select((purchases::rewards_processed_at, purchases::status))
        .first(conn)
        .await
        .optional()?;
    match state {
        None => return Err(AttributionError::NotFound),
        Some((Some(_), _)) => return Ok(done(Outcome::AlreadyProcessed)),
        Some((None, status)) if status != PurchaseStatus::Received => {
            return Ok(done(Outcome::AlreadyProcessed));
        }
        Some(_) => {}
    }
    conn.transaction::<Attributed, AttributionError, _>(async move |conn| {
        let p: Purchase = purchases::table
            .find(purchase_id)
            .select(Purchase::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(AttributionError::NotFound)?;
        if p.rewards_processed_at.is_some() || p.status != PurchaseStatus::Received {
            return Ok(done(Outcome::AlreadyProcessed));
        }
        let now = Utc::now();
        let mut batch = vec![p];
        if others > 0 {
            let more: Vec<Purchase> = purchases::table
                .filter(purchases::rewards_processed_at.is_null())
                .filter(purchases::status.eq(PurchaseStatus::Received))
                .filter(purchases::attribute_after.le(now))
                .filter(purchases::id.ne(purchase_id))
                .order((purchases::attribute_after.desc(), purchases::id.desc()))
                .limit(others as i64)
                .select(Purchase::as_select())
                .for_update()
                .skip_locked()
                .load(conn)
                .await?;
            batch.extend(more);
        }
        let mut taken = take(conn, batch, cfg).await?;
        for t in &mut taken {
            if t.reads.as_ref().is_some_and(|r| r.touchpoint.is_some()) {
                t.offer = offers::active_at_cached(conn, cache, t.p.merchant_id, t.p.purchased_at)
                    .await?;
            }
        }
        // Monthly caps are taken under row locks: every batch takes them in
        // one order (user, offer, then time), so two batches cannot each
        // hold a cap row the other waits for; a user's purchases are decided
        // in the order they were made.
        taken.sort_by_key(|t| {
            (
                t.user,
                t.offer.as_ref().map(|o| o.id),
                t.p.purchased_at,
                t.p.id,
            )
        });
        let mut outcomes: Vec<(PurchaseId, Option<Outcome>)> = Vec::new();
        let mut decided: Vec<Decided> = Vec::new();
        for t in taken {
            let id = t.p.id;
            let outcome = decide(conn, t, now, cfg, scorer, &mut decided).await?;
            outcomes.push((id, outcome));
        }
        let rewards = write_rewards(conn, decided, now, cfg).await?;
        let outcomes: Vec<(PurchaseId, Outcome)> = outcomes
            .into_iter()
            .map(|(id, o)| {
                let o = o.unwrap_or_else(|| {
                    let r = rewards
                        .iter()
                        .find(|r| r.purchase_id == id)
                        .expect("a decided purchase has its reward");
                    Outcome::Rewarded {
                        reward_id: r.id,
                        amount_minor: r.amount_minor,
                        flagged: r.flagged,
                    }
                });
                (id, o)
            })
            .collect();
        let (own, others): (Vec<_>, Vec<_>) =
            outcomes.into_iter().partition(|(id, _)| *id == purchase_id);
        let (_, outcome) = own
            .into_iter()
            .next()
            .expect("the batch holds its own purchase");
        Ok(Attributed { outcome, others })
    })
    .await
}

/// Decides one taken purchase: an outcome written at once (no user yet, no
/// touchpoint, no offer: `Some`), or a reward pushed onto `decided` for the
/// batch to write (`None`).
async fn decide(
    conn: &mut AsyncPgConnection,
    t: Taken,
    now: DateTime<Utc>,
    cfg: &AttributionConfig,
    scorer: &dyn FraudScorer,
    decided: &mut Vec<Decided>,
) -> Result<Option<Outcome>, AttributionError> {
    let Taken {
        p,
        group,
        user,
        reads,
        offer,
    } = t;
    let (Some(user), Some(r)) = (user, reads) else {
        let give_up = p.created_at + Duration::from_std(cfg.unattributed_after).unwrap_or_default();
        if now >= give_up {
            return unattributed(conn, p.id, group, "no user").await.map(Some);
        }
        let recheck_at = (now + Duration::from_std(cfg.recheck).unwrap_or_default()).min(give_up);
        diesel::update(purchases::table.find(p.id))
            .set((
                purchases::attribute_after.eq(recheck_at),
                purchases::identity_group_id.eq(group),
                purchases::waiting_since.eq(p.waiting_since.unwrap_or(now)),
            ))
            .execute(conn)
            .await?;
        return Ok(Some(Outcome::Waiting { recheck_at }));
    };
    let Some(touchpoint) = r.touchpoint else {
        return unattributed(conn, p.id, group, "no touchpoint in the attribution window")
            .await
            .map(Some);
    };
    let Some(offer) = offer else {
        return unattributed(conn, p.id, group, "no active offer")
            .await
            .map(Some);
    };
    let capped = offer.max_cashback_minor.is_some() || offer.monthly_cap_minor.is_some();
    if capped && offer.currency.is_some_and(|c| c != p.currency) {
        return unattributed(
            conn,
            p.id,
            group,
            "the offer's caps are in another currency",
        )
        .await
        .map(Some);
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
    let earlier: Vec<(i64, DateTime<Utc>)> = decided
        .iter()
        .filter(|d| d.reward.user_id == user)
        .map(|d| (d.p.amount_minor, d.p.purchased_at))
        .collect();
    let history = r.history.with_earlier(&earlier, p.purchased_at);
    let fraud = scorer.score(&fraud_input(&p, &r, history, offer.rate_bps, at_max));
    let flagged = fraud.score >= cfg.fraud_threshold;
    let reward = NewReward {
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
    };
    let email = (!flagged && amount > 0 && p.merchant_decision != Some(RewardTransition::Reversed))
        .then(|| {
            SendEmail::reward_credited(
                reward.id,
                &r.email,
                amount,
                p.currency,
                &p.order_id,
                &r.merchant_name,
            )
        });
    decided.push(Decided {
        p,
        group,
        reward,
        email,
    });
    Ok(None)
}

/// Writes the rewards of a batch and everything that follows from them (see
/// [`attribute_due`]); returns the rewards as written.
async fn write_rewards(
    conn: &mut AsyncPgConnection,
    decided: Vec<Decided>,
    now: DateTime<Utc>,
    cfg: &AttributionConfig,
) -> Result<Vec<Reward>, AttributionError> {
    if decided.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<&NewReward> = decided.iter().map(|d| &d.reward).collect();
    let written: Vec<Reward> = diesel::insert_into(rewards::table)
        .values(new)
        .returning(Reward::as_returning())
        .get_results(conn)
        .await?;
    // In the batch's order, whatever order the insert returned them in.
    let rewards: Vec<Reward> = decided
        .iter()
        .map(|d| {
            written
                .iter()
                .find(|r| r.id == d.reward.id)
                .cloned()
                .ok_or(diesel::result::Error::NotFound)
        })
        .collect::<Result<_, _>>()?;
    for r in rewards.iter().filter(|r| r.flagged) {
        explanations::request(conn, r.id, cfg.explain_flagged, now).await?;
    }
    let emails: Vec<(String, SendEmail, DateTime<Utc>)> = decided
        .iter()
        .filter_map(|d| d.email.clone())
        .map(|e| (e.key(), e, now))
        .collect();
    jobs::enqueue_many(conn, &emails).await?;
    // What settling would leave when no earlier fact moves the new reward
    // (the common case): its status as created, due again at the end of its
    // hold while pending. Written with the purchase, so that only a purchase
    // with a merchant decision already recorded (or a hold already over)
    // needs `settle`.
    let mut to_settle = Vec::new();
    let mut processed = Processed::default();
    for (d, r) in decided.iter().zip(&rewards) {
        let settled_as_created =
            reward_money::target(&reward_money::Facts::of(r, &d.p), now) == r.status;
        let (status, settle_due_at) = if settled_as_created {
            (
                reward_money::purchase_status(r.status),
                (r.status == RewardStatus::Pending).then_some(r.hold_until),
            )
        } else {
            to_settle.push(d.p.id);
            (
                if r.flagged {
                    PurchaseStatus::Flagged
                } else {
                    PurchaseStatus::Attributed
                },
                Some(now),
            )
        };
        processed.push(&d.p, d.group, r.user_id, status, settle_due_at);
    }
    processed.write(conn, now).await?;
    // The ledger last: the users' account rows (and the platform stripes of
    // the users) stay locked from here to the commit only, so attributions
    // of one shopper queue on them for as little as possible.
    reward_money::credit_many(conn, &rewards).await?;
    for purchase in to_settle {
        // A merchant decision that arrived before attribution applies now.
        reward_money::settle(conn, purchase).await?;
    }
    for r in &rewards {
        metrics::counter!("rewards_total", "status" => r.status.as_str()).increment(1);
    }
    Ok(rewards)
}

/// The attributed purchases of a batch, marked processed in one update.
#[derive(Default)]
struct Processed {
    ids: Vec<PurchaseId>,
    statuses: Vec<&'static str>,
    users: Vec<UserId>,
    groups: Vec<Option<IdentityGroupId>>,
    settle_due: Vec<Option<DateTime<Utc>>>,
}

impl Processed {
    fn push(
        &mut self,
        p: &Purchase,
        group: Option<IdentityGroupId>,
        user: UserId,
        status: PurchaseStatus,
        settle_due_at: Option<DateTime<Utc>>,
    ) {
        self.ids.push(p.id);
        self.statuses.push(p.status.becoming(status).as_str());
        self.users.push(user);
        self.groups.push(group);
        self.settle_due.push(settle_due_at);
    }

    async fn write(
        self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> Result<(), diesel::result::Error> {
        use diesel::sql_types::{Array, Nullable, Text, Timestamptz, Uuid};
        diesel::sql_query(
            "UPDATE purchases AS p
                SET status = u.status, user_id = u.user_id, identity_group_id = u.group_id,
                    rewards_processed_at = $6, settle_due_at = u.settle_due_at
               FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[])
                    AS u(id, status, user_id, group_id, settle_due_at)
              WHERE p.id = u.id",
        )
        .bind::<Array<Uuid>, _>(self.ids)
        .bind::<Array<Text>, _>(self.statuses)
        .bind::<Array<Uuid>, _>(self.users)
        .bind::<Array<Nullable<Uuid>>, _>(self.groups)
        .bind::<Array<Nullable<Timestamptz>>, _>(self.settle_due)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
        Ok(())
    }
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
