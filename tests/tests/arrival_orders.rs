//! The three arrival orders of a purchase, end to end with the real api and
//! worker binaries: webhook first, SDK first, and the returning customer who
//! comes back through a NEW referral link (the webhook finds the old customer
//! group, the SDK call a few seconds later merges the new click into it).
//! Each attributes to the LATEST click and credits exactly once.

use std::time::Duration;

use clicknback_core::signature::WebhookSecret;
use clicknback_tests::{TestApp, procs::eventually};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn webhook(&self, mid: &str, secret: &str, body: &Value) -> (u16, Value) {
        let raw = serde_json::to_vec(body).unwrap();
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let ts = chrono::Utc::now().timestamp();
        let sig = WebhookSecret::parse(secret).unwrap().sign(&id, ts, &raw);
        let res = self
            .http
            .post(format!("{}/v1/webhooks/{mid}/purchases", self.base))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

struct Scene {
    app: TestApp,
    client: Client,
    mid: String,
    secret: String,
    pk: String,
    _api: clicknback_tests::procs::ApiProcess,
    _worker: clicknback_tests::procs::WorkerProcess,
}

async fn scene() -> Scene {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, pk) = app.merchant(&admin, "Shoes").await;
    let offer = app
        .json(
            axum::http::Method::POST,
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            Some(json!({"name": "5%", "rate_bps": 500, "active": true})),
        )
        .await;
    assert_eq!(offer.status, 201);
    let api = app.api_process(&[("ATTRIBUTION_DELAY_SECS", "3")]).await;
    let worker = app.worker(&[]);
    let client = Client {
        http: clicknback_tests::procs::http_client(),
        base: api.base.clone(),
    };
    Scene {
        app,
        client,
        mid,
        secret,
        pk,
        _api: api,
        _worker: worker,
    }
}

impl Scene {
    async fn click(&self, anon: &str) {
        let (s, b) = self
            .client
            .post(
                "/v1/track/click",
                &[("x-publishable-key", &self.pk)],
                &json!({"anon_id": anon}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    async fn shopper(&self, email: &str, anon: &str) -> String {
        let (s, _) = self
            .client
            .post(
                "/v1/auth/register",
                &[],
                &json!({"email": email, "password": "password-123"}),
            )
            .await;
        assert_eq!(s, 201);
        let (_, t) = self
            .client
            .post(
                "/v1/auth/login",
                &[],
                &json!({"email": email, "password": "password-123"}),
            )
            .await;
        let token = t["access_token"].as_str().unwrap().to_owned();
        let auth = format!("Bearer {token}");
        let (s, b) = self
            .client
            .post(
                "/v1/track/identify",
                &[("authorization", &auth)],
                &json!({"anon_id": anon}),
            )
            .await;
        assert_eq!(s, 204, "{b}");
        token
    }

    async fn sdk_purchase(&self, anon: &str, order: &str, token: &str) -> Value {
        let (s, b) = self
            .client
            .post(
                "/v1/track/purchase",
                &[("x-publishable-key", &self.pk)],
                &json!({"anon_id": anon, "order_id": order, "purchase_token": token}),
            )
            .await;
        assert_eq!(s, 202, "{b}");
        b
    }

    async fn webhook(&self, order: &str, customer: &str, token: &str) -> String {
        let body = json!({
            "order_id": order, "amount_minor": 10_000, "currency": "EUR",
            "purchased_at": chrono::Utc::now().to_rfc3339(), "customer_ref": customer, "purchase_token": token,
        });
        let (s, b) = self.client.webhook(&self.mid, &self.secret, &body).await;
        assert_eq!(s, 202, "{b}");
        b["id"].as_str().unwrap().to_owned()
    }

    /// Waits for the purchase's reward; returns the anon id of its touchpoint.
    async fn credited_click(&self, purchase: &str) -> String {
        eventually(
            Duration::from_secs(30),
            "the purchase to be rewarded",
            || async {
                (self
                    .app
                    .scalar(&format!(
                        "SELECT count(*) AS n FROM rewards WHERE purchase_id = '{purchase}'"
                    ))
                    .await
                    == 1)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(
            self.app
                .scalar(&format!("SELECT count(*) AS n FROM ledger_transfers WHERE purchase_id = '{purchase}' AND kind = 'reward_credit'"))
                .await,
            1,
            "credited exactly once"
        );
        let mut c = self.app.db.conn().await;
        #[derive(diesel::QueryableByName)]
        struct A {
            #[diesel(sql_type = diesel::sql_types::Text)]
            anon_id: String,
        }
        let a: A = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(format!(
                "SELECT t.anon_id FROM rewards r JOIN touchpoints t ON t.id = r.touchpoint_id WHERE r.purchase_id = '{purchase}'"
            )),
            &mut c,
        )
        .await
        .unwrap();
        a.anon_id
    }
}

#[tokio::test]
async fn webhook_first() {
    let s = scene().await;
    s.click("browser-a").await;
    s.shopper("a@example.com", "browser-a").await;
    let p = s.webhook("A-1", "cust-a", "tok-a").await;
    let linked = s.sdk_purchase("browser-a", "A-1", "tok-a").await;
    assert_eq!(linked["result"], "linked");
    assert_eq!(s.credited_click(&p).await, "browser-a");
}

#[tokio::test]
async fn sdk_first() {
    let s = scene().await;
    s.click("browser-b").await;
    s.shopper("b@example.com", "browser-b").await;
    let pending = s.sdk_purchase("browser-b", "B-1", "tok-b").await;
    assert_eq!(pending["result"], "pending");
    let p = s.webhook("B-1", "cust-b", "tok-b").await;
    assert_eq!(s.credited_click(&p).await, "browser-b");
    assert_eq!(
        s.app
            .scalar("SELECT matched AS n FROM link_quality_daily")
            .await,
        1
    );
}

#[tokio::test]
async fn returning_customer_through_a_new_referral_link() {
    let s = scene().await;
    // The first visit: an old click, an account, a first purchase.
    s.click("old-browser").await;
    s.shopper("c@example.com", "old-browser").await;
    let first = s.webhook("C-1", "cust-c", "tok-c1").await;
    s.sdk_purchase("old-browser", "C-1", "tok-c1").await;
    assert_eq!(s.credited_click(&first).await, "old-browser");
    // Weeks later, a NEW referral link on a new device, not signed in.
    s.click("new-device").await;
    // The webhook arrives first and finds the old customer group...
    let second = s.webhook("C-2", "cust-c", "tok-c2").await;
    // ...the SDK call lands a few seconds later and merges the new click in.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        s.sdk_purchase("new-device", "C-2", "tok-c2").await["result"],
        "linked"
    );
    assert_eq!(
        s.credited_click(&second).await,
        "new-device",
        "the latest click wins"
    );
    let merges = s
        .app
        .scalar("SELECT count(*) AS n FROM identity_merges WHERE reason = 'purchase_token'")
        .await;
    assert!(merges >= 2, "{merges} merges");
}

#[tokio::test]
async fn a_token_mismatch_links_nothing_and_is_counted() {
    let s = scene().await;
    s.click("browser-x").await;
    s.shopper("x@example.com", "browser-x").await;
    let _p = s.webhook("X-1", "cust-x", "right-token").await;
    assert_eq!(
        s.sdk_purchase("browser-x", "X-1", "wrong-token").await["result"],
        "mismatch"
    );
    assert_eq!(
        s.app
            .scalar("SELECT mismatched AS n FROM link_quality_daily")
            .await,
        1
    );
}
