//! A shopper's statistics: cashback earned per currency (total, count,
//! average, the best day), computed in the background and read through a
//! Redis cache.
//!
//! Every reward movement schedules `RecomputeUserStats` in its own
//! transaction, under a task id made of the user and a time bucket of
//! `STATS_COALESCE_SECS`: the outbox keeps one job per bucket, so a burst of
//! rewards for one user runs one recompute at the end of the bucket, not one
//! per reward. The recompute replaces the `user_stats` rows and then
//! invalidates the cache entry; `GET /v1/me/stats` reads the cache, falling
//! back to the table.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::{DateTime, NaiveDate, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use crate::{
    cache::Cache,
    ids::UserId,
    jobs::{self, RecomputeUserStats},
    models::reward::RewardStatus,
    money::Currency,
    schema::user_stats,
};

pub const CACHE_KIND: &str = "stats";

/// A user's figures from their rewards (`$1` is the user id, `$2` the
/// credited reward statuses), per currency.
const COMPUTE: &str = "
    WITH earned AS (
        SELECT r.currency::text AS currency, r.amount_minor, (p.purchased_at AT TIME ZONE 'UTC')::date AS day
          FROM rewards r JOIN purchases p ON p.id = r.purchase_id
         WHERE r.user_id = $1 AND r.status = ANY($2) AND r.amount_minor > 0
    ), per_day AS (
        SELECT currency, day, sum(amount_minor) AS s,
               row_number() OVER (PARTITION BY currency ORDER BY sum(amount_minor) DESC, day DESC) AS rank
          FROM earned GROUP BY currency, day
    )
    SELECT e.currency, sum(e.amount_minor)::bigint AS total_minor, count(*)::bigint AS count,
           sum(e.amount_minor)::bigint / count(*) AS average_minor, d.day AS highest_day,
           COALESCE(d.s, 0)::bigint AS highest_day_minor, now() AS computed_at
      FROM earned e LEFT JOIN per_day d ON d.currency = e.currency AND d.rank = 1
     GROUP BY e.currency, d.day, d.s
     ORDER BY e.currency";

static COALESCE_MS: AtomicU64 = AtomicU64::new(5_000);

/// Sets the coalescing bucket (`STATS_COALESCE_SECS`) for this process.
pub fn configure(coalesce: Duration) {
    COALESCE_MS.store(coalesce.as_millis() as u64, Ordering::Relaxed);
}

/// One currency's figures.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Queryable,
    QueryableByName,
    utoipa::ToSchema,
)]
pub struct CurrencyStats {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub currency: Currency,
    /// Cashback earned (pending and confirmed rewards).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub total_minor: i64,
    /// Rewarded purchases.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub count: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub average_minor: i64,
    /// The purchase day (UTC) with the most cashback.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Date>)]
    pub highest_day: Option<NaiveDate>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub highest_day_minor: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub computed_at: DateTime<Utc>,
}

/// `GET /v1/me/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserStats {
    pub data: Vec<CurrencyStats>,
}

/// Schedules a recompute for the end of the current bucket, in the caller's
/// transaction. Calls in the same bucket share one job.
pub async fn schedule_recompute(
    conn: &mut AsyncPgConnection,
    user: UserId,
) -> Result<(), diesel::result::Error> {
    schedule_recompute_many(conn, &[user]).await
}

/// [`schedule_recompute`] for several users, in one insert.
pub async fn schedule_recompute_many(
    conn: &mut AsyncPgConnection,
    users: &[UserId],
) -> Result<(), diesel::result::Error> {
    let bucket = AtomicU64::load(&COALESCE_MS, Ordering::Relaxed).max(1) as i64;
    let now = Utc::now().timestamp_millis();
    let end = (now / bucket + 1) * bucket;
    let run_at = DateTime::from_timestamp_millis(end).unwrap_or_else(Utc::now);
    let mut jobs: Vec<(String, RecomputeUserStats, DateTime<Utc>)> = Vec::new();
    for &user_id in users {
        let task_id = format!("stats:{user_id}:{end}");
        if !jobs.iter().any(|(t, _, _)| *t == task_id) {
            jobs.push((task_id, RecomputeUserStats { user_id }, run_at));
        }
    }
    jobs::enqueue_many(conn, &jobs).await?;
    Ok(())
}

/// Recomputes the user's rows from their rewards and invalidates the cache.
pub async fn recompute(
    conn: &mut AsyncPgConnection,
    cache: &Cache,
    user: UserId,
) -> Result<usize, diesel::result::Error> {
    let rows = conn
        .transaction::<usize, diesel::result::Error, _>(async move |conn| {
            // Two recomputes of one user (jobs of neighbouring coalescing
            // buckets, a job re-run after a crash) take turns: without the
            // lock both delete nothing and the second insert conflicts.
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<diesel::sql_types::BigInt, _>(crate::db::lock_key(&format!(
                    "stats:{user}"
                )))
                .execute(conn)
                .await?;
            diesel::delete(user_stats::table.filter(user_stats::user_id.eq(user)))
                .execute(conn)
                .await?;
            diesel::sql_query(format!(
                "INSERT INTO user_stats (user_id, currency, total_minor, purchase_count, average_minor,
                                         highest_day, highest_day_minor, computed_at)
                 SELECT $1, s.* FROM ({COMPUTE}) s"
            ))
            .bind::<diesel::sql_types::Uuid, _>(user)
            .bind::<Array<Text>, _>(RewardStatus::CREDITED.to_vec())
            .execute(conn)
            .await
        })
        .await?;
    cache.invalidate(CACHE_KIND, &user.to_string()).await;
    Ok(rows)
}

/// The stored figures (what the last recompute wrote).
pub async fn read(
    conn: &mut AsyncPgConnection,
    user: UserId,
) -> Result<UserStats, diesel::result::Error> {
    let data = user_stats::table
        .filter(user_stats::user_id.eq(user))
        .order(user_stats::currency.asc())
        .select((
            user_stats::currency,
            user_stats::total_minor,
            user_stats::purchase_count,
            user_stats::average_minor,
            user_stats::highest_day,
            user_stats::highest_day_minor,
            user_stats::computed_at,
        ))
        .load(conn)
        .await?;
    Ok(UserStats { data })
}

/// The figures computed from the rewards right now (what a recompute would
/// store); the benchmark compares this with the cached read.
pub async fn compute(
    conn: &mut AsyncPgConnection,
    user: UserId,
) -> Result<UserStats, diesel::result::Error> {
    let data = diesel::sql_query(COMPUTE)
        .bind::<diesel::sql_types::Uuid, _>(user)
        .bind::<Array<Text>, _>(RewardStatus::CREDITED.to_vec())
        .load(conn)
        .await?;
    Ok(UserStats { data })
}
