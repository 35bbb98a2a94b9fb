//! Cursor pagination: `?limit=` (default 20, max 100) and an opaque cursor that
//! is a signed encoding of `(created_at, id)`. A tampered cursor is refused.
//!
//! Every list is newest first over `(created_at, id)`; [`newest_first!`] is
//! the one place that order and the "after this cursor" filter are written.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is malformed or has been altered")]
    Invalid,
    #[error("limit must be an integer from 1 to 100")]
    BadLimit,
}

/// A cursor over `(created_at, text id)`, for rows keyed by text.
pub type TextCursor = (DateTime<Utc>, String);

impl Cursor {
    /// The `(created_at, id)` a page continues after.
    pub fn key(&self) -> (DateTime<Utc>, Uuid) {
        (self.created_at, self.id)
    }
}

/// Orders a boxed query newest first over its `created_at` and `id` columns
/// and, given the `(created_at, id)` of the previous page's last row, keeps
/// only the rows after it: `created_at < at OR (created_at = at AND id < id)`.
///
/// `newest_first!(query, table::created_at, table::id, after)` where `after`
/// is an `Option<(DateTime<Utc>, Id)>`, or `newest_first!(query, table, after)`
/// for a table whose columns are named `created_at` and `id`.
macro_rules! newest_first {
    ($query:expr, $table:ident, $after:expr $(,)?) => {
        $crate::services::pagination::newest_first!($query, $table::created_at, $table::id, $after)
    };
    ($query:expr, $created_at:expr, $id:expr, $after:expr $(,)?) => {{
        use diesel::prelude::*;
        let query = $query.order(($created_at.desc(), $id.desc()));
        match $after {
            Some((at, id)) => {
                query.filter($created_at.lt(at).or($created_at.eq(at).and($id.lt(id))))
            }
            None => query,
        }
    }};
}
pub(crate) use newest_first;

/// Signs and checks cursors with a key derived from the application secret.
#[derive(Clone)]
pub struct CursorCodec {
    key: Vec<u8>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec")
    }
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(b"clicknback/cursor/v1");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn tag(&self, data: &[u8]) -> [u8; 16] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; 16];
        t.copy_from_slice(&full[..16]);
        t
    }

    pub fn encode(&self, c: &Cursor) -> String {
        let micros = c.created_at.timestamp_micros();
        let mut data = Vec::with_capacity(24);
        data.extend_from_slice(&micros.to_be_bytes());
        data.extend_from_slice(c.id.as_bytes());
        let tag = self.tag(&data);
        data.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(data)
    }

    pub fn decode(&self, s: &str) -> Result<Cursor, CursorError> {
        let data = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| CursorError::Invalid)?;
        if data.len() != 40 {
            return Err(CursorError::Invalid);
        }
        let (body, tag) = data.split_at(24);
        use subtle::ConstantTimeEq;
        if !bool::from(self.tag(body).ct_eq(tag)) {
            return Err(CursorError::Invalid);
        }
        let micros = i64::from_be_bytes(body[..8].try_into().map_err(|_| CursorError::Invalid)?);
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(CursorError::Invalid)?;
        let id = Uuid::from_slice(&body[8..24]).map_err(|_| CursorError::Invalid)?;
        Ok(Cursor { created_at, id })
    }
}

impl CursorCodec {
    /// A cursor over `(created_at, text id)` (for rows keyed by text).
    pub fn encode_text(&self, created_at: DateTime<Utc>, id: &str) -> String {
        let mut data = created_at.timestamp_micros().to_be_bytes().to_vec();
        data.extend_from_slice(id.as_bytes());
        let tag = self.tag(&data);
        data.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(data)
    }

    pub fn decode_text(&self, s: &str) -> Result<TextCursor, CursorError> {
        let data = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| CursorError::Invalid)?;
        if data.len() < 8 + 16 || data.len() > 8 + 16 + 512 {
            return Err(CursorError::Invalid);
        }
        let (body, tag) = data.split_at(data.len() - 16);
        use subtle::ConstantTimeEq;
        if !bool::from(self.tag(body).ct_eq(tag)) {
            return Err(CursorError::Invalid);
        }
        let micros = i64::from_be_bytes(body[..8].try_into().map_err(|_| CursorError::Invalid)?);
        let at = DateTime::from_timestamp_micros(micros).ok_or(CursorError::Invalid)?;
        let id = String::from_utf8(body[8..].to_vec()).map_err(|_| CursorError::Invalid)?;
        Ok((at, id))
    }
}

/// Validates `?limit=`.
pub fn limit(raw: Option<i64>) -> Result<i64, CursorError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(CursorError::BadLimit),
    }
}

/// Takes one row more than the page to learn whether another page follows.
pub fn page<T>(
    rows: Vec<T>,
    limit: i64,
    codec: &CursorCodec,
    key: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<String>) {
    page_by(rows, limit, |r| codec.encode(&key(r)))
}

/// [`page`] for any cursor form: `next` encodes the last row of the page.
pub fn page_by<T>(
    mut rows: Vec<T>,
    limit: i64,
    next: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(next) } else { None };
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let codec = CursorCodec::new(b"secret");
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        let s = codec.encode(&c);
        assert_eq!(codec.decode(&s).unwrap(), c);
        let mut bytes = URL_SAFE_NO_PAD.decode(&s).unwrap();
        bytes[3] ^= 1;
        assert_eq!(
            codec.decode(&URL_SAFE_NO_PAD.encode(bytes)),
            Err(CursorError::Invalid)
        );
        assert_eq!(codec.decode("garbage"), Err(CursorError::Invalid));
        assert_eq!(
            CursorCodec::new(b"other").decode(&s),
            Err(CursorError::Invalid)
        );
    }
}
