//! A merchant's status webhook moves the reward's money through the worker:
//! confirm makes pending cashback available, reverse takes it back, and an
//! illegal transition is refused with no money moved.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::ids::{OfferId, RewardId};
use clicknback_core::{
    models::{reward::NewReward, user::Role},
    schema::{purchases, rewards},
    services::{rewards as reward_svc, users},
};
use clicknback_tests::{TestApp, procs::eventually, webhook::purchase_body};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

#[tokio::test]
async fn status_webhooks_confirm_then_reverse_the_reward_in_the_wallet() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Shop").await;
    let offer = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            Some(json!({"name": "5%", "rate_bps": 500, "active": true})),
        )
        .await;
    let offer_id: OfferId = offer.body["id"].as_str().unwrap().parse().unwrap();
    let purchase_id = app
        .report_purchase(&mid, &secret, &purchase_body("o-1", 20_000))
        .await;

    // The shopper, and the reward attribution writes for them (1,000 pending).
    let mut c = app.db.conn().await;
    let shopper = users::create(&mut c, "shopper@example.com", "password-123", Role::User)
        .await
        .unwrap();
    diesel::update(purchases::table.find(purchase_id))
        .set((
            purchases::user_id.eq(shopper.id),
            purchases::status.eq("attributed"),
        ))
        .execute(&mut c)
        .await
        .unwrap();
    let reward_id = RewardId::new();
    diesel::insert_into(rewards::table)
        .values(NewReward {
            id: reward_id,
            purchase_id,
            attribution_seq: 1,
            user_id: shopper.id,
            offer_id,
            touchpoint_id: None,
            identity_group_id: None,
            amount_minor: 1_000,
            currency: clicknback_core::money::Currency::parse("EUR").unwrap(),
            status: clicknback_core::models::reward::RewardStatus::Pending,
            fraud_score: 0.0,
            fraud_reasons: json!([]),
            flagged: false,
            hold_until: chrono::Utc::now() + chrono::Duration::days(30),
        })
        .execute(&mut c)
        .await
        .unwrap();
    let reward = reward_svc::lock(&mut c, reward_id).await.unwrap();
    reward_svc::credit(&mut c, &reward).await.unwrap();

    let token = app.state.tokens.issue(shopper.id, Role::User).access_token;
    let wallet = |token: String| {
        let app = &app;
        async move {
            app.json(Method::GET, "/v1/me/wallet", Some(&token), None)
                .await
                .body["data"][0]
                .clone()
        }
    };
    let w = wallet(token.clone()).await;
    assert_eq!(
        (
            w["currency"].as_str(),
            w["pending_minor"].as_i64(),
            w["available_minor"].as_i64()
        ),
        (Some("EUR"), Some(1_000), Some(0))
    );

    let _worker = app.worker(&[]);
    let status = format!("/v1/webhooks/{mid}/purchases/o-1/status");
    let r = app
        .webhook(&status, &secret, &json!({"status": "confirmed"}), &[])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    eventually(Duration::from_secs(20), "the confirmation", || async {
        let w = wallet(token.clone()).await;
        (w["available_minor"] == 1_000 && w["pending_minor"] == 0).then_some(())
    })
    .await;

    let r = app
        .webhook(
            &status,
            &secret,
            &json!({"status": "reversed", "reason": "refund"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "the reversal", || async {
        let w = wallet(token.clone()).await;
        (w["available_minor"] == 0 && w["receivable_minor"] == 0).then_some(())
    })
    .await;
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM purchases WHERE status = 'reversed'")
            .await,
        1
    );

    // Confirm after reverse: refused at the door, and no money moves.
    let r = app
        .webhook(&status, &secret, &json!({"status": "confirmed"}), &[])
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        clicknback_core::services::ledger::reconcile(&mut c)
            .await
            .unwrap()
            .is_empty()
    );
    let unauthenticated = app.json(Method::GET, "/v1/me/wallet", None, None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
}
