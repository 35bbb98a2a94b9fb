//! The fraud explainer: a flagged purchase is explained off the attribution
//! path by a chat-completions API (a real HTTP fake, wiremock), with a
//! timeout, retries under the job's policy and a circuit breaker; the prompt
//! carries no personal data; the review list shows the explanation or why
//! there is none, and never waits for it.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::{
    breaker::CircuitState,
    config::{ExplainerConfig, Secret},
    fraud_explainer::{ExplainerError, OpenAiExplainer},
    ids::{PurchaseId, RewardId},
    schema::rewards,
    services::explanations::{self, ExplainError, Explained, ExplanationStatus},
};
use clicknback_tests::{
    TestApp,
    procs::eventually,
    shoppers::flagged_purchase,
    wallets::{fund, request_payout},
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{header, method, path},
};

const KEY: &str = "sk-test-explainer-key";
const COMPLETIONS: &str = "/v1/chat/completions";

/// An explainer for the fake at `server`: 400 ms timeout, a breaker that
/// opens after 3 failures for a minute.
fn explainer_for(server: &MockServer) -> OpenAiExplainer {
    OpenAiExplainer::new(&ExplainerConfig {
        url: Some(format!("{}/v1", server.uri())),
        model: "test-model".into(),
        key: Some(Secret::new(KEY)),
        timeout: Duration::from_millis(400),
        max_tokens: 200,
        breaker_failures: 3,
        breaker_open: Duration::from_secs(60),
        breaker_open_max: Duration::from_secs(60),
        sandbox: false,
    })
    .expect("a configured explainer")
}

/// A chat completion as the API answers it.
fn completion(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "test-model-2026",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366},
    }))
}

async fn reward_of(app: &TestApp, purchase: PurchaseId) -> RewardId {
    let mut c = app.db.conn().await;
    rewards::table
        .filter(rewards::purchase_id.eq(purchase))
        .select(rewards::id)
        .first(&mut c)
        .await
        .unwrap()
}

async fn status_of(app: &TestApp, reward: RewardId) -> Option<ExplanationStatus> {
    let mut c = app.db.conn().await;
    explanations::state_of(&mut c, reward).await.unwrap().status
}

/// The review list's entry for `purchase`.
async fn listed(app: &TestApp, admin: &str, purchase: PurchaseId) -> Value {
    let r = app
        .json(Method::GET, "/v1/admin/purchases", Some(admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["purchase_id"] == purchase.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{purchase} not listed: {}", r.text))
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

#[tokio::test]
async fn a_flagged_purchase_is_explained_and_the_review_list_shows_it_as_text() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (pid, _) = flagged_purchase(&app, "explained").await;
    let reward = reward_of(&app, pid).await;

    // Flagging asked for it through the outbox, in attribution's transaction.
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM outbox WHERE task_id = 'explain:{reward}' AND queue = 'explanations'"
        ))
        .await,
        1
    );
    let before = listed(&app, &admin, pid).await;
    assert_eq!(before["fraud_explanation_status"], "pending");
    assert!(before["fraud_explanation"].is_null());

    let server = MockServer::start().await;
    let answer = "Ten times the shopper's average, <b>at a brand-new merchant</b>.";
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(completion(answer))
        .mount(&server)
        .await;
    let explainer = explainer_for(&server);
    let out = explanations::explain(&app.state.db, &explainer, reward)
        .await
        .unwrap();
    assert_eq!(
        out,
        Explained::Stored {
            prompt_tokens: Some(321),
            completion_tokens: Some(45)
        }
    );

    let after = listed(&app, &admin, pid).await;
    assert_eq!(after["fraud_explanation_status"], "done");
    assert_eq!(
        after["fraud_explanation"], answer,
        "stored as the text it is"
    );
    assert_eq!(after["fraud_explanation_model"], "test-model-2026");
    assert!(after["fraud_explained_at"].is_string());
    assert!(after["fraud_score"].is_number(), "the old fields stay");

    let mut c = app.db.conn().await;
    let view = explanations::state_of(&mut c, reward).await.unwrap();
    assert_eq!(view.status, Some(ExplanationStatus::Done));
    assert_eq!(view.text.as_deref(), Some(answer));
    assert_eq!(
        explanations::state_of_purchase(&mut c, pid).await.unwrap(),
        Some(view),
        "the same, found from the purchase"
    );

    // Idempotent: an explained reward is not asked about again.
    let again = explanations::explain(&app.state.db, &explainer, reward)
        .await
        .unwrap();
    assert_eq!(again, Explained::NotPending);
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 1);
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_tokens"], 200);
}

#[tokio::test]
async fn the_prompt_carries_the_facts_and_no_personal_data() {
    let app = TestApp::new().await;
    // The shopper's email holds a name; the order id and the customer
    // reference are the same made-up identifier.
    let (pid, user) = flagged_purchase(&app, "jane-doe-7781").await;
    let reward = reward_of(&app, pid).await;
    // A payout destination on file.
    fund(&app, user, 5_000).await;
    let token = app
        .state
        .tokens
        .issue(user, clicknback_core::models::user::Role::User)
        .access_token;
    let iban = "DE89 3704 0044 0532 0130 00";
    let (status, _, _) = request_payout(
        &app,
        &token,
        "payout-1",
        &json!({"amount_minor": 2_000, "currency": "EUR", "destination": {"type": "iban", "value": iban}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("Looks like a burst."))
        .mount(&server)
        .await;
    explanations::explain(&app.state.db, &explainer_for(&server), reward)
        .await
        .unwrap();

    let sent = requests(&server).await;
    assert_eq!(sent.len(), 1);
    let raw = String::from_utf8(sent[0].body.clone()).unwrap();
    let lower = raw.to_lowercase();
    let body: Value = serde_json::from_str(&raw).unwrap();
    let facts: Value =
        serde_json::from_str(body["messages"][1]["content"].as_str().unwrap()).unwrap();
    // What it must carry: the purchase, the rules that fired, the history.
    assert_eq!(facts["purchase"]["amount_minor"], 10_000);
    assert_eq!(facts["purchase"]["merchant"], "Shop");
    assert!(
        !facts["fraud"]["rules_fired"].as_array().unwrap().is_empty(),
        "{facts}"
    );
    assert!(facts["shopper_history"]["earlier_purchases"].is_number());
    // What it must not: names, emails, ids, tokens, destinations, secrets.
    for absent in [
        "jane",
        "doe",
        "7781",
        "@",
        "example.com",
        "de89",
        "370400440532013000",
        "latest-click",
        "old-click",
        &user.to_string(),
        &pid.to_string(),
        &reward.to_string(),
        "password",
        KEY,
    ] {
        assert!(
            !lower.contains(&absent.to_lowercase()),
            "the prompt holds {absent:?}: {raw}"
        );
    }
    for header_name in ["openai-organization", "openai-project"] {
        assert!(sent[0].headers.get(header_name).is_none());
    }
}

#[tokio::test]
async fn the_breaker_opens_while_the_explainer_is_down_and_reviews_go_on() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (pid, _) = flagged_purchase(&app, "down").await;
    let reward = reward_of(&app, pid).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(ResponseTemplate::new(503).set_body_string("overloaded"))
        .mount(&server)
        .await;
    let explainer = explainer_for(&server);
    for _ in 0..3 {
        let e = explanations::explain(&app.state.db, &explainer, reward)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ExplainError::Explainer(ExplainerError::Unavailable(_))),
            "{e:?}"
        );
    }
    assert_eq!(explainer.breaker_state(), CircuitState::Open);
    let e = explanations::explain(&app.state.db, &explainer, reward)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ExplainError::Explainer(ExplainerError::CircuitOpen)),
        "{e:?}"
    );
    assert_eq!(requests(&server).await.len(), 3, "open: nothing sent");

    // The review list and the review itself do not wait for it.
    assert_eq!(
        listed(&app, &admin, pid).await["fraud_explanation_status"],
        "pending"
    );
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/purchases/{pid}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn the_worker_retries_a_5xx_and_a_timeout_then_stores_the_explanation() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    // First a 502, then an answer too slow for the 1 s timeout, then an answer.
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("too late").set_delay(Duration::from_secs(5)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("A burst of purchases at a new merchant."))
        .mount(&server)
        .await;
    let (pid, _) = flagged_purchase(&app, "retried").await;
    let reward = reward_of(&app, pid).await;
    let url = format!("{}/v1", server.uri());
    let _worker = app.worker(&[
        ("FRAUD_EXPLAINER_URL", &url),
        ("FRAUD_EXPLAINER_MODEL", "test-model"),
        ("FRAUD_EXPLAINER_KEY", KEY),
        ("FRAUD_EXPLAINER_TIMEOUT_MS", "1000"),
        (
            "JOB_RETRY_EXPLAIN_FLAGGED_PURCHASE",
            "attempts=5,base=1s,cap=1s,jitter=0",
        ),
    ]);
    eventually(Duration::from_secs(60), "the explanation", || async {
        (status_of(&app, reward).await == Some(ExplanationStatus::Done)).then_some(())
    })
    .await;
    let mut c = app.db.conn().await;
    let view = explanations::state_of(&mut c, reward).await.unwrap();
    assert_eq!(
        view.text.as_deref(),
        Some("A burst of purchases at a new merchant.")
    );
    assert_eq!(requests(&server).await.len(), 3);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM outbox WHERE job_key = 'explain:{reward}' AND outcome = 'superseded'"
        ))
        .await,
        2,
        "two retries through the outbox"
    );
}

#[tokio::test]
async fn an_explainer_down_for_every_attempt_leaves_the_explanation_failed() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let (pid, _) = flagged_purchase(&app, "gave-up").await;
    let reward = reward_of(&app, pid).await;
    let url = format!("{}/v1", server.uri());
    let _worker = app.worker(&[
        ("FRAUD_EXPLAINER_URL", &url),
        ("FRAUD_EXPLAINER_MODEL", "test-model"),
        (
            "JOB_RETRY_EXPLAIN_FLAGGED_PURCHASE",
            "attempts=2,base=1s,cap=1s,jitter=0",
        ),
    ]);
    eventually(
        Duration::from_secs(60),
        "the explanation to fail",
        || async {
            (status_of(&app, reward).await == Some(ExplanationStatus::Failed)).then_some(())
        },
    )
    .await;
    assert_eq!(requests(&server).await.len(), 2);
    let item = listed(&app, &admin, pid).await;
    assert_eq!(item["fraud_explanation_status"], "failed");
    assert!(item["fraud_explanation"].is_null());
}

#[tokio::test]
async fn without_an_explainer_a_flagged_purchase_says_disabled_and_enqueues_nothing() {
    let app = TestApp::with(&[("FRAUD_EXPLAINER_SANDBOX", "false")]).await;
    assert!(!app.config.explainer.enabled());
    let admin = app.admin_token().await;
    let (pid, _) = flagged_purchase(&app, "off").await;
    assert_eq!(
        listed(&app, &admin, pid).await["fraud_explanation_status"],
        "disabled"
    );
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM outbox WHERE queue = 'explanations'")
            .await,
        0
    );
}

#[tokio::test]
async fn the_sandbox_explains_deterministically_and_reports_usage() {
    let app = TestApp::new().await;
    let api = app.api_process(&[]).await;
    let (pid, _) = flagged_purchase(&app, "sandboxed").await;
    let reward = reward_of(&app, pid).await;
    let cfg = ExplainerConfig {
        url: Some(format!("{}/sandbox/explainer/v1", api.base)),
        ..app.config.explainer.clone()
    };
    let explainer = OpenAiExplainer::new(&cfg).unwrap();
    let out = explanations::explain(&app.state.db, &explainer, reward)
        .await
        .unwrap();
    let Explained::Stored {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
    } = out
    else {
        panic!("{out:?}")
    };
    println!(
        "sandbox usage per flagged purchase: prompt {prompt} tokens, completion {completion} tokens"
    );
    assert!(prompt > 100 && completion > 20, "{prompt} {completion}");
    let mut c = app.db.conn().await;
    let view = explanations::state_of(&mut c, reward).await.unwrap();
    let text = view.text.unwrap();
    assert!(text.contains("100.00 EUR at Shop"), "{text}");
    assert!(text.contains("Sandbox explanation"), "{text}");
    assert_eq!(
        view.model.as_deref(),
        Some(clicknback_core::config::SANDBOX_MODEL)
    );
    // A wrong key is refused, as a provider would.
    let wrong = OpenAiExplainer::new(&ExplainerConfig {
        key: Some(Secret::new("wrong")),
        ..cfg
    })
    .unwrap();
    let prompt = clicknback_core::fraud_explainer::Prompt {
        system: "s".into(),
        user: "{}".into(),
    };
    let e = clicknback_core::fraud_explainer::FraudExplainer::explain(&wrong, &prompt)
        .await
        .unwrap_err();
    assert!(matches!(e, ExplainerError::Refused(_)), "{e:?}");
}
