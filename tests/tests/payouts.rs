//! Payouts: requests reserve money exactly once under any concurrency, the
//! destination is sealed, and the provider (a real HTTP server, wiremock) is
//! called so that no payout is ever sent twice and no money is released while
//! it might have gone out.

use std::{sync::Arc, time::Duration};

use axum::http::{Method, StatusCode};
use clicknback_core::ids::{PayoutId, UserId};
use clicknback_core::{
    config::PayoutConfig,
    payout_provider::{CircuitState, HttpProvider},
    services::{
        ledger::{self},
        payouts::{self, Processed},
    },
};
use clicknback_tests::{
    TestApp,
    procs::{SmtpSink, eventually},
    wallets::{funded_user, request_payout},
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{method, path, path_regex},
};

const IBAN: &str = "DE89 3704 0044 0532 0130 00";

/// One processing pass of payout `id` through `provider`.
async fn process(app: &TestApp, provider: &HttpProvider, id: PayoutId) -> Processed {
    payouts::process(&app.state.db, &app.state.keys, provider, id)
        .await
        .unwrap()
}

fn iban_payout(amount: i64) -> Value {
    json!({"amount_minor": amount, "currency": "EUR", "destination": {"type": "iban", "value": IBAN}})
}

async fn balances(app: &TestApp, user: UserId) -> (i64, i64, i64) {
    let mut c = app.db.conn().await;
    let w = ledger::wallet(&mut c, user).await.unwrap();
    w.into_iter()
        .find(|w| w.currency == "EUR")
        .map_or((0, 0, 0), |e| {
            (e.available_minor, e.reserved_minor, e.paid_out_minor)
        })
}

async fn status_of(app: &TestApp, id: PayoutId) -> String {
    use clicknback_core::schema::payouts;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let mut c = app.db.conn().await;
    payouts::table
        .find(id)
        .select(payouts::status)
        .first(&mut c)
        .await
        .unwrap()
}

/// A provider client for the fake at `server`, with a short timeout and a
/// breaker that opens after 3 failures for 1 s.
fn provider_for(app: &TestApp, server: &MockServer) -> HttpProvider {
    let cfg = PayoutConfig {
        provider_url: server.uri(),
        provider_timeout: Duration::from_millis(400),
        breaker_failures: 3,
        breaker_open: Duration::from_secs(1),
        breaker_open_max: Duration::from_secs(1),
        ..app.config.payouts.clone()
    };
    HttpProvider::new(&cfg).unwrap()
}

/// The provider's answer to a create or a lookup, echoing our reference.
fn provider_payout(reference: &str, status: &str) -> ResponseTemplate {
    provider_payout_with(201, reference, status)
}

fn provider_payout_with(code: u16, reference: &str, status: &str) -> ResponseTemplate {
    ResponseTemplate::new(code).set_body_json(json!({
        "id": format!("po_{}", &reference[..8]),
        "reference": reference,
        "status": status,
        "failure_reason": if status == "failed" { json!("account closed") } else { Value::Null },
    }))
}

fn echo(status: &'static str) -> impl Fn(&Request) -> ResponseTemplate {
    move |req: &Request| {
        let body: Value = req.body_json().unwrap();
        provider_payout(body["reference"].as_str().unwrap(), status)
    }
}

/// A fake provider whose `POST /v1/payouts` answers with `answer`.
async fn provider_answering_creates(answer: impl wiremock::Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payouts"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

/// The provider's lookup: paid for `known` payouts (every one when `None`),
/// 404 for the rest.
async fn lookups_answer_paid(server: &MockServer, known: Option<Vec<PayoutId>>) {
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/payouts/[0-9a-f-]+$"))
        .respond_with(move |req: &Request| {
            let reference = req.url.path().rsplit('/').next().unwrap().to_owned();
            let has = known
                .as_ref()
                .is_none_or(|k| k.iter().any(|id| id.to_string() == reference));
            if has {
                provider_payout_with(200, &reference, "paid")
            } else {
                ResponseTemplate::new(404)
            }
        })
        .mount(server)
        .await;
}

async fn creates(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect()
}

async fn new_payout(app: &TestApp, email: &str) -> (UserId, PayoutId) {
    let (user, token) = funded_user(app, email, 5_000).await;
    let (status, body, _) = request_payout(app, &token, "k1", &iban_payout(2_000)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (user, body["id"].as_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_request_reserves_the_amount_seals_the_destination_and_replays_by_key() {
    let app = TestApp::new().await;
    let (user, token) = funded_user(&app, "payee@example.com", 5_000).await;

    let (status, body, _) = request_payout(&app, &token, "key-1", &iban_payout(2_000)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "requested");
    assert_eq!(body["destination"]["type"], "iban");
    assert_eq!(body["destination"]["masked"], "DE89 •••• 3000");
    assert!(!body.to_string().contains("0532013000"), "{body}");
    assert_eq!(balances(&app, user).await, (3_000, 2_000, 0));

    // The raw row holds no readable trace of the IBAN.
    {
        use clicknback_core::schema::payouts;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut c = app.db.conn().await;
        let id: PayoutId = body["id"].as_str().unwrap().parse().unwrap();
        let sealed: Vec<u8> = payouts::table
            .find(id)
            .select(payouts::destination_encrypted)
            .first(&mut c)
            .await
            .unwrap();
        let raw = String::from_utf8_lossy(&sealed);
        assert!(!raw.contains("DE89") && !raw.contains("370400440532013000"));
        let opened = app
            .state
            .keys
            .open(&sealed, &format!("payout:{id}:destination"))
            .unwrap();
        assert_eq!(opened, b"DE89370400440532013000");
    }

    let (status, again, replayed) =
        request_payout(&app, &token, "key-1", &iban_payout(2_000)).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (StatusCode::ACCEPTED, Some("true"))
    );
    assert_eq!(again["id"], body["id"]);
    assert_eq!(
        balances(&app, user).await,
        (3_000, 2_000, 0),
        "a replay reserves nothing"
    );
    let (status, reused, _) = request_payout(&app, &token, "key-1", &iban_payout(2_500)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused["code"], "idempotency_key_reused");

    let r = app
        .json(
            Method::POST,
            "/v1/payouts",
            Some(&token),
            Some(iban_payout(2_000)),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no Idempotency-Key");
    let (status, low, _) = request_payout(&app, &token, "key-2", &iban_payout(5)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(low["errors"][0]["field"], "amount_minor");
    let bad = json!({"amount_minor": 1_000, "currency": "EUR", "destination": {"type": "iban", "value": "DE00 1234"}});
    let (status, invalid, _) = request_payout(&app, &token, "key-3", &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid["errors"][0]["field"], "destination.value");
    let (status, broke, _) = request_payout(&app, &token, "key-4", &iban_payout(3_001)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(broke["code"], "insufficient_funds");

    let paypal = json!({"amount_minor": 1_000, "currency": "EUR", "destination": {"type": "paypal", "value": "jane.doe@example.com"}});
    let (status, pp, _) = request_payout(&app, &token, "key-5", &paypal).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pp}");
    assert_eq!(pp["destination"]["masked"], "j•••@example.com");

    let list = app
        .json(Method::GET, "/v1/payouts", Some(&token), None)
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    assert!(!list.text.contains("jane.doe") && !list.text.contains("0532013000"));
    let one = app
        .json(
            Method::GET,
            &format!("/v1/payouts/{}", body["id"].as_str().unwrap()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["destination"]["masked"], "DE89 •••• 3000");

    let (_, other) = funded_user(&app, "other@example.com", 0).await;
    let theirs = app
        .json(
            Method::GET,
            &format!("/v1/payouts/{}", body["id"].as_str().unwrap()),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(
        theirs.status,
        StatusCode::NOT_FOUND,
        "another user's payout is invisible"
    );
}

#[tokio::test]
async fn fifty_concurrent_requests_against_a_balance_for_ten_reserve_exactly_ten() {
    let app = Arc::new(TestApp::new().await);
    let (user, token) = funded_user(&app, "rush@example.com", 10_000).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                request_payout(&app, &token, &format!("rush-{i}"), &iban_payout(1_000)).await
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, body, _) = t.await.unwrap();
        match status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["code"], "insufficient_funds");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted, refused), (10, 40));
    assert_eq!(balances(&app, user).await, (0, 10_000, 0));
    let mut c = app.db.conn().await;
    assert!(ledger::reconcile(&mut c).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_paid_payout_moves_reserved_to_paid_out_once_and_sends_one_email() {
    let app = TestApp::new().await;
    let server = provider_answering_creates(echo("paid")).await;
    let provider = provider_for(&app, &server);
    let (user, id) = new_payout(&app, "paid@example.com").await;

    let out = process(&app, &provider, id).await;
    assert_eq!(out, Processed::Paid);
    assert_eq!(balances(&app, user).await, (3_000, 0, 2_000));
    assert_eq!(status_of(&app, id).await, "paid");
    let again = process(&app, &provider, id).await;
    assert_eq!(again, Processed::AlreadyFinal);

    let sent = creates(&server).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]
            .headers
            .get("idempotency-key")
            .unwrap()
            .to_str()
            .unwrap(),
        id.to_string()
    );
    let body: Value = sent[0].body_json().unwrap();
    assert_eq!(body["destination"]["value"], "DE89370400440532013000");
    assert_eq!(body["amount_minor"], 2_000);
    let emails = app
        .scalar("SELECT count(*) AS n FROM outbox WHERE payload->>'job' = 'SendEmail' AND payload->'data'->>'kind' = 'payout_paid'")
        .await;
    assert_eq!(emails, 1);
}

#[tokio::test]
async fn a_definitive_failure_releases_the_reservation() {
    let app = TestApp::new().await;
    let server = provider_answering_creates(
        ResponseTemplate::new(422)
            .set_body_json(json!({"error": {"message": "IBAN account closed"}})),
    )
    .await;
    let provider = provider_for(&app, &server);
    let (user, id) = new_payout(&app, "refused@example.com").await;
    let out = process(&app, &provider, id).await;
    assert!(
        matches!(out, Processed::Failed(ref r) if r.contains("account closed")),
        "{out:?}"
    );
    assert_eq!(balances(&app, user).await, (5_000, 0, 0));
    assert_eq!(status_of(&app, id).await, "failed");
    let emails = app
        .scalar("SELECT count(*) AS n FROM outbox WHERE payload->'data'->>'kind' = 'payout_failed'")
        .await;
    assert_eq!(emails, 1);

    // A provider that reports the payout failed later releases it the same way.
    let server2 = provider_answering_creates(echo("failed")).await;
    let (user2, id2) = new_payout(&app, "refused2@example.com").await;
    let out = process(&app, &provider_for(&app, &server2), id2).await;
    assert_eq!(out, Processed::Failed("account closed".into()));
    assert_eq!(balances(&app, user2).await, (5_000, 0, 0));
}

#[tokio::test]
async fn a_timeout_then_a_paid_lookup_never_sends_the_payout_twice() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    // The provider takes the payout but answers too late for our timeout.
    Mock::given(method("POST"))
        .and(path("/v1/payouts"))
        .respond_with(move |req: &Request| {
            let body: Value = req.body_json().unwrap();
            provider_payout(body["reference"].as_str().unwrap(), "paid")
                .set_delay(Duration::from_secs(2))
        })
        .mount(&server)
        .await;
    lookups_answer_paid(&server, None).await;
    let provider = provider_for(&app, &server);
    let (user, id) = new_payout(&app, "slow@example.com").await;

    let first = process(&app, &provider, id).await;
    assert!(matches!(first, Processed::Unknown(_)), "{first:?}");
    assert_eq!(status_of(&app, id).await, "submitted_unknown");
    assert_eq!(
        balances(&app, user).await,
        (3_000, 2_000, 0),
        "the reservation stays"
    );

    let second = process(&app, &provider, id).await;
    assert_eq!(second, Processed::Paid);
    assert_eq!(balances(&app, user).await, (3_000, 0, 2_000));
    let third = process(&app, &provider, id).await;
    assert_eq!(third, Processed::AlreadyFinal);
    assert_eq!(creates(&server).await.len(), 1, "sent exactly once");
}

#[tokio::test]
async fn an_unknown_outcome_the_provider_never_received_is_resent_under_the_same_key() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payouts"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/payouts"))
        .respond_with(echo("paid"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let provider = provider_for(&app, &server);
    let (_, id) = new_payout(&app, "lost@example.com").await;
    let first = process(&app, &provider, id).await;
    assert!(matches!(first, Processed::Unknown(_)), "{first:?}");
    let second = process(&app, &provider, id).await;
    assert_eq!(second, Processed::Paid);
    let received = server.received_requests().await.unwrap();
    let kinds: Vec<&str> = received.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(kinds, ["POST", "GET", "POST"], "asked before resending");
    let keys: Vec<String> = creates(&server)
        .await
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(keys, [id.to_string(), id.to_string()]);
}

#[tokio::test]
async fn a_provider_that_is_down_opens_the_breaker_which_recovers_after_a_probe() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let provider = provider_for(&app, &server);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(new_payout(&app, &format!("down{i}@example.com")).await.1);
    }
    for id in &ids[..3] {
        let out = process(&app, &provider, *id).await;
        assert!(matches!(out, Processed::Unknown(_)), "{out:?}");
    }
    assert_eq!(provider.breaker().state(), CircuitState::Open);
    let fast = process(&app, &provider, ids[3]).await;
    assert!(
        matches!(fast, Processed::NotSent(ref r) if r.contains("circuit breaker")),
        "{fast:?}"
    );
    assert_eq!(creates(&server).await.len(), 3, "nothing sent while open");
    assert_eq!(status_of(&app, ids[3]).await, "processing");

    // The provider comes back: it had received the first three payouts,
    // never the fourth.
    server.reset().await;
    lookups_answer_paid(&server, Some(ids[..3].to_vec())).await;
    Mock::given(method("POST"))
        .respond_with(echo("paid"))
        .mount(&server)
        .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for id in &ids {
        let out = process(&app, &provider, *id).await;
        assert_eq!(out, Processed::Paid);
    }
    assert_eq!(provider.breaker().state(), CircuitState::Closed);
    assert_eq!(
        creates(&server).await.len(),
        1,
        "the three it had were settled by lookup; only the fourth was sent"
    );
}

#[tokio::test]
async fn the_worker_pays_out_through_the_provider_and_emails_the_user() {
    let app = TestApp::new().await;
    let server = provider_answering_creates(echo("paid")).await;
    let smtp = SmtpSink::start().await;
    let worker_port = clicknback_tests::procs::free_port();
    let _worker = app.worker(&[
        ("PAYOUT_PROVIDER_URL", &server.uri()),
        ("SMTP_URL", &smtp.url()),
        ("WORKER_ADDR", &format!("127.0.0.1:{worker_port}")),
    ]);
    let (user, id) = new_payout(&app, "e2e-payee@example.com").await;
    eventually(Duration::from_secs(30), "the payout to be paid", || async {
        (status_of(&app, id).await == "paid").then_some(())
    })
    .await;
    assert_eq!(balances(&app, user).await, (3_000, 0, 2_000));
    let mail = eventually(Duration::from_secs(20), "the payout email", || async {
        smtp.messages()
            .into_iter()
            .find(|m| m.contains("e2e-payee@example.com") && m.contains("Subject: Your payout"))
    })
    .await;
    assert!(mail.contains("20.00 EUR"), "{mail}");
    assert_eq!(creates(&server).await.len(), 1);
    let metrics = reqwest::get(format!("http://127.0.0.1:{worker_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("payout_provider_circuit_state 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_resolve_schedule_settles_a_payout_left_in_submitted_unknown() {
    let app = TestApp::new().await;
    let server = provider_answering_creates(ResponseTemplate::new(504)).await;
    let (user, id) = new_payout(&app, "stuck@example.com").await;
    let out = process(&app, &provider_for(&app, &server), id).await;
    assert!(matches!(out, Processed::Unknown(_)), "{out:?}");
    // Its job is gone (say it went dead and nobody re-queued it).
    app.execute("DELETE FROM outbox WHERE task_id LIKE 'payout:%'")
        .await;

    // The provider did pay it; the schedule finds out by asking.
    server.reset().await;
    lookups_answer_paid(&server, None).await;
    let _worker = app.worker(&[
        ("PAYOUT_PROVIDER_URL", &server.uri()),
        ("SCHEDULE_RESOLVE_PAYOUTS", "* * * * * *"),
        ("PAYOUT_RECONCILE_AFTER_SECS", "1"),
    ]);
    eventually(
        Duration::from_secs(30),
        "the schedule to settle the payout",
        || async { (status_of(&app, id).await == "paid").then_some(()) },
    )
    .await;
    assert_eq!(balances(&app, user).await, (3_000, 0, 2_000));
    assert_eq!(
        creates(&server).await.len(),
        0,
        "settled by lookup, never resent"
    );
}

#[tokio::test]
async fn a_payout_resend_after_an_uncertain_attempt_asks_the_provider_before_releasing() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    // The first send times out on our side (502: outcome unknown)...
    Mock::given(method("POST"))
        .and(path("/v1/payouts"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    // ...the resend is refused (the provider holds that key already)...
    Mock::given(method("POST"))
        .and(path("/v1/payouts"))
        .respond_with(
            ResponseTemplate::new(422)
                .set_body_json(json!({"error": {"message": "idempotency key in use"}})),
        )
        .mount(&server)
        .await;
    // ...and the provider's lookup, not visible at first, then paid.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    lookups_answer_paid(&server, None).await;
    let provider = provider_for(&app, &server);
    let (user, id) = new_payout(&app, "uncertain@example.com").await;
    let first = process(&app, &provider, id).await;
    assert!(matches!(first, Processed::Unknown(_)), "{first:?}");
    let second = process(&app, &provider, id).await;
    assert_eq!(
        second,
        Processed::Paid,
        "the provider was asked, not the refusal believed"
    );
    assert_eq!(
        balances(&app, user).await,
        (3_000, 0, 2_000),
        "nothing released"
    );
    let kinds: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(
        kinds,
        ["POST", "GET", "POST", "GET"],
        "asked after the refused resend"
    );
}

#[tokio::test]
async fn a_failed_payout_release_settles_the_open_receivable_first() {
    use clicknback_core::services::{attribution, fraud::RuleScorer, rewards};
    use clicknback_tests::shoppers::{merchant_with_offer, purchase_for, shopper_with_click};

    let app = TestApp::new().await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let (user, _) = shopper_with_click(
        &app,
        mid,
        "owes",
        "owes@example.com",
        chrono::Duration::minutes(1),
    )
    .await;
    let pid = app
        .report_purchase(mid, &secret, &purchase_for("o-1", 100_000, "owes"))
        .await;
    // Attributed with the hold period over: 5,000 available at once.
    let cfg = clicknback_core::config::AttributionConfig {
        fraud_threshold: 1.1,
        hold_period: Duration::ZERO,
        ..app.config.attribution.clone()
    };
    let mut c = app.db.conn().await;
    attribution::attribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
        .await
        .unwrap();
    assert_eq!(balances(&app, user).await, (5_000, 0, 0));
    // The shopper reserves it all for a payout...
    let token = app
        .state
        .tokens
        .issue(user, clicknback_core::models::user::Role::User)
        .access_token;
    let (code, body, _) = request_payout(&app, &token, "k1", &iban_payout(5_000)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id: PayoutId = body["id"].as_str().unwrap().parse().unwrap();
    // ...the merchant reverses the order: the spent 5,000 is owed...
    let r = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases/o-1/status"),
            &secret,
            &json!({"status": "reversed"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    rewards::settle(&mut c, pid).await.unwrap();
    let receivable = || async {
        let mut c = app.db.conn().await;
        ledger::wallet(&mut c, user).await.unwrap()[0].receivable_minor
    };
    assert_eq!(receivable().await, 5_000);
    // ...and the provider refuses the payout.
    let server = provider_answering_creates(
        ResponseTemplate::new(422).set_body_json(json!({"error": {"message": "account closed"}})),
    )
    .await;
    let out = process(&app, &provider_for(&app, &server), id).await;
    assert!(matches!(out, Processed::Failed(_)), "{out:?}");
    assert_eq!(
        balances(&app, user).await,
        (0, 0, 0),
        "the released amount settled the debt; nothing to withdraw again"
    );
    assert_eq!(receivable().await, 0);
    assert!(ledger::reconcile(&mut c).await.unwrap().is_empty());
}
