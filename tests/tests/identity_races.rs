//! Identity races against the real api and worker binaries: the merchant's
//! webhook and the checkout page's confirmation of the same order arriving
//! together, and two accounts signing in on one browser.

use std::time::Duration;

use clicknback_core::signature::WebhookSecret;
use clicknback_tests::{
    TestApp,
    procs::{ApiProcess, WorkerProcess, eventually},
};
use futures::future::join_all;
use serde_json::{Value, json};

struct Scene {
    app: TestApp,
    http: reqwest::Client,
    base: String,
    mid: String,
    secret: String,
    pk: String,
    _api: ApiProcess,
    _worker: WorkerProcess,
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
    let limits = [
        ("ATTRIBUTION_DELAY_SECS", "2"),
        ("TRACK_RATE_LIMIT_PER_MINUTE", "100000"),
        ("WEBHOOK_RATE_LIMIT_PER_MINUTE", "100000"),
        ("DATABASE_POOL_SIZE", "32"),
    ];
    let api = app.api_process(&limits).await;
    // A purchase nobody was linked to gives up quickly, so a lost link shows
    // as an unattributed purchase within the test.
    let worker = app.worker(&[
        ("UNATTRIBUTED_AFTER_SECS", "6"),
        ("ATTRIBUTION_RECHECK_SECS", "1"),
    ]);
    Scene {
        app,
        http: clicknback_tests::procs::http_client(),
        base: api.base.clone(),
        mid,
        secret,
        pk,
        _api: api,
        _worker: worker,
    }
}

impl Scene {
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn click(&self, anon: &str) {
        let (s, b) = self
            .post(
                "/v1/track/click",
                &[("x-publishable-key", &self.pk)],
                &json!({"anon_id": anon}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    /// Registers and logs in; the user id and a bearer header.
    async fn account(&self, email: &str) -> (String, String) {
        let (s, b) = self
            .post(
                "/v1/auth/register",
                &[],
                &json!({"email": email, "password": "password-123"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (_, t) = self
            .post(
                "/v1/auth/login",
                &[],
                &json!({"email": email, "password": "password-123"}),
            )
            .await;
        let bearer = format!("Bearer {}", t["access_token"].as_str().unwrap());
        let mut c = self.app.db.conn().await;
        let user = clicknback_core::services::users::find_by_email(&mut c, email)
            .await
            .unwrap()
            .expect("registered")
            .id;
        (user.to_string(), bearer)
    }

    async fn identify(&self, bearer: &str, anon: &str) -> u16 {
        let (s, b) = self
            .post(
                "/v1/track/identify",
                &[("authorization", bearer)],
                &json!({"anon_id": anon}),
            )
            .await;
        assert!(s == 204 || s >= 500, "{s}: {b}");
        s
    }

    async fn confirm(&self, anon: &str, order: &str, token: &str) -> (u16, Value) {
        self.post(
            "/v1/track/purchase",
            &[("x-publishable-key", &self.pk)],
            &json!({"anon_id": anon, "order_id": order, "purchase_token": token}),
        )
        .await
    }

    async fn webhook(&self, order: &str, token: &str) -> (u16, Value) {
        let body = json!({
            "order_id": order, "amount_minor": 10_000, "currency": "EUR",
            "purchased_at": chrono::Utc::now().to_rfc3339(), "purchase_token": token,
        });
        let raw = serde_json::to_vec(&body).unwrap();
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let ts = chrono::Utc::now().timestamp();
        let sig = WebhookSecret::parse(&self.secret)
            .unwrap()
            .sign(&id, ts, &raw);
        let res = self
            .http
            .post(format!("{}/v1/webhooks/{}/purchases", self.base, self.mid))
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

    /// Waits until attribution has looked at every purchase for good.
    async fn all_processed(&self, n: i64) {
        eventually(
            Duration::from_secs(60),
            "every purchase attributed or given up",
            || async {
                (self
                    .app
                    .scalar("SELECT count(*) AS n FROM purchases WHERE rewards_processed_at IS NOT NULL")
                    .await
                    == n)
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn webhook_and_sdk_confirmation_together_always_link() {
    let s = scene().await;
    s.click("checkout-browser").await;
    let (user, bearer) = s.account("checkout@example.com").await;
    assert_eq!(s.identify(&bearer, "checkout-browser").await, 204);
    // 60 orders, each reported by the merchant and confirmed by the checkout
    // page at the same moment, 20 orders at a time.
    for wave in 0..3 {
        join_all((0..20).map(|i| {
            let s = &s;
            async move {
                let (order, token) = (format!("o-{wave}-{i}"), format!("tok-{wave}-{i}"));
                let ((ws, wb), (cs, cb)) = tokio::join!(
                    s.webhook(&order, &token),
                    s.confirm("checkout-browser", &order, &token)
                );
                assert_eq!(ws, 202, "{wb}");
                assert_eq!(cs, 202, "{cb}");
                assert_ne!(cb["result"], "mismatch", "{cb}");
            }
        }))
        .await;
    }
    s.all_processed(60).await;
    assert_eq!(
        s.app
            .scalar("SELECT count(*) AS n FROM purchases WHERE status = 'unattributed'")
            .await,
        0,
        "no order waited for a link that never came"
    );
    assert_eq!(
        s.app
            .scalar(&format!(
                "SELECT count(*) AS n FROM rewards WHERE user_id = '{user}'"
            ))
            .await,
        60,
        "every order is the shopper's"
    );
}

#[tokio::test]
async fn two_users_identifying_one_anon_id_never_share_a_group() {
    let s = scene().await;
    let (first, first_bearer) = s.account("first@example.com").await;
    let (latest, latest_bearer) = s.account("latest@example.com").await;
    let several_users = "SELECT count(*) AS n FROM (SELECT group_id FROM identity_nodes
                           WHERE kind = 'user' GROUP BY group_id HAVING count(*) > 1) g";

    // At the same moment, on fresh browsers: both answered, never one group.
    let statuses = join_all((0..20).map(|i| {
        let (s, a, b) = (&s, &first_bearer, &latest_bearer);
        async move {
            let anon = format!("raced-{i}");
            let (x, y) = tokio::join!(s.identify(a, &anon), s.identify(b, &anon));
            [x, y]
        }
    }))
    .await;
    assert!(statuses.iter().flatten().all(|s| *s == 204), "{statuses:?}");
    assert_eq!(s.app.scalar(several_users).await, 0);

    // One after the other on a shared computer: the browser is the latest user's.
    s.click("shared-device").await;
    assert_eq!(s.identify(&first_bearer, "shared-device").await, 204);
    assert_eq!(s.identify(&latest_bearer, "shared-device").await, 204);
    assert_eq!(s.app.scalar(several_users).await, 0);
    s.click("shared-device").await;
    let (ws, wb) = s.webhook("o-shared", "tok-shared").await;
    assert_eq!(ws, 202, "{wb}");
    let (cs, cb) = s.confirm("shared-device", "o-shared", "tok-shared").await;
    assert_eq!((cs, cb["result"].as_str()), (202, Some("linked")), "{cb}");
    s.all_processed(1).await;
    assert_eq!(
        s.app
            .scalar(&format!(
                "SELECT count(*) AS n FROM rewards WHERE user_id = '{latest}'"
            ))
            .await,
        1,
        "the cashback goes to the latest user"
    );
    assert_eq!(
        s.app
            .scalar(&format!(
                "SELECT count(*) AS n FROM rewards WHERE user_id = '{first}'"
            ))
            .await,
        0
    );
}
