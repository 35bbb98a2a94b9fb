//! The hot paths under their caches and limits: the active-offer cache never
//! applies an offer after its deactivation returned, a read racing a write
//! cannot put an old value back, webhook limits hold across api replicas, and
//! concurrent statistics recomputes of one user take turns.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::services::{attribution::Outcome, offers};
use clicknback_tests::{
    TestApp,
    shoppers::{attribute, merchant_with_offer, purchase_for, shopper_with_click},
    webhook::{purchase_body, sign},
};
use redis::AsyncCommands;
use serde_json::json;

#[tokio::test]
async fn a_deactivated_offer_is_not_applied_to_a_purchase_attributed_right_after() {
    let app = TestApp::new().await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    shopper_with_click(
        &app,
        mid,
        "c-1",
        "shopper@example.com",
        chrono::Duration::minutes(5),
    )
    .await;

    // The first attribution reads the offer and fills the cache.
    let first = app
        .report_purchase(mid, &secret, &purchase_for("o-1", 10_000, "c-1"))
        .await;
    assert!(matches!(
        attribute(&app, first).await,
        Outcome::Rewarded {
            amount_minor: 500,
            ..
        }
    ));
    let key = app.cache().key(offers::CACHE_KIND, &mid.to_string());
    let mut r = app.redis.conn().await;
    let cached: Option<String> = r.get(&key).await.unwrap();
    assert!(
        cached.is_some_and(|c| c.contains("\"rate_bps\":500")),
        "{key} filled"
    );

    let admin = app.admin_token().await;
    let list = app
        .json(
            Method::GET,
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            None,
        )
        .await;
    let offer = list.body["data"][0]["id"].as_str().unwrap().to_owned();
    let off = app
        .json(
            Method::POST,
            &format!("/v1/admin/offers/{offer}/deactivate"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.text);

    // Bought and attributed right after the call returned: no cashback.
    let second = app
        .report_purchase(mid, &secret, &purchase_for("o-2", 10_000, "c-1"))
        .await;
    let out = attribute(&app, second).await;
    assert!(
        matches!(out, Outcome::Unattributed { reason } if reason.contains("no active offer")),
        "{out:?}"
    );
    let cached: Option<String> = r.get(&key).await.unwrap();
    assert!(
        cached.is_some_and(|c| c.contains("\"offer\":null")),
        "the cache now holds the deactivation"
    );
}

#[tokio::test]
async fn a_read_that_raced_an_invalidation_does_not_store_the_old_value() {
    let app = TestApp::new().await;
    let cache = app.cache().clone();
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(
                    "offer:active",
                    "m-1",
                    Duration::from_secs(60),
                    || async move {
                        // Read from the database before the write committed...
                        let _ = loaded_tx.send(());
                        // ...and answer after the writer invalidated.
                        let _ = go_rx.await;
                        Ok::<_, ()>("old".to_owned())
                    },
                )
                .await
        })
    };
    loaded_rx.await.unwrap();
    cache.invalidate("offer:active", "m-1").await;
    go_tx.send(()).unwrap();
    assert_eq!(reader.await.unwrap(), Ok("old".to_owned()));
    let mut r = app.redis.conn().await;
    let stored: Option<String> = r.get(cache.key("offer:active", "m-1")).await.unwrap();
    assert_eq!(stored, None, "the stale read was not cached");

    let fresh = cache
        .get_or_load("offer:active", "m-1", Duration::from_secs(60), || async {
            Ok::<_, ()>("new".to_owned())
        })
        .await;
    assert_eq!(fresh, Ok("new".to_owned()));
    let stored: Option<String> = r.get(cache.key("offer:active", "m-1")).await.unwrap();
    assert_eq!(stored.as_deref(), Some("\"new\""));
}

/// Sends `n` signed purchases to `base`; returns the responses.
async fn blast(base: &str, mid: &str, secret: &str, n: usize, tag: &str) -> Vec<reqwest::Response> {
    let client = clicknback_tests::procs::http_client();
    let mut out = Vec::new();
    for i in 0..n {
        let body = serde_json::to_vec(&purchase_body(&format!("{tag}-{i}"), 1_000)).unwrap();
        let s = sign(
            secret,
            &format!("msg_{tag}_{i}"),
            chrono::Utc::now().timestamp(),
            &body,
        );
        let r = client
            .post(format!("{base}/v1/webhooks/{mid}/purchases"))
            .header("content-type", "application/json")
            .header("webhook-id", &s.id)
            .header("webhook-timestamp", s.timestamp.to_string())
            .header("webhook-signature", &s.signature)
            .body(s.body)
            .send()
            .await
            .unwrap();
        out.push(r);
    }
    out
}

#[tokio::test]
async fn webhook_limits_hold_across_two_api_processes_with_per_merchant_overrides() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (big, big_secret, _) = app.merchant(&admin, "Big partner").await;
    let (small, small_secret, _) = app.merchant(&admin, "Small shop").await;
    let patched = app
        .request(
            Method::PATCH,
            &format!("/v1/admin/merchants/{big}"),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {admin}")),
                ("if-match", "\"1\""),
            ],
            Some(br#"{"webhook_rate_limit_per_minute": 6}"#.to_vec()),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);

    let env = [("WEBHOOK_RATE_LIMIT_PER_MINUTE", "3")];
    let a = app.api_process(&env).await;
    let b = app.api_process(&env).await;
    let mut responses = Vec::new();
    for round in 0..5 {
        responses.extend(blast(&a.base, &big, &big_secret, 1, &format!("a{round}")).await);
        responses.extend(blast(&b.base, &big, &big_secret, 1, &format!("b{round}")).await);
    }
    let codes: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 6, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 4, "{codes:?}");
    let ok = &responses[0];
    assert_eq!(ok.headers()["ratelimit-policy"], "6;w=60");
    assert!(
        ok.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("limit=6, remaining=5")
    );
    let refused = responses.into_iter().find(|r| r.status() == 429).unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    assert_eq!(problem["status"], 429);

    // A merchant without an override gets the configured default, shared too.
    let mut small_codes = Vec::new();
    for (i, base) in [&a.base, &b.base, &a.base, &b.base].into_iter().enumerate() {
        let r = blast(base, &small, &small_secret, 1, &format!("s{i}")).await;
        small_codes.push(r[0].status().as_u16());
    }
    assert_eq!(small_codes, [202, 202, 202, 429]);
}

#[tokio::test]
async fn concurrent_recomputes_of_one_user_take_turns() {
    let app = TestApp::new().await;
    let (mid, secret) = merchant_with_offer(
        &app,
        json!({"name": "10%", "rate_bps": 1000, "active": true}),
    )
    .await;
    let (user, _) = shopper_with_click(
        &app,
        mid,
        "c-10",
        "stats-race@example.com",
        chrono::Duration::minutes(5),
    )
    .await;
    for i in 0..3 {
        let p = app
            .report_purchase(
                mid,
                &secret,
                &purchase_for(&format!("r-{i}"), 2_000, "c-10"),
            )
            .await;
        assert!(matches!(attribute(&app, p).await, Outcome::Rewarded { .. }));
    }
    for _ in 0..30 {
        let (mut a, mut b) = (app.db.conn().await, app.db.conn().await);
        let (ra, rb) = tokio::join!(
            clicknback_core::services::stats::recompute(&mut a, app.cache(), user),
            clicknback_core::services::stats::recompute(&mut b, app.cache(), user)
        );
        assert_eq!(ra.unwrap(), 1, "one currency");
        assert_eq!(rb.unwrap(), 1, "one currency");
    }
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM user_stats WHERE user_id = '{user}' AND purchase_count = 3"
        ))
        .await,
        1
    );
}
