//! Delayed attribution through the real worker, and the monthly cap under
//! concurrent attributions.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::ids::PurchaseId;
use clicknback_core::{
    config::AttributionConfig,
    models::user::Role,
    services::{
        attribution::{self, Outcome},
        fraud::RuleScorer,
    },
};
use clicknback_tests::{
    TestApp,
    procs::eventually,
    shoppers::{merchant_with_offer, purchase_for, shopper_with_click},
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

/// A merchant with a 5 % offer capped at 800 per purchase.
async fn capped_shop(app: &TestApp) -> (clicknback_core::ids::MerchantId, String) {
    merchant_with_offer(
        app,
        json!({"name": "5%", "rate_bps": 500, "max_cashback_minor": 800, "currency": "EUR", "active": true}),
    )
    .await
}

#[tokio::test]
async fn a_purchase_is_attributed_to_the_latest_click_and_credited_once() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) = capped_shop(&app).await;
    let (user, _) = shopper_with_click(
        &app,
        mid,
        "c-1",
        "buyer@example.com",
        chrono::Duration::minutes(5),
    )
    .await;
    let r = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &purchase_for("o-1", 20_000, "c-1"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let _worker = app.worker(&[]);
    eventually(Duration::from_secs(20), "the reward", || async {
        (app.scalar(
            "SELECT count(*) AS n FROM rewards WHERE status = 'pending' AND amount_minor = 800",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM rewards r JOIN touchpoints t ON t.id = r.touchpoint_id WHERE t.anon_id = 'latest-click'"
        )
        .await,
        1
    );
    assert_eq!(app.scalar("SELECT count(*) AS n FROM purchases WHERE status = 'attributed' AND rewards_processed_at IS NOT NULL").await, 1);
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM ledger_transfers WHERE kind = 'reward_credit'")
            .await,
        1
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'email:reward:%' AND attempt = 1"
        )
        .await,
        1
    );
    let token = app.state.tokens.issue(user, Role::User).access_token;
    let w = app
        .json(Method::GET, "/v1/me/wallet", Some(&token), None)
        .await;
    assert_eq!(w.body["data"][0]["pending_minor"], 800);
    // Running the job again changes nothing.
    let mut c = app.db.conn().await;
    let pid: PurchaseId = clicknback_core::schema::purchases::table
        .select(clicknback_core::schema::purchases::id)
        .first(&mut c)
        .await
        .unwrap();
    let again = attribution::attribute(
        &mut c,
        pid,
        &app.config.attribution,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap();
    assert_eq!(again, Outcome::AlreadyProcessed);
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM ledger_transfers WHERE kind = 'reward_credit'")
            .await,
        1
    );
}

#[tokio::test]
async fn two_attributions_racing_for_the_last_of_a_monthly_cap_share_it() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) = merchant_with_offer(
        &app,
        json!({"name": "10%", "rate_bps": 1000, "monthly_cap_minor": 1000, "currency": "EUR", "active": true}),
    )
    .await;
    shopper_with_click(
        &app,
        mid,
        "c-9",
        "capped@example.com",
        chrono::Duration::minutes(5),
    )
    .await;
    let mut ids = Vec::new();
    for order in ["o-a", "o-b"] {
        let r = app
            .webhook(
                &format!("/v1/webhooks/{mid}/purchases"),
                &secret,
                &purchase_for(order, 8_000, "c-9"),
                &[],
            )
            .await;
        ids.push(
            r.body["id"]
                .as_str()
                .unwrap()
                .parse::<PurchaseId>()
                .unwrap(),
        );
    }
    let cfg: AttributionConfig = app.config.attribution.clone();
    let (mut c1, mut c2) = (app.db.conn().await, app.db.conn().await);
    let scorer = RuleScorer::default();
    let (a, b) = tokio::join!(
        attribution::attribute(&mut c1, ids[0], &cfg, &scorer, app.cache()),
        attribution::attribute(&mut c2, ids[1], &cfg, &scorer, app.cache())
    );
    let amounts: Vec<i64> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .map(|o| match o {
            Outcome::Rewarded { amount_minor, .. } => amount_minor,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(amounts.iter().sum::<i64>(), 1_000, "{amounts:?}");
    assert!(
        amounts.contains(&800) && amounts.contains(&200),
        "{amounts:?}"
    );
}

#[tokio::test]
async fn a_purchase_without_a_user_waits_then_becomes_unattributed() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let pid = app
        .report_purchase(mid, &secret, &purchase_for("o-1", 1_000, "stranger"))
        .await;
    let mut c = app.db.conn().await;
    let mut cfg = app.config.attribution.clone();
    let waiting = attribution::attribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
        .await
        .unwrap();
    assert!(matches!(waiting, Outcome::Waiting { .. }), "{waiting:?}");
    assert_eq!(app.scalar("SELECT count(*) AS n FROM purchases WHERE attribute_after > now() + interval '60 seconds'").await, 1);
    cfg.unattributed_after = Duration::ZERO;
    let given_up = attribution::attribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
        .await
        .unwrap();
    assert_eq!(given_up, Outcome::Unattributed { reason: "no user" });
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM purchases WHERE status = 'unattributed'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_link_after_a_look_without_a_user_attributes_at_once() {
    // The checkout page's confirmation lands after attribution first ran (a
    // slow browser, or the api briefly without its database): the purchase is
    // attributed as soon as the link arrives, not at the next recheck.
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let mut c = app.db.conn().await;
    let merchant = clicknback_core::services::merchants::get(&mut c, mid)
        .await
        .unwrap();
    let user = clicknback_core::services::users::create(
        &mut c,
        "slow-browser@example.com",
        "password-123",
        Role::User,
    )
    .await
    .unwrap()
    .id;
    clicknback_core::services::tracking::click(&mut c, &merchant, "slow-device", None, None)
        .await
        .unwrap();
    clicknback_core::services::tracking::identify(&mut c, user, "slow-device")
        .await
        .unwrap();
    let mut body = clicknback_tests::webhook::purchase_body("o-slow", 10_000);
    body["purchase_token"] = json!("tok-slow");
    let pid = app.report_purchase(mid, &secret, &body).await;
    let first = attribution::attribute(
        &mut c,
        pid,
        &app.config.attribution,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap();
    assert!(matches!(first, Outcome::Waiting { .. }), "{first:?}");
    let linked = clicknback_core::services::tracking::confirm_purchase(
        &mut c,
        &merchant,
        "slow-device",
        "o-slow",
        "tok-slow",
    )
    .await
    .unwrap();
    assert_eq!(
        linked,
        clicknback_core::services::tracking::LinkOutcome::Linked
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'attribute:{pid}#l%'
                AND run_at <= now() + interval '1 second'"
        ))
        .await,
        1,
        "the link enqueues attribution now, not at the recheck"
    );
    let _worker = app.worker(&[]);
    eventually(Duration::from_secs(20), "the attribution", || async {
        (app.scalar(&format!(
            "SELECT count(*) AS n FROM rewards WHERE purchase_id = '{pid}' AND status = 'pending'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn links_of_several_purchases_inside_the_delay_share_one_wake_up_each() {
    // A shopper buys three times within the attribution delay and the
    // checkout page confirms each: every link wakes the group's purchases
    // still waiting, but a purchase gets one wake-up job, not one per link.
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "60")]).await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let mut c = app.db.conn().await;
    let merchant = clicknback_core::services::merchants::get(&mut c, mid)
        .await
        .unwrap();
    clicknback_core::services::tracking::click(&mut c, &merchant, "busy-device", None, None)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut body = clicknback_tests::webhook::purchase_body(&format!("o-busy-{i}"), 10_000);
        body["purchase_token"] = json!(format!("tok-busy-{i}"));
        ids.push(app.report_purchase(mid, &secret, &body).await);
        clicknback_core::services::tracking::confirm_purchase(
            &mut c,
            &merchant,
            "busy-device",
            &format!("o-busy-{i}"),
            &format!("tok-busy-{i}"),
        )
        .await
        .unwrap();
    }
    for pid in &ids {
        assert_eq!(
            app.scalar(&format!(
                "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'attribute:{pid}#l%'"
            ))
            .await,
            1,
            "one wake-up job for purchase {pid}"
        );
    }
}

#[tokio::test]
async fn a_late_merge_reattributes_a_pending_reward_to_the_later_click() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    shopper_with_click(
        &app,
        mid,
        "c-7",
        "late@example.com",
        chrono::Duration::minutes(10),
    )
    .await;
    let mut c = app.db.conn().await;
    let merchant = clicknback_core::services::merchants::get(&mut c, mid)
        .await
        .unwrap();
    // A newer click on another device, not yet known to belong to the shopper.
    clicknback_core::services::tracking::click(&mut c, &merchant, "late-device", None, None)
        .await
        .unwrap();
    let mut body = purchase_for("o-late", 10_000, "c-7");
    body["purchase_token"] = json!("tok");
    let pid = app.report_purchase(mid, &secret, &body).await;
    let first = attribution::attribute(
        &mut c,
        pid,
        &app.config.attribution,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap();
    assert!(matches!(first, Outcome::Rewarded { .. }));
    let anon_of_live =
        "SELECT count(*) AS n FROM rewards r JOIN touchpoints t ON t.id = r.touchpoint_id
                         WHERE r.status = 'pending' AND t.anon_id = ";
    assert_eq!(
        app.scalar(&format!("{anon_of_live}'latest-click'")).await,
        1
    );
    // The SDK call lands late and merges the newer click in: re-attribution.
    let linked = clicknback_core::services::tracking::confirm_purchase(
        &mut c,
        &merchant,
        "late-device",
        "o-late",
        "tok",
    )
    .await
    .unwrap();
    assert_eq!(
        linked,
        clicknback_core::services::tracking::LinkOutcome::Linked
    );
    let _worker = app.worker(&[]);
    eventually(Duration::from_secs(20), "the re-attribution", || async {
        (app.scalar(&format!("{anon_of_live}'late-device'")).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM rewards WHERE status = 'voided'")
            .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM rewards WHERE status <> 'voided'")
            .await,
        1
    );
    assert_eq!(
        app.scalar(
            "SELECT (sum(amount_minor) FILTER (WHERE kind = 'reward_credit') - COALESCE(sum(amount_minor) FILTER (WHERE kind = 'reward_void'), 0))::bigint AS n FROM ledger_transfers"
        )
        .await,
        500,
        "paid once"
    );
    assert!(
        clicknback_core::services::ledger::reconcile(&mut c)
            .await
            .unwrap()
            .is_empty()
    );
}

/// One job attributes its purchase and the other due purchases in one
/// transaction, each as it would be alone: rewards capped per purchase, a
/// merchant's reversal recorded before attribution settled at once (no
/// email), a purchase without a user left waiting, one email per credited
/// reward, the ledger balanced; the others' own jobs then find them done.
#[tokio::test]
async fn one_job_attributes_the_due_purchases_of_several_shoppers_each_as_alone() {
    use clicknback_core::services::ledger;
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) = capped_shop(&app).await;
    let ago = chrono::Duration::minutes(5);
    let (ann, _) = shopper_with_click(&app, mid, "ann", "ann@example.com", ago).await;
    let (bob, _) = shopper_with_click(&app, mid, "bob", "bob@example.com", ago).await;
    let mut ids = Vec::new();
    for (order, amount, customer) in [
        ("a-1", 10_000, "ann"),
        ("a-2", 20_000, "ann"),
        ("b-1", 4_000, "bob"),
        ("b-2", 6_000, "bob"),
        ("n-1", 5_000, "nobody-yet"),
    ] {
        ids.push(
            app.report_purchase(mid, &secret, &purchase_for(order, amount, customer))
                .await,
        );
    }
    let r = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases/b-2/status"),
            &secret,
            &json!({"status": "reversed", "reason": "refund"}),
            &[],
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);

    let cfg = app.config.attribution.clone();
    let mut c = app.db.conn().await;
    let done = attribution::attribute_due(
        &mut c,
        ids[0],
        10,
        &cfg,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap();
    let amount_of = |o: &Outcome| match o {
        Outcome::Rewarded { amount_minor, .. } => Some(*amount_minor),
        _ => None,
    };
    assert_eq!(amount_of(&done.outcome), Some(500), "{:?}", done.outcome);
    let other = |id: PurchaseId| {
        done.others
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{id} was not in the batch: {:?}", done.others))
    };
    assert_eq!(done.others.len(), 4, "{:?}", done.others);
    assert_eq!(amount_of(&other(ids[1])), Some(800));
    assert_eq!(amount_of(&other(ids[2])), Some(200));
    assert_eq!(amount_of(&other(ids[3])), Some(300));
    assert!(matches!(other(ids[4]), Outcome::Waiting { .. }));

    let pending = |user| {
        let app = &app;
        async move {
            let mut c = app.db.conn().await;
            ledger::wallet(&mut c, user)
                .await
                .unwrap()
                .into_iter()
                .map(|w| w.pending_minor)
                .sum::<i64>()
        }
    };
    assert_eq!(pending(ann).await, 1_300);
    assert_eq!(
        pending(bob).await,
        200,
        "the reversed reward's 300 went back"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM rewards WHERE purchase_id = '{}' AND status = 'reversed'",
            ids[3]
        ))
        .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM purchases WHERE status = 'attributed' AND settle_due_at IS NOT NULL")
            .await,
        3
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM outbox WHERE queue = 'emails' AND payload->'data'->>'kind' = 'reward_credited'"
        )
        .await,
        3,
        "one email per credited reward, none for the reversed one"
    );
    let breaches = ledger::reconcile_all(&mut c).await.unwrap();
    assert!(breaches.is_empty(), "{breaches:?}");

    // Their own jobs come later and find nothing to do.
    for id in &ids[1..4] {
        let again =
            attribution::attribute_due(&mut c, *id, 10, &cfg, &RuleScorer::default(), app.cache())
                .await
                .unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyProcessed);
    }
    assert_eq!(app.scalar("SELECT count(*) AS n FROM rewards").await, 4);
}

/// A shopper's burst attributed in one batch scores as it does one purchase
/// at a time: each purchase's history counts the shopper's purchases the
/// batch attributed before it (the velocity rule fires from the sixth on).
#[tokio::test]
async fn a_burst_in_one_batch_scores_as_one_purchase_at_a_time() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let ago = chrono::Duration::minutes(5);
    let (ann, _) = shopper_with_click(&app, mid, "ann", "ann@example.com", ago).await;
    let (bob, _) = shopper_with_click(&app, mid, "bob", "bob@example.com", ago).await;
    let cfg = app.config.attribution.clone();
    let mut c = app.db.conn().await;
    let mut first_of_bob = None;
    for (customer, alone) in [("ann", true), ("bob", false)] {
        for i in 0..7 {
            let pid = app
                .report_purchase(
                    mid,
                    &secret,
                    &purchase_for(&format!("{customer}-{i}"), 3_000 + i, customer),
                )
                .await;
            if alone {
                attribution::attribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
                    .await
                    .unwrap();
            } else {
                first_of_bob.get_or_insert(pid);
            }
        }
    }
    let done = attribution::attribute_due(
        &mut c,
        first_of_bob.unwrap(),
        10,
        &cfg,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap();
    assert_eq!(done.others.len(), 6, "{done:?}");
    let scores = |user: clicknback_core::ids::UserId| {
        let app = &app;
        async move {
            use clicknback_core::schema::{purchases, rewards};
            let mut c = app.db.conn().await;
            rewards::table
                .inner_join(purchases::table)
                .filter(rewards::user_id.eq(user))
                .order(purchases::purchased_at.asc())
                .select(rewards::fraud_score)
                .load::<f64>(&mut c)
                .await
                .unwrap()
        }
    };
    let (one_by_one, batched) = (scores(ann).await, scores(bob).await);
    assert_eq!(one_by_one.len(), 7);
    assert_eq!(batched, one_by_one);
    assert!(one_by_one[6] > one_by_one[0], "{one_by_one:?}");
}
