//! A burst of rewards for one shopper runs one statistics recompute per
//! coalescing bucket, served through the cache. Its own test binary: the
//! bucket (`STATS_COALESCE_SECS`) is set per process, as in production, and
//! another test's app in the same process would set it to its own.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::services::attribution::Outcome;
use clicknback_tests::{
    TestApp,
    procs::eventually,
    shoppers::{attribute, merchant_with_offer, purchase_for, shopper_with_click},
};
use redis::AsyncCommands;
use serde_json::json;

#[tokio::test]
async fn a_burst_of_rewards_runs_one_statistics_recompute_served_through_the_cache() {
    let app = TestApp::with(&[("STATS_COALESCE_SECS", "15")]).await;
    let (mid, secret) = merchant_with_offer(
        &app,
        json!({"name": "10%", "rate_bps": 1000, "active": true}),
    )
    .await;
    let (user, _) = shopper_with_click(
        &app,
        mid,
        "c-9",
        "stats@example.com",
        chrono::Duration::minutes(5),
    )
    .await;
    let token = app
        .state
        .tokens
        .issue(user, clicknback_core::models::user::Role::User)
        .access_token;
    // Buckets are aligned to multiples of STATS_COALESCE_SECS; the burst
    // starts at the beginning of one, so it usually spans one or two.
    let into_bucket = chrono::Utc::now().timestamp_millis().rem_euclid(15_000) as u64;
    tokio::time::sleep(Duration::from_millis(15_000 - into_bucket)).await;
    let bucket_of = || chrono::Utc::now().timestamp_millis().div_euclid(15_000);
    let first_bucket = bucket_of();
    for i in 0..100 {
        let p = app
            .report_purchase(
                mid,
                &secret,
                &purchase_for(&format!("b-{i}"), 1_000 + i, "c-9"),
            )
            .await;
        assert!(matches!(attribute(&app, p).await, Outcome::Rewarded { .. }));
    }
    // One recompute per bucket the burst touched, however long it took.
    let buckets = bucket_of() - first_bucket + 1;
    let jobs = app
        .scalar(&format!(
            "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'stats:{user}:%'"
        ))
        .await;
    assert!(
        (1..=buckets).contains(&jobs),
        "100 rewards over {buckets} buckets scheduled {jobs} recomputes"
    );

    let before = app
        .json(Method::GET, "/v1/me/stats", Some(&token), None)
        .await;
    assert_eq!(before.status, StatusCode::OK);

    // The worker runs the coalesced job at the end of its bucket.
    let _worker = app.worker(&[("STATS_COALESCE_SECS", "15")]);
    let eur = stats_with_count(&app, &token, 100).await;
    let ran = app
        .scalar(&format!(
            "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'stats:{user}:%' AND sent_at IS NOT NULL"
        ))
        .await;
    assert!(ran <= jobs, "{ran} recomputes ran for 100 rewards");
    let expected_total: i64 = (0..100).map(|i| (1_000 + i) / 10).sum();
    assert_eq!(eur["currency"], "EUR");
    assert_eq!(eur["count"], 100);
    assert_eq!(eur["total_minor"], expected_total);
    assert_eq!(eur["average_minor"], expected_total / 100);
    assert_eq!(eur["highest_day_minor"], expected_total);
    let key = app.cache().key(
        clicknback_core::services::stats::CACHE_KIND,
        &user.to_string(),
    );
    let mut r = app.redis.conn().await;
    let cached: Option<String> = r.get(&key).await.unwrap();
    assert!(cached.is_some(), "served through the cache");

    // A further reward's recompute invalidates the cached figures.
    let p = app
        .report_purchase(mid, &secret, &purchase_for("b-last", 5_000, "c-9"))
        .await;
    attribute(&app, p).await;
    stats_with_count(&app, &token, 101).await;
}

/// Waits until `GET /v1/me/stats` reports `count` rewards; returns that entry.
async fn stats_with_count(app: &TestApp, token: &str, count: i64) -> serde_json::Value {
    eventually(Duration::from_secs(30), "the statistics", || async {
        let r = app
            .json(Method::GET, "/v1/me/stats", Some(token), None)
            .await;
        let eur = r.body["data"][0].clone();
        (eur["count"] == count).then_some(eur)
    })
    .await
}
