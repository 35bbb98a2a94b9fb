//! Merchants: creation (the webhook secret and publishable key are shown once),
//! updates guarded by their version, suspension and secret rotation. Every
//! change writes the audit log in the same transaction.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::{
    Actor, audit,
    pagination::{Cursor, newest_first},
};
use crate::{
    crypto::{Keyring, random_token},
    ids::MerchantId,
    models::merchant::{Merchant, MerchantStatus, NewMerchant},
    schema::merchants,
    signature::WebhookSecret,
};

#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error("merchant not found")]
    NotFound,
    #[error("the merchant was changed since it was read")]
    Stale,
    #[error("{0}")]
    Invalid(String),
    #[error("stored webhook secret cannot be read with the configured keys")]
    SecretUnreadable,
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

fn secret_aad(id: MerchantId) -> String {
    format!("merchant:{id}:webhook_secret")
}

/// A merchant as created or rotated, with the secret in clear this once.
pub struct WithSecret {
    pub merchant: Merchant,
    pub webhook_secret: String,
}

pub fn validate_name(name: &str) -> Result<String, MerchantError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(MerchantError::Invalid(
            "name must be 1 to 200 characters".into(),
        ));
    }
    Ok(n.to_owned())
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    keys: &Keyring,
    actor: &Actor,
    name: &str,
) -> Result<WithSecret, MerchantError> {
    let name = validate_name(name)?;
    let id = MerchantId::new();
    let (_, secret_text) = WebhookSecret::generate();
    let sealed = keys.seal(secret_text.as_bytes(), &secret_aad(id));
    let publishable_key = random_token("pk_", 24);
    let merchant = conn
        .transaction::<Merchant, MerchantError, _>(async move |conn| {
            let m: Merchant = diesel::insert_into(merchants::table)
                .values(NewMerchant {
                    id,
                    name: &name,
                    publishable_key: &publishable_key,
                    webhook_secret_encrypted: sealed,
                })
                .returning(Merchant::as_returning())
                .get_result(conn)
                .await?;
            audit::record(
                conn,
                actor,
                "merchant.create",
                "merchant",
                Some(m.id.into()),
                None,
                Some(m.public_json()),
            )
            .await?;
            Ok(m)
        })
        .await?;
    Ok(WithSecret {
        merchant,
        webhook_secret: secret_text,
    })
}

/// Cache entries: a merchant by id, and by publishable key (`None` cached
/// too, so unknown keys do not reach the database on every call).
pub const CACHE_KIND: &str = "merchant";
pub const PK_CACHE_KIND: &str = "merchant:pk";

/// Call after any committed change to a merchant, before answering.
pub async fn invalidate_cache(cache: &crate::cache::Cache, m: &Merchant) {
    cache.invalidate(CACHE_KIND, &m.id.to_string()).await;
    cache.invalidate(PK_CACHE_KIND, &m.publishable_key).await;
}

pub async fn get(conn: &mut AsyncPgConnection, id: MerchantId) -> Result<Merchant, MerchantError> {
    merchants::table
        .find(id)
        .select(Merchant::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(MerchantError::NotFound)
}

pub async fn find_by_publishable_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> Result<Option<Merchant>, diesel::result::Error> {
    merchants::table
        .filter(merchants::publishable_key.eq(key))
        .select(Merchant::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Merchant>, diesel::result::Error> {
    let q = merchants::table
        .select(Merchant::as_select())
        .limit(limit)
        .into_boxed();
    let q = newest_first!(q, merchants, after.map(Cursor::key));
    q.load(conn).await
}

/// The secrets a webhook may be signed with now: the current one, and the
/// previous one until its grace period ends.
pub fn verification_secrets(
    keys: &Keyring,
    m: &Merchant,
    now: DateTime<Utc>,
) -> Result<Vec<WebhookSecret>, MerchantError> {
    let aad = secret_aad(m.id);
    let open = |sealed: &[u8]| -> Result<WebhookSecret, MerchantError> {
        let clear = keys
            .open(sealed, &aad)
            .map_err(|_| MerchantError::SecretUnreadable)?;
        let text = String::from_utf8(clear).map_err(|_| MerchantError::SecretUnreadable)?;
        WebhookSecret::parse(&text).ok_or(MerchantError::SecretUnreadable)
    };
    let mut out = vec![open(&m.webhook_secret_encrypted)?];
    if let (Some(prev), Some(until)) = (&m.previous_secret_encrypted, m.previous_secret_expires_at)
        && until > now
    {
        out.push(open(prev)?);
    }
    Ok(out)
}

#[derive(Debug, Default, Clone)]
pub struct MerchantUpdate {
    pub name: Option<String>,
    /// `Some(None)` clears the per-merchant override.
    pub webhook_rate_limit_per_minute: Option<Option<i32>>,
}

/// Applies a change to the row at `expected_version`, bumping the version.
async fn change<F>(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: MerchantId,
    expected_version: Option<i32>,
    action: &'static str,
    apply: F,
) -> Result<Merchant, MerchantError>
where
    F: FnOnce(&mut Merchant) -> Result<(), MerchantError> + Send + 'static,
{
    conn.transaction::<Merchant, MerchantError, _>(async move |conn| {
        let before: Merchant = merchants::table
            .find(id)
            .select(Merchant::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(MerchantError::NotFound)?;
        if expected_version.is_some_and(|v| v != before.version) {
            return Err(MerchantError::Stale);
        }
        let mut next = before.clone();
        apply(&mut next)?;
        let after: Merchant = diesel::update(merchants::table.find(id))
            .set((
                merchants::name.eq(&next.name),
                merchants::status.eq(next.status),
                merchants::webhook_rate_limit_per_minute.eq(next.webhook_rate_limit_per_minute),
                merchants::webhook_secret_encrypted.eq(&next.webhook_secret_encrypted),
                merchants::previous_secret_encrypted.eq(&next.previous_secret_encrypted),
                merchants::previous_secret_expires_at.eq(next.previous_secret_expires_at),
                merchants::version.eq(before.version + 1),
            ))
            .returning(Merchant::as_returning())
            .get_result(conn)
            .await?;
        audit::record(
            conn,
            actor,
            action,
            "merchant",
            Some(id.into()),
            Some(before.public_json()),
            Some(after.public_json()),
        )
        .await?;
        Ok(after)
    })
    .await
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: MerchantId,
    expected_version: i32,
    update: MerchantUpdate,
) -> Result<Merchant, MerchantError> {
    let name = update.name.as_deref().map(validate_name).transpose()?;
    if let Some(Some(limit)) = update.webhook_rate_limit_per_minute
        && limit <= 0
    {
        return Err(MerchantError::Invalid(
            "webhook_rate_limit_per_minute must be positive".into(),
        ));
    }
    change(
        conn,
        actor,
        id,
        Some(expected_version),
        "merchant.update",
        move |m| {
            if let Some(n) = name {
                m.name = n;
            }
            if let Some(l) = update.webhook_rate_limit_per_minute {
                m.webhook_rate_limit_per_minute = l;
            }
            Ok(())
        },
    )
    .await
}

pub async fn set_status(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: MerchantId,
    suspended: bool,
) -> Result<Merchant, MerchantError> {
    let (status, action) = if suspended {
        (MerchantStatus::Suspended, "merchant.suspend")
    } else {
        (MerchantStatus::Active, "merchant.reactivate")
    };
    change(conn, actor, id, None, action, move |m| {
        m.status = status;
        Ok(())
    })
    .await
}

/// Issues a new webhook secret. The previous one keeps verifying for `grace`
/// so that a merchant can switch over without dropping webhooks.
pub async fn rotate_secret(
    conn: &mut AsyncPgConnection,
    keys: &Keyring,
    actor: &Actor,
    id: MerchantId,
    grace: std::time::Duration,
) -> Result<WithSecret, MerchantError> {
    let (_, secret_text) = WebhookSecret::generate();
    let sealed = keys.seal(secret_text.as_bytes(), &secret_aad(id));
    let until = Utc::now() + Duration::from_std(grace).unwrap_or(Duration::hours(24));
    let merchant = change(conn, actor, id, None, "merchant.rotate_secret", move |m| {
        m.previous_secret_encrypted =
            Some(std::mem::replace(&mut m.webhook_secret_encrypted, sealed));
        m.previous_secret_expires_at = Some(until);
        Ok(())
    })
    .await?;
    Ok(WithSecret {
        merchant,
        webhook_secret: secret_text,
    })
}

/// Ends the previous webhook secret's grace now, for a secret that leaked:
/// from this call on only the current secret verifies. Audited as
/// `merchant.revoke_previous_secret`.
pub async fn revoke_previous_secret(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: MerchantId,
) -> Result<Merchant, MerchantError> {
    change(
        conn,
        actor,
        id,
        None,
        "merchant.revoke_previous_secret",
        move |m| {
            m.previous_secret_encrypted = None;
            m.previous_secret_expires_at = None;
            Ok(())
        },
    )
    .await
}
