//! Offers: at most one active per merchant (enforced by a partial unique index),
//! updates guarded by their version, and an activation history so attribution
//! can find the offer that was active when a purchase was made.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    Actor, audit,
    pagination::{Cursor, newest_first},
};
use crate::{
    cache::Cache,
    db,
    ids::{MerchantId, OfferId},
    models::offer::{NewOffer, Offer},
    money::{Currency, MAX_AMOUNT_MINOR},
    schema::{merchants, offer_activations, offers},
};

#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("offer not found")]
    NotFound,
    #[error("merchant not found")]
    MerchantNotFound,
    #[error("the offer was changed since it was read")]
    Stale,
    #[error("the merchant already has an active offer; deactivate it first")]
    AnotherActive,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

#[derive(Debug, Clone)]
pub struct OfferInput {
    pub name: String,
    pub rate_bps: i32,
    pub max_cashback_minor: Option<i64>,
    pub monthly_cap_minor: Option<i64>,
    /// The currency of the caps; required when there is a cap.
    pub currency: Option<Currency>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl OfferInput {
    pub fn validate(&self) -> Result<(), OfferError> {
        let n = self.name.trim();
        if n.is_empty() || n.chars().count() > 200 {
            return Err(OfferError::Invalid(
                "name must be 1 to 200 characters".into(),
            ));
        }
        if !(0..=10_000).contains(&self.rate_bps) {
            return Err(OfferError::Invalid(
                "rate_bps must be from 0 to 10000".into(),
            ));
        }
        if self.max_cashback_minor.is_some_and(|v| v < 0)
            || self.monthly_cap_minor.is_some_and(|v| v < 0)
        {
            return Err(OfferError::Invalid("caps must not be negative".into()));
        }
        let caps = [self.max_cashback_minor, self.monthly_cap_minor];
        if caps.iter().flatten().any(|&v| v > MAX_AMOUNT_MINOR) {
            return Err(OfferError::Invalid(format!(
                "caps must be at most {MAX_AMOUNT_MINOR} (minor units)"
            )));
        }
        if caps.iter().any(Option::is_some) && self.currency.is_none() {
            return Err(OfferError::Invalid(
                "currency is required with a cap (the caps are amounts in it)".into(),
            ));
        }
        if let (Some(s), Some(e)) = (self.starts_at, self.ends_at)
            && s >= e
        {
            return Err(OfferError::Invalid(
                "starts_at must be before ends_at".into(),
            ));
        }
        Ok(())
    }
}

fn map_active_conflict(e: OfferError) -> OfferError {
    match e {
        OfferError::Db(ref d)
            if matches!(
                db::unique_violation(d),
                Some("offers_one_active_per_merchant" | "offer_activations_one_open_per_merchant")
            ) =>
        {
            OfferError::AnotherActive
        }
        other => other,
    }
}

fn to_json(o: &Offer) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or_default()
}

async fn open_activation(
    conn: &mut AsyncPgConnection,
    o: &Offer,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(offer_activations::table)
        .values((
            offer_activations::id.eq(Uuid::now_v7()),
            offer_activations::offer_id.eq(o.id),
            offer_activations::merchant_id.eq(o.merchant_id),
            offer_activations::activated_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

async fn close_activation(
    conn: &mut AsyncPgConnection,
    o: &Offer,
) -> Result<(), diesel::result::Error> {
    diesel::update(
        offer_activations::table
            .filter(offer_activations::offer_id.eq(o.id))
            .filter(offer_activations::deactivated_at.is_null()),
    )
    .set(offer_activations::deactivated_at.eq(Utc::now()))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    merchant_id: MerchantId,
    input: OfferInput,
    active: bool,
) -> Result<Offer, OfferError> {
    input.validate()?;
    conn.transaction::<Offer, OfferError, _>(async move |conn| {
        let exists: bool = diesel::select(diesel::dsl::exists(merchants::table.find(merchant_id)))
            .get_result(conn)
            .await?;
        if !exists {
            return Err(OfferError::MerchantNotFound);
        }
        let o: Offer = diesel::insert_into(offers::table)
            .values(NewOffer {
                id: OfferId::new(),
                merchant_id,
                name: input.name.trim(),
                rate_bps: input.rate_bps,
                max_cashback_minor: input.max_cashback_minor,
                monthly_cap_minor: input.monthly_cap_minor,
                starts_at: input.starts_at,
                ends_at: input.ends_at,
                active,
                currency: input.currency,
            })
            .returning(Offer::as_returning())
            .get_result(conn)
            .await?;
        if active {
            open_activation(conn, &o).await?;
        }
        audit::record(
            conn,
            actor,
            "offer.create",
            "offer",
            Some(o.id.into()),
            None,
            Some(to_json(&o)),
        )
        .await?;
        Ok(o)
    })
    .await
    .map_err(map_active_conflict)
}

pub async fn get(conn: &mut AsyncPgConnection, id: OfferId) -> Result<Offer, OfferError> {
    offers::table
        .find(id)
        .select(Offer::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(OfferError::NotFound)
}

pub async fn list_for_merchant(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Offer>, OfferError> {
    let exists: bool = diesel::select(diesel::dsl::exists(merchants::table.find(merchant_id)))
        .get_result(conn)
        .await?;
    if !exists {
        return Err(OfferError::MerchantNotFound);
    }
    let q = offers::table
        .filter(offers::merchant_id.eq(merchant_id))
        .select(Offer::as_select())
        .limit(limit)
        .into_boxed();
    let q = newest_first!(q, offers, after.map(Cursor::key));
    Ok(q.load(conn).await?)
}

/// The merchant's offer that was active at `at`, if any (history-aware).
pub async fn active_at(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
    at: DateTime<Utc>,
) -> Result<Option<Offer>, diesel::result::Error> {
    offers::table
        .inner_join(offer_activations::table.on(offer_activations::offer_id.eq(offers::id)))
        .filter(offer_activations::merchant_id.eq(merchant_id))
        .filter(offer_activations::activated_at.le(at))
        .filter(
            offer_activations::deactivated_at
                .is_null()
                .or(offer_activations::deactivated_at.gt(at)),
        )
        .filter(offers::starts_at.is_null().or(offers::starts_at.le(at)))
        .filter(offers::ends_at.is_null().or(offers::ends_at.gt(at)))
        .order(offer_activations::activated_at.desc())
        .select(Offer::as_select())
        .first(conn)
        .await
        .optional()
}

/// What the cache keeps per merchant (`offer:active:<merchant_id>`): the
/// offer active now, and since when the merchant has had exactly that (the
/// activation, or the last deactivation when none is active).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CurrentOffer {
    pub offer: Option<Offer>,
    pub since: DateTime<Utc>,
}

pub const CACHE_KIND: &str = "offer:active";

async fn current(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
) -> Result<CurrentOffer, diesel::result::Error> {
    let open: Option<(Offer, DateTime<Utc>)> = offers::table
        .inner_join(offer_activations::table.on(offer_activations::offer_id.eq(offers::id)))
        .filter(offer_activations::merchant_id.eq(merchant_id))
        .filter(offer_activations::deactivated_at.is_null())
        .select((Offer::as_select(), offer_activations::activated_at))
        .first(conn)
        .await
        .optional()?;
    if let Some((offer, since)) = open {
        return Ok(CurrentOffer {
            offer: Some(offer),
            since,
        });
    }
    let last: Option<DateTime<Utc>> = offer_activations::table
        .filter(offer_activations::merchant_id.eq(merchant_id))
        .select(diesel::dsl::max(offer_activations::deactivated_at))
        .first(conn)
        .await?;
    Ok(CurrentOffer {
        offer: None,
        since: last.unwrap_or(DateTime::<Utc>::MIN_UTC),
    })
}

fn in_window(o: &Offer, at: DateTime<Utc>) -> bool {
    o.starts_at.is_none_or(|s| s <= at) && o.ends_at.is_none_or(|e| e > at)
}

/// [`active_at`] through the cache: a purchase made since the merchant's last
/// offer change is answered from `offer:active:<merchant_id>`; an older one
/// goes to the activation history.
pub async fn active_at_cached(
    conn: &mut AsyncPgConnection,
    cache: &Cache,
    merchant_id: MerchantId,
    at: DateTime<Utc>,
) -> Result<Option<Offer>, diesel::result::Error> {
    let now = cache
        .get_or_load(
            CACHE_KIND,
            &merchant_id.to_string(),
            cache.config().offer_ttl,
            || current(conn, merchant_id),
        )
        .await?;
    if at >= now.since {
        return Ok(now.offer.filter(|o| in_window(o, at)));
    }
    active_at(conn, merchant_id, at).await
}

/// Call after any committed change to a merchant's offers, before answering.
pub async fn invalidate_cache(cache: &Cache, merchant_id: MerchantId) {
    cache.invalidate(CACHE_KIND, &merchant_id.to_string()).await;
}

async fn change<F>(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: OfferId,
    expected_version: Option<i32>,
    action: &'static str,
    apply: F,
) -> Result<Offer, OfferError>
where
    F: FnOnce(&mut Offer) -> Result<(), OfferError> + Send + 'static,
{
    conn.transaction::<Offer, OfferError, _>(async move |conn| {
        let before: Offer = offers::table
            .find(id)
            .select(Offer::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(OfferError::NotFound)?;
        if expected_version.is_some_and(|v| v != before.version) {
            return Err(OfferError::Stale);
        }
        let mut next = before.clone();
        apply(&mut next)?;
        let after: Offer = diesel::update(offers::table.find(id))
            .set((
                offers::name.eq(&next.name),
                offers::rate_bps.eq(next.rate_bps),
                offers::max_cashback_minor.eq(next.max_cashback_minor),
                offers::monthly_cap_minor.eq(next.monthly_cap_minor),
                offers::currency.eq(next.currency),
                offers::starts_at.eq(next.starts_at),
                offers::ends_at.eq(next.ends_at),
                offers::active.eq(next.active),
                offers::version.eq(before.version + 1),
            ))
            .returning(Offer::as_returning())
            .get_result(conn)
            .await?;
        match (before.active, after.active) {
            (false, true) => open_activation(conn, &after).await?,
            (true, false) => close_activation(conn, &after).await?,
            _ => {}
        }
        audit::record(
            conn,
            actor,
            action,
            "offer",
            Some(id.into()),
            Some(to_json(&before)),
            Some(to_json(&after)),
        )
        .await?;
        Ok(after)
    })
    .await
    .map_err(map_active_conflict)
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: OfferId,
    expected_version: i32,
    patch: OfferPatch,
) -> Result<Offer, OfferError> {
    change(
        conn,
        actor,
        id,
        Some(expected_version),
        "offer.update",
        move |o| {
            let mut input = OfferInput {
                name: patch.name.unwrap_or_else(|| o.name.clone()),
                rate_bps: patch.rate_bps.unwrap_or(o.rate_bps),
                max_cashback_minor: patch.max_cashback_minor.unwrap_or(o.max_cashback_minor),
                monthly_cap_minor: patch.monthly_cap_minor.unwrap_or(o.monthly_cap_minor),
                currency: patch.currency.unwrap_or(o.currency),
                starts_at: patch.starts_at.unwrap_or(o.starts_at),
                ends_at: patch.ends_at.unwrap_or(o.ends_at),
            };
            input.name = input.name.trim().to_owned();
            input.validate()?;
            o.name = input.name;
            o.rate_bps = input.rate_bps;
            o.max_cashback_minor = input.max_cashback_minor;
            o.monthly_cap_minor = input.monthly_cap_minor;
            o.currency = input.currency;
            o.starts_at = input.starts_at;
            o.ends_at = input.ends_at;
            Ok(())
        },
    )
    .await
}

/// A partial update; `Some(None)` clears an optional field.
#[derive(Debug, Default, Clone)]
pub struct OfferPatch {
    pub name: Option<String>,
    pub rate_bps: Option<i32>,
    pub max_cashback_minor: Option<Option<i64>>,
    pub monthly_cap_minor: Option<Option<i64>>,
    pub currency: Option<Option<Currency>>,
    pub starts_at: Option<Option<DateTime<Utc>>>,
    pub ends_at: Option<Option<DateTime<Utc>>>,
}

pub async fn set_active(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: OfferId,
    active: bool,
) -> Result<Offer, OfferError> {
    let action = if active {
        "offer.activate"
    } else {
        "offer.deactivate"
    };
    change(conn, actor, id, None, action, move |o| {
        o.active = active;
        Ok(())
    })
    .await
}
