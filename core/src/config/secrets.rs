//! Secrets: a value `Debug` never prints, and the data-encryption keys.

use std::fmt;

use base64::Engine;

use super::env::{ConfigError, Env};

/// A secret value: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Development-only stand-ins for secrets; refused outside `APP_ENV=development`.
const DEV_JWT_SECRET: &str = "development-only-jwt-secret-change-me-0123456789";
const DEV_DATA_KEY: &str = "ZGV2ZWxvcG1lbnQtb25seS1kYXRhLWtleS0zMmJ5dGU=";

fn parse_key(var: &str, value: &str) -> Result<[u8; 32], ConfigError> {
    let bad = |problem: &str| ConfigError {
        var: var.into(),
        problem: problem.into(),
        expected: "base64 of exactly 32 random bytes (e.g. `openssl rand -base64 32`)".into(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad("is not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| bad("does not decode to 32 bytes"))
}

pub(super) fn jwt_secret<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Secret, ConfigError> {
    let jwt_secret = env.required(
        "JWT_SECRET",
        "a random string of at least 32 characters",
        Some(DEV_JWT_SECRET),
    )?;
    if jwt_secret.len() < 32 {
        return Err(ConfigError {
            var: "JWT_SECRET".into(),
            problem: format!("has {} characters", jwt_secret.len()),
            expected: "a random string of at least 32 characters".into(),
        });
    }
    Ok(Secret::new(jwt_secret))
}

/// The current data-encryption key first, then the previous ones.
pub(super) fn data_encryption_keys<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Vec<[u8; 32]>, ConfigError> {
    let current_key = env.required(
        "DATA_ENCRYPTION_KEY",
        "base64 of exactly 32 random bytes (e.g. `openssl rand -base64 32`)",
        Some(DEV_DATA_KEY),
    )?;
    let mut keys = vec![parse_key("DATA_ENCRYPTION_KEY", &current_key)?];
    if let Some(previous) = env.raw("DATA_ENCRYPTION_PREVIOUS_KEYS") {
        for k in previous.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            keys.push(parse_key("DATA_ENCRYPTION_PREVIOUS_KEYS", k)?);
        }
    }
    Ok(keys)
}
