//! Access tokens (JWT HS256) and password hashing (argon2id).
//!
//! Verification requires every claim: `iss`, `aud`, `typ=access`, `iat`, `exp`,
//! `jti`, `sub` and `role`; only HS256 is accepted.

use std::time::Duration;

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ids::UserId, models::user::Role};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub typ: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub sub: UserId,
    pub role: Role,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is invalid")]
    Invalid,
    #[error("token has expired")]
    Expired,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .finish()
    }
}

pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: u64,
}

impl Tokens {
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        }
    }

    pub fn issue(&self, user_id: UserId, role: Role) -> IssuedToken {
        let now = Utc::now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ: "access".into(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: Uuid::new_v4().to_string(),
            sub: user_id,
            role,
        };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .expect("HS256 signing with an in-memory key cannot fail");
        IssuedToken {
            access_token,
            expires_in: self.ttl.as_secs(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let c = data.claims;
        if c.typ != "access" || c.jti.is_empty() || c.iat > Utc::now().timestamp() + 60 {
            return Err(TokenError::Invalid);
        }
        Ok(c)
    }
}

fn argon2() -> Argon2<'static> {
    Argon2::default() // argon2id, v19, OWASP-recommended m=19 MiB, t=2, p=1
}

/// At most this many password hashes run at once per process. Each takes
/// 19 MiB and a core for tens of milliseconds, so a burst of logins or
/// registrations queues here instead of growing memory with the blocking pool
/// (up to 512 threads) and starving the other requests of CPU.
fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores * 2)
    })
}

/// Hashes a password on a blocking thread (argon2 is deliberately slow).
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    let _permit = hashing_permits().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// A hash of a random password, verified against when the email is unknown so
/// that the response time does not tell whether an account exists.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Pj1hOvZTKmxUAUzNefxmjcNy8zmYw2Cq3PLGu9Xy9tQ";

pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    let Ok(_permit) = hashing_permits().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        let ok = argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            "iss",
            "aud",
            Duration::from_secs(60),
        )
    }

    #[test]
    fn issued_tokens_verify_and_carry_claims() {
        let t = tokens();
        let id = UserId::new();
        let issued = t.issue(id, Role::Admin);
        let c = t.verify(&issued.access_token).unwrap();
        assert_eq!(c.sub, id);
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.typ, "access");
    }

    #[test]
    fn other_audience_issuer_or_key_is_refused() {
        let issued = tokens().issue(UserId::new(), Role::User);
        let other_aud = Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            "iss",
            "x",
            Duration::from_secs(60),
        );
        assert!(other_aud.verify(&issued.access_token).is_err());
        let other_key = Tokens::new(
            b"fedcba9876543210fedcba9876543210",
            "iss",
            "aud",
            Duration::from_secs(60),
        );
        assert!(other_key.verify(&issued.access_token).is_err());
    }

    #[tokio::test]
    async fn password_hash_roundtrip() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong".into(), Some(h)).await);
        assert!(!verify_password("x".into(), None).await);
    }
}
