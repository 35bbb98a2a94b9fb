//! Bad input gets a clear 4xx problem+json with a stable `code`, never a 500:
//! oversized and deeply nested bodies, wrong or missing content types, bytes
//! that are not UTF-8, NUL characters and other unicode edge cases, numbers
//! beyond their type, wrong JSON types, unknown parameters and methods.
//! (admin.rs covers the 415/400/413 of a plain JSON route, webhooks.rs the
//! webhook's field validation; this file covers the rest.)

use axum::http::{Method, StatusCode};
use clicknback_core::models::user::Role;
use clicknback_tests::{
    TestApp,
    http::TestResponse,
    webhook::{purchase_body, sign},
};
use serde_json::{Value, json};

#[track_caller]
fn problem(r: &TestResponse, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.text
    );
    assert_eq!(r.body["code"], code, "{}", r.text);
    assert_eq!(r.body["status"], status.as_u16(), "{}", r.text);
}

/// The field names a validation problem lists.
fn fields(r: &TestResponse) -> Vec<String> {
    r.body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

struct World {
    app: TestApp,
    admin: String,
    shopper: String,
    mid: String,
    secret: String,
    publishable: String,
}

async fn world() -> World {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let shopper = app.token_for("shopper@example.com", Role::User).await;
    let (mid, secret, publishable) = app.merchant(&admin, "Acme").await;
    World {
        app,
        admin,
        shopper,
        mid,
        secret,
        publishable,
    }
}

impl World {
    /// POSTs raw bytes with a bearer token and a content type.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> TestResponse {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str()), ("idempotency-key", "k-1")];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        self.app.request(method, path, &headers, Some(body)).await
    }

    /// A webhook whose raw bytes are correctly signed.
    async fn signed(&self, path: &str, content_type: &str, body: Vec<u8>) -> TestResponse {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let s = sign(&self.secret, &id, chrono::Utc::now().timestamp(), &body);
        let ts = s.timestamp.to_string();
        self.app
            .request(
                Method::POST,
                path,
                &[
                    ("content-type", content_type),
                    ("webhook-id", &id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &s.signature),
                ],
                Some(body),
            )
            .await
    }

    fn purchases(&self) -> String {
        format!("/v1/webhooks/{}/purchases", self.mid)
    }
}

fn payout_json() -> Value {
    json!({"amount_minor": 2500, "currency": "EUR",
        "destination": {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"}})
}

#[tokio::test]
async fn oversized_bodies_are_413_on_every_kind_of_route() {
    let w = world().await;
    let limit = w.app.config.max_body_bytes;
    let mut big = serde_json::to_vec(&json!({"name": "x".repeat(limit)})).unwrap();
    big.truncate(limit + 10);
    let r = w
        .raw(
            Method::POST,
            "/v1/admin/merchants",
            &w.admin,
            Some("application/json"),
            big.clone(),
        )
        .await;
    problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let r = w
        .raw(
            Method::POST,
            "/v1/payouts",
            &w.shopper,
            Some("application/json"),
            big.clone(),
        )
        .await;
    problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // The webhook reads raw bytes (to check the signature) under the same limit.
    let r = w
        .signed(&w.purchases(), "application/json", big.clone())
        .await;
    problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let r = w
        .app
        .request(
            Method::POST,
            "/v1/track/click",
            &[
                ("content-type", "application/json"),
                ("x-publishable-key", &w.publishable),
            ],
            Some(big),
        )
        .await;
    problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_a_crash() {
    let w = world().await;
    // Far past serde_json's recursion limit (128): not JSON we accept.
    let deep = |n: usize| format!("{{\"x\": {}1{}}}", "[".repeat(n), "]".repeat(n));
    for path in ["/v1/payouts", "/v1/admin/merchants"] {
        let token = if path == "/v1/payouts" {
            &w.shopper
        } else {
            &w.admin
        };
        let r = w
            .raw(
                Method::POST,
                path,
                token,
                Some("application/json"),
                deep(20_000).into_bytes(),
            )
            .await;
        problem(&r, StatusCode::BAD_REQUEST, "invalid_json");
    }
    let r = w
        .signed(
            &w.purchases(),
            "application/json",
            deep(20_000).into_bytes(),
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_json");
    // Nested objects under the limit are JSON, but not the expected fields.
    let nested = format!("{}{}{}", "{\"a\":".repeat(100), "1", "}".repeat(100));
    let r = w
        .raw(
            Method::POST,
            "/v1/admin/merchants",
            &w.admin,
            Some("application/json"),
            nested.clone().into_bytes(),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = w
        .signed(&w.purchases(), "application/json", nested.into_bytes())
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn bodies_must_be_declared_as_json() {
    let w = world().await;
    let body = serde_json::to_vec(&payout_json()).unwrap();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let r = w
            .raw(Method::POST, "/v1/payouts", &w.shopper, ct, body.clone())
            .await;
        problem(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    // Parameters and a structured +json suffix are fine (here: no funds).
    for ct in [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let r = w
            .raw(
                Method::POST,
                "/v1/payouts",
                &w.shopper,
                Some(ct),
                body.clone(),
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    }
    // A signed webhook sent as text.
    let raw = serde_json::to_vec(&purchase_body("o-text", 100)).unwrap();
    let r = w.signed(&w.purchases(), "text/plain", raw).await;
    problem(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_eq!(w.app.scalar("SELECT count(*) AS n FROM purchases").await, 0);
}

#[tokio::test]
async fn bytes_that_are_not_utf8_are_refused() {
    let w = world().await;
    let mut body = br#"{"name": "Acme "#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    body.extend_from_slice(br#""}"#);
    let r = w
        .raw(
            Method::POST,
            "/v1/admin/merchants",
            &w.admin,
            Some("application/json"),
            body.clone(),
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_json");
    let r = w.signed(&w.purchases(), "application/json", body).await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_json");
    // A lone UTF-16 surrogate is not a character either.
    let r = w
        .raw(
            Method::POST,
            "/v1/admin/merchants",
            &w.admin,
            Some("application/json"),
            br#"{"name": "\ud800"}"#.to_vec(),
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_json");
    // Percent-encoded bytes that are not UTF-8: refused in a path; in a
    // query they decode to U+FFFD, which no cursor contains.
    let r = w
        .app
        .call(Method::GET, "/v1/admin/queues/%FF%FE/jobs", &w.admin)
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_path_parameter");
    let r = w
        .app
        .call(Method::GET, "/v1/me/purchases?cursor=%FF%FE", &w.shopper)
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_cursor");
    // A header value with non-ASCII bytes is no publishable key.
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/track/click")
        .header("content-type", "application/json")
        .header(
            "x-publishable-key",
            axum::http::HeaderValue::from_bytes(b"pk_\xff\xfe").unwrap(),
        )
        .body(axum::body::Body::from(r#"{"anon_id": "a-1"}"#))
        .unwrap();
    use tower::ServiceExt;
    let res = w.app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
}

#[tokio::test]
async fn nul_characters_are_refused_before_they_reach_postgresql() {
    let w = world().await;
    // In JSON strings: named in the validation errors.
    let cases = [
        (
            "/v1/admin/merchants",
            w.admin.clone(),
            json!({"name": "Acme\u{0}Shoes"}),
            "name",
        ),
        (
            "/v1/auth/register",
            w.admin.clone(),
            json!({"email": "nul\u{0}@example.com", "password": "password-123"}),
            "email",
        ),
        (
            "/v1/track/identify",
            w.shopper.clone(),
            json!({"anon_id": "anon\u{0}1"}),
            "anon_id",
        ),
        (
            "/v1/payouts",
            w.shopper.clone(),
            json!({"amount_minor": 2500, "currency": "EUR",
                "destination": {"type": "paypal", "value": "a\u{0}@example.com"}}),
            "destination.value",
        ),
    ];
    for (path, token, body, field) in cases {
        let r = w
            .raw(
                Method::POST,
                path,
                &token,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(fields(&r), vec![field.to_owned()], "{path}");
    }
    let r = w
        .app
        .request(
            Method::POST,
            "/v1/track/click",
            &[
                ("content-type", "application/json"),
                ("x-publishable-key", &w.publishable),
            ],
            Some(
                serde_json::to_vec(&json!({"anon_id": "a-1", "landing_url": "https://x/\u{0}"}))
                    .unwrap(),
            ),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r), vec!["landing_url".to_owned()]);
    // A signed purchase, then a status update whose reason holds a NUL.
    let r = w
        .app
        .webhook(&w.purchases(), &w.secret, &purchase_body("o-1", 1000), &[])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let status_path = format!("{}/o-1/status", w.purchases());
    let r = w
        .app
        .webhook(
            &status_path,
            &w.secret,
            &json!({"status": "confirmed", "reason": "ok\u{0}"}),
            &[],
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r), vec!["reason".to_owned()]);
    // In a key of an object.
    let r = w
        .signed(
            &w.purchases(),
            "application/json",
            br#"{"order_id\u0000": "x"}"#.to_vec(),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    // Percent-encoded in a path or a query.
    let r = w
        .app
        .webhook(
            &format!("{}/o%001/status", w.purchases()),
            &w.secret,
            &json!({"status": "confirmed"}),
            &[],
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_path_parameter");
    for path in [
        "/v1/admin/queues/emails/jobs/t%00",
        "/v1/admin/queues/emails/jobs?state=dead%00",
        "/v1/admin/purchases?status=flagged%00",
    ] {
        let r = w.app.call(Method::GET, path, &w.admin).await;
        let code = if path.contains('?') {
            "invalid_query_parameter"
        } else {
            "invalid_path_parameter"
        };
        problem(&r, StatusCode::BAD_REQUEST, code);
    }
    assert_eq!(w.app.scalar("SELECT count(*) AS n FROM merchants").await, 1);
}

#[tokio::test]
async fn unicode_edge_cases_round_trip_or_get_a_clear_422() {
    let w = world().await;
    // Right-to-left override, emoji with joiners and skin tones, combining
    // marks, a BOM and non-BMP characters are text like any other.
    let names = [
        "\u{202e}seohS emcA",
        "Acme 👩🏽‍🚀🏳️‍🌈",
        "Ａｃｍｅ e\u{301}\u{302}\u{303}",
        "\u{feff}Acme 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        &"🦀".repeat(200),
    ];
    for name in names {
        let r = w
            .app
            .json(
                Method::POST,
                "/v1/admin/merchants",
                Some(&w.admin),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let got = w
            .app
            .json(
                Method::GET,
                &format!("/v1/admin/merchants/{}", r.body["id"].as_str().unwrap()),
                Some(&w.admin),
                None,
            )
            .await;
        assert_eq!(got.body["name"], name.trim(), "stored as sent");
    }
    // Over the limit in characters (not bytes): 201 crabs.
    let r = w
        .app
        .json(
            Method::POST,
            "/v1/admin/merchants",
            Some(&w.admin),
            Some(json!({ "name": "🦀".repeat(201) })),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // Overlong strings everywhere else.
    let huge = "x".repeat(40_000);
    let r = w
        .app
        .webhook(
            &w.purchases(),
            &w.secret,
            &json!({"order_id": huge, "amount_minor": 100, "currency": "EUR",
                "purchased_at": chrono::Utc::now()}),
            &[],
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(fields(&r).contains(&"order_id".to_owned()));
    let r = w
        .app
        .json(
            Method::POST,
            "/v1/track/identify",
            Some(&w.shopper),
            Some(json!({ "anon_id": huge })),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = w
        .app
        .json(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"email": format!("{huge}@example.com"), "password": "password-123"})),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // An order id in emoji and RTL is a valid order id.
    let r = w
        .app
        .webhook(
            &w.purchases(),
            &w.secret,
            &purchase_body("طلب-🧾-١", 100),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["order_id"], "طلب-🧾-١");
    // An Idempotency-Key must be printable ASCII (a header cannot carry more).
    let r = w
        .app
        .webhook(
            &w.purchases(),
            &w.secret,
            &purchase_body("o-key", 100),
            &[("idempotency-key", "tab\there")],
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "idempotency_key_invalid");
}

#[tokio::test]
async fn numbers_beyond_their_type_floats_and_negatives_are_422() {
    let w = world().await;
    let now = chrono::Utc::now().to_rfc3339();
    for amount in [
        "9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "12.5",
        "1e3",
        "-0.0",
        "true",
        "\"100\"",
        "null",
        "[100]",
    ] {
        let raw = format!(
            r#"{{"order_id": "o-{}", "amount_minor": {amount}, "currency": "EUR", "purchased_at": "{now}"}}"#,
            amount.len()
        );
        let r = w
            .signed(&w.purchases(), "application/json", raw.into_bytes())
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    // Beyond f64: not a number serde_json can read.
    let raw = format!(
        r#"{{"order_id": "o-big", "amount_minor": 1e400, "currency": "EUR", "purchased_at": "{now}"}}"#
    );
    let r = w
        .signed(&w.purchases(), "application/json", raw.into_bytes())
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_json");
    for amount in [i64::MIN, -1, 0] {
        let mut body = payout_json();
        body["amount_minor"] = json!(amount);
        let r = w
            .raw(
                Method::POST,
                "/v1/payouts",
                &w.shopper,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(fields(&r), vec!["amount_minor".to_owned()]);
    }
    let offers = format!("/v1/admin/merchants/{}/offers", w.mid);
    for rate in [
        json!(2_147_483_648_i64),
        json!(-1),
        json!(10_001),
        json!(5.5),
    ] {
        let r = w
            .app
            .json(
                Method::POST,
                &offers,
                Some(&w.admin),
                Some(json!({"name": "o", "rate_bps": rate})),
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    for limit in ["0", "101", "-1", "99999999999999999999", "ten", "1.5"] {
        let r = w
            .app
            .call(
                Method::GET,
                &format!("/v1/payouts?limit={limit}"),
                &w.shopper,
            )
            .await;
        let code = if ["0", "101", "-1"].contains(&limit) {
            "invalid_limit"
        } else {
            "invalid_query_parameter"
        };
        problem(&r, StatusCode::BAD_REQUEST, code);
    }
    let r = w
        .app
        .call(
            Method::GET,
            &format!("/v1/admin/merchants/{}/link-stats?days=91", w.mid),
            &w.admin,
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_query_parameter");
    let r = w
        .app
        .call(
            Method::POST,
            "/v1/admin/dead-jobs/99999999999999999999/requeue",
            &w.admin,
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_path_parameter");
}

#[tokio::test]
async fn wrong_json_types_and_shapes_are_422() {
    let w = world().await;
    // Not an object at all (serde would read a struct from an array).
    for body in ["[]", "[\"Acme\"]", "null", "\"Acme\"", "42", "true"] {
        let r = w
            .raw(
                Method::POST,
                "/v1/admin/merchants",
                &w.admin,
                Some("application/json"),
                body.as_bytes().to_vec(),
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(fields(&r), vec!["body".to_owned()], "{body}");
    }
    let now = chrono::Utc::now().to_rfc3339();
    let as_array = format!(r#"["o-arr", 100, "EUR", "{now}", null, null, null]"#);
    let r = w
        .signed(&w.purchases(), "application/json", as_array.into_bytes())
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // A nested object sent as an array.
    let mut payout = payout_json();
    payout["destination"] = json!(["iban", "DE89 3704 0044 0532 0130 00"]);
    let r = w
        .raw(
            Method::POST,
            "/v1/payouts",
            &w.shopper,
            Some("application/json"),
            serde_json::to_vec(&payout).unwrap(),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(fields(&r), vec!["destination".to_owned()]);
    // Wrong field types, unknown fields, missing fields.
    for body in [
        json!({"name": true}),
        json!({"name": ["Acme"]}),
        json!({"name": {"first": "Acme"}}),
        json!({"name": "Acme", "admin": true}),
        json!({}),
    ] {
        let r = w
            .app
            .json(
                Method::POST,
                "/v1/admin/merchants",
                Some(&w.admin),
                Some(body.clone()),
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    for status in [json!("paid"), json!(1), json!(null)] {
        let r = w
            .app
            .webhook(
                &format!("{}/o-1/status", w.purchases()),
                &w.secret,
                &json!({ "status": status }),
                &[],
            )
            .await;
        problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    let r = w
        .app
        .webhook(
            &w.purchases(),
            &w.secret,
            &json!({"order_id": "o-date", "amount_minor": 100, "currency": "EUR",
                "purchased_at": "yesterday"}),
            &[],
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // A PATCH body sent as an array would fill optional fields by position.
    let offer = w
        .app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{}/offers", w.mid),
            Some(&w.admin),
            Some(json!({"name": "o", "rate_bps": 100})),
        )
        .await;
    assert_eq!(offer.status, StatusCode::CREATED, "{}", offer.text);
    let auth = format!("Bearer {}", w.admin);
    let r = w
        .app
        .request(
            Method::PATCH,
            &format!("/v1/admin/offers/{}", offer.body["id"].as_str().unwrap()),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("if-match", offer.header("etag").unwrap()),
            ],
            Some(b"[null, null]".to_vec()),
        )
        .await;
    problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // Path parameters of the wrong type.
    for path in [
        "/v1/admin/merchants/not-a-uuid",
        "/v1/admin/offers/123",
        "/v1/admin/dead-jobs/abc/requeue",
    ] {
        let method = if path.ends_with("requeue") {
            Method::POST
        } else {
            Method::GET
        };
        let r = w.app.json(method, path, Some(&w.admin), None).await;
        problem(&r, StatusCode::BAD_REQUEST, "invalid_path_parameter");
    }
    let r = w
        .app
        .call(
            Method::GET,
            "/v1/payouts/00000000-0000-0000-0000-00000000000g",
            &w.shopper,
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_path_parameter");
}

#[tokio::test]
async fn unknown_parameters_and_methods_are_refused_clearly() {
    let w = world().await;
    for path in [
        "/v1/payouts?limt=5",
        "/v1/me/purchases?limit=5&page=2",
        "/v1/admin/purchases?state=flagged",
        "/v1/admin/purchases?status=paid",
        "/v1/admin/queues/emails/jobs?state=dead&offset=3",
    ] {
        let token = if path.starts_with("/v1/admin") {
            &w.admin
        } else {
            &w.shopper
        };
        let r = w.app.call(Method::GET, path, token).await;
        problem(&r, StatusCode::BAD_REQUEST, "invalid_query_parameter");
    }
    // A state the board does not know.
    let r = w
        .app
        .call(
            Method::GET,
            "/v1/admin/queues/emails/jobs?state=zombie",
            &w.admin,
        )
        .await;
    problem(&r, StatusCode::BAD_REQUEST, "invalid_state");
    // A known path with another method: 405 with Allow.
    for (method, path, allow) in [
        (Method::DELETE, "/v1/me", "GET,HEAD"),
        (Method::PUT, "/v1/payouts", "GET,HEAD,POST"),
        (Method::GET, "/v1/auth/login", "POST"),
    ] {
        let r = w
            .app
            .json(method.clone(), path, Some(&w.shopper), None)
            .await;
        problem(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let mut got: Vec<&str> = r.header("allow").unwrap_or_default().split(',').collect();
        got.sort_unstable();
        let mut want: Vec<&str> = allow.split(',').collect();
        want.sort_unstable();
        assert_eq!(got, want, "{method} {path}");
    }
    let r = w.app.json(Method::GET, "/v1/nowhere", None, None).await;
    problem(&r, StatusCode::NOT_FOUND, "not_found");
}
