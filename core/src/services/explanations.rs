//! Explanations of flagged purchases, for the admin who reviews them.
//!
//! Flagging a reward (in attribution's transaction) marks its explanation
//! `pending` and enqueues `ExplainFlaggedPurchase` through the outbox, or
//! marks it `disabled` when no explainer is configured. The job builds a
//! prompt from the purchase and a summary of the shopper's history (amounts,
//! merchants, timing, the rules that fired), asks the explainer with no
//! database connection held, and stores the answer on the reward as plain
//! text of at most [`MAX_CHARS`] characters. After its last attempt the
//! status is `failed`. Reviews never wait for any of this.
//!
//! What the prompt must never hold: email addresses, names, the shopper's or
//! the purchase's ids and tokens (customer references, purchase and click
//! tokens, order ids) and payout destinations. It is built from an explicit
//! list of facts, never from a row as a whole.

use chrono::{DateTime, Datelike, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use crate::{
    db::DbPool,
    fraud_explainer::{ExplainerError, FraudExplainer, Prompt},
    ids::RewardId,
    jobs::{self, ExplainFlaggedPurchase},
    schema::{merchants, offers, purchases, rewards, users},
    text_enum::text_enum,
};

text_enum! {
    /// Where a flagged reward's explanation is (`rewards.fraud_explanation_status`).
    pub enum ExplanationStatus {
        /// No explainer is configured.
        Disabled = "disabled",
        /// Asked for; the explainer has not answered yet.
        Pending = "pending",
        /// The explainer did not answer usably after every attempt.
        Failed = "failed",
        Done = "done",
    }
}

/// The longest explanation stored, in characters.
pub const MAX_CHARS: usize = 2_000;

/// How many of the shopper's earlier purchases the prompt lists one by one.
const RECENT: i64 = 10;

/// A reward's explanation, or why there is none: what the review list and a
/// purchase's timeline show. Plain text: render it as text, never as HTML.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExplanationView {
    /// `None` when the reward was never flagged.
    pub status: Option<ExplanationStatus>,
    pub text: Option<String>,
    pub model: Option<String>,
    pub explained_at: Option<DateTime<Utc>>,
}

/// Called where a reward is flagged, in the same transaction: marks the
/// explanation pending and enqueues its job (idempotent per reward), or
/// marks it disabled when no explainer is configured.
pub async fn request(
    conn: &mut AsyncPgConnection,
    reward: RewardId,
    enabled: bool,
    now: DateTime<Utc>,
) -> Result<(), diesel::result::Error> {
    let status = if enabled {
        ExplanationStatus::Pending
    } else {
        ExplanationStatus::Disabled
    };
    diesel::update(rewards::table.find(reward))
        .set(rewards::fraud_explanation_status.eq(status))
        .execute(conn)
        .await?;
    if enabled {
        jobs::enqueue(conn, &ExplainFlaggedPurchase { reward_id: reward }, now).await?;
    }
    Ok(())
}

/// The explanation state of `reward`.
pub async fn state_of(
    conn: &mut AsyncPgConnection,
    reward: RewardId,
) -> Result<ExplanationView, diesel::result::Error> {
    let (status, text, model, explained_at) = rewards::table
        .find(reward)
        .select((
            rewards::fraud_explanation_status,
            rewards::fraud_explanation,
            rewards::fraud_explanation_model,
            rewards::fraud_explained_at,
        ))
        .first::<(
            Option<ExplanationStatus>,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
        )>(conn)
        .await?;
    Ok(ExplanationView {
        status,
        text,
        model,
        explained_at,
    })
}

/// The explanation state of `purchase`'s live (not voided) reward; `None`
/// when it has no reward. For a purchase's timeline.
pub async fn state_of_purchase(
    conn: &mut AsyncPgConnection,
    purchase: crate::ids::PurchaseId,
) -> Result<Option<ExplanationView>, diesel::result::Error> {
    let reward: Option<RewardId> = rewards::table
        .filter(rewards::purchase_id.eq(purchase))
        .filter(rewards::status.ne(crate::models::reward::RewardStatus::Voided))
        .order(rewards::attribution_seq.desc())
        .select(rewards::id)
        .first(conn)
        .await
        .optional()?;
    match reward {
        Some(r) => state_of(conn, r).await.map(Some),
        None => Ok(None),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("reward not found")]
    NotFound,
    #[error(transparent)]
    Explainer(#[from] ExplainerError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explained {
    /// Stored; the provider's token counts, when it reported them.
    Stored {
        prompt_tokens: Option<u32>,
        completion_tokens: Option<u32>,
    },
    /// Not pending (already explained, failed for good, or disabled): nothing asked.
    NotPending,
}

/// The instructions: the same for every purchase.
pub const SYSTEM_PROMPT: &str = "You help a fraud analyst at a cashback service review a purchase that \
a rule-based scorer flagged. You get the purchase, the rules that fired and a summary of the \
shopper's earlier purchases as JSON (amounts are in minor units of the currency, times are UTC). \
In at most four short sentences of plain text (no markdown, no HTML, no lists), say what makes \
the purchase look risky or ordinary, citing the facts. Do not decide: the analyst approves or \
rejects.";

/// The prompt for `reward`, or `None` when its explanation is not pending.
pub async fn prompt_for(
    conn: &mut AsyncPgConnection,
    reward: RewardId,
) -> Result<Option<Prompt>, ExplainError> {
    #[derive(Queryable)]
    struct Facts {
        status: Option<ExplanationStatus>,
        cashback_minor: i64,
        fraud_score: f64,
        fraud_reasons: serde_json::Value,
        rate_bps: i32,
        purchase_id: crate::ids::PurchaseId,
        user_id: crate::ids::UserId,
        amount_minor: i64,
        currency: crate::money::Currency,
        purchased_at: DateTime<Utc>,
        merchant: String,
        merchant_created: DateTime<Utc>,
        user_created: DateTime<Utc>,
    }
    let f: Facts = rewards::table
        .find(reward)
        .inner_join(purchases::table.inner_join(merchants::table))
        .inner_join(offers::table)
        .inner_join(users::table)
        .select((
            rewards::fraud_explanation_status,
            rewards::amount_minor,
            rewards::fraud_score,
            rewards::fraud_reasons,
            offers::rate_bps,
            purchases::id,
            rewards::user_id,
            purchases::amount_minor,
            purchases::currency,
            purchases::purchased_at,
            merchants::name,
            merchants::created_at,
            users::created_at,
        ))
        .first(conn)
        .await
        .optional()?
        .ok_or(ExplainError::NotFound)?;
    if f.status != Some(ExplanationStatus::Pending) {
        return Ok(None);
    }

    #[derive(QueryableByName)]
    struct Summary {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        avg: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        max: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        last_hour: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        last_day: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        merchants: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        flagged: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        reversed: i64,
    }
    let s: Summary = diesel::sql_query(
        "SELECT count(*) AS count,
                avg(p.amount_minor)::int8 AS avg,
                max(p.amount_minor) AS max,
                count(*) FILTER (WHERE p.purchased_at > $3 - interval '1 hour' AND p.purchased_at <= $3) AS last_hour,
                count(*) FILTER (WHERE p.purchased_at > $3 - interval '1 day' AND p.purchased_at <= $3) AS last_day,
                count(DISTINCT p.merchant_id) AS merchants,
                (SELECT count(*) FROM rewards r WHERE r.user_id = $1 AND r.purchase_id <> $2 AND r.flagged) AS flagged,
                (SELECT count(*) FROM rewards r WHERE r.user_id = $1 AND r.purchase_id <> $2 AND r.status = 'reversed') AS reversed
           FROM purchases p WHERE p.user_id = $1 AND p.id <> $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(f.user_id)
    .bind::<diesel::sql_types::Uuid, _>(f.purchase_id)
    .bind::<diesel::sql_types::Timestamptz, _>(f.purchased_at)
    .get_result(conn)
    .await?;
    let recent: Vec<(i64, crate::money::Currency, DateTime<Utc>, String, String)> =
        purchases::table
            .inner_join(merchants::table)
            .filter(purchases::user_id.eq(f.user_id))
            .filter(purchases::id.ne(f.purchase_id))
            .order(purchases::purchased_at.desc())
            .limit(RECENT)
            .select((
                purchases::amount_minor,
                purchases::currency,
                purchases::purchased_at,
                merchants::name,
                purchases::status,
            ))
            .load(conn)
            .await?;

    let facts = serde_json::json!({
        "purchase": {
            "amount_minor": f.amount_minor,
            "currency": f.currency,
            "merchant": f.merchant,
            "merchant_age_days": (f.purchased_at - f.merchant_created).num_days(),
            "purchased_at": f.purchased_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "weekday": f.purchased_at.weekday().to_string(),
            "offer_rate_bps": f.rate_bps,
            "cashback_minor": f.cashback_minor,
        },
        "fraud": {
            "score": (f.fraud_score * 100.0).round() / 100.0,
            "rules_fired": f.fraud_reasons,
        },
        "shopper_history": {
            "account_age_days": (f.purchased_at - f.user_created).num_days(),
            "earlier_purchases": s.count,
            "average_amount_minor": s.avg,
            "largest_amount_minor": s.max,
            "purchases_in_the_hour_before": s.last_hour,
            "purchases_in_the_day_before": s.last_day,
            "distinct_merchants": s.merchants,
            "earlier_rewards_flagged": s.flagged,
            "earlier_rewards_reversed": s.reversed,
            "most_recent": recent.into_iter().map(|(amount, currency, at, merchant, status)| serde_json::json!({
                "amount_minor": amount,
                "currency": currency,
                "merchant": merchant,
                "purchased_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "status": status,
            })).collect::<Vec<_>>(),
        },
    });
    Ok(Some(Prompt {
        system: SYSTEM_PROMPT.to_owned(),
        user: serde_json::to_string(&facts).expect("JSON values serialize"),
    }))
}

/// The answer as stored: control characters (but line breaks) dropped,
/// trimmed, at most [`MAX_CHARS`] characters.
pub fn clean(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .collect();
    let trimmed = kept.trim();
    match trimmed.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => trimmed[..cut].trim_end().to_owned(),
        None => trimmed.to_owned(),
    }
}

/// Explains `reward` if its explanation is pending: builds the prompt, asks
/// `explainer` with no connection held, stores the answer.
#[tracing::instrument(skip_all, fields(reward.id = %reward))]
pub async fn explain(
    pool: &DbPool,
    explainer: &dyn FraudExplainer,
    reward: RewardId,
) -> Result<Explained, ExplainError> {
    let prompt = {
        let mut conn = pool.get().await?;
        prompt_for(&mut conn, reward).await?
    };
    let Some(prompt) = prompt else {
        return Ok(Explained::NotPending);
    };
    let answer = explainer.explain(&prompt).await?;
    let text = clean(&answer.text);
    if text.is_empty() {
        return Err(ExplainerError::Refused("the answer has no text".into()).into());
    }
    let model: String = answer.model.chars().take(200).collect();
    let mut conn = pool.get().await?;
    let stored = diesel::update(
        rewards::table
            .find(reward)
            .filter(rewards::fraud_explanation_status.eq(ExplanationStatus::Pending)),
    )
    .set((
        rewards::fraud_explanation.eq(&text),
        rewards::fraud_explanation_model.eq(&model),
        rewards::fraud_explained_at.eq(Utc::now()),
        rewards::fraud_explanation_status.eq(ExplanationStatus::Done),
    ))
    .execute(&mut conn)
    .await?;
    if stored == 0 {
        return Ok(Explained::NotPending);
    }
    tracing::info!(
        model = %model,
        tokens.prompt = answer.prompt_tokens,
        tokens.completion = answer.completion_tokens,
        chars = text.chars().count(),
        "fraud explanation stored"
    );
    Ok(Explained::Stored {
        prompt_tokens: answer.prompt_tokens,
        completion_tokens: answer.completion_tokens,
    })
}

/// Ends a pending explanation without one: `failed` when its job gave up,
/// `disabled` when the explainer was turned off since. Returns whether it was pending.
pub async fn give_up(
    conn: &mut AsyncPgConnection,
    reward: RewardId,
    status: ExplanationStatus,
) -> Result<bool, diesel::result::Error> {
    let n = diesel::update(
        rewards::table
            .find(reward)
            .filter(rewards::fraud_explanation_status.eq(ExplanationStatus::Pending)),
    )
    .set(rewards::fraud_explanation_status.eq(status))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_cut_to_the_bound_and_lose_control_characters() {
        assert_eq!(clean("  a\u{0007}b\nc\r  "), "ab\nc");
        let long = "é".repeat(MAX_CHARS + 50);
        assert_eq!(clean(&long).chars().count(), MAX_CHARS);
        assert_eq!(
            clean("<b>bold</b>"),
            "<b>bold</b>",
            "kept as text, shown as text"
        );
    }
}
