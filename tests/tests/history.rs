//! The shopper's purchases and transactions: signed cursor pagination with no
//! duplicate and no skip while rows are inserted, tampered cursors refused,
//! and nobody sees another user's rows.

use axum::http::{Method, StatusCode};
use clicknback_core::models::user::Role;
use clicknback_tests::{TestApp, webhook::purchase_body};
use diesel_async::RunQueryDsl;
use std::collections::HashSet;

#[tokio::test]
async fn paging_purchases_while_new_ones_arrive() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Shop").await;
    let mut c = app.db.conn().await;
    let me = clicknback_core::services::users::create(
        &mut c,
        "me@example.com",
        "password-123",
        Role::User,
    )
    .await
    .unwrap();
    let other = app.token_for("other@example.com", Role::User).await;
    let assign = async |order: &str| {
        let mut c = app.db.conn().await;
        diesel::sql_query(format!(
            "UPDATE purchases SET user_id = '{}' WHERE order_id = '{order}'",
            me.id
        ))
        .execute(&mut c)
        .await
        .unwrap();
    };
    for i in 0..7 {
        let order = format!("o{i}");
        app.webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &purchase_body(&order, 100 + i),
            &[],
        )
        .await;
        assign(&order).await;
    }
    let token = app.state.tokens.issue(me.id, Role::User).access_token;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut page = 0;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/me/purchases?limit=3&cursor={c}"),
            None => "/v1/me/purchases?limit=3".to_owned(),
        };
        let r = app.json(Method::GET, &uri, Some(&token), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        seen.extend(
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["order_id"].as_str().unwrap().to_owned()),
        );
        // New purchases arrive between pages.
        let order = format!("new{page}");
        app.webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &purchase_body(&order, 5),
            &[],
        )
        .await;
        assign(&order).await;
        page += 1;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicate: {seen:?}");
    let expected: Vec<String> = (0..7).rev().map(|i| format!("o{i}")).collect();
    assert_eq!(seen, expected, "no skip, newest first");
    // Another user sees none of them; a tampered cursor is refused.
    let r = app
        .json(Method::GET, "/v1/me/purchases", Some(&other), None)
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 0);
    let r = app
        .json(
            Method::GET,
            "/v1/me/purchases?cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "invalid_cursor");
    let r = app
        .json(
            Method::GET,
            "/v1/me/transactions?cursor=nope",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .json(Method::GET, "/v1/me/transactions", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn tracking_is_rate_limited_per_address_with_headers() {
    let app = TestApp::with(&[("TRACK_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let admin = app.admin_token().await;
    let (_, _, pk) = app.merchant(&admin, "Shop").await;
    for i in 0..3 {
        let r = app
            .request(
                Method::POST,
                "/v1/track/click",
                &[
                    ("content-type", "application/json"),
                    ("x-publishable-key", &pk),
                ],
                Some(format!(r#"{{"anon_id":"a{i}"}}"#).into_bytes()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.header("ratelimit-policy"), Some("3;w=60"));
        assert!(
            r.header("ratelimit")
                .unwrap()
                .contains(&format!("remaining={}", 2 - i))
        );
    }
    let r = app
        .request(
            Method::POST,
            "/v1/track/click",
            &[
                ("content-type", "application/json"),
                ("x-publishable-key", &pk),
            ],
            Some(br#"{"anon_id":"a9"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["code"], "rate_limited");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() <= 60);
    // A wrong publishable key is refused before anything is recorded. The
    // limit is counted before the key is looked up (past it every call is a
    // 429), so this call comes from a client with calls left: a fresh app.
    let fresh = TestApp::new().await;
    let r = fresh
        .request(
            Method::POST,
            "/v1/track/click",
            &[
                ("content-type", "application/json"),
                ("x-publishable-key", "pk_nope"),
            ],
            Some(br#"{"anon_id":"x"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
