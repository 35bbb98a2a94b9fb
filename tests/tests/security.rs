//! Who may call what: every admin and board route refuses no token and a
//! shopper's token; tokens signed with another algorithm or key, for another
//! audience or issuer, expired, or missing claims are refused; and one
//! shopper can never read another's wallet, payouts, purchases or statistics.

use axum::http::{Method, StatusCode};
use clicknback_core::models::user::Role;
use clicknback_tests::{
    TestApp,
    wallets::{funded_user, request_payout},
    webhook::purchase_body,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The path with a plausible value in each `{param}`.
fn fill_params(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{queue}" => "attribution",
            "{task_id}" => "t-1",
            s if s.starts_with('{') => "01a2028c-4ec5-706a-81eb-edb291ba4c6d",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every admin and board operation of the OpenAPI description (which lists
/// the board's `/board/api` twins of the job routes and the page itself).
async fn protected_routes(app: &TestApp) -> Vec<(Method, String)> {
    let doc = app.json(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let mut out = Vec::new();
    for (path, ops) in doc.body["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/admin") && !path.starts_with("/board") {
            continue;
        }
        if clicknback_api::openapi::PUBLIC_BOARD_PATHS.contains(&path.as_str()) {
            continue; // the login form's target, sign-out, the page's files
        }
        let concrete = fill_params(path);
        for (method, op) in ops.as_object().unwrap() {
            let m: Method = method.to_uppercase().parse().unwrap();
            assert!(
                op["security"].as_array().is_some_and(|s| !s.is_empty()),
                "{method} {path} is described without credentials"
            );
            out.push((m, concrete.clone()));
        }
    }
    for must in [
        "/board",
        "/board/",
        "/board/api/queues",
        "/board/api/workers",
    ] {
        assert!(
            out.iter().any(|(_, p)| p == must),
            "{must} is not described"
        );
    }
    assert!(out.len() > 35, "found {} admin routes", out.len());
    out
}

#[tokio::test]
async fn every_admin_and_board_route_refuses_no_token_and_a_shopper_token() {
    let app = TestApp::new().await;
    let shopper = app.token_for("shopper@example.com", Role::User).await;
    for (method, path) in protected_routes(&app).await {
        let none = app.json(method.clone(), &path, None, Some(json!({}))).await;
        assert_eq!(
            none.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {}",
            none.text
        );
        let as_user = app
            .json(method.clone(), &path, Some(&shopper), Some(json!({})))
            .await;
        assert!(
            matches!(
                as_user.status,
                StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
            ),
            "{method} {path} with a shopper token: {} {}",
            as_user.status,
            as_user.text
        );
        assert_eq!(
            as_user.header("content-type"),
            Some("application/problem+json"),
            "{method} {path}"
        );
    }
}

fn claims(app: &TestApp, over: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let user = uuid::Uuid::now_v7();
    let mut c = json!({
        "iss": app.config.jwt_issuer, "aud": app.config.jwt_audience, "typ": "access",
        "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4().to_string(),
        "sub": user, "role": "admin",
    });
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, secret: &[u8], c: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), c, &EncodingKey::from_secret(secret)).unwrap()
}

#[tokio::test]
async fn tokens_with_another_algorithm_audience_issuer_key_or_expiry_are_refused() {
    let app = TestApp::new().await;
    let secret = app.config.jwt_secret.expose().as_bytes().to_vec();
    let good = sign(Algorithm::HS256, &secret, &claims(&app, json!({})));
    let ok = app
        .json(Method::GET, "/v1/admin/merchants", Some(&good), None)
        .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "the control token works: {}",
        ok.text
    );

    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&app, json!({})))
    );
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let cases = [
        (
            "HS512 with the same secret",
            sign(Algorithm::HS512, &secret, &claims(&app, json!({}))),
        ),
        ("alg none", unsigned),
        (
            "another audience",
            sign(
                Algorithm::HS256,
                &secret,
                &claims(&app, json!({"aud": "someone-else"})),
            ),
        ),
        (
            "another issuer",
            sign(
                Algorithm::HS256,
                &secret,
                &claims(&app, json!({"iss": "evil"})),
            ),
        ),
        (
            "expired",
            sign(
                Algorithm::HS256,
                &secret,
                &claims(&app, json!({"exp": chrono::Utc::now().timestamp() - 60})),
            ),
        ),
        (
            "another key",
            sign(
                Algorithm::HS256,
                b"another-secret-another-secret-0123",
                &claims(&app, json!({})),
            ),
        ),
        ("forged signature", forged),
        (
            "no exp",
            sign(
                Algorithm::HS256,
                &secret,
                &claims(&app, json!({"exp": null})),
            ),
        ),
        (
            "no role",
            sign(
                Algorithm::HS256,
                &secret,
                &claims(&app, json!({"role": null})),
            ),
        ),
        (
            "a refresh token",
            sign(
                Algorithm::HS256,
                &secret,
                &claims(&app, json!({"typ": "refresh"})),
            ),
        ),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (what, token) in cases {
        // Admin routes, the board's API and a shopper's own routes alike.
        for path in ["/v1/admin/merchants", "/board/api/queues", "/v1/me/wallet"] {
            let r = app.json(Method::GET, path, Some(&token), None).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what} {path}: {}",
                r.text
            );
            assert_eq!(r.body["code"], "unauthorized", "{what} {path}: {}", r.text);
        }
    }
}

#[tokio::test]
async fn one_shopper_never_sees_another_shoppers_money_or_purchases() {
    let app = TestApp::new().await;
    let (alice_id, alice) = funded_user(&app, "alice@example.com", 5_000).await;
    let bob = app.token_for("bob@example.com", Role::User).await;
    // A purchase of alice's, reported by a merchant and attributed to her.
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Acme").await;
    let r = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &purchase_body("alice-order-1", 4_200),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let attributed = app
        .execute(&format!("UPDATE purchases SET user_id = '{alice_id}'"))
        .await;
    assert_eq!(attributed, 1);
    let to_alice = json!({"amount_minor": 2_000, "currency": "EUR",
        "destination": {"type": "paypal", "value": "alice@example.com"}});
    let (status, payout, _) = request_payout(&app, &alice, "a1", &to_alice).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{payout}");
    let id = payout["id"].as_str().unwrap();

    let theirs = app
        .json(Method::GET, &format!("/v1/payouts/{id}"), Some(&bob), None)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    for path in ["/v1/payouts", "/v1/me/purchases", "/v1/me/transactions"] {
        let r = app.json(Method::GET, path, Some(&alice), None).await;
        assert!(
            r.body["data"].as_array().is_some_and(|d| !d.is_empty()),
            "alice sees her own {path}: {}",
            r.text
        );
        let r = app.json(Method::GET, path, Some(&bob), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(
            r.body["data"],
            json!([]),
            "{path} shows bob nothing of alice's"
        );
    }
    let wallet = app
        .json(Method::GET, "/v1/me/wallet", Some(&bob), None)
        .await;
    assert_eq!(wallet.body["data"], json!([]));
    let stats = app
        .json(Method::GET, "/v1/me/stats", Some(&bob), None)
        .await;
    assert_eq!(stats.body["data"], json!([]));
    // Bob's key space for idempotency is his own: the same key is a new request.
    let (status, bob_try, _) = request_payout(&app, &bob, "a1", &to_alice).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bob_try}");
    assert_eq!(bob_try["code"], "insufficient_funds", "not alice's replay");
    let mine = app
        .json(
            Method::GET,
            &format!("/v1/payouts/{id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(mine.status, StatusCode::OK);
}

#[tokio::test]
async fn a_well_signed_token_for_a_user_that_does_not_exist_is_refused() {
    let app = TestApp::new().await;
    let ghost = app
        .state
        .tokens
        .issue(clicknback_core::ids::UserId::new(), Role::User)
        .access_token;
    let r = app
        .json(
            Method::POST,
            "/v1/track/identify",
            Some(&ghost),
            Some(json!({"anon_id": "ghost-device"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.body["code"], "unauthorized");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM identity_nodes WHERE kind = 'anon' AND key = 'ghost-device'"
        )
        .await,
        0,
        "nothing of the refused call is kept"
    );
}

// ---------------------------------------------------------------------------
// Abuse: what an anonymous caller can try against the sign-in, the board,
// the SDK routes and the operator surface.
// ---------------------------------------------------------------------------

use clicknback_core::services::users;
use clicknback_tests::{http::TestResponse, webhook::sign as sign_webhook};

fn basic(email: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"))
    )
}

async fn login(app: &TestApp, email: &str, password: &str) -> TestResponse {
    app.json(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

#[tokio::test]
async fn parallel_wrong_guesses_are_counted_before_they_are_checked() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "victim@example.com", "right-password", Role::User)
        .await
        .unwrap();
    let guesses = (0..100).map(|i| {
        let app = &app;
        async move { login(app, "victim@example.com", &format!("guess-{i:03}")).await }
    });
    let answers = futures::future::join_all(guesses).await;
    let checked = answers
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let refused = answers
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        checked <= 5,
        "{checked} of 100 parallel guesses were checked"
    );
    assert_eq!(checked + refused, 100);
    assert!(
        answers
            .iter()
            .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
            .all(|r| r.body["code"] == "too_many_login_attempts"
                && r.header("retry-after").is_some())
    );
    let r = login(&app, "victim@example.com", "right-password").await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked out for the window"
    );
}

#[tokio::test]
async fn basic_credentials_share_the_login_limit_on_every_route_that_takes_them() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    users::create(
        &mut c,
        "basic-ops@example.com",
        "basic-ops-password",
        Role::Admin,
    )
    .await
    .unwrap();
    let wrong = basic("basic-ops@example.com", "wrong-password");
    let paths = [
        "/board",
        "/board/api/queues",
        "/v1/admin/queues",
        "/board/api/workers",
        "/v1/admin/workers",
    ];
    for (i, path) in paths.iter().enumerate() {
        let r = app
            .request(Method::GET, path, &[("authorization", &wrong)], None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "guess {i} on {path}: {}",
            r.text
        );
    }
    for path in paths {
        let r = app
            .request(Method::GET, path, &[("authorization", &wrong)], None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}: {}",
            r.text
        );
    }
    // The same count as the login endpoint's, and the right password waits too.
    let r = login(&app, "basic-ops@example.com", "basic-ops-password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    let right = basic("basic-ops@example.com", "basic-ops-password");
    let r = app
        .request(
            Method::GET,
            "/board/api/queues",
            &[("authorization", &right)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn sign_ins_and_registrations_are_limited_per_address_whatever_the_email() {
    let app = TestApp::with(&[
        ("LOGIN_PER_IP_PER_MINUTE", "3"),
        ("REGISTER_PER_IP_PER_HOUR", "2"),
    ])
    .await;
    for i in 0..3 {
        let r = login(&app, &format!("nobody-{i}@example.com"), "password-123").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    }
    let r = login(&app, "someone-else@example.com", "password-123").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.body["code"], "too_many_login_attempts");
    assert_eq!(r.header("ratelimit-policy"), Some("3;w=60"));
    let register = |i: usize| {
        let app = &app;
        async move {
            app.json(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"email": format!("new-{i}@example.com"), "password": "password-123"})),
            )
            .await
        }
    };
    for i in 0..2 {
        assert_eq!(register(i).await.status, StatusCode::CREATED);
    }
    for i in 2..10 {
        let r = register(i).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'email:welcome:%'")
            .await,
        2,
        "a flood of registrations sends no more welcome emails than the limit lets through"
    );
}

#[tokio::test]
async fn registering_an_existing_email_sends_no_second_welcome() {
    let app = TestApp::new().await;
    let body = json!({"email": "Twice@Example.com", "password": "password-123"});
    let r = app
        .json(Method::POST, "/v1/auth/register", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for email in ["twice@example.com", " TWICE@example.com "] {
        let r = app
            .json(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"email": email, "password": "another-password"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    }
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'email:welcome:%'")
            .await,
        1
    );
    // One welcome per address and window, whatever creates the accounts: the
    // sent-log key is the address's, so a second job for it would be skipped.
    let now = chrono::Utc::now();
    let window = chrono::Duration::seconds(users::WELCOME_WINDOW_SECS);
    assert_ne!(
        users::welcome_key("twice@example.com", now),
        users::welcome_key("twice@example.com", now + window),
        "a new window, a new welcome"
    );
    assert_ne!(
        users::welcome_key("twice@example.com", now),
        users::welcome_key("other@example.com", now)
    );
}

#[tokio::test]
async fn the_login_limit_holds_when_redis_is_down() {
    let app = TestApp::with(&[("REDIS_URL", "redis://127.0.0.1:1/0")]).await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "victim@example.com", "right-password", Role::User)
        .await
        .unwrap();
    for i in 0..5 {
        let r = login(&app, "victim@example.com", "wrong-password").await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "attempt {i}: {}",
            r.text
        );
    }
    let r = login(&app, "victim@example.com", "wrong-password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
}

#[tokio::test]
async fn no_connection_is_held_while_a_password_is_checked() {
    // One connection and one hashing thread: ten sign-ins queue for the
    // thread, and the connection stays free for everything else meanwhile.
    let app = TestApp::with(&[("DATABASE_POOL_SIZE", "1")]).await;
    let logins = (0..10).map(|i| {
        let app = &app;
        async move { login(app, &format!("guess-{i}@example.com"), "password-123").await }
    });
    let ready = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        let r = app.request(Method::GET, "/readyz", &[], None).await;
        (r, t.elapsed())
    };
    let (answers, (ready, took)) = tokio::join!(futures::future::join_all(logins), ready);
    assert!(answers.iter().all(|r| r.status == StatusCode::UNAUTHORIZED));
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert!(
        took < std::time::Duration::from_secs(1),
        "readyz waited {took:?}"
    );
}

#[tokio::test]
async fn a_full_hash_queue_answers_503_at_once() {
    let app = TestApp::new().await;
    let api = app
        .api_process(&[
            ("PASSWORD_HASH_THREADS", "1"),
            ("PASSWORD_HASH_QUEUE", "1"),
            ("LOGIN_PER_IP_PER_MINUTE", "1000"),
            ("METRICS_ADDR", "off"),
        ])
        .await;
    let client = clicknback_tests::procs::http_client();
    let calls = (0..24).map(|i| {
        let (client, base) = (client.clone(), api.base.clone());
        async move {
            let t = std::time::Instant::now();
            let r = client
                .post(format!("{base}/v1/auth/login"))
                .json(
                    &json!({"email": format!("flood-{i}@example.com"), "password": "password-123"}),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").is_some();
            let body: Value = r.json().await.unwrap_or_default();
            (status, retry, body, t.elapsed())
        }
    });
    let answers = futures::future::join_all(calls).await;
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert!(!busy.is_empty(), "{answers:?}");
    assert!(
        answers.iter().all(|a| a.0 == 503 || a.0 == 401),
        "{answers:?}"
    );
    for (_, retry, body, took) in busy {
        assert!(retry, "Retry-After on a full queue");
        assert_eq!(body["code"], "overloaded");
        assert!(
            *took < std::time::Duration::from_secs(2),
            "answered at once, not queued: {took:?}"
        );
    }
}

/// The admin's browser, cached Basic credentials and all, on another origin's page.
#[tokio::test]
async fn a_cross_origin_form_post_with_cached_basic_credentials_is_refused() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "ops@example.com", "ops-password", Role::Admin)
        .await
        .unwrap();
    let creds = basic("ops@example.com", "ops-password");
    let from = |origin: &'static str, site: &'static str| {
        let creds = creds.clone();
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/board/api/queues/payouts/pause",
                &[
                    ("authorization", &creds),
                    ("host", "api.clicknback.test"),
                    ("origin", origin),
                    ("sec-fetch-site", site),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                Some(b"x=1".to_vec()),
            )
            .await
        }
    };
    for (origin, site) in [
        ("https://evil.example", "cross-site"),
        ("https://evil.example", ""),
        ("null", "cross-site"),
        ("http://api.clicknback.test.evil.example", ""),
    ] {
        let r = from(origin, site).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin}: {}", r.text);
        assert_eq!(r.body["code"], "cross_origin_request");
    }
    let queues = app
        .request(
            Method::GET,
            "/board/api/queues",
            &[("authorization", &creds)],
            None,
        )
        .await;
    let payouts = queues
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "payouts")
        .unwrap()
        .clone();
    assert_eq!(payouts["paused"], false, "nothing was paused");
    // The same call from the api's own origin, or from a script with no Origin, works.
    let r = from("http://api.clicknback.test", "same-origin").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .request(
            Method::POST,
            "/v1/admin/queues/payouts/resume",
            &[("authorization", &creds)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

fn cookie_of(r: &TestResponse) -> String {
    let set = r.header("set-cookie").expect("a session cookie");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_board_signs_in_with_a_form_and_its_calls_carry_a_csrf_token() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "ops@example.com", "ops-password", Role::Admin)
        .await
        .unwrap();
    users::create(&mut c, "shopper@example.com", "shop-password", Role::User)
        .await
        .unwrap();
    let anon = app.request(Method::GET, "/board", &[], None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    assert!(
        anon.text.contains("action=\"/board/login\""),
        "the login form"
    );
    assert!(
        anon.header("www-authenticate").is_none(),
        "no browser Basic prompt"
    );
    let post = |body: &'static str, origin: &'static str| {
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/board/login",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("host", "api.clicknback.test"),
                    ("origin", origin),
                ],
                Some(body.as_bytes().to_vec()),
            )
            .await
        }
    };
    let own = "http://api.clicknback.test";
    let wrong = post("email=ops%40example.com&password=nope-nope", own).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text.contains("wrong email or password"));
    let shopper = post("email=shopper%40example.com&password=shop-password", own).await;
    assert_eq!(shopper.status, StatusCode::FORBIDDEN);
    assert!(shopper.header("set-cookie").is_none());
    let csrf_login = post(
        "email=ops%40example.com&password=ops-password",
        "https://evil.example",
    )
    .await;
    assert_eq!(
        csrf_login.status,
        StatusCode::FORBIDDEN,
        "login CSRF refused"
    );
    let ok = post("email=ops%40example.com&password=ops-password", own).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text);
    assert_eq!(ok.header("location"), Some("/board"));
    let set = ok.header("set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/board"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "Secure only in production: {set}");
    let cookie = cookie_of(&ok);
    let page = app
        .request(Method::GET, "/board", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let token = page
        .text
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_owned();
    assert!(token.len() > 20, "{token}");
    let pause = |headers: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.request(Method::POST, "/board/api/queues/emails/pause", &h, None)
                .await
        }
    };
    let no_token = pause(vec![("cookie", cookie.clone())]).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    assert_eq!(no_token.body["code"], "csrf_token_invalid");
    let forged = pause(vec![
        ("cookie", cookie.clone()),
        ("x-csrf-token", "x".repeat(43)),
    ])
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let r = pause(vec![
        ("cookie", cookie.clone()),
        ("x-csrf-token", token.clone()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["paused"], true);
    // Reading needs no token; a tampered cookie is no session.
    let r = app
        .request(
            Method::GET,
            "/board/api/queues",
            &[("cookie", &cookie)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let tampered = format!("{}x", cookie);
    let r = app
        .request(
            Method::GET,
            "/board/api/queues",
            &[("cookie", &tampered)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let out = app
        .request(Method::POST, "/board/logout", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::new().await;
    let shopper = app.token_for("shopper@example.com", Role::User).await;
    let auth = format!("Bearer {shopper}");
    for (method, path, headers) in [
        (Method::GET, "/healthz", vec![]),
        (Method::GET, "/v1/me", vec![]),
        (
            Method::GET,
            "/v1/me",
            vec![("authorization", auth.as_str())],
        ),
        (Method::GET, "/no-such-route", vec![]),
        (Method::PUT, "/v1/auth/login", vec![]),
        (Method::GET, "/board", vec![]),
        (Method::GET, "/docs", vec![]),
        (Method::GET, "/openapi.json", vec![]),
        (Method::GET, "/board/assets/board.js", vec![]),
    ] {
        let r = app.request(method.clone(), path, &headers, None).await;
        let at = format!("{method} {path} ({})", r.status);
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{at}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{at}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{at}: {csp}");
        assert!(
            r.header("strict-transport-security").is_none(),
            "{at}: HSTS only in production"
        );
    }
    // The pages: scripts from the api itself only, and none inline.
    for path in ["/board", "/docs"] {
        let r = app.request(Method::GET, path, &[], None).await;
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(
            !csp.split(';')
                .any(|d| d.trim().starts_with("script-src") && d.contains("unsafe")),
            "{path}: {csp}"
        );
        assert!(!r.text.contains("<script>"), "{path} has an inline script");
        assert!(
            !r.text.contains(" onclick="),
            "{path} has an inline handler"
        );
        assert!(
            !r.text.contains("https://"),
            "{path} loads something from another origin"
        );
    }
    // The docs UI comes from the binary.
    for file in [
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
        "swagger-ui.css",
    ] {
        let r = app
            .request(Method::GET, &format!("/docs/{file}"), &[], None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{file}");
        assert!(
            !r.text.contains("cdn.jsdelivr") && !r.text.contains("unpkg.com"),
            "{file}"
        );
    }
    let init = app
        .request(Method::GET, "/docs/swagger-initializer.js", &[], None)
        .await;
    assert!(init.text.contains("/openapi.json"), "{}", init.text);
    assert_eq!(
        app.request(Method::GET, "/docs/nope.js", &[], None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn production_adds_hsts_and_secure_cookies() {
    let app = TestApp::with(&[
        ("APP_ENV", "production"),
        ("SMTP_URL", "smtp://127.0.0.1:9"),
        ("PAYOUT_PROVIDER_URL", "http://127.0.0.1:9"),
        ("PAYOUT_PROVIDER_KEY", "provider-key"),
    ])
    .await;
    let r = app.request(Method::GET, "/healthz", &[], None).await;
    assert!(
        r.header("strict-transport-security")
            .unwrap()
            .contains("max-age=")
    );
    let mut c = app.db.conn().await;
    users::create(&mut c, "ops@example.com", "ops-password", Role::Admin)
        .await
        .unwrap();
    let ok = app
        .request(
            Method::POST,
            "/board/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"email=ops%40example.com&password=ops-password".to_vec()),
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text);
    assert!(ok.header("set-cookie").unwrap().contains("; Secure"));
}

#[tokio::test]
async fn the_sdk_routes_answer_preflights_and_nothing_else_allows_other_origins() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (_, _, pk) = app.merchant(&admin, "Acme").await;
    let pre = app
        .request(
            Method::OPTIONS,
            "/v1/track/click",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, x-publishable-key",
                ),
            ],
            None,
        )
        .await;
    assert!(pre.status.is_success(), "{} {}", pre.status, pre.text);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert_eq!(pre.header("access-control-allow-methods"), Some("POST"));
    let allowed = pre.header("access-control-allow-headers").unwrap();
    for h in ["content-type", "x-publishable-key", "authorization"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(pre.header("access-control-max-age").is_some());
    assert!(pre.header("access-control-allow-credentials").is_none());
    let call = |key: &str| {
        let app = &app;
        let key = key.to_owned();
        async move {
            app.request(
                Method::POST,
                "/v1/track/click",
                &[
                    ("origin", "https://shop.example"),
                    ("content-type", "application/json"),
                    ("x-publishable-key", &key),
                ],
                Some(br#"{"anon_id": "browser-1"}"#.to_vec()),
            )
            .await
        }
    };
    for (key, status) in [
        (pk.as_str(), StatusCode::CREATED),
        ("pk_unknown", StatusCode::UNAUTHORIZED),
    ] {
        let r = call(key).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("*"),
            "errors too"
        );
        let exposed = r
            .header("access-control-expose-headers")
            .unwrap_or_default()
            .to_lowercase();
        for h in ["retry-after", "ratelimit", "ratelimit-policy"] {
            assert!(exposed.contains(h), "{exposed}");
        }
        assert!(r.header("access-control-allow-credentials").is_none());
    }
    // Everything else stays same-origin.
    for path in ["/v1/auth/login", "/v1/me", "/v1/admin/merchants"] {
        let r = app
            .request(
                Method::OPTIONS,
                path,
                &[
                    ("origin", "https://shop.example"),
                    ("access-control-request-method", "POST"),
                ],
                None,
            )
            .await;
        assert!(r.header("access-control-allow-origin").is_none(), "{path}");
    }
    // A configured list allows only its origins.
    let listed = TestApp::with(&[("SDK_ALLOWED_ORIGINS", "https://shop.example")]).await;
    for (origin, allowed) in [
        ("https://shop.example", true),
        ("https://evil.example", false),
    ] {
        let r = listed
            .request(
                Method::OPTIONS,
                "/v1/track/purchase",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
                None,
            )
            .await;
        assert_eq!(
            r.header("access-control-allow-origin") == Some(origin),
            allowed,
            "{origin}"
        );
    }
}

#[tokio::test]
async fn tracking_limits_are_counted_before_the_publishable_key_is_looked_up() {
    let app = TestApp::with(&[("TRACK_RATE_LIMIT_PER_MINUTE", "3")]).await;
    for i in 0..6 {
        let r = app
            .request(
                Method::POST,
                "/v1/track/click",
                &[
                    ("content-type", "application/json"),
                    ("x-publishable-key", &format!("pk_random_{i}")),
                ],
                Some(br#"{"anon_id": "a"}"#.to_vec()),
            )
            .await;
        let want = if i < 3 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(r.status, want, "call {i}: {}", r.text);
    }
}

#[tokio::test]
async fn a_leaked_webhook_secret_is_revoked_at_once() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, old, _) = app.merchant(&admin, "Acme").await;
    let rotated = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/rotate-secret"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
    let new = rotated.body["webhook_secret"].as_str().unwrap().to_owned();
    let path = format!("/v1/webhooks/{mid}/purchases");
    let r = app
        .webhook(&path, &old, &purchase_body("o-1", 1_000), &[])
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "the grace period: {}",
        r.text
    );
    let revoked = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/revoke-previous-secret"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    let r = app
        .webhook(&path, &old, &purchase_body("o-2", 1_000), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app
        .webhook(&path, &new, &purchase_body("o-3", 1_000), &[])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let audit = app
        .json(Method::GET, "/v1/admin/audit-log", Some(&admin), None)
        .await;
    assert!(
        audit.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "merchant.revoke_previous_secret")
    );
}

#[tokio::test]
async fn responses_that_carry_a_secret_are_not_stored() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let created = app
        .json(
            Method::POST,
            "/v1/admin/merchants",
            Some(&admin),
            Some(json!({"name": "Acme"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let mut c = app.db.conn().await;
    users::create(&mut c, "me@example.com", "password-123", Role::User)
        .await
        .unwrap();
    let r = login(&app, "me@example.com", "password-123").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_publishable_key_shaped_like_a_cache_key_does_not_confuse_the_cache() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, _, pk) = app.merchant(&admin, "Acme").await;
    let click = |key: String| {
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/v1/track/click",
                &[
                    ("content-type", "application/json"),
                    ("x-publishable-key", &key),
                ],
                Some(br#"{"anon_id": "browser-1"}"#.to_vec()),
            )
            .await
        }
    };
    // Keys that end the way the cache's own keys once did.
    for evil in [
        format!("{pk}:gen"),
        format!("{pk}:gen:gen"),
        "pk:x".to_owned(),
    ] {
        assert_eq!(click(evil).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        click(pk.clone()).await.status,
        StatusCode::CREATED,
        "cached"
    );
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/suspend"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        click(pk.clone()).await.status,
        StatusCode::FORBIDDEN,
        "the suspension reached the cached entry"
    );
    assert_eq!(
        click(format!("{pk}:gen")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn extreme_webhook_timestamps_are_refused_without_overflow() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Acme").await;
    let body = serde_json::to_vec(&purchase_body("o-ts", 1_000)).unwrap();
    for ts in [
        "-9223372036854775808",
        "9223372036854775807",
        "-1",
        "0",
        "99999999999999999999",
        "1e10",
    ] {
        let signed = sign_webhook(&secret, "msg_ts", chrono::Utc::now().timestamp(), &body);
        let r = app
            .request(
                Method::POST,
                &format!("/v1/webhooks/{mid}/purchases"),
                &[
                    ("content-type", "application/json"),
                    ("webhook-id", "msg_ts"),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", &signed.signature),
                ],
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{ts}: {}", r.text);
        assert_eq!(r.body["code"], "invalid_signature", "{ts}");
    }
}

#[tokio::test]
async fn a_client_request_id_is_checked_before_it_reaches_logs_and_the_audit_log() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let long = "a".repeat(200);
    for given in ["<script>alert(1)</script>", "a\"b", "x y", long.as_str()] {
        let r = app
            .request(
                Method::POST,
                "/v1/admin/merchants",
                &[
                    ("authorization", &format!("Bearer {admin}")),
                    ("content-type", "application/json"),
                    ("x-request-id", given),
                ],
                Some(br#"{"name": "Acme"}"#.to_vec()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, given);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "a generated id: {id}");
    }
    let kept = app
        .request(
            Method::POST,
            "/v1/admin/merchants",
            &[
                ("authorization", &format!("Bearer {admin}")),
                ("content-type", "application/json"),
                ("x-request-id", "trace-0196f0e2.1"),
            ],
            Some(br#"{"name": "Acme"}"#.to_vec()),
        )
        .await;
    assert_eq!(kept.header("x-request-id"), Some("trace-0196f0e2.1"));
    let audit = app
        .json(Method::GET, "/v1/admin/audit-log", Some(&admin), None)
        .await;
    let ids: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.contains(&"trace-0196f0e2.1"));
    assert!(ids.iter().all(|i| crate_acceptable(i)), "{ids:?}");
}

fn crate_acceptable(id: &str) -> bool {
    clicknback_api::middleware::acceptable(id)
}

/// Made-up methods and paths add no series: labels come from fixed sets.
/// `/metrics` is on a listener of its own, and its database gauges are a
/// cached value, not a count per scrape.
#[tokio::test]
async fn metrics_are_bounded_and_served_apart_from_the_api() {
    let app = TestApp::new().await;
    let api = app
        .api_process(&[("METRICS_GAUGE_REFRESH_SECS", "3600")])
        .await;
    let client = clicknback_tests::procs::http_client();
    let on_api = client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status().as_u16(), 404, "not on the api's port");
    let scrape = || async {
        client
            .get(format!("{}/metrics", api.metrics))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let path = if i % 2 == 0 {
            format!("/random/{i}")
        } else {
            "/v1/me".to_owned()
        };
        client
            .request(method, format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
    }
    let text = scrape().await;
    let series: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let label = |s: &str, name: &str| -> String {
        s.split(&format!("{name}=\""))
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    };
    let known = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
    ];
    for s in &series {
        assert!(known.contains(&label(s, "method").as_str()), "{s}");
        let route = label(s, "route");
        assert!(route == "unmatched" || route.starts_with('/'), "{s}");
        assert!(!route.starts_with("/random"), "{s}");
    }
    assert!(
        series.len() < 10,
        "{} series after 300 odd requests: {series:?}",
        series.len()
    );
    // The outbox gauge is the value computed at the first scrape.
    let gauge = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("outbox_backlog "))
            .map(str::to_owned)
    };
    let mut c = app.db.conn().await;
    clicknback_core::jobs::enqueue(
        &mut c,
        &clicknback_core::jobs::SendEmail {
            kind: clicknback_core::jobs::EmailKind::Welcome,
            to: "x@example.com".into(),
            data: json!({}),
            dedupe_key: "welcome:gauge".into(),
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(gauge(&before), Some("outbox_backlog 0".into()));
    assert_eq!(gauge(&text), gauge(&before), "no count per scrape");
}

/// Writes `request` on `s` and reads one whole answer (headers and a
/// `content-length` body).
async fn exchange(s: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// A kept-alive connection may wait between requests for longer than the
/// header timeout, as proxies and pooled clients keep theirs (closing one
/// they are about to reuse fails their next request without an answer),
/// until the idle timeout; a request trickling in on it is still cut at the
/// header timeout.
#[tokio::test]
async fn a_kept_alive_connection_waits_for_its_next_request_until_the_idle_timeout() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::new().await;
    let api = app
        .api_process(&[
            ("HTTP_HEADER_READ_TIMEOUT_SECS", "1"),
            ("HTTP_IDLE_TIMEOUT_SECS", "4"),
        ])
        .await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let first = exchange(&mut kept, get).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first.to_ascii_lowercase().contains("content-length:"),
        "answers keep their length: {first}"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let second = exchange(&mut kept, get).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "a connection idle past the header timeout still serves: {second}"
    );
    // Idle past the idle timeout: closed, without a byte.
    let idle = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), kept.read(&mut buf))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(7),
        "closed after {waited:?} idle, the idle timeout being 4 s"
    );
    // Headers trickling in after a first request: cut at the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let first = exchange(&mut slow, get).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed && started.elapsed() < Duration::from_secs(3),
        "a request trickling in on a kept-alive connection is still open after {:?}",
        started.elapsed()
    );
}

/// Headers that trickle in, a body that never arrives, and more requests
/// than the api takes at once.
#[tokio::test]
async fn slow_clients_and_floods_hold_nothing_for_long() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::new().await;
    let api = app
        .api_process(&[
            ("HTTP_HEADER_READ_TIMEOUT_SECS", "1"),
            ("HTTP_REQUEST_TIMEOUT_SECS", "2"),
            ("HTTP_MAX_IN_FLIGHT", "2"),
        ])
        .await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    // Headers a byte at a time: the connection is closed after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if slow.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(1), slow.read(&mut buf)).await
        {
            closed = true;
            let _ = n;
            break;
        }
    }
    assert!(
        closed,
        "a trickling client is still connected after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Two requests whose bodies never come hold the two in-flight slots.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        stuck.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let client = clicknback_tests::procs::http_client();
    let t = std::time::Instant::now();
    let shed = client
        .get(format!("{}/v1/me", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status().as_u16(), 503);
    assert!(shed.headers().get("retry-after").is_some());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "shed at once"
    );
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    let health = client
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "health checks are never shed"
    );
    // The stuck requests are answered when the request timeout ends them.
    for mut s in stuck {
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
    }
}
