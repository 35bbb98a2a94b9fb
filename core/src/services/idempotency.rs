//! Idempotency keys (IETF Idempotency-Key draft semantics).
//!
//! A key is scoped to who sent it and the endpoint. Inside the request's one
//! transaction we take a transaction-scoped advisory lock on the key: if another
//! request holds it, this one is `InProgress` (409). Otherwise a stored outcome
//! is replayed when the fingerprint matches, refused (`KeyReused`, 422) when it
//! does not, and the new outcome is stored with the work when there is none.
//! Only successful outcomes are stored, so a refused request can be corrected
//! and retried under the same key.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::{crypto::sha256, db, schema::idempotency_keys};

pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdempotencyError {
    #[error("the Idempotency-Key header is required")]
    Missing,
    #[error("the Idempotency-Key must be 1 to 255 printable characters")]
    Malformed,
    #[error("a request with this Idempotency-Key is still being processed")]
    InProgress,
    #[error("this Idempotency-Key was already used with a different request")]
    KeyReused,
}

/// One request's idempotency identity.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub scope: String,
    pub endpoint: String,
    pub key: String,
    pub fingerprint: [u8; 32],
}

impl IdempotencyKey {
    /// `raw` is the header value; `payload` the request's JSON, fingerprinted in
    /// canonical form (object keys sorted, no insignificant whitespace).
    pub fn new(
        scope: String,
        endpoint: &str,
        raw: Option<&str>,
        payload: &serde_json::Value,
    ) -> Result<Self, IdempotencyError> {
        let key = raw.ok_or(IdempotencyError::Missing)?;
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(|c| c.is_control()) {
            return Err(IdempotencyError::Malformed);
        }
        let mut canonical = Vec::new();
        write_canonical(payload, &mut canonical);
        let mut material = Vec::with_capacity(endpoint.len() + canonical.len() + 1);
        material.extend_from_slice(endpoint.as_bytes());
        material.push(b'\n');
        material.extend_from_slice(&canonical);
        Ok(Self {
            scope,
            endpoint: endpoint.to_owned(),
            key: key.to_owned(),
            fingerprint: sha256(&material),
        })
    }

    /// The advisory-lock key that marks this request as in flight.
    pub fn lock_key(&self) -> i64 {
        db::lock_key(&format!(
            "idem\0{}\0{}\0{}",
            self.scope, self.endpoint, self.key
        ))
    }
}

/// Canonical JSON: object keys sorted, no whitespace (independent of how
/// serde_json orders maps in this build).
fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&serde_json::to_vec(k).expect("strings serialize"));
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(&serde_json::to_vec(scalar).expect("scalars serialize")),
    }
}

/// The outcome of an idempotent request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: serde_json::Value,
    pub replayed: bool,
}

/// Starts an idempotent request inside the caller's transaction. Returns the
/// stored outcome to replay, or `None` when the work should run now; the caller
/// then stores its outcome with [`finish`] in the same transaction.
pub async fn begin<E>(
    conn: &mut AsyncPgConnection,
    key: &IdempotencyKey,
) -> Result<Option<Outcome>, E>
where
    E: From<IdempotencyError> + From<diesel::result::Error>,
{
    if !db::try_xact_lock(conn, key.lock_key()).await? {
        return Err(IdempotencyError::InProgress.into());
    }
    let stored: Option<(Vec<u8>, i16, serde_json::Value)> = idempotency_keys::table
        .find((&key.scope, &key.endpoint, &key.key))
        .select((
            idempotency_keys::fingerprint,
            idempotency_keys::response_status,
            idempotency_keys::response_body,
        ))
        .first(conn)
        .await
        .optional()?;
    match stored {
        None => Ok(None),
        Some((fingerprint, _, _)) if fingerprint != key.fingerprint => {
            Err(IdempotencyError::KeyReused.into())
        }
        Some((_, status, body)) => Ok(Some(Outcome {
            status: status as u16,
            body,
            replayed: true,
        })),
    }
}

/// Stores the outcome of the work started by [`begin`].
pub async fn finish(
    conn: &mut AsyncPgConnection,
    key: &IdempotencyKey,
    status: u16,
    body: serde_json::Value,
) -> Result<Outcome, diesel::result::Error> {
    diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::scope.eq(&key.scope),
            idempotency_keys::endpoint.eq(&key.endpoint),
            idempotency_keys::key.eq(&key.key),
            idempotency_keys::fingerprint.eq(key.fingerprint.as_slice()),
            idempotency_keys::response_status.eq(status as i16),
            idempotency_keys::response_body.eq(&body),
        ))
        .execute(conn)
        .await?;
    Ok(Outcome {
        status,
        body,
        replayed: false,
    })
}

/// Deletes records older than `cutoff`, at most `batch` at a time; returns how many.
pub async fn purge_older_than(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2))",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(cutoff)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}

/// Deletes every record older than `cutoff`, `batch` at a time so no
/// statement holds its locks long; returns how many.
pub async fn purge_expired(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<usize, diesel::result::Error> {
    let mut total = 0;
    loop {
        let n = purge_older_than(conn, cutoff, batch).await?;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{ "b" : [1,2], "a" : 1 }"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"a":2,"b":[1,2]}"#).unwrap();
        let k = |v| {
            IdempotencyKey::new("s".into(), "e", Some("k"), v)
                .unwrap()
                .fingerprint
        };
        assert_eq!(k(&a), k(&b));
        assert_ne!(k(&a), k(&c));
    }

    #[test]
    fn key_rules() {
        let v = serde_json::json!({});
        assert_eq!(
            IdempotencyKey::new("s".into(), "e", None, &v).unwrap_err(),
            IdempotencyError::Missing
        );
        let long = "x".repeat(256);
        assert_eq!(
            IdempotencyKey::new("s".into(), "e", Some(&long), &v).unwrap_err(),
            IdempotencyError::Malformed
        );
        assert!(IdempotencyKey::new("s".into(), "e", Some(&"x".repeat(255)), &v).is_ok());
    }
}
