//! Purchase ingestion from merchant webhooks, and the merchant's status updates.
//!
//! One transaction holds the idempotency record, the order lock it shares
//! with the checkout page's confirmation of the same order, the purchase, the
//! identity lookup for the merchant's customer id, and the outbox row of the
//! delayed `AttributePurchase` job. Nothing here talks to Redis, so ingestion
//! keeps answering while Redis is down.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    FieldError,
    explanations::ExplanationStatus,
    idempotency::{self, IdempotencyError, IdempotencyKey, Outcome},
    identity::{self, NodeKind},
    pagination::{Cursor, newest_first},
    timeline::{self, EntryKind},
};
use crate::{
    db,
    ids::{IdentityGroupId, MerchantId, PurchaseId, UserId},
    jobs::{self, ApplyRewardTransition, AttributePurchase, Job, RewardTransition},
    models::{
        merchant::Merchant,
        purchase::{NewPurchase, Purchase, PurchaseStatus},
        reward::RewardStatus,
    },
    money::{Currency, Money},
    schema::{identity_nodes, purchases, rewards},
};

/// The user's purchases, newest first, at most `limit`.
pub async fn list_for_user(
    conn: &mut AsyncPgConnection,
    user: UserId,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Purchase>, diesel::result::Error> {
    let q = purchases::table
        .filter(purchases::user_id.eq(user))
        .limit(limit)
        .select(Purchase::as_select())
        .into_boxed();
    let q = newest_first!(q, purchases, after.map(Cursor::key));
    q.load(conn).await
}

/// A purchase under review, with its live (not voided) reward's figures.
#[derive(Debug, Serialize, Queryable, utoipa::ToSchema)]
pub struct ReviewItem {
    pub purchase_id: PurchaseId,
    pub merchant_id: MerchantId,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PurchaseStatus,
    pub cashback_minor: Option<i64>,
    pub fraud_score: Option<f64>,
    pub fraud_reasons: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    /// The fraud explainer's reading of a flagged reward: plain text, to be
    /// shown as text, never as HTML. `None` until `fraud_explanation_status` is `done`.
    pub fraud_explanation: Option<String>,
    /// `done`, or why there is no explanation: `disabled` (no explainer is
    /// configured), `pending` (asked, not answered yet), `failed` (it gave up).
    /// `None` for a reward that was never flagged.
    pub fraud_explanation_status: Option<ExplanationStatus>,
    /// The model that wrote the explanation.
    pub fraud_explanation_model: Option<String>,
    pub fraud_explained_at: Option<DateTime<Utc>>,
}

/// Purchases in `status`, newest first, at most `limit`.
pub async fn list_by_status(
    conn: &mut AsyncPgConnection,
    status: PurchaseStatus,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<ReviewItem>, diesel::result::Error> {
    let q = purchases::table
        .left_join(
            rewards::table.on(rewards::purchase_id
                .eq(purchases::id)
                .and(rewards::status.ne(RewardStatus::Voided))),
        )
        .filter(purchases::status.eq(status))
        .limit(limit)
        .select((
            purchases::id,
            purchases::merchant_id,
            purchases::order_id,
            purchases::amount_minor,
            purchases::currency,
            purchases::status,
            rewards::amount_minor.nullable(),
            rewards::fraud_score.nullable(),
            rewards::fraud_reasons.nullable(),
            purchases::created_at,
            rewards::fraud_explanation.nullable(),
            rewards::fraud_explanation_status.nullable(),
            rewards::fraud_explanation_model.nullable(),
            rewards::fraud_explained_at.nullable(),
        ))
        .into_boxed();
    let q = newest_first!(q, purchases, after.map(Cursor::key));
    q.load(conn).await
}

/// A purchase as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurchaseView {
    pub id: PurchaseId,
    pub merchant_id: MerchantId,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PurchaseStatus,
    pub purchased_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl From<&Purchase> for PurchaseView {
    fn from(p: &Purchase) -> Self {
        Self {
            id: p.id,
            merchant_id: p.merchant_id,
            order_id: p.order_id.clone(),
            amount_minor: p.amount_minor,
            currency: p.currency,
            status: p.status,
            purchased_at: p.purchased_at,
            created_at: p.created_at,
        }
    }
}

/// The webhook body, as received.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    pub order_id: String,
    #[schema(minimum = 1, maximum = 10_000_000_000_i64)]
    pub amount_minor: i64,
    /// An ISO-4217 code.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    pub purchased_at: DateTime<Utc>,
    #[serde(default)]
    pub customer_ref: Option<String>,
    #[serde(default)]
    pub purchase_token: Option<String>,
    #[serde(default)]
    pub sub_id: Option<String>,
}

/// A purchase request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidPurchase {
    pub order_id: String,
    pub amount: Money,
    pub purchased_at: DateTime<Utc>,
    pub customer_ref: Option<String>,
    pub purchase_token: Option<String>,
    pub sub_id: Option<String>,
}

fn text_field(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    v: Option<&str>,
    required: bool,
) -> Option<String> {
    match v.map(str::trim) {
        None if required => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        None => None,
        Some("") => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Some(s) if s.chars().count() > 255 || s.chars().any(char::is_control) => {
            errors.push(FieldError::new(
                field,
                "must be at most 255 printable characters",
            ));
            None
        }
        Some(s) => Some(s.to_owned()),
    }
}

impl PurchaseRequest {
    pub fn validate(&self, now: DateTime<Utc>) -> Result<ValidPurchase, Vec<FieldError>> {
        let mut errors = Vec::new();
        let order_id = text_field(&mut errors, "order_id", Some(&self.order_id), true);
        let amount = Money::parse(self.amount_minor, &self.currency)
            .map_err(|bad| {
                if bad.amount.is_some() {
                    errors.push(FieldError::new(
                        "amount_minor",
                        "must be a positive integer number of minor units, at most 10000000000",
                    ));
                }
                if let Some(e) = bad.currency {
                    errors.push(FieldError::new("currency", &e.to_string()));
                }
            })
            .ok();
        if self.purchased_at > now + chrono::Duration::minutes(10) {
            errors.push(FieldError::new("purchased_at", "must not be in the future"));
        }
        let customer_ref = text_field(
            &mut errors,
            "customer_ref",
            self.customer_ref.as_deref(),
            false,
        );
        let purchase_token = text_field(
            &mut errors,
            "purchase_token",
            self.purchase_token.as_deref(),
            false,
        );
        let sub_id = text_field(&mut errors, "sub_id", self.sub_id.as_deref(), false);
        match (errors.is_empty(), order_id, amount) {
            (true, Some(order_id), Some(amount)) => Ok(ValidPurchase {
                order_id,
                amount,
                purchased_at: self.purchased_at,
                customer_ref,
                purchase_token,
                sub_id,
            }),
            _ => Err(errors),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PurchaseError {
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error("a purchase with this order_id was already reported")]
    DuplicateOrder,
    #[error("purchase not found")]
    NotFound,
    #[error("the purchase is {current}; it cannot become {requested}")]
    InvalidTransition {
        current: PurchaseStatus,
        requested: RewardTransition,
    },
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

fn map_duplicate(e: PurchaseError) -> PurchaseError {
    match e {
        PurchaseError::Db(ref d)
            if db::unique_violation(d) == Some("purchases_merchant_order_key") =>
        {
            PurchaseError::DuplicateOrder
        }
        other => other,
    }
}

/// The identity group of a merchant's customer, created on first sight.
/// Concurrent first sightings converge on one node (unique `(kind, key)`).
pub async fn customer_group(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
    customer_ref: &str,
) -> Result<IdentityGroupId, diesel::result::Error> {
    identity::ensure_node(
        conn,
        &identity::NodeSpec {
            kind: NodeKind::MerchantCustomer,
            key: format!("{merchant_id}:customer:{customer_ref}"),
            merchant_id: Some(merchant_id),
            user_id: None,
            validation_data: None,
        },
    )
    .await
}

/// Accepts a purchase: 202 with the purchase, once per idempotency key.
pub async fn ingest(
    conn: &mut AsyncPgConnection,
    merchant: &Merchant,
    key: &IdempotencyKey,
    input: ValidPurchase,
    attribution_delay: std::time::Duration,
) -> Result<Outcome, PurchaseError> {
    let merchant_id = merchant.id;
    let delay = chrono::Duration::from_std(attribution_delay).unwrap_or_default();
    let outcome = conn
        .transaction::<Outcome, PurchaseError, _>(async move |conn| {
            let seen = json!({"idempotency_key": key.key});
            if let Some(replay) = idempotency::begin::<PurchaseError>(conn, key).await? {
                timeline::record(conn, merchant_id, &input.order_id, EntryKind::WebhookReplayed, seen).await?;
                return Ok(replay);
            }
            timeline::record(conn, merchant_id, &input.order_id, EntryKind::WebhookReceived, seen).await?;
            // Serialised with the checkout page's confirmation of this order
            // (see the identity module for the lock order): whichever of the
            // two commits second sees the other, so a matching pair is
            // always linked.
            identity::lock_order(conn, merchant_id, &input.order_id).await?;
            let mut group = match input.customer_ref.as_deref() {
                Some(c) => Some(customer_group(conn, merchant_id, c).await?),
                None => None,
            };
            // The SDK may have confirmed this order first: link when the tokens match.
            let pending: Option<(IdentityGroupId, Option<serde_json::Value>)> = identity_nodes::table
                .filter(identity_nodes::kind.eq(NodeKind::MerchantCustomer))
                .filter(identity_nodes::key.eq(identity::order_key(merchant_id, &input.order_id)))
                .select((identity_nodes::group_id, identity_nodes::validation_data))
                .first(conn)
                .await
                .optional()?;
            if let Some((pending_group, validation)) = pending {
                let expected = validation.as_ref().and_then(|v| v["purchase_token"].as_str().map(str::to_owned));
                let matched = expected.is_some() && expected.as_deref() == input.purchase_token.as_deref();
                identity::count_link(conn, merchant_id, matched).await?;
                timeline::record(conn, merchant_id, &input.order_id, EntryKind::TokenCheck, json!({"matched": matched})).await?;
                if matched {
                    // When the customer's group belongs to another user than
                    // the browser that confirmed, the purchase follows the
                    // browser (the token proves it) and the users stay apart.
                    group = Some(match group {
                        Some(g) => identity::merge(conn, g, pending_group, "purchase_token")
                            .await?
                            .or(|_, browser| browser),
                        None => pending_group,
                    });
                } else {
                    tracing::warn!(merchant.id = %merchant_id, "purchase token mismatch; nothing linked");
                }
            }
            let now = Utc::now();
            let id = PurchaseId::new();
            let purchase: Purchase = diesel::insert_into(purchases::table)
                .values(NewPurchase {
                    id,
                    merchant_id,
                    order_id: &input.order_id,
                    amount_minor: input.amount.amount_minor(),
                    currency: input.amount.currency(),
                    purchased_at: input.purchased_at,
                    customer_ref: input.customer_ref.as_deref(),
                    purchase_token: input.purchase_token.as_deref(),
                    sub_id: input.sub_id.as_deref(),
                    identity_group_id: group,
                    user_id: None,
                    attribute_after: now + delay,
                    created_at: now,
                })
                .returning(Purchase::as_returning())
                .get_result(conn)
                .await?;
            jobs::enqueue(
                conn,
                &AttributePurchase { purchase_id: id, reattribute: false },
                purchase.attribute_after,
            )
            .await?;
            let body =
                serde_json::to_value(PurchaseView::from(&purchase)).expect("views serialize");
            Ok(idempotency::finish(conn, key, 202, body).await?)
        })
        .await
        .map_err(map_duplicate)?;
    if !outcome.replayed {
        tracing::info!(
            merchant.id = %merchant_id,
            purchase.id = %outcome.body["id"].as_str().unwrap_or_default(),
            "purchase accepted"
        );
        metrics::counter!("purchases_ingested_total").increment(1);
    }
    Ok(outcome)
}

/// The merchant's confirm/reverse request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// `confirmed` or `reversed`.
    pub status: RewardTransition,
    #[serde(default)]
    pub reason: Option<String>,
}

impl StatusRequest {
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        match &self.reason {
            Some(r) if r.chars().count() > 1000 => Err(vec![FieldError::new(
                "reason",
                "must be at most 1000 characters",
            )]),
            _ => Ok(()),
        }
    }
}

/// Records the merchant's decision (a fact, kept on the purchase even before
/// attribution), marks the purchase's settle due and enqueues the
/// `ApplyRewardTransition` job that settles it.
pub async fn request_status(
    conn: &mut AsyncPgConnection,
    merchant: &Merchant,
    order_id: &str,
    key: &IdempotencyKey,
    req: StatusRequest,
) -> Result<Outcome, PurchaseError> {
    let merchant_id = merchant.id;
    let order_id = order_id.to_owned();
    conn.transaction::<Outcome, PurchaseError, _>(async move |conn| {
        let seen = json!({"idempotency_key": key.key, "status": req.status, "reason": req.reason});
        if let Some(replay) = idempotency::begin::<PurchaseError>(conn, key).await? {
            timeline::record(
                conn,
                merchant_id,
                &order_id,
                EntryKind::StatusReplayed,
                seen,
            )
            .await?;
            return Ok(replay);
        }
        let purchase: Purchase = purchases::table
            .filter(purchases::merchant_id.eq(merchant_id))
            .filter(purchases::order_id.eq(&order_id))
            .select(Purchase::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(PurchaseError::NotFound)?;
        let to = req.status;
        if !purchase.accepts_decision(to) {
            return Err(PurchaseError::InvalidTransition {
                current: PurchaseStatus::Reversed,
                requested: to,
            });
        }
        // The fact, and settle due now: the job below settles it, and the
        // settle sweep does if the job is lost.
        let now = Utc::now();
        let purchase: Purchase = diesel::update(purchases::table.find(purchase.id))
            .set((
                purchases::merchant_decision.eq(to),
                purchases::merchant_decision_at.eq(now),
                purchases::status_reason.eq(req.reason.as_deref()),
                purchases::settle_due_at.eq(now),
            ))
            .returning(Purchase::as_returning())
            .get_result(conn)
            .await?;
        timeline::record(
            conn,
            merchant_id,
            &order_id,
            EntryKind::StatusReceived,
            seen,
        )
        .await?;
        let job = ApplyRewardTransition {
            purchase_id: purchase.id,
            to,
            reason: req.reason.clone(),
            source: "merchant_webhook".into(),
        };
        // A task id of its own per accepted request: a decision sent again
        // (under a new idempotency key) is driven again, not a no-op.
        let task = format!("{}#{}", job.key(), now.timestamp_micros());
        jobs::enqueue_as(conn, &job, &task, 1, now).await?;
        let body = serde_json::to_value(PurchaseView::from(&purchase)).expect("views serialize");
        Ok(idempotency::finish(conn, key, 202, body).await?)
    })
    .await
}
