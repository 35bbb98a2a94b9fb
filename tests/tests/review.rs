//! Fraud review by an admin, link-quality statistics and the hourly alert.

use axum::http::{Method, StatusCode};
use clicknback_core::ids::MerchantId;
use clicknback_core::schema::link_quality_daily;
use clicknback_tests::{TestApp, procs::eventually, shoppers::flagged_purchase};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

#[tokio::test]
async fn flagged_rewards_move_no_money_until_approved_and_rejection_reverses_them() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (approved, _) = flagged_purchase(&app, "fa").await;
    let (rejected, _) = flagged_purchase(&app, "fb").await;
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM ledger_transfers")
            .await,
        0,
        "flagged: no money moves"
    );
    // The shopper hears of a reward once it credits money: not while flagged.
    let reward_emails = "SELECT count(*) AS n FROM outbox WHERE job_key LIKE 'email:reward:%'";
    assert_eq!(app.scalar(reward_emails).await, 0, "flagged: no email yet");
    let list = app
        .json(Method::GET, "/v1/admin/purchases", Some(&admin), None)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    assert!(list.body["data"][0]["fraud_reasons"].is_array());

    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/purchases/{approved}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["reward_status"], "pending");
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM ledger_transfers WHERE kind = 'reward_credit'")
            .await,
        1
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM outbox
              WHERE job_key LIKE 'email:reward:%' AND payload->'data'->>'to' = 'fa@example.com'
                AND payload->'data'->>'kind' = 'reward_credited'
                AND payload->'data'->'data'->>'order_id' = 'fa'
                AND (payload->'data'->'data'->>'amount_minor')::bigint > 0"
        )
        .await,
        1,
        "approved: the shopper's reward email is written with the approval"
    );
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/purchases/{rejected}/reject"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.body["reward_status"], "reversed");
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM purchases WHERE status = 'reversed'")
            .await,
        1
    );
    let again = app
        .json(
            Method::POST,
            &format!("/v1/admin/purchases/{approved}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        app.scalar(reward_emails).await,
        1,
        "a rejected reward sends none, a refused second approval none more"
    );
    let audit = app
        .json(Method::GET, "/v1/admin/audit-log", Some(&admin), None)
        .await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"purchase.approve") && actions.contains(&"purchase.reject"));
    let mut c = app.db.conn().await;
    assert!(
        clicknback_core::services::ledger::reconcile(&mut c)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn link_stats_and_the_mismatch_alert() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, _, _) = app.merchant(&admin, "Leaky").await;
    let mid: MerchantId = mid.parse().unwrap();
    let mut c = app.db.conn().await;
    diesel::insert_into(link_quality_daily::table)
        .values((
            link_quality_daily::merchant_id.eq(mid),
            link_quality_daily::day.eq(chrono::Utc::now().date_naive()),
            link_quality_daily::matched.eq(18i64),
            link_quality_daily::mismatched.eq(2i64),
        ))
        .execute(&mut c)
        .await
        .unwrap();
    let r = app
        .json(
            Method::GET,
            &format!("/v1/admin/merchants/{mid}/link-stats"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["matched"].as_i64(), r.body["mismatched"].as_i64()),
        (Some(18), Some(2))
    );
    assert_eq!(r.body["mismatch_rate"], 0.1);
    let worker = app.worker(&[("SCHEDULE_LINK_QUALITY_ALERT", "* * * * * *")]);
    eventually(std::time::Duration::from_secs(20), "the alert", || async {
        (app.scalar("SELECT count(*) AS n FROM cron_runs WHERE outcome = '1 merchant(s) over the threshold'").await >= 1).then_some(())
    })
    .await;
    assert!(
        worker
            .log_text()
            .contains("mismatch rate above the alert threshold")
    );
}
