//! Purchase-token link quality per merchant: matched and mismatched
//! validations, and the merchants whose recent mismatch rate is alarming.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use crate::{ids::MerchantId, schema::link_quality_daily};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkStats {
    pub merchant_id: MerchantId,
    /// Over the last `days` days (UTC days, today included).
    pub days: i64,
    pub matched: i64,
    pub mismatched: i64,
    /// mismatched / (matched + mismatched); 0 with no attempts.
    pub mismatch_rate: f64,
}

pub async fn stats(
    conn: &mut AsyncPgConnection,
    merchant: MerchantId,
    days: i64,
) -> Result<LinkStats, diesel::result::Error> {
    let since = (Utc::now() - Duration::days(days - 1)).date_naive();
    let rows: Vec<(i64, i64)> = link_quality_daily::table
        .filter(link_quality_daily::merchant_id.eq(merchant))
        .filter(link_quality_daily::day.ge(since))
        .select((link_quality_daily::matched, link_quality_daily::mismatched))
        .load(conn)
        .await?;
    let (matched, mismatched) = rows.iter().fold((0, 0), |(m, x), (a, b)| (m + a, x + b));
    let total = matched + mismatched;
    Ok(LinkStats {
        merchant_id: merchant,
        days,
        matched,
        mismatched,
        mismatch_rate: if total == 0 {
            0.0
        } else {
            mismatched as f64 / total as f64
        },
    })
}

/// Merchants over the alert threshold in the last 24 hours (today and yesterday's counters).
pub async fn alarming(
    conn: &mut AsyncPgConnection,
    rate: f64,
    min_attempts: i64,
) -> Result<Vec<LinkStats>, diesel::result::Error> {
    let merchants: Vec<MerchantId> = link_quality_daily::table
        .filter(link_quality_daily::day.ge((Utc::now() - Duration::days(1)).date_naive()))
        .select(link_quality_daily::merchant_id)
        .distinct()
        .load(conn)
        .await?;
    let mut out = Vec::new();
    for m in merchants {
        let s = stats(conn, m, 2).await?;
        if s.matched + s.mismatched >= min_attempts && s.mismatch_rate > rate {
            out.push(s);
        }
    }
    Ok(out)
}
