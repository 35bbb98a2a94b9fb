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
        .scalar(&format!(
            "WITH p AS (UPDATE purchases SET user_id = '{alice_id}' RETURNING 1) \
             SELECT count(*) AS n FROM p"
        ))
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
