//! A reward's money against the release-style binaries, as a merchant, a
//! shopper and an admin drive them over HTTP: the api and the worker run as
//! child processes, with short hold periods (`REWARD_HOLD_SECS`) and a settle
//! sweep every second.
//!
//! 1. a reversal that arrives before attribution wins over an admin's approval;
//! 2. a reversal whose job is lost is re-driven by the settle sweep, and the
//!    elapsed hold does not confirm the reversed reward;
//! 3. a payout refused after the reward behind it was reversed settles the
//!    shopper's debt first: the reversed cashback cannot be withdrawn again.

use std::time::Duration;

use clicknback_core::signature::WebhookSecret;
use clicknback_tests::{
    TestApp,
    procs::{ApiProcess, WorkerProcess, eventually},
};
use serde_json::{Value, json};

struct Scene {
    app: TestApp,
    http: reqwest::Client,
    api: ApiProcess,
    mid: String,
    secret: String,
    pk: String,
    admin: String,
}

/// The worker's environment for these scenarios (what the test overrides).
fn worker_env(api: &ApiProcess, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REWARD_HOLD_SECS", "3".to_owned()),
        ("SCHEDULE_SETTLE_REWARDS", "* * * * * *".to_owned()),
        (
            "PAYOUT_PROVIDER_URL",
            format!("{}/sandbox/provider", api.base),
        ),
    ];
    env.extend_from_slice(extra);
    env
}

fn start_worker(s: &Scene, extra: &[(&'static str, String)]) -> WorkerProcess {
    let env = worker_env(&s.api, extra);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.app.worker(&refs)
}

async fn scene() -> Scene {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, pk) = app.merchant(&admin, "Shoes").await;
    let api = app
        .api_process(&[
            ("ATTRIBUTION_DELAY_SECS", "2"),
            ("PAYOUT_MIN_AMOUNT_MINOR", "100"),
        ])
        .await;
    let s = Scene {
        app,
        http: clicknback_tests::procs::http_client(),
        api,
        mid,
        secret,
        pk,
        admin,
    };
    let auth = format!("Bearer {}", s.admin);
    let (code, b) = s
        .post(
            &format!("/v1/admin/merchants/{}/offers", s.mid),
            &[("authorization", &auth)],
            &json!({"name": "5%", "rate_bps": 500, "active": true}),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    s
}

impl Scene {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.api.base))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let req = self
            .http
            .get(format!("{}{path}", self.api.base))
            .header("authorization", format!("Bearer {token}"));
        self.send(req).await.1
    }

    async fn signed(&self, path: &str, body: &Value) -> (u16, Value) {
        let raw = serde_json::to_vec(body).unwrap();
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let ts = chrono::Utc::now().timestamp();
        let sig = WebhookSecret::parse(&self.secret)
            .unwrap()
            .sign(&id, ts, &raw);
        let req = self
            .http
            .post(format!("{}{path}", self.api.base))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(raw);
        self.send(req).await
    }

    /// A registered shopper who clicked the merchant's link and logged in:
    /// their token.
    async fn shopper(&self, email: &str, anon: &str) -> String {
        let (c, b) = self
            .post(
                "/v1/track/click",
                &[("x-publishable-key", &self.pk)],
                &json!({"anon_id": anon}),
            )
            .await;
        assert_eq!(c, 201, "{b}");
        let creds = json!({"email": email, "password": "password-123"});
        let (c, _) = self.post("/v1/auth/register", &[], &creds).await;
        assert_eq!(c, 201);
        let (_, t) = self.post("/v1/auth/login", &[], &creds).await;
        let token = t["access_token"].as_str().unwrap().to_owned();
        let auth = format!("Bearer {token}");
        let (c, b) = self
            .post(
                "/v1/track/identify",
                &[("authorization", &auth)],
                &json!({"anon_id": anon}),
            )
            .await;
        assert_eq!(c, 204, "{b}");
        token
    }

    /// The shopper's checkout: the SDK call and the merchant's webhook
    /// (10,000 EUR minor units, 500 cashback). The purchase id.
    async fn buy(&self, anon: &str, order: &str) -> String {
        let (c, b) = self
            .post(
                "/v1/track/purchase",
                &[("x-publishable-key", &self.pk)],
                &json!({"anon_id": anon, "order_id": order, "purchase_token": format!("tok-{order}")}),
            )
            .await;
        assert_eq!(c, 202, "{b}");
        let body = json!({
            "order_id": order, "amount_minor": 10_000, "currency": "EUR",
            "purchased_at": chrono::Utc::now().to_rfc3339(), "purchase_token": format!("tok-{order}"),
        });
        let (c, b) = self
            .signed(&format!("/v1/webhooks/{}/purchases", self.mid), &body)
            .await;
        assert_eq!(c, 202, "{b}");
        b["id"].as_str().unwrap().to_owned()
    }

    async fn decide(&self, order: &str, status: &str) {
        let (c, b) = self
            .signed(
                &format!("/v1/webhooks/{}/purchases/{order}/status", self.mid),
                &json!({"status": status, "reason": "refund"}),
            )
            .await;
        assert_eq!(c, 202, "{b}");
    }

    async fn wallet(&self, token: &str) -> (i64, i64, i64, i64) {
        let w = self.get("/v1/me/wallet", token).await["data"][0].clone();
        let n = |f: &str| w[f].as_i64().unwrap_or(0);
        (
            n("pending_minor"),
            n("available_minor"),
            n("reserved_minor"),
            n("receivable_minor"),
        )
    }

    async fn reward_status(&self, purchase: &str) -> Option<String> {
        let mut c = self.app.db.conn().await;
        #[derive(diesel::QueryableByName)]
        struct S {
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
        }
        diesel_async::RunQueryDsl::get_result::<S>(
            diesel::sql_query(format!(
                "SELECT status FROM rewards WHERE purchase_id = '{purchase}' AND status <> 'voided'"
            )),
            &mut c,
        )
        .await
        .ok()
        .map(|s| s.status)
    }

    async fn until_reward(&self, purchase: &str, status: &str) {
        eventually(
            Duration::from_secs(30),
            &format!("the reward to be {status}"),
            || async {
                (self.reward_status(purchase).await.as_deref() == Some(status)).then_some(())
            },
        )
        .await;
    }

    async fn reconciled(&self) {
        let mut c = self.app.db.conn().await;
        assert_eq!(
            clicknback_core::services::ledger::reconcile(&mut c)
                .await
                .unwrap(),
            vec![]
        );
    }
}

#[tokio::test]
async fn a_reversal_before_attribution_wins_over_an_admin_approval() {
    let s = scene().await;
    let _worker = start_worker(&s, &[("FRAUD_THRESHOLD", "0".into())]);
    let token = s.shopper("flagged@example.com", "anon-1").await;
    let purchase = s.buy("anon-1", "o-1").await;
    // The merchant refunds the order before the delayed attribution runs.
    s.decide("o-1", "reversed").await;
    // Attribution: every score is over a threshold of 0, so it is flagged.
    eventually(Duration::from_secs(30), "the attribution", || async {
        s.reward_status(&purchase).await
    })
    .await;
    let auth = format!("Bearer {}", s.admin);
    let (c, b) = s
        .post(
            &format!("/v1/admin/purchases/{purchase}/approve"),
            &[("authorization", &auth)],
            &json!({}),
        )
        .await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(
        b["reward_status"], "reversed",
        "the merchant's reversal wins"
    );
    // The hold period (3 s) passes, with the settle sweep running every second.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        s.reward_status(&purchase).await.as_deref(),
        Some("reversed")
    );
    assert_eq!(
        s.wallet(&token).await,
        (0, 0, 0, 0),
        "no cashback for a refunded order"
    );
    s.reconciled().await;
}

#[tokio::test]
async fn a_lost_reversal_job_is_re_driven_by_the_settle_sweep() {
    let s = scene().await;
    let extra = [
        ("FRAUD_THRESHOLD", "1".to_owned()),
        ("REWARD_HOLD_SECS", "8".to_owned()),
    ];
    let mut worker = start_worker(&s, &extra);
    let token = s.shopper("lost@example.com", "anon-2").await;
    let purchase = s.buy("anon-2", "o-2").await;
    s.until_reward(&purchase, "pending").await;
    // The worker goes away; the merchant reverses; the job is lost (its
    // outbox row marked sent, nothing in Redis).
    worker.term();
    worker.wait(Duration::from_secs(20)).await;
    s.decide("o-2", "reversed").await;
    s.app
        .execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
        .await;
    let _worker = start_worker(&s, &extra);
    s.until_reward(&purchase, "reversed").await;
    // The hold period ends: the sweep must not confirm what the merchant reversed.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        s.reward_status(&purchase).await.as_deref(),
        Some("reversed")
    );
    assert_eq!(s.wallet(&token).await, (0, 0, 0, 0));
    // A merchant re-sending the reversal is accepted and driven again.
    s.decide("o-2", "reversed").await;
    eventually(Duration::from_secs(20), "the re-sent reversal's job", || async {
        (s.app
            .scalar("SELECT count(*) AS n FROM outbox WHERE payload->>'job' = 'ApplyRewardTransition' AND sent_at IS NOT NULL")
            .await
            >= 2)
            .then_some(())
    })
    .await;
    assert_eq!(s.wallet(&token).await, (0, 0, 0, 0));
    s.reconciled().await;
}

#[tokio::test]
async fn a_failed_payout_release_settles_the_open_receivable_first() {
    let s = scene().await;
    let extra = [
        ("FRAUD_THRESHOLD", "1".to_owned()),
        ("REWARD_HOLD_SECS", "0".to_owned()),
    ];
    let mut worker = start_worker(&s, &extra);
    let token = s.shopper("spender@example.com", "anon-3").await;
    let purchase = s.buy("anon-3", "o-3").await;
    s.until_reward(&purchase, "confirmed").await;
    assert_eq!(s.wallet(&token).await, (0, 500, 0, 0));
    worker.term();
    worker.wait(Duration::from_secs(20)).await;
    // The shopper withdraws it all (the sandbox provider refuses "fail"
    // destinations); the provider is reached a few seconds later.
    let auth = format!("Bearer {token}");
    let (c, b) = s
        .post(
            "/v1/payouts",
            &[("authorization", &auth), ("idempotency-key", "p-1")],
            &json!({"amount_minor": 500, "currency": "EUR", "destination": {"type": "paypal", "value": "jane.fail@example.com"}}),
        )
        .await;
    assert_eq!(c, 202, "{b}");
    let payout = b["id"].as_str().unwrap().to_owned();
    s.app
        .execute("UPDATE outbox SET run_at = now() + interval '4 seconds' WHERE payload->>'job' = 'ProcessPayout'")
        .await;
    assert_eq!(s.wallet(&token).await, (0, 0, 500, 0));
    // The merchant reverses the order: the spent cashback is owed.
    s.decide("o-3", "reversed").await;
    let _worker = start_worker(&s, &extra);
    s.until_reward(&purchase, "reversed").await;
    eventually(Duration::from_secs(30), "the refused payout", || async {
        let p = s.get(&format!("/v1/payouts/{payout}"), &token).await;
        (p["status"] == "failed").then_some(())
    })
    .await;
    assert_eq!(
        s.wallet(&token).await,
        (0, 0, 0, 0),
        "the released amount settled the debt: nothing to withdraw again"
    );
    s.reconciled().await;
}
