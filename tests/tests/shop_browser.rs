//! From a shop page to a wallet in a real headless Chromium (Debian's),
//! driven by playwright-core (tests/browser/shop.mjs) against the real api
//! and worker binaries: a referral link to the demo shop records the click,
//! the login links the browser to the shopper, the checkout confirms the
//! purchase through the SDK; this test plays the shop's server and sends the
//! signed purchase webhook with the order id and purchase token the page
//! made; the wallet page shows the cashback pending, and available after the
//! signed status webhook `confirmed`.
//!
//! Runs when CLICKNBACK_BROWSER_TESTS=1 (the test command sets it after
//! installing Chromium and playwright-core). With SCREENSHOT_DIR set, the
//! pages are saved there (checkout.png, wallet-pending.png, wallet.png).

use std::{process::Stdio, time::Duration};

use clicknback_core::{models::user::Role, services::users, signature::WebhookSecret};
use clicknback_tests::{TestApp, procs::SmtpSink};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The api over HTTP, as a merchant's server or an admin's script calls it.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("the api answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn login(&self, email: &str, password: &str) -> String {
        let (s, b) = self
            .post(
                "/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["access_token"].as_str().unwrap().to_owned()
    }

    /// A signed merchant webhook, as the shop's server sends it.
    async fn webhook(&self, path: &str, secret: &str, body: &Value) -> (u16, Value) {
        let raw = serde_json::to_vec(body).unwrap();
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let ts = chrono::Utc::now().timestamp();
        let sig = WebhookSecret::parse(secret).unwrap().sign(&id, ts, &raw);
        let res = self
            .http
            .post(format!("{}{path}", self.base))
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

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn a_shopper_goes_from_a_referral_link_to_cashback_in_the_wallet() {
    if std::env::var("CLICKNBACK_BROWSER_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set CLICKNBACK_BROWSER_TESTS=1 (./scripts/test.sh does) to run the browser test"
        );
        return;
    }
    let app = TestApp::new().await;
    let smtp = SmtpSink::start().await;
    let immediate = [("ATTRIBUTION_DELAY_SECS", "0")];
    let api_process = app.api_process(&immediate).await;
    let _worker = app.worker(&[("ATTRIBUTION_DELAY_SECS", "0"), ("SMTP_URL", &smtp.url())]);
    let api = Api {
        http: clicknback_tests::procs::http_client(),
        base: api_process.base.clone(),
    };

    // The admin exists (an operator made it); everything else through the API.
    let mut c = app.db.conn().await;
    users::create(&mut c, "ops@example.com", "ops-password", Role::Admin)
        .await
        .unwrap();
    drop(c);
    let admin = api.login("ops@example.com", "ops-password").await;
    let (s, merchant) = api
        .post(
            "/v1/admin/merchants",
            Some(&admin),
            json!({"name": "Trailhead Outfitters"}),
        )
        .await;
    assert_eq!(s, 201, "{merchant}");
    let mid = merchant["id"].as_str().unwrap().to_owned();
    let secret = merchant["webhook_secret"].as_str().unwrap().to_owned();
    let pk = merchant["publishable_key"].as_str().unwrap().to_owned();
    let (s, offer) = api
        .post(
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            json!({"name": "5% on tents", "rate_bps": 500, "active": true}),
        )
        .await;
    assert_eq!(s, 201, "{offer}");
    let offer_id = offer["id"].as_str().unwrap().to_owned();
    let (s, b) = api
        .post(
            "/v1/auth/register",
            None,
            json!({"email": "hiker@example.com", "password": "hiker-password"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let errors = tempfile_path("shop-browser-stderr");
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("shop.mjs"))
        .current_dir(&dir)
        .env(
            "SHOP_URL",
            format!("{}/demo-shop/?cnb_offer={offer_id}&pk={pk}", api.base),
        )
        .env("SHOPPER_EMAIL", "hiker@example.com")
        .env("SHOPPER_PASSWORD", "hiker-password")
        .env("CURRENCY", "EUR")
        .envs(
            std::env::var("SCREENSHOT_DIR")
                .ok()
                .map(|d| ("SCREENSHOT_DIR", d)),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the browser script");
    let mut stdin = node.stdin.take().unwrap();
    let mut stdout = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let mut next = async |prefix: &str, printed: &mut String| -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(90), stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {prefix} within 90 s:\n{printed}"))
                .unwrap()
                .unwrap_or_else(|| {
                    let errors = std::fs::read_to_string(&errors).unwrap_or_default();
                    panic!("the browser script ended before {prefix}:\n{printed}{errors}")
                });
            printed.push_str(&line);
            printed.push('\n');
            if let Some(rest) = line.strip_prefix(prefix) {
                return serde_json::from_str(rest.trim()).unwrap();
            }
        }
    };

    // The page placed the order; the shop's server reports it.
    let order = next("ORDER ", &mut printed).await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    assert_eq!(order["amount_minor"], 24_900);
    let (s, purchase) = api
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &json!({
                "order_id": order_id,
                "amount_minor": order["amount_minor"],
                "currency": order["currency"],
                "purchased_at": order["purchased_at"],
                "purchase_token": order["purchase_token"],
            }),
        )
        .await;
    assert_eq!(s, 202, "{purchase}");
    stdin.write_all(b"SENT\n").await.unwrap();

    // The wallet shows it pending: 5 % of 249.00.
    let pending = next("PENDING ", &mut printed).await;
    assert_eq!(pending["pending_minor"], 1_245, "{printed}");
    let (s, b) = api
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases/{order_id}/status"),
            &secret,
            &json!({"status": "confirmed"}),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {b}");
    stdin.write_all(b"CONFIRMED\n").await.unwrap();

    tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            printed.push_str(&line);
            printed.push('\n');
        }
    })
    .await
    .expect("the browser script ended");
    let status = node.wait().await.unwrap();
    printed.push_str(&std::fs::read_to_string(&errors).unwrap_or_default());
    let _ = std::fs::remove_file(&errors);
    assert!(
        status.success() && printed.contains("shop browser test passed"),
        "browser test failed:\n{printed}\napi log:\n{}",
        api_process.process.log_text()
    );
    eprintln!("{printed}");

    // What the pages showed is what the api holds.
    let shopper = api.login("hiker@example.com", "hiker-password").await;
    let (s, wallet) = api
        .call(reqwest::Method::GET, "/v1/me/wallet", Some(&shopper), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(wallet["data"][0]["currency"], "EUR");
    assert_eq!(wallet["data"][0]["available_minor"], 1_245);
    assert_eq!(wallet["data"][0]["pending_minor"], 0);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM rewards r JOIN purchases p ON p.id = r.purchase_id \
             JOIN touchpoints t ON t.id = r.touchpoint_id WHERE p.order_id = '{order_id}' \
             AND t.offer_id = '{offer_id}'"
        ))
        .await,
        1,
        "rewarded through the click of the referral link"
    );
}
