//! What the SDK reports from the shopper's browser: clicks (touchpoints),
//! identification after login (linking the browser to the account), and the
//! checkout page's purchase confirmation with its validation token.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::{
    FieldError,
    identity::{self, NodeKind, NodeSpec, UserLink},
};
use crate::{
    ids::{IdentityGroupId, MerchantId, OfferId, PurchaseId, TouchpointId, UserId},
    jobs::{self, AttributePurchase},
    models::{merchant::Merchant, purchase::PurchaseStatus, reward::RewardStatus},
    schema::{identity_nodes, offers, purchases, touchpoints},
};

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
    /// The signed-in user the call names does not exist.
    #[error("the token's user does not exist")]
    UnknownUser,
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

fn check_anon(anon_id: &str) -> Result<(), TrackError> {
    if anon_id.is_empty()
        || anon_id.len() > 128
        || anon_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(TrackError::Invalid(vec![FieldError::new(
            "anon_id",
            "must be 1 to 128 visible characters",
        )]));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TouchpointView {
    pub touchpoint_id: TouchpointId,
    pub recorded_at: DateTime<Utc>,
}

pub async fn click(
    conn: &mut AsyncPgConnection,
    merchant: &Merchant,
    anon_id: &str,
    offer_id: Option<OfferId>,
    landing_url: Option<&str>,
) -> Result<TouchpointView, TrackError> {
    check_anon(anon_id)?;
    if landing_url.is_some_and(|u| u.len() > 2048) {
        return Err(TrackError::Invalid(vec![FieldError::new(
            "landing_url",
            "must be at most 2048 characters",
        )]));
    }
    let merchant_id = merchant.id;
    let anon = anon_id.to_owned();
    let url = landing_url.map(str::to_owned);
    conn.transaction::<TouchpointView, TrackError, _>(async move |conn| {
        if let Some(o) = offer_id {
            let owner: Option<MerchantId> = offers::table
                .find(o)
                .select(offers::merchant_id)
                .first(conn)
                .await
                .optional()?;
            if owner != Some(merchant_id) {
                return Err(TrackError::Invalid(vec![FieldError::new(
                    "offer_id",
                    "is not an offer of this merchant",
                )]));
            }
        }
        let group = identity::ensure_node(conn, &NodeSpec::anon(&anon)).await?;
        let id = TouchpointId::new();
        let recorded_at: DateTime<Utc> = diesel::insert_into(touchpoints::table)
            .values((
                touchpoints::id.eq(id),
                touchpoints::group_id.eq(group),
                touchpoints::merchant_id.eq(merchant_id),
                touchpoints::offer_id.eq(offer_id),
                touchpoints::anon_id.eq(&anon),
                touchpoints::landing_url.eq(url.as_deref()),
            ))
            .returning(touchpoints::created_at)
            .get_result(conn)
            .await?;
        Ok(TouchpointView {
            touchpoint_id: id,
            recorded_at,
        })
    })
    .await
}

/// Enqueues attribution now for the group's purchases that wait for it.
async fn wake(
    conn: &mut AsyncPgConnection,
    group: IdentityGroupId,
) -> Result<(), diesel::result::Error> {
    let waiting: Vec<(PurchaseId, DateTime<Utc>, Option<DateTime<Utc>>)> = purchases::table
        .filter(purchases::identity_group_id.eq(group))
        .filter(purchases::rewards_processed_at.is_null())
        .filter(purchases::status.eq(PurchaseStatus::Received))
        .select((
            purchases::id,
            purchases::attribute_after,
            purchases::waiting_since,
        ))
        .load(conn)
        .await?;
    let now = Utc::now();
    // Processed purchases whose reward is still pending: the merge may have
    // brought a later click; re-check them now.
    let pending_rewards: Vec<PurchaseId> = purchases::table
        .inner_join(
            crate::schema::rewards::table.on(crate::schema::rewards::purchase_id.eq(purchases::id)),
        )
        .filter(purchases::identity_group_id.eq(group))
        .filter(purchases::rewards_processed_at.is_not_null())
        .filter(crate::schema::rewards::status.eq(RewardStatus::Pending))
        .select(purchases::id)
        .load(conn)
        .await?;
    for id in pending_rewards {
        let job = AttributePurchase {
            purchase_id: id,
            reattribute: true,
        };
        jobs::enqueue_as(
            conn,
            &job,
            &format!("attribute:{id}#r{}", now.timestamp_millis()),
            1,
            now,
        )
        .await?;
    }
    for (id, due, waiting_since) in waiting {
        // Not before its own delay has passed: the delay exists for late links.
        // A purchase already looked at without a user has waited it out; its
        // `attribute_after` is then the next recheck, and the link is what it
        // was waiting for.
        let at = if due > now && waiting_since.is_none() {
            due
        } else {
            now
        };
        // Named by when it runs: the links of a shopper's several purchases
        // inside the delay wake the same due purchases again and again, and
        // those wake-ups share one job instead of adding one each.
        jobs::enqueue_as(
            conn,
            &AttributePurchase {
                purchase_id: id,
                reattribute: false,
            },
            &format!("attribute:{id}#l{}", at.timestamp_millis()),
            1,
            at,
        )
        .await?;
    }
    Ok(())
}

/// Links the browser's anonymous id to the signed-in user. A browser belongs
/// to the user who signed in on it last: identified before by another user,
/// the anon id alone moves to this user (see [`identity::link_user`]).
pub async fn identify(
    conn: &mut AsyncPgConnection,
    user: UserId,
    anon_id: &str,
) -> Result<(), TrackError> {
    check_anon(anon_id)?;
    let anon = anon_id.to_owned();
    conn.transaction::<(), TrackError, _>(async move |conn| {
        let a = identity::ensure_node(conn, &NodeSpec::anon(&anon)).await?;
        let u = identity::ensure_node(conn, &NodeSpec::user(user))
            .await
            .map_err(|e| match e {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                    _,
                ) => TrackError::UnknownUser,
                e => e.into(),
            })?;
        match identity::link_user(conn, &anon, a, u).await? {
            UserLink::Merged(survivor) => wake(conn, survivor).await?,
            // Nothing that could be attributed changed group.
            UserLink::Already(_) | UserLink::Moved { .. } => {}
        }
        Ok(())
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkOutcome {
    /// The purchase exists and its token matched: the browser is linked to it.
    Linked,
    /// The purchase has not arrived yet: linked when it does, if the token matches.
    Pending,
    /// The token does not match the purchase's: nothing is linked.
    Mismatch,
}

/// The checkout page's confirmation of a purchase.
pub async fn confirm_purchase(
    conn: &mut AsyncPgConnection,
    merchant: &Merchant,
    anon_id: &str,
    order_id: &str,
    purchase_token: &str,
) -> Result<LinkOutcome, TrackError> {
    check_anon(anon_id)?;
    let mut errors = Vec::new();
    if order_id.is_empty() || order_id.len() > 255 {
        errors.push(FieldError::new("order_id", "must be 1 to 255 characters"));
    }
    if purchase_token.is_empty() || purchase_token.len() > 255 {
        errors.push(FieldError::new(
            "purchase_token",
            "must be 1 to 255 characters",
        ));
    }
    if !errors.is_empty() {
        return Err(TrackError::Invalid(errors));
    }
    let (merchant_id, anon, order, token) = (
        merchant.id,
        anon_id.to_owned(),
        order_id.to_owned(),
        purchase_token.to_owned(),
    );
    conn.transaction::<LinkOutcome, TrackError, _>(async move |conn| {
        let outcome = confirm_locked(conn, merchant_id, &anon, &order, &token).await?;
        super::timeline::record(
            conn,
            merchant_id,
            &order,
            super::timeline::EntryKind::SdkConfirmation,
            serde_json::json!({"outcome": outcome, "anon_id": anon}),
        )
        .await?;
        Ok(outcome)
    })
    .await
}

/// [`confirm_purchase`] inside its transaction.
async fn confirm_locked(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
    anon: &str,
    order: &str,
    token: &str,
) -> Result<LinkOutcome, TrackError> {
    let (anon, order, token) = (anon.to_owned(), order.to_owned(), token.to_owned());
    {
        // Serialised with the webhook of this order (see the identity module
        // for the lock order): whichever of the two commits second sees the
        // other, so a matching pair is always linked.
        identity::lock_order(conn, merchant_id, &order).await?;
        let a = identity::ensure_node(conn, &NodeSpec::anon(&anon)).await?;
        // Not locked here: the purchase row is locked last, by the update.
        let purchase: Option<(PurchaseId, Option<String>, Option<IdentityGroupId>)> =
            purchases::table
                .filter(purchases::merchant_id.eq(merchant_id))
                .filter(purchases::order_id.eq(&order))
                .select((
                    purchases::id,
                    purchases::purchase_token,
                    purchases::identity_group_id,
                ))
                .first(conn)
                .await
                .optional()?;
        match purchase {
            Some((id, stored, group)) => {
                let matched = stored.as_deref() == Some(token.as_str());
                identity::count_link(conn, merchant_id, matched).await?;
                if !matched {
                    tracing::warn!(merchant.id = %merchant_id, "purchase token mismatch; nothing linked");
                    return Ok(LinkOutcome::Mismatch);
                }
                // The token proves this browser made the purchase: when the
                // purchase's group belongs to another user, the purchase
                // follows the browser and the two users stay apart.
                let target = match group {
                    Some(g) => identity::merge(conn, g, a, "purchase_token")
                        .await?
                        .or(|_, browser| browser),
                    None => super::attribution::surviving_group(conn, a).await?,
                };
                diesel::update(purchases::table.find(id))
                    .set(purchases::identity_group_id.eq(target))
                    .execute(conn)
                    .await?;
                wake(conn, target).await?;
                Ok(LinkOutcome::Linked)
            }
            None => {
                let key = identity::order_key(merchant_id, &order);
                let pending: Option<(IdentityGroupId, Option<serde_json::Value>)> =
                    identity_nodes::table
                        .filter(identity_nodes::kind.eq(NodeKind::MerchantCustomer))
                        .filter(identity_nodes::key.eq(&key))
                        .select((identity_nodes::group_id, identity_nodes::validation_data))
                        .first(conn)
                        .await
                        .optional()?;
                match pending {
                    // Confirmed again (a reload of the thank-you page, another
                    // tab): the same token joins the browser to the order's
                    // group; another token joins nothing. Both answer
                    // `pending`: until the webhook nobody can tell which token
                    // is right.
                    Some((existing, validation)) => {
                        let first = validation
                            .as_ref()
                            .and_then(|v| v["purchase_token"].as_str());
                        if first == Some(token.as_str()) {
                            identity::merge(conn, existing, a, "purchase_token_repeat").await?;
                        } else {
                            tracing::warn!(merchant.id = %merchant_id, "another token for an order awaiting its webhook; nothing linked");
                        }
                    }
                    None => {
                        let g = identity::ensure_node(
                            conn,
                            &NodeSpec::pending_order(merchant_id, &order, &token),
                        )
                        .await?;
                        identity::merge(conn, g, a, "purchase_confirmation").await?;
                    }
                }
                Ok(LinkOutcome::Pending)
            }
        }
    }
}
