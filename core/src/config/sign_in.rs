//! Sign-in limits and password hashing.

use std::time::Duration;

use super::env::{ConfigError, Env};

/// Sign-in limits and password hashing.
#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// Sign-in attempts (any email) per client address per minute.
    pub per_ip_per_minute: u64,
    /// Registrations per client address per hour.
    pub register_per_ip_per_hour: u64,
    /// Threads that compute password hashes (each holds argon2id's 19 MiB).
    pub hash_threads: usize,
    /// Password checks waiting for a thread; beyond it a 503 at once.
    pub hash_queue: usize,
    /// How long a board session (after the login form) lasts.
    pub board_session_ttl: Duration,
}

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<SignInConfig, ConfigError> {
    Ok(SignInConfig {
        per_ip_per_minute: env.int_in("LOGIN_PER_IP_PER_MINUTE", 30, 1..=1_000_000)?,
        register_per_ip_per_hour: env.int_in("REGISTER_PER_IP_PER_HOUR", 20, 1..=1_000_000)?,
        hash_threads: env.int_in("PASSWORD_HASH_THREADS", 1, 1..=64)? as usize,
        hash_queue: env.int_in("PASSWORD_HASH_QUEUE", 32, 0..=100_000)? as usize,
        board_session_ttl: env.secs("BOARD_SESSION_TTL_SECS", 28_800, 60..=604_800)?,
    })
}
