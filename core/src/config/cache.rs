//! The Redis caches in front of hot reads.

use std::time::Duration;

use super::env::{ConfigError, Env};

/// Redis caches in front of hot reads. Every entry also expires by its TTL.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `false` sends every read to PostgreSQL (benchmarks compare both).
    pub enabled: bool,
    pub offer_ttl: Duration,
    pub merchant_ttl: Duration,
    pub stats_ttl: Duration,
    /// A cache read slower than this counts as a miss and goes to PostgreSQL.
    pub timeout: Duration,
}

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<CacheConfig, ConfigError> {
    Ok(CacheConfig {
        enabled: env.bool("CACHE_ENABLED", true)?,
        offer_ttl: env.secs("OFFER_CACHE_TTL_SECS", 30, 1..=3_600)?,
        merchant_ttl: env.secs("MERCHANT_CACHE_TTL_SECS", 30, 1..=3_600)?,
        stats_ttl: env.secs("STATS_CACHE_TTL_SECS", 300, 1..=86_400)?,
        timeout: env.millis("CACHE_TIMEOUT_MS", 200, 1..=10_000)?,
    })
}
