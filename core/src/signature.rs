//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(secret,
//! "{id}.{timestamp}.{raw body}")>`, several space-separated signatures accepted,
//! a timestamp tolerance both ways, and constant-time comparison.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhook-id, webhook-timestamp and webhook-signature headers are required")]
    MissingHeaders,
    #[error("webhook-timestamp is not a unix timestamp in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the allowed tolerance")]
    TimestampOutOfTolerance,
    #[error("no signature matches")]
    NoMatch,
}

/// A webhook secret: `whsec_` + base64 of the key bytes.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    pub fn parse(s: &str) -> Option<Self> {
        let b64 = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        STANDARD
            .decode(b64)
            .ok()
            .filter(|k| !k.is_empty())
            .map(Self)
    }

    /// A new secret of 32 random bytes.
    pub fn generate() -> (Self, String) {
        let key = crate::crypto::random_bytes::<32>().to_vec();
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        (Self(key), text)
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.mac(id, &timestamp.to_string(), body))
        )
    }
}

/// The signature headers of a request.
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a request against any of `secrets` (current first, then a previous
/// one during rotation). `now` is unix seconds.
pub fn verify(
    secrets: &[WebhookSecret],
    headers: &SignedHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let (Some(id), Some(ts), Some(sigs)) = (headers.id, headers.timestamp, headers.signature)
    else {
        return Err(SignatureError::MissingHeaders);
    };
    if id.is_empty() {
        return Err(SignatureError::MissingHeaders);
    }
    let ts_num: i64 = ts.parse().map_err(|_| SignatureError::BadTimestamp)?;
    // abs_diff: no overflow for any pair of i64 (`-9223372036854775808`, say).
    if now.abs_diff(ts_num) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::TimestampOutOfTolerance);
    }
    let expected: Vec<[u8; 32]> = secrets.iter().map(|s| s.mac(id, ts, body)).collect();
    let mut matched = subtle::Choice::from(0u8);
    for candidate in sigs.split(' ') {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        // A bare `v1,` or anything that is not a 32-byte MAC never matches.
        let Ok(given) = STANDARD.decode(b64) else {
            continue;
        };
        if given.len() != 32 {
            continue;
        }
        for e in &expected {
            matched |= e.as_slice().ct_eq(&given);
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn check(sig: &str, now: i64) -> Result<(), SignatureError> {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        verify(
            &[secret],
            &SignedHeaders {
                id: Some(ID),
                timestamp: Some(&TS.to_string()),
                signature: Some(sig),
            },
            BODY,
            now,
            300,
        )
    }

    #[test]
    fn published_test_vector_verifies() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TS, BODY), SIG);
        assert_eq!(check(SIG, TS), Ok(()));
    }

    #[test]
    fn several_signatures_and_tolerance_both_ways() {
        assert_eq!(check(&format!("v1,AAAA {SIG}"), TS + 299), Ok(()));
        assert_eq!(check(SIG, TS - 299), Ok(()));
        assert_eq!(
            check(SIG, TS + 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(SIG, TS - 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn bare_prefix_and_other_versions_never_match() {
        for sig in [
            "v1,",
            "v1, v1,",
            "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            "",
            "v1,!!!",
        ] {
            assert_eq!(check(sig, TS), Err(SignatureError::NoMatch), "{sig}");
        }
    }

    #[test]
    fn extreme_timestamps_are_out_of_tolerance_without_overflow() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        for ts in [
            i64::MIN.to_string(),
            i64::MAX.to_string(),
            "-1".into(),
            "0".into(),
        ] {
            let headers = SignedHeaders {
                id: Some(ID),
                timestamp: Some(&ts),
                signature: Some(SIG),
            };
            for now in [i64::MIN, -1, 0, TS, i64::MAX] {
                let r = verify(std::slice::from_ref(&secret), &headers, BODY, now, 300);
                assert!(
                    r.is_err() || now.abs_diff(ts.parse().unwrap()) <= 300,
                    "{ts} at {now}"
                );
            }
        }
        let huge = SignedHeaders {
            id: Some(ID),
            timestamp: Some("99999999999999999999"),
            signature: Some(SIG),
        };
        assert_eq!(
            verify(&[secret], &huge, BODY, TS, 300),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn rotation_accepts_previous_secret() {
        let (new, _) = WebhookSecret::generate();
        let old = WebhookSecret::parse(SECRET).unwrap();
        let headers = SignedHeaders {
            id: Some(ID),
            timestamp: Some("1649367553"),
            signature: Some(SIG),
        };
        assert_eq!(verify(&[new, old], &headers, BODY, TS, 300), Ok(()));
    }
}
