//! One purchase walked through everything that can happen to it, through
//! the public API and a real worker: a click and the shopper's sign-in
//! through the SDK's endpoints, the checkout page's confirmation before the
//! webhook, the webhook and its replay, attribution flagged for review, an
//! admin's approval, the merchant's confirmation, and a payout that spends
//! the cashback (paid by a fake provider, its email caught by an SMTP sink).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::ids::{MerchantId, PayoutId, PurchaseId, UserId};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, ResponseTemplate, matchers};

use crate::{
    TestApp,
    procs::{SmtpSink, WorkerProcess, eventually},
    wallets::request_payout,
    webhook::purchase_body,
};

/// What the walk left: the ids to look up, and what must stay alive.
pub struct Walk {
    pub purchase: PurchaseId,
    pub merchant: MerchantId,
    pub order_id: String,
    pub user: UserId,
    pub email: String,
    pub payout: PayoutId,
    pub admin_email: String,
    /// A bearer token of that admin.
    pub admin_token: String,
    pub worker: WorkerProcess,
    pub provider: MockServer,
    pub smtp: SmtpSink,
}

/// The cashback of the walk's purchase (5 % of 400.00 EUR), and the payout
/// that spends part of it.
pub const CASHBACK: i64 = 2_000;
pub const PAYOUT: i64 = 1_500;
/// The idempotency key the merchant reports the purchase under (twice).
pub const WEBHOOK_KEY: &str = "merchant-key-0001";

async fn post(app: &TestApp, path: &str, headers: &[(&str, &str)], body: Value) -> Value {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let r = app
        .request(
            Method::POST,
            path,
            &h,
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await;
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.text);
    r.body
}

async fn reward_status(app: &TestApp, id: PurchaseId) -> String {
    app.scalar_text(&format!(
        "SELECT status AS t FROM rewards WHERE purchase_id = '{id}' AND status <> 'voided'"
    ))
    .await
    .unwrap_or_default()
}

/// Walks a purchase of order `order_id`; `worker_env` is added to the
/// worker's environment.
pub async fn walk(app: &TestApp, order_id: &str, worker_env: &[(&str, &str)]) -> Walk {
    let provider = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/payouts"))
        .respond_with(|req: &Request| {
            let body: Value = req.body_json().unwrap();
            let reference = body["reference"].as_str().unwrap().to_owned();
            ResponseTemplate::new(201).set_body_json(json!({
                "id": format!("po_{}", &reference[..8]), "reference": reference,
                "status": "paid", "failure_reason": null,
            }))
        })
        .mount(&provider)
        .await;
    let smtp = SmtpSink::start().await;
    let (provider_url, smtp_url) = (provider.uri(), smtp.url());
    let mut env = vec![
        ("FRAUD_THRESHOLD", "0"),
        ("PAYOUT_PROVIDER_URL", provider_url.as_str()),
        ("SMTP_URL", smtp_url.as_str()),
    ];
    env.extend_from_slice(worker_env);
    let worker = app.worker(&env);

    let admin_email = format!("ops-{}@example.com", uuid::Uuid::new_v4().simple());
    let admin = app
        .token_for(&admin_email, clicknback_core::models::user::Role::Admin)
        .await;
    let (mid, secret, pk) = app.merchant(&admin, "Timeline Shop").await;
    let merchant: MerchantId = mid.parse().unwrap();
    let offer = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            Some(json!({"name": "5%", "rate_bps": 500, "active": true})),
        )
        .await;
    assert_eq!(offer.status, StatusCode::CREATED, "{}", offer.text);
    let offer_id = offer.body["id"].as_str().unwrap().to_owned();

    // The shopper's browser: the referral click, the sign-in, the checkout.
    let email = format!("{order_id}@example.com").to_lowercase();
    let reg = app
        .json(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"email": email, "password": "password-123"})),
        )
        .await;
    assert_eq!(reg.status, StatusCode::CREATED, "{}", reg.text);
    let user: UserId = reg.body["id"].as_str().unwrap().parse().unwrap();
    let login = post(
        app,
        "/v1/auth/login",
        &[],
        json!({"email": email, "password": "password-123"}),
    )
    .await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let anon = format!("anon-{}", uuid::Uuid::new_v4().simple());
    post(
        app,
        "/v1/track/click",
        &[("x-publishable-key", &pk)],
        json!({"anon_id": anon, "offer_id": offer_id, "landing_url": "https://shop.example/p/1?ref=cnb"}),
    )
    .await;
    let r = app
        .request(
            Method::POST,
            "/v1/track/identify",
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer),
            ],
            Some(serde_json::to_vec(&json!({"anon_id": anon})).unwrap()),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let purchase_token = format!("ptok-{order_id}");
    let confirmation =
        json!({"anon_id": anon, "order_id": order_id, "purchase_token": purchase_token});
    let first = post(
        app,
        "/v1/track/purchase",
        &[("x-publishable-key", &pk)],
        confirmation.clone(),
    )
    .await;
    assert_eq!(first["result"], "pending");

    // The merchant's server: the webhook, then the same webhook again.
    let mut body = purchase_body(order_id, 40_000);
    body["purchase_token"] = json!(purchase_token);
    let path = format!("/v1/webhooks/{mid}/purchases");
    let r = app
        .webhook(&path, &secret, &body, &[("idempotency-key", WEBHOOK_KEY)])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let purchase: PurchaseId = r.body["id"].as_str().unwrap().parse().unwrap();
    let again = app
        .webhook(&path, &secret, &body, &[("idempotency-key", WEBHOOK_KEY)])
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // A reload of the thank-you page: the purchase is there now.
    let second = post(
        app,
        "/v1/track/purchase",
        &[("x-publishable-key", &pk)],
        confirmation,
    )
    .await;
    assert_eq!(second["result"], "linked");

    // Attribution (the worker, after the delay) flags it; an admin approves.
    eventually(
        Duration::from_secs(60),
        "the reward to be flagged",
        || async { (reward_status(app, purchase).await == "flagged").then_some(()) },
    )
    .await;
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/purchases/{purchase}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The merchant confirms; the worker makes the cashback available.
    let r = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases/{order_id}/status"),
            &secret,
            &json!({"status": "confirmed"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    eventually(
        Duration::from_secs(30),
        "the reward to be confirmed",
        || async { (reward_status(app, purchase).await == "confirmed").then_some(()) },
    )
    .await;

    // The shopper withdraws part of it; the worker pays it out.
    let (status, payout, _) = request_payout(
        app,
        &token,
        "payout-1",
        &json!({"amount_minor": PAYOUT, "currency": "EUR",
                "destination": {"type": "iban", "value": "DE89370400440532013000"}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{payout}");
    let payout: PayoutId = payout["id"].as_str().unwrap().parse().unwrap();
    eventually(Duration::from_secs(30), "the payout to be paid", || async {
        (app.scalar_text(&format!(
            "SELECT status AS t FROM payouts WHERE id = '{payout}'"
        ))
        .await
        .as_deref()
            == Some("paid"))
        .then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the payout email to be sent", || async {
        (app.scalar(&format!(
            "SELECT count(*) AS n FROM email_log WHERE dedupe_key LIKE 'payout:{payout}:%' AND status = 'sent'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    Walk {
        purchase,
        merchant,
        order_id: order_id.to_owned(),
        user,
        email,
        payout,
        admin_email,
        admin_token: admin,
        worker,
        provider,
        smtp,
    }
}
