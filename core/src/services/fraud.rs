//! Fraud scoring behind a trait, so another scorer can be plugged in. The
//! rule-based scorer adds weighted reasons and caps the score at 1.

use serde::Serialize;

/// What the scorer sees of a purchase about to be rewarded.
#[derive(Debug, Clone, Default)]
pub struct FraudInput {
    pub amount_minor: i64,
    /// The user's average purchase amount before this one (None: first purchase).
    pub user_average_minor: Option<i64>,
    /// Purchases by the user in the hour before this one.
    pub user_purchases_last_hour: i64,
    /// Days since the merchant was created.
    pub merchant_age_days: i64,
    /// Hour of the purchase, UTC (0..=23).
    pub hour_utc: u32,
    /// The offer's rate in basis points, and whether the cashback hits its per-purchase cap.
    pub rate_bps: i32,
    pub at_max_cashback: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FraudScore {
    /// In [0, 1].
    pub score: f64,
    pub reasons: Vec<String>,
}

pub trait FraudScorer: Send + Sync {
    fn score(&self, input: &FraudInput) -> FraudScore;
}

/// Heuristic rules with weights.
#[derive(Debug, Clone)]
pub struct RuleScorer {
    /// An amount this many times the user's average is suspicious.
    pub amount_factor: f64,
    pub burst_per_hour: i64,
    pub new_merchant_days: i64,
}

impl Default for RuleScorer {
    fn default() -> Self {
        Self {
            amount_factor: 5.0,
            burst_per_hour: 5,
            new_merchant_days: 7,
        }
    }
}

impl FraudScorer for RuleScorer {
    fn score(&self, i: &FraudInput) -> FraudScore {
        let mut score = 0.0;
        let mut reasons = Vec::new();
        if let Some(avg) = i.user_average_minor.filter(|a| *a > 0)
            && i.amount_minor as f64 > avg as f64 * self.amount_factor
        {
            score += 0.4;
            reasons.push(format!(
                "amount is more than {}× the user's average",
                self.amount_factor
            ));
        }
        if i.user_purchases_last_hour >= self.burst_per_hour {
            score += 0.35;
            reasons.push(format!(
                "{} purchases in the last hour",
                i.user_purchases_last_hour
            ));
        }
        if i.merchant_age_days < self.new_merchant_days {
            score += 0.15;
            reasons.push("merchant is brand new".into());
        }
        if (1..=4).contains(&i.hour_utc) {
            score += 0.1;
            reasons.push("purchase at an odd hour".into());
        }
        if i.user_average_minor.is_none() && i.at_max_cashback {
            score += 0.3;
            reasons.push("first purchase at maximum cashback".into());
        }
        FraudScore {
            score: f64::min(score, 1.0),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_purchase_scores_zero_and_rules_add_reasons() {
        let s = RuleScorer::default();
        let ordinary = FraudInput {
            amount_minor: 5_000,
            user_average_minor: Some(4_000),
            merchant_age_days: 400,
            hour_utc: 14,
            ..Default::default()
        };
        assert_eq!(s.score(&ordinary).score, 0.0);
        let bad = FraudInput {
            amount_minor: 500_000,
            user_average_minor: Some(4_000),
            user_purchases_last_hour: 9,
            merchant_age_days: 1,
            hour_utc: 3,
            ..Default::default()
        };
        let r = s.score(&bad);
        assert_eq!(r.score, 1.0);
        assert_eq!(r.reasons.len(), 4);
    }
}
