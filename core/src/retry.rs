//! Retry policies per job type: attempts, exponential backoff from a base
//! delay up to a cap, and jitter. Each job type declares its default
//! ([`crate::jobs::Job::RETRY`]); `JOB_RETRY_<JOB>=attempts=8,base=5s,cap=10m,jitter=0.2`
//! overrides it, validated at start.

use std::time::Duration;

use crate::config::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total runs allowed, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Fraction (0..=1) of each delay that is randomised away.
    pub jitter: f64,
}

impl RetryPolicy {
    pub const fn new(max_attempts: u32, base: Duration, cap: Duration, jitter: f64) -> Self {
        Self {
            max_attempts,
            base,
            cap,
            jitter,
        }
    }

    /// Delay before attempt `next` (2 for the first retry): base × 2^(next−2),
    /// capped, minus up to `jitter` of it. `unit` in [0, 1) supplies the randomness.
    pub fn delay_before(&self, next: u32, unit: f64) -> Duration {
        let exp = next.saturating_sub(2).min(30);
        let raw = self.base.saturating_mul(1u32 << exp.min(31)).min(self.cap);
        raw.mul_f64(1.0 - self.jitter * unit.clamp(0.0, 1.0))
    }

    /// Whether a job that just failed on `attempt` may run again.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// `default`, overridden by the job's [`env_var`] when it is set.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        job: &str,
        default: RetryPolicy,
    ) -> Result<RetryPolicy, ConfigError> {
        let var = env_var(job);
        match env.raw(&var) {
            Some(raw) => RetryPolicy::parse(&var, &raw, default),
            None => Ok(default),
        }
    }

    /// Parses `attempts=8,base=5s,cap=10m,jitter=0.2` over `default` (any subset).
    pub fn parse(var: &str, raw: &str, default: RetryPolicy) -> Result<RetryPolicy, ConfigError> {
        let expected = "comma-separated attempts=N (1..=100), base=DUR, cap=DUR, jitter=F (0..=1); DUR like 500ms, 5s, 10m, 1h";
        let bad = |problem: String| ConfigError {
            var: var.to_owned(),
            problem,
            expected: expected.to_owned(),
        };
        let mut p = default;
        for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("has {part:?} without `=`")))?;
            match k.trim() {
                "attempts" => {
                    p.max_attempts = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad(format!("has attempts={v}")))?
                }
                "base" => p.base = parse_duration(v).ok_or_else(|| bad(format!("has base={v}")))?,
                "cap" => p.cap = parse_duration(v).ok_or_else(|| bad(format!("has cap={v}")))?,
                "jitter" => {
                    p.jitter = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|j: &f64| (0.0..=1.0).contains(j))
                        .ok_or_else(|| bad(format!("has jitter={v}")))?
                }
                other => return Err(bad(format!("has unknown key {other:?}"))),
            }
        }
        if p.base.is_zero() || p.cap < p.base {
            return Err(bad("has base of zero or a cap below the base".into()));
        }
        Ok(p)
    }
}

/// The variable overriding a job type's policy: `JOB_RETRY_` and the job's
/// name in upper snake case (`SendEmail` → `JOB_RETRY_SEND_EMAIL`).
pub fn env_var(job: &str) -> String {
    let mut var = String::from("JOB_RETRY_");
    for (i, c) in job.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            var.push('_');
        }
        var.push(c.to_ascii_uppercase());
    }
    var
}

/// `500ms`, `5s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3_600)),
        _ => None,
    }
}

/// A random fraction in [0, 1).
pub fn unit_random() -> f64 {
    use rand::Rng;
    rand::thread_rng().r#gen::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy =
        RetryPolicy::new(5, Duration::from_secs(2), Duration::from_secs(60), 0.0);

    #[test]
    fn exponential_and_capped() {
        assert_eq!(P.delay_before(2, 0.5), Duration::from_secs(2));
        assert_eq!(P.delay_before(3, 0.5), Duration::from_secs(4));
        assert_eq!(P.delay_before(4, 0.5), Duration::from_secs(8));
        assert_eq!(P.delay_before(20, 0.5), Duration::from_secs(60));
        assert!(P.allows_retry_after(4));
        assert!(!P.allows_retry_after(5));
    }

    #[test]
    fn jitter_only_shortens() {
        let p = RetryPolicy { jitter: 0.5, ..P };
        assert_eq!(p.delay_before(3, 0.0), Duration::from_secs(4));
        assert_eq!(p.delay_before(3, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn variables_are_the_job_name_in_upper_snake_case() {
        assert_eq!(env_var("Canary"), "JOB_RETRY_CANARY");
        assert_eq!(
            env_var("ApplyRewardTransition"),
            "JOB_RETRY_APPLY_REWARD_TRANSITION"
        );
    }

    #[test]
    fn an_override_applies_over_the_default_and_names_its_variable() {
        let lookup = |k: &str| (k == "JOB_RETRY_SEND_EMAIL").then(|| "attempts=2".to_owned());
        let env = Env::new(lookup).unwrap();
        assert_eq!(
            RetryPolicy::from_env(&env, "SendEmail", P)
                .unwrap()
                .max_attempts,
            2
        );
        assert_eq!(RetryPolicy::from_env(&env, "Canary", P).unwrap(), P);
        let bad =
            Env::new(|k: &str| (k == "JOB_RETRY_CANARY").then(|| "attempts=0".to_owned())).unwrap();
        let e = RetryPolicy::from_env(&bad, "Canary", P).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration error: JOB_RETRY_CANARY has attempts=0; expected comma-separated attempts=N (1..=100), base=DUR, cap=DUR, jitter=F (0..=1); DUR like 500ms, 5s, 10m, 1h"
        );
    }

    #[test]
    fn parse_accepts_subsets_and_names_bad_values() {
        let p = RetryPolicy::parse("X", "attempts=3, base=500ms", P).unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.base, Duration::from_millis(500));
        assert_eq!(p.cap, P.cap);
        for bad in [
            "attempts=0",
            "base=5",
            "jitter=2",
            "cap=1s,base=5s",
            "speed=3",
            "attempts",
        ] {
            let e = RetryPolicy::parse("JOB_RETRY_X", bad, P).unwrap_err();
            assert_eq!(e.var, "JOB_RETRY_X", "{bad}");
        }
    }
}
