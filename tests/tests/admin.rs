//! The admin API: authentication, merchants with ETags, offers with the
//! one-active rule, and the audit log.

use axum::http::{Method, StatusCode};
use clicknback_core::models::user::Role;
use clicknback_tests::TestApp;
use serde_json::json;

#[tokio::test]
async fn admin_routes_refuse_missing_user_and_forged_tokens() {
    let app = TestApp::new().await;
    let user = app.token_for("shopper@example.com", Role::User).await;
    for (method, path) in [
        (Method::GET, "/v1/admin/merchants"),
        (Method::POST, "/v1/admin/merchants"),
        (Method::GET, "/v1/admin/audit-log"),
    ] {
        let none = app
            .json(method.clone(), path, None, Some(json!({"name": "x"})))
            .await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        let as_user = app
            .json(
                method.clone(),
                path,
                Some(&user),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(as_user.status, StatusCode::FORBIDDEN, "{path}");
        let forged = app
            .json(
                method,
                path,
                Some("eyJhbGciOiJIUzI1NiJ9.e30.sig"),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn login_issues_a_token_that_carries_the_admin_role() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    clicknback_core::services::users::create(
        &mut conn,
        "Boss@Example.com",
        "a-long-password",
        Role::Admin,
    )
    .await
    .unwrap();
    let res = app
        .json(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "boss@example.com", "password": "a-long-password"})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["token_type"], "Bearer");
    assert!(res.body["expires_in"].as_u64().unwrap() > 0);
    let token = res.body["access_token"].as_str().unwrap();
    let claims = app.state.tokens.verify(token).unwrap();
    assert_eq!(claims.role, Role::Admin);
    let r = app.call(Method::GET, "/v1/admin/merchants", token).await;
    assert_eq!(r.status, StatusCode::OK);
    // Wrong password and unknown email look the same.
    let a = app
        .json(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "boss@example.com", "password": "nope-nope"})),
        )
        .await;
    let b = app
        .json(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "ghost@example.com", "password": "nope-nope"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["detail"], b.body["detail"]);
    assert_eq!(a.body["code"], b.body["code"]);
}

#[tokio::test]
async fn merchants_create_list_get_update_with_etags() {
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
    for f in [
        "id",
        "name",
        "status",
        "publishable_key",
        "webhook_secret",
        "created_at",
    ] {
        assert!(created.body.get(f).is_some(), "{f}");
    }
    assert!(
        created.body["webhook_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    let id = created.body["id"].as_str().unwrap();

    let got = app
        .call(Method::GET, &format!("/v1/admin/merchants/{id}"), &admin)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.body.get("webhook_secret").is_none(),
        "secret is shown only once"
    );
    let etag = got.header("etag").unwrap().to_owned();

    let patch = |if_match: Option<String>, body: serde_json::Value| {
        let app = &app;
        let admin = admin.clone();
        let id = id.to_owned();
        async move {
            let auth = format!("Bearer {admin}");
            let mut headers = vec![
                ("content-type", "application/json"),
                ("authorization", auth.as_str()),
            ];
            let im;
            if let Some(v) = if_match {
                im = v;
                headers.push(("if-match", im.as_str()));
            }
            app.request(
                Method::PATCH,
                &format!("/v1/admin/merchants/{id}"),
                &headers,
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    let missing = patch(None, json!({"name": "Acme 2"})).await;
    assert_eq!(missing.status, StatusCode::PRECONDITION_REQUIRED);
    let ok = patch(
        Some(etag.clone()),
        json!({"name": "Acme 2", "webhook_rate_limit_per_minute": 600}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["name"], "Acme 2");
    assert_eq!(ok.body["webhook_rate_limit_per_minute"], 600);
    assert_ne!(ok.header("etag").unwrap(), etag);
    let stale = patch(Some(etag), json!({"name": "Acme 3"})).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.body["code"], "precondition_failed");
    let invalid = patch(
        Some(ok.header("etag").unwrap().to_owned()),
        json!({"name": ""}),
    )
    .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);

    for i in 0..3 {
        app.json(
            Method::POST,
            "/v1/admin/merchants",
            Some(&admin),
            Some(json!({"name": format!("M{i}")})),
        )
        .await;
    }
    let page1 = app
        .call(Method::GET, "/v1/admin/merchants?limit=2", &admin)
        .await;
    assert_eq!(page1.body["data"].as_array().unwrap().len(), 2);
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = app
        .call(
            Method::GET,
            &format!("/v1/admin/merchants?limit=2&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_eq!(page2.body["data"].as_array().unwrap().len(), 2);
    assert!(page2.body["next_cursor"].is_null());
    let mut chars: Vec<char> = cursor.chars().collect();
    chars[10] = if chars[10] == 'B' { 'C' } else { 'B' };
    let tampered: String = chars.into_iter().collect();
    let bad = app
        .call(
            Method::GET,
            &format!("/v1/admin/merchants?cursor={tampered}"),
            &admin,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["code"], "invalid_cursor");
    let bad = app
        .call(Method::GET, "/v1/admin/merchants?limit=101", &admin)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let missing = app
        .json(
            Method::GET,
            &format!("/v1/admin/merchants/{}", uuid::Uuid::now_v7()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn at_most_one_active_offer_per_merchant() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, _, _) = app.merchant(&admin, "Offers").await;
    let path = format!("/v1/admin/merchants/{mid}/offers");
    let a = app
        .json(
            Method::POST,
            &path,
            Some(&admin),
            Some(
                json!({"name": "5%", "rate_bps": 500, "max_cashback_minor": 2000, "currency": "EUR", "active": true}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["active"], true);
    let b = app
        .json(
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"name": "10%", "rate_bps": 1000, "active": true})),
        )
        .await;
    assert_eq!(b.status, StatusCode::CONFLICT);
    assert_eq!(b.body["code"], "offer_already_active");
    let b = app
        .json(
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"name": "10%", "rate_bps": 1000})),
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    let b_id = b.body["id"].as_str().unwrap();
    let r = app
        .call(
            Method::POST,
            &format!("/v1/admin/offers/{b_id}/activate"),
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let a_id = a.body["id"].as_str().unwrap();
    let r = app
        .call(
            Method::POST,
            &format!("/v1/admin/offers/{a_id}/deactivate"),
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["active"], false);
    let r = app
        .call(
            Method::POST,
            &format!("/v1/admin/offers/{b_id}/activate"),
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let bad = app
        .json(
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"name": "x", "rate_bps": 10001})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let list = app.call(Method::GET, &path, &admin).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);

    // Update with If-Match.
    let got = app
        .call(Method::GET, &format!("/v1/admin/offers/{b_id}"), &admin)
        .await;
    let etag = got.header("etag").unwrap().to_owned();
    let auth = format!("Bearer {admin}");
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/admin/offers/{b_id}"),
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
                ("if-match", &etag),
            ],
            Some(br#"{"rate_bps": 750, "max_cashback_minor": null}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["rate_bps"], 750);
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/admin/offers/{b_id}"),
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
                ("if-match", &etag),
            ],
            Some(br#"{"rate_bps": 800}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn every_admin_action_is_in_the_audit_log() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, _, _) = app.merchant(&admin, "Audited").await;
    app.call(
        Method::POST,
        &format!("/v1/admin/merchants/{mid}/suspend"),
        &admin,
    )
    .await;
    app.call(
        Method::POST,
        &format!("/v1/admin/merchants/{mid}/rotate-secret"),
        &admin,
    )
    .await;
    let o = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            Some(json!({"name": "o", "rate_bps": 100})),
        )
        .await;
    let oid = o.body["id"].as_str().unwrap();
    app.call(
        Method::POST,
        &format!("/v1/admin/offers/{oid}/activate"),
        &admin,
    )
    .await;
    let log = app
        .call(Method::GET, "/v1/admin/audit-log?limit=100", &admin)
        .await;
    assert_eq!(log.status, StatusCode::OK);
    let actions: Vec<&str> = log.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "offer.activate",
            "offer.create",
            "merchant.rotate_secret",
            "merchant.suspend",
            "merchant.create"
        ]
    );
    let suspend = &log.body["data"][3];
    assert_eq!(suspend["before"]["status"], "active");
    assert_eq!(suspend["after"]["status"], "suspended");
    assert!(
        suspend["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(!log.text.contains("whsec_"), "no secret in the audit log");
}

#[tokio::test]
async fn errors_are_problem_json_with_request_ids() {
    let app = TestApp::new().await;
    let r = app
        .request(Method::GET, "/nope", &[("x-request-id", "req-123")], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    assert_eq!(r.body["request_id"], "req-123");
    for f in ["type", "title", "status", "detail", "code", "request_id"] {
        assert!(r.body.get(f).is_some(), "{f}");
    }
    // Generated when absent.
    let r = app.request(Method::GET, "/healthz", &[], None).await;
    assert!(r.header("x-request-id").is_some_and(|v| v.len() >= 32));
    // JSON rejections share the shape.
    let r = app
        .request(
            Method::POST,
            "/v1/auth/register",
            &[("content-type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.body["code"], "unsupported_media_type");
    let r = app
        .request(
            Method::POST,
            "/v1/auth/register",
            &[("content-type", "application/json")],
            Some(b"{".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "invalid_json");
    let big = vec![b' '; 70_000];
    let r = app
        .request(
            Method::POST,
            "/v1/auth/register",
            &[("content-type", "application/json")],
            Some(big),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.body["code"], "payload_too_large");
}

#[tokio::test]
async fn health_readiness_docs_and_metrics() {
    let app = TestApp::new().await;
    assert_eq!(
        app.request(Method::GET, "/healthz", &[], None).await.status,
        StatusCode::OK
    );
    let r = app.request(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["checks"]["database"], "ok");
    let spec = app.request(Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["paths"]["/v1/webhooks/{merchant_id}/purchases"]["post"].is_object());
    let docs = app.request(Method::GET, "/docs", &[], None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text.contains("openapi") || docs.text.contains("scalar"));
}

#[tokio::test]
async fn readiness_fails_when_redis_is_unreachable() {
    let app = TestApp::with(&[("REDIS_URL", "redis://127.0.0.1:1/0")]).await;
    let r = app.request(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["checks"]["redis"], "unreachable");
}
