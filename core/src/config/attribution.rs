//! How purchases are attributed and rewarded.

use std::time::Duration;

use super::env::{ConfigError, Env};

/// How purchases are attributed and rewarded.
#[derive(Debug, Clone)]
pub struct AttributionConfig {
    /// Touchpoints older than this before the purchase do not count.
    pub window: Duration,
    /// A purchase with no user this long after it arrived becomes `unattributed`.
    pub unattributed_after: Duration,
    /// How long a purchase waiting for its user waits before the next look.
    pub recheck: Duration,
    /// Rewards scoring at or above this are flagged for review.
    pub fraud_threshold: f64,
    /// Pending rewards older than this are confirmed automatically.
    pub hold_period: Duration,
    /// Link-quality alert: mismatch rate above this over at least `link_min_attempts` in 24 h.
    pub link_mismatch_rate: f64,
    pub link_min_attempts: i64,
    /// A flagged reward gets an explanation job (the fraud explainer is configured).
    pub explain_flagged: bool,
    /// How many due purchases one attribution job attributes in its
    /// transaction: its own and up to this many less one others.
    pub batch: usize,
}

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<AttributionConfig, ConfigError> {
    Ok(AttributionConfig {
        window: env.secs("ATTRIBUTION_WINDOW_SECS", 30 * 86_400, 60..=365 * 86_400)?,
        unattributed_after: env.secs("UNATTRIBUTED_AFTER_SECS", 7 * 86_400, 0..=365 * 86_400)?,
        recheck: env.secs("ATTRIBUTION_RECHECK_SECS", 300, 1..=86_400)?,
        fraud_threshold: env.parsed("FRAUD_THRESHOLD", 0.7, "a number from 0 to 1")?,
        hold_period: env.secs("REWARD_HOLD_SECS", 30 * 86_400, 0..=365 * 86_400)?,
        link_mismatch_rate: env.parsed("LINK_MISMATCH_ALERT_RATE", 0.05, "a number from 0 to 1")?,
        link_min_attempts: env.int_in("LINK_MISMATCH_MIN_ATTEMPTS", 20, 1..=1_000_000)? as i64,
        // Set from the explainer's configuration once it is read.
        explain_flagged: false,
        batch: env.int_in("ATTRIBUTION_BATCH", 64, 1..=500)? as usize,
    })
}
