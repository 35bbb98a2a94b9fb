//! A reward's money converges from durable facts, whatever order they arrive
//! in: the merchant's decision, the admin's review and the hold period's end
//! are recorded in PostgreSQL and `rewards::settle` (run by the jobs and by
//! the settle sweep, as the worker runs them) moves the ledger to what they
//! call for. Against real PostgreSQL and the api router in-process.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::{
    config::AttributionConfig,
    ids::{MerchantId, PurchaseId, UserId},
    models::user::Role,
    services::{
        attribution::{self, Outcome},
        fraud::RuleScorer,
        ledger::{self, WalletBalance},
        rewards,
    },
};
use clicknback_tests::{
    TestApp,
    shoppers::{merchant_with_offer, purchase_for, shopper_with_click},
};
use serde_json::json;

/// A merchant with one offer and one shopper who clicked its link.
struct Shop {
    mid: MerchantId,
    secret: String,
    user: UserId,
    customer: String,
}

async fn shop(app: &TestApp, offer: serde_json::Value, customer: &str) -> Shop {
    let (mid, secret) = merchant_with_offer(app, offer).await;
    let (user, _) = shopper_with_click(
        app,
        mid,
        customer,
        &format!("{customer}@example.com"),
        chrono::Duration::minutes(1),
    )
    .await;
    Shop {
        mid,
        secret,
        user,
        customer: customer.to_owned(),
    }
}

/// The common offer: 5 %, uncapped.
fn five_percent() -> serde_json::Value {
    json!({"name": "5%", "rate_bps": 500, "active": true})
}

impl Shop {
    /// The shopper's purchase, reported by the merchant's webhook.
    async fn buy(&self, app: &TestApp, order: &str, amount: i64) -> PurchaseId {
        app.report_purchase(
            self.mid,
            &self.secret,
            &purchase_for(order, amount, &self.customer),
        )
        .await
    }
}

/// The reward attribution gave, as (amount, flagged); panics on any other outcome.
fn rewarded(out: Outcome) -> (i64, bool) {
    match out {
        Outcome::Rewarded {
            amount_minor,
            flagged,
            ..
        } => (amount_minor, flagged),
        other => panic!("not rewarded: {other:?}"),
    }
}

/// An admin's review (`approve` or `reject`) of a flagged purchase; the reward's status after it.
async fn review(app: &TestApp, admin: &str, pid: PurchaseId, verb: &str) -> String {
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/purchases/{pid}/{verb}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["reward_status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Attribution as the worker runs it; `flag` scores every purchase as fraud.
async fn attribute(app: &TestApp, pid: PurchaseId, flag: bool, hold: Duration) -> Outcome {
    let cfg = AttributionConfig {
        fraud_threshold: if flag { 0.0 } else { 1.1 },
        hold_period: hold,
        ..app.config.attribution.clone()
    };
    let mut c = app.db.conn().await;
    attribution::attribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
        .await
        .unwrap()
}

async fn status(app: &TestApp, s: &Shop, order: &str, to: &str) -> StatusCode {
    let r = app
        .webhook(
            &format!("/v1/webhooks/{}/purchases/{order}/status", s.mid),
            &s.secret,
            &json!({"status": to, "reason": "refund"}),
            &[],
        )
        .await;
    r.status
}

/// The settle sweep, as the schedule runs it.
async fn sweep(app: &TestApp) -> rewards::Sweep {
    let mut c = app.db.conn().await;
    rewards::settle_due(&mut c, chrono::Utc::now(), 1_000)
        .await
        .unwrap()
}

async fn wallet(app: &TestApp, user: UserId) -> WalletBalance {
    let mut c = app.db.conn().await;
    let w = ledger::wallet(&mut c, user).await.unwrap();
    w.into_iter()
        .find(|w| w.currency == "EUR")
        .unwrap_or(WalletBalance {
            currency: clicknback_core::money::Currency::parse("EUR").unwrap(),
            pending_minor: 0,
            available_minor: 0,
            reserved_minor: 0,
            paid_out_minor: 0,
            receivable_minor: 0,
        })
}

async fn reconciled(app: &TestApp) {
    let mut c = app.db.conn().await;
    assert_eq!(ledger::reconcile(&mut c).await.unwrap(), vec![]);
}

async fn purchase_status(app: &TestApp, pid: PurchaseId) -> String {
    let mut c = app.db.conn().await;
    use clicknback_core::schema::purchases;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    purchases::table
        .find(pid)
        .select(purchases::status)
        .first(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reversal_before_attribution_wins_over_an_admin_approval() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let s = shop(&app, five_percent(), "rev-first").await;
    let pid = s.buy(&app, "o-1", 10_000).await;
    // The merchant refunds the order before attribution has run.
    assert_eq!(
        status(&app, &s, "o-1", "reversed").await,
        StatusCode::ACCEPTED
    );
    // Attribution flags it for review; the hold period is already over.
    let out = attribute(&app, pid, true, Duration::ZERO).await;
    assert!(rewarded(out).1, "flagged");
    assert_eq!(
        review(&app, &admin, pid, "approve").await,
        "reversed",
        "the merchant's reversal wins"
    );
    sweep(&app).await;
    let w = wallet(&app, s.user).await;
    assert_eq!((w.pending_minor, w.available_minor), (0, 0));
    assert_eq!(purchase_status(&app, pid).await, "reversed");
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM rewards WHERE review = 'approved' AND reviewed_by IS NOT NULL")
            .await,
        1,
        "the approval is recorded as a fact"
    );
    reconciled(&app).await;
}

#[tokio::test]
async fn an_approval_then_a_reversal_after_the_hold_ends_reversed() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let s = shop(&app, five_percent(), "appr").await;
    let pid = s.buy(&app, "o-2", 10_000).await;
    attribute(&app, pid, true, Duration::ZERO).await;
    assert_eq!(review(&app, &admin, pid, "approve").await, "confirmed");
    assert_eq!(wallet(&app, s.user).await.available_minor, 500);
    assert_eq!(
        status(&app, &s, "o-2", "reversed").await,
        StatusCode::ACCEPTED
    );
    sweep(&app).await;
    let w = wallet(&app, s.user).await;
    assert_eq!((w.available_minor, w.receivable_minor), (0, 0));
    assert_eq!(purchase_status(&app, pid).await, "reversed");
    reconciled(&app).await;
}

#[tokio::test]
async fn a_lost_reversal_job_is_re_driven_by_the_settle_sweep() {
    let app = TestApp::new().await;
    let s = shop(&app, five_percent(), "lost").await;
    let pid = s.buy(&app, "o-3", 10_000).await;
    attribute(&app, pid, false, Duration::from_secs(3_600)).await;
    assert_eq!(wallet(&app, s.user).await.pending_minor, 500);
    assert_eq!(
        status(&app, &s, "o-3", "reversed").await,
        StatusCode::ACCEPTED
    );
    // The job is lost: its outbox row marked sent, nothing in Redis.
    app.execute(
        "UPDATE outbox SET sent_at = now() WHERE payload->>'job' = 'ApplyRewardTransition'",
    )
    .await;
    // The hold period ends meanwhile.
    app.execute("UPDATE rewards SET hold_until = now() - interval '1 second'")
        .await;
    let swept = sweep(&app).await;
    assert_eq!((swept.due, swept.settled), (1, 1), "{swept:?}");
    let w = wallet(&app, s.user).await;
    assert_eq!(
        (w.pending_minor, w.available_minor),
        (0, 0),
        "the merchant's reversal, not the elapsed hold, decides"
    );
    assert_eq!(purchase_status(&app, pid).await, "reversed");
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM purchases WHERE settle_due_at IS NOT NULL")
            .await,
        0,
        "settled: nothing left due"
    );
    // Nothing due: the next sweep finds nothing.
    assert_eq!(sweep(&app).await.due, 0);
    reconciled(&app).await;
}

#[tokio::test]
async fn a_re_sent_reversal_is_recorded_and_driven_again() {
    let app = TestApp::new().await;
    let s = shop(&app, five_percent(), "resend").await;
    let pid = s.buy(&app, "o-4", 10_000).await;
    attribute(&app, pid, false, Duration::from_secs(3_600)).await;
    assert_eq!(
        status(&app, &s, "o-4", "reversed").await,
        StatusCode::ACCEPTED
    );
    app.execute("UPDATE outbox SET sent_at = now()").await;
    // The merchant sends the reversal again (a new delivery, a new key).
    assert_eq!(
        status(&app, &s, "o-4", "reversed").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM outbox WHERE payload->>'job' = 'ApplyRewardTransition' AND sent_at IS NULL")
            .await,
        1,
        "the re-sent decision has a job of its own"
    );
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM purchases WHERE settle_due_at <= now()")
            .await,
        1,
        "and is due for the settle sweep"
    );
    // What the job does when it runs.
    let mut c = app.db.conn().await;
    let settled = rewards::settle(&mut c, pid).await.unwrap();
    assert_eq!(
        settled,
        rewards::Settled::Reward {
            from: clicknback_core::models::reward::RewardStatus::Pending,
            to: clicknback_core::models::reward::RewardStatus::Reversed
        }
    );
    // Settling again moves nothing.
    let again = rewards::settle(&mut c, pid).await.unwrap();
    assert!(matches!(again, rewards::Settled::Reward { from, to } if from == to));
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM ledger_transfers WHERE kind = 'reward_void'")
            .await,
        1
    );
    reconciled(&app).await;
}

#[tokio::test]
async fn the_hold_period_confirms_through_the_settle_sweep() {
    let app = TestApp::new().await;
    let s = shop(&app, five_percent(), "hold").await;
    let pid = s.buy(&app, "o-5", 10_000).await;
    attribute(&app, pid, false, Duration::from_secs(3_600)).await;
    assert_eq!(sweep(&app).await.due, 0, "the hold has not ended");
    app.execute("UPDATE rewards SET hold_until = now()").await;
    app.execute("UPDATE purchases SET settle_due_at = now()")
        .await;
    assert_eq!(sweep(&app).await.settled, 1);
    assert_eq!(wallet(&app, s.user).await.available_minor, 500);
    assert_eq!(purchase_status(&app, pid).await, "confirmed");
    reconciled(&app).await;
}

#[tokio::test]
async fn a_reversed_or_rejected_reward_gives_its_monthly_cap_back() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let s = shop(
        &app,
        json!({"name": "10%", "rate_bps": 1000, "monthly_cap_minor": 1000, "currency": "EUR", "active": true}),
        "capped",
    )
    .await;
    let used = "SELECT COALESCE(sum(used_minor), 0)::bigint AS n FROM monthly_cap_usage WHERE currency = 'EUR'";
    let a = s.buy(&app, "o-a", 10_000).await;
    let out = attribute(&app, a, false, Duration::from_secs(3_600)).await;
    assert_eq!(rewarded(out).0, 1_000);
    assert_eq!(app.scalar(used).await, 1_000);
    assert_eq!(
        status(&app, &s, "o-a", "reversed").await,
        StatusCode::ACCEPTED
    );
    sweep(&app).await;
    assert_eq!(app.scalar(used).await, 0, "the reversal gave the cap back");

    let b = s.buy(&app, "o-b", 10_000).await;
    let out = attribute(&app, b, true, Duration::from_secs(3_600)).await;
    assert_eq!(rewarded(out), (1_000, true));
    assert_eq!(review(&app, &admin, b, "reject").await, "reversed");
    assert_eq!(app.scalar(used).await, 0, "the rejection gave the cap back");
    let c = s.buy(&app, "o-c", 10_000).await;
    let out = attribute(&app, c, false, Duration::from_secs(3_600)).await;
    assert_eq!(rewarded(out).0, 1_000);
    reconciled(&app).await;
}

#[tokio::test]
async fn amounts_have_a_maximum_and_caps_carry_their_currency() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let s = shop(
        &app,
        json!({"name": "100%", "rate_bps": 10_000, "active": true}),
        "big",
    )
    .await;
    for amount in [10_000_000_001_i64, i64::MAX] {
        let r = app
            .webhook(
                &format!("/v1/webhooks/{}/purchases", s.mid),
                &s.secret,
                &purchase_for(&format!("o-{amount}"), amount, "big"),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.body["code"], "validation_failed", "{}", r.text);
    }
    let pid = s.buy(&app, "o-max", 10_000_000_000).await;
    let out = attribute(&app, pid, false, Duration::from_secs(3_600)).await;
    assert_eq!(rewarded(out).0, 10_000_000_000);
    // The database refuses what validation would.
    let mut c = app.db.conn().await;
    use diesel_async::RunQueryDsl;
    let e = diesel::sql_query("UPDATE purchases SET amount_minor = 10000000001")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("purchases_amount_max"), "{e}");

    let offers = format!("/v1/admin/merchants/{}/offers", s.mid);
    let r = app
        .json(
            Method::POST,
            &offers,
            Some(&admin),
            Some(json!({"name": "capped", "rate_bps": 500, "monthly_cap_minor": 1000})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a cap needs its currency: {}",
        r.text
    );
    let r = app
        .json(
            Method::POST,
            &offers,
            Some(&admin),
            Some(json!({"name": "capped", "rate_bps": 500, "max_cashback_minor": 10_000_000_001_i64, "currency": "EUR"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            &offers,
            Some(&admin),
            Some(json!({"name": "capped", "rate_bps": 500, "monthly_cap_minor": 1000, "currency": "EUR"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["currency"], "EUR");

    let token = app.token_for("payer@example.com", Role::User).await;
    let (code, body, _) = clicknback_tests::wallets::request_payout(
        &app,
        &token,
        "big",
        &json!({"amount_minor": 10_000_000_001_i64, "currency": "EUR", "destination": {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"}}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    reconciled(&app).await;
}

#[tokio::test]
async fn a_capped_offer_gives_no_cashback_in_another_currency() {
    let app = TestApp::new().await;
    let s = shop(
        &app,
        json!({"name": "5%", "rate_bps": 500, "max_cashback_minor": 300, "currency": "USD", "active": true}),
        "fx",
    )
    .await;
    let pid = s.buy(&app, "o-fx", 10_000).await;
    let out = attribute(&app, pid, false, Duration::from_secs(3_600)).await;
    assert!(matches!(out, Outcome::Unattributed { .. }), "{out:?}");
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM ledger_transfers")
            .await,
        0
    );
}

#[tokio::test]
async fn a_crash_between_void_and_credit_of_a_re_attribution_leaves_the_old_reward() {
    let app = TestApp::new().await;
    let s = shop(
        &app,
        json!({"name": "10%", "rate_bps": 1000, "monthly_cap_minor": 1000, "currency": "EUR", "active": true}),
        "merge",
    )
    .await;
    let mut c = app.db.conn().await;
    let merchant = clicknback_core::services::merchants::get(&mut c, s.mid)
        .await
        .unwrap();
    clicknback_core::services::tracking::click(&mut c, &merchant, "other-device", None, None)
        .await
        .unwrap();
    let mut body = purchase_for("o-m", 10_000, "merge");
    body["purchase_token"] = json!("tok");
    let pid = app.report_purchase(s.mid, &s.secret, &body).await;
    attribute(&app, pid, false, Duration::from_secs(3_600)).await;
    clicknback_core::services::tracking::confirm_purchase(
        &mut c,
        &merchant,
        "other-device",
        "o-m",
        "tok",
    )
    .await
    .unwrap();
    // The process dies after the void and before the new credit: here, the
    // new reward's insert fails.
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'crash'; END $$;
         ",
    )
    .execute(&mut c)
    .await
    .unwrap();
    diesel::sql_query("CREATE TRIGGER crash BEFORE INSERT ON rewards FOR EACH ROW WHEN (NEW.attribution_seq > 1) EXECUTE FUNCTION crash()")
        .execute(&mut c)
        .await
        .unwrap();
    let cfg = AttributionConfig {
        fraud_threshold: 1.1,
        ..app.config.attribution.clone()
    };
    let crashed =
        attribution::reattribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache()).await;
    assert!(crashed.is_err(), "{crashed:?}");
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM rewards WHERE status = 'pending'")
            .await,
        1,
        "the old reward is still there"
    );
    assert_eq!(wallet(&app, s.user).await.pending_minor, 1_000);
    assert_eq!(
        app.scalar("SELECT used_minor AS n FROM monthly_cap_usage")
            .await,
        1_000,
        "its cap was not freed for another purchase to take"
    );
    diesel::sql_query("DROP TRIGGER crash ON rewards")
        .execute(&mut c)
        .await
        .unwrap();
    let out = attribution::reattribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
        .await
        .unwrap();
    assert_eq!(rewarded(out).0, 1_000);
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM rewards WHERE status = 'voided'")
            .await,
        1
    );
    assert_eq!(wallet(&app, s.user).await.pending_minor, 1_000);
    assert_eq!(
        app.scalar("SELECT used_minor AS n FROM monthly_cap_usage")
            .await,
        1_000
    );
    reconciled(&app).await;
}
