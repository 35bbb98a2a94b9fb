//! Access tokens (JWT HS256) and password hashing (argon2id).
//!
//! Verification requires every claim: `iss`, `aud`, `typ=access`, `iat`, `exp`,
//! `jti`, `sub` and `role`; only HS256 is accepted.

use std::time::Duration;

use argon2::{
    Argon2, PasswordHash,
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

/// Password hashing: argon2id, v19, the OWASP-recommended m=19 MiB, t=2,
/// p=1 for new hashes (stored hashes are verified with their own parameters).
///
/// Hashes run on a few threads of their own (`PASSWORD_HASH_THREADS`), each
/// reusing one memory area for every hash it computes, so hashing takes at
/// most `threads × m` of memory however many logins arrive, and never a
/// thread of the async runtime or of its blocking pool. In front of them is a
/// queue of `PASSWORD_HASH_QUEUE` requests; beyond it a request is refused at
/// once ([`HashError::Busy`], a 503 at the api) instead of waiting, and a
/// request whose caller went away before its turn is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingLimits {
    pub threads: usize,
    pub queue: usize,
}

impl Default for HashingLimits {
    fn default() -> Self {
        Self {
            threads: 1,
            queue: 32,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// The queue in front of the hashing threads is full.
    #[error("too many password checks are waiting; retry shortly")]
    Busy,
    #[error("hashing password: {0}")]
    Failed(String),
}

enum Work {
    Hash(String),
    Verify { password: String, hash: String },
}

enum Done {
    Hashed(Result<String, String>),
    Verified(bool),
}

struct Job {
    work: Work,
    reply: tokio::sync::oneshot::Sender<Done>,
}

struct HashPool {
    queue: std::sync::mpsc::SyncSender<Job>,
}

static POOL: std::sync::OnceLock<HashPool> = std::sync::OnceLock::new();

/// Sets the hashing threads and queue of this process; the first call wins
/// (later ones, and the first hash without a call, keep what is running).
pub fn configure_hashing(limits: HashingLimits) {
    POOL.get_or_init(|| HashPool::start(limits));
}

fn pool() -> &'static HashPool {
    POOL.get_or_init(|| HashPool::start(HashingLimits::default()))
}

impl HashPool {
    fn start(limits: HashingLimits) -> Self {
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(limits.queue);
        let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
        for i in 0..limits.threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || hashing_thread(&jobs))
                .expect("a thread for password hashing");
        }
        Self { queue }
    }

    async fn run(&self, work: Work) -> Result<Done, HashError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.queue
            .try_send(Job { work, reply })
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    metrics::counter!("password_hash_rejected_total").increment(1);
                    HashError::Busy
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    HashError::Failed("the hashing threads stopped".into())
                }
            })?;
        done.await
            .map_err(|_| HashError::Failed("the hashing thread dropped the request".into()))
    }
}

fn hashing_thread(jobs: &std::sync::Mutex<std::sync::mpsc::Receiver<Job>>) {
    // This thread's memory area, grown to the largest hash it has computed.
    let mut memory: Vec<argon2::Block> = Vec::new();
    loop {
        let next = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = next else {
            return;
        };
        if job.reply.is_closed() {
            continue;
        }
        let done = match job.work {
            Work::Hash(password) => Done::Hashed(hash_with(&mut memory, &password)),
            Work::Verify { password, hash } => {
                Done::Verified(verify_with(&mut memory, &password, &hash))
            }
        };
        let _ = job.reply.send(done);
    }
}

/// The first `blocks` blocks of `memory`, grown if needed.
fn area(memory: &mut Vec<argon2::Block>, blocks: usize) -> &mut [argon2::Block] {
    if memory.len() < blocks {
        *memory = vec![argon2::Block::default(); blocks];
    }
    &mut memory[..blocks]
}

fn hash_with(memory: &mut Vec<argon2::Block>, password: &str) -> Result<String, String> {
    use argon2::password_hash::{Output, ParamsString};
    let params = argon2::Params::DEFAULT;
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    let blocks = params.block_count();
    Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    )
    .hash_password_into_with_memory(
        password.as_bytes(),
        salt_bytes,
        &mut out,
        area(memory, blocks),
    )
    .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash`, computed with the
/// hash's own algorithm, version and parameters.
fn verify_with(memory: &mut Vec<argon2::Block>, password: &str, hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_bytes,
            &mut out,
            area(memory, blocks),
        )
        .is_ok()
        && bool::from(expected.as_bytes().ct_eq(&out))
}

/// Hashes a password on the hashing threads (argon2 is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, HashError> {
    match pool().run(Work::Hash(password)).await? {
        Done::Hashed(r) => r.map_err(HashError::Failed),
        Done::Verified(_) => Err(HashError::Failed("unexpected answer".into())),
    }
}

/// A hash of a random password, verified against when the email is unknown so
/// that the response time does not tell whether an account exists.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Pj1hOvZTKmxUAUzNefxmjcNy8zmYw2Cq3PLGu9Xy9tQ";

/// Whether `password` matches `hash` (`None`: an unknown account, checked
/// against a dummy hash so that it takes as long, and never matching).
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, HashError> {
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
    match pool().run(Work::Verify { password, hash }).await? {
        Done::Verified(ok) => Ok(ok && known),
        Done::Hashed(_) => Err(HashError::Failed("unexpected answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

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
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            verify_password("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong".into(), Some(h)).await.unwrap());
        assert!(!verify_password("x".into(), None).await.unwrap());
        assert!(
            !verify_password("x".into(), Some("not a hash".into()))
                .await
                .unwrap()
        );
    }

    /// The hashes are the stock argon2 crate's, both ways: stored hashes keep
    /// verifying, and new ones are what `Argon2::default()` would write.
    #[tokio::test]
    async fn hashes_are_interchangeable_with_the_stock_hasher() {
        let stock = Argon2::default();
        let ours = hash_password("pw-123456".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(stock.verify_password(b"pw-123456", &parsed).is_ok());
        assert!(stock.verify_password(b"pw-1234567", &parsed).is_err());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = stock
            .hash_password(b"pw-abcdef", &salt)
            .unwrap()
            .to_string();
        assert!(
            verify_password("pw-abcdef".into(), Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("pw-abcdeg".into(), Some(theirs))
                .await
                .unwrap()
        );
        // Other parameters, as an older stored hash may carry.
        let light = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(8_192, 3, 1, None).unwrap(),
        );
        let old = light.hash_password(b"old-pass", &salt).unwrap().to_string();
        assert!(verify_password("old-pass".into(), Some(old)).await.unwrap());
    }
}
