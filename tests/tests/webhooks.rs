//! Purchase webhooks against real PostgreSQL: signatures, idempotency,
//! duplicates, suspension, validation and the outbox row written with the
//! purchase.

use axum::http::{Method, StatusCode};
use clicknback_tests::{TestApp, webhook::purchase_body};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.scalar(sql).await
}

async fn setup() -> (TestApp, String, String) {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (id, secret, _) = app.merchant(&admin, "Shop").await;
    (app, id, secret)
}

#[tokio::test]
async fn accepted_purchase_is_written_with_its_outbox_row() {
    let (app, mid, secret) = setup().await;
    let res = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &purchase_body("o-1", 12_999),
            &[],
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    for f in [
        "id",
        "merchant_id",
        "order_id",
        "amount_minor",
        "currency",
        "status",
        "purchased_at",
        "created_at",
    ] {
        assert!(res.body.get(f).is_some(), "missing {f}: {}", res.text);
    }
    assert_eq!(res.body["status"], "received");
    assert_eq!(res.body["amount_minor"], 12_999);
    assert!(res.header("idempotent-replayed").is_none());
    assert_eq!(count(&app, "SELECT count(*) AS n FROM purchases").await, 1);
    let pid = res.body["id"].as_str().unwrap();
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS n FROM outbox WHERE queue = 'attribution' AND task_id = 'attribute:{pid}'
                 AND payload->>'job' = 'AttributePurchase' AND run_at > now() + interval '50 seconds'"
            )
        )
        .await,
        1
    );
}

#[tokio::test]
async fn replay_mismatch_missing_key_and_long_key() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let body = purchase_body("o-2", 500);
    let first = app
        .webhook(&path, &secret, &body, &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // Same key, same body (another delivery, so another webhook-id): the original again.
    let again = app
        .webhook(&path, &secret, &body, &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    // Same key, another body.
    let other = app
        .webhook(
            &path,
            &secret,
            &purchase_body("o-3", 500),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    assert_eq!(
        other.header("content-type"),
        Some("application/problem+json")
    );
    // Too long a key.
    let long = "k".repeat(256);
    let res = app
        .webhook(
            &path,
            &secret,
            &purchase_body("o-4", 500),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.body["code"], "idempotency_key_invalid");
    // No key at all (neither Idempotency-Key nor webhook-id).
    let res = app
        .request(
            Method::POST,
            &path,
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.body["code"], "idempotency_key_missing");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM purchases").await, 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM outbox").await, 1);
}

#[tokio::test]
async fn webhook_id_is_the_key_when_idempotency_key_is_absent() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let body = purchase_body("o-5", 700);
    let a = app
        .webhook_with_id(&path, &secret, "msg_same", &body, &[])
        .await;
    let b = app
        .webhook_with_id(&path, &secret, "msg_same", &body, &[])
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(b.status, StatusCode::ACCEPTED);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn same_order_under_another_key_is_a_conflict() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let body = purchase_body("o-6", 700);
    assert_eq!(
        app.webhook(&path, &secret, &body, &[]).await.status,
        StatusCode::ACCEPTED
    );
    let dup = app.webhook(&path, &secret, &body, &[]).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["code"], "duplicate_order");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM outbox").await, 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_webhooks_make_one_purchase() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let body = purchase_body("o-7", 1_000);
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (app, path, secret, body) = (app.clone(), path.clone(), secret.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            app.webhook(&path, &secret, &body, &[("idempotency-key", "same-key")])
                .await
        }));
    }
    let mut accepted = 0;
    let mut in_flight = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::CONFLICT => {
                assert_eq!(
                    r.body["code"], "idempotency_request_in_progress",
                    "{}",
                    r.text
                );
                in_flight += 1
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(accepted + in_flight, 50);
    assert!(accepted >= 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM purchases").await, 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM outbox").await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM idempotency_keys").await,
        1
    );
}

#[tokio::test]
async fn signatures_are_checked() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let raw = serde_json::to_vec(&purchase_body("o-8", 100)).unwrap();
    let now = chrono::Utc::now().timestamp();
    let good = clicknback_tests::webhook::sign(&secret, "msg_1", now, &raw);
    let send = |id: String, ts: String, sig: String| {
        let raw = raw.clone();
        let app = &app;
        let path = path.clone();
        async move {
            app.request(
                Method::POST,
                &path,
                &[
                    ("content-type", "application/json"),
                    ("webhook-id", &id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                ],
                Some(raw),
            )
            .await
        }
    };
    // Bare prefix, wrong secret, tampered body, stale and future timestamps.
    let r = send("msg_1".into(), now.to_string(), "v1,".into()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["code"], "invalid_signature");
    let other = clicknback_tests::webhook::sign(
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_1",
        now,
        &raw,
    );
    assert_eq!(
        send("msg_1".into(), now.to_string(), other.signature)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let stale = clicknback_tests::webhook::sign(&secret, "msg_1", now - 301, &raw);
    assert_eq!(
        send("msg_1".into(), (now - 301).to_string(), stale.signature)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let future = clicknback_tests::webhook::sign(&secret, "msg_1", now + 301, &raw);
    assert_eq!(
        send("msg_1".into(), (now + 301).to_string(), future.signature)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Several signatures, one of them right (rotation).
    let r = send(
        "msg_1".into(),
        now.to_string(),
        format!("v1,bm9wZQ== {}", good.signature),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // Signed for another message id.
    let r = send("msg_2".into(), now.to_string(), good.signature.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotation_keeps_the_previous_secret_valid_for_the_grace_period() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, old_secret, _) = app.merchant(&admin, "Rotating").await;
    let res = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/rotate-secret"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let new_secret = res.body["webhook_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    let path = format!("/v1/webhooks/{mid}/purchases");
    assert_eq!(
        app.webhook(&path, &new_secret, &purchase_body("r-1", 10), &[])
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.webhook(&path, &old_secret, &purchase_body("r-2", 10), &[])
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // The secret is stored sealed, never in clear.
    let mut c = app.db.conn().await;
    let sealed: Vec<u8> = clicknback_core::schema::merchants::table
        .select(clicknback_core::schema::merchants::webhook_secret_encrypted)
        .first(&mut c)
        .await
        .unwrap();
    let b64 = new_secret.trim_start_matches("whsec_");
    assert!(!String::from_utf8_lossy(&sealed).contains(b64));
}

#[tokio::test]
async fn unknown_merchant_suspended_merchant_and_bad_bodies() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let unknown = app
        .webhook(
            &format!("/v1/webhooks/{}/purchases", uuid::Uuid::now_v7()),
            &secret,
            &purchase_body("x", 1),
            &[],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Validation lists the fields.
    let bad = json!({"order_id": "", "amount_minor": -5, "currency": "EURO", "purchased_at": "2026-01-01T00:00:00Z"});
    let r = app.webhook(&path, &secret, &bad, &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in ["order_id", "amount_minor", "currency"] {
        assert!(fields.contains(&f), "{f} not in {fields:?}");
    }
    // Wrong shape (a string amount).
    let r = app
        .webhook(
            &path,
            &secret,
            &json!({"order_id": "a", "amount_minor": "10"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Not JSON at all, but correctly signed.
    let raw = b"not json".to_vec();
    let s =
        clicknback_tests::webhook::sign(&secret, "msg_nj", chrono::Utc::now().timestamp(), &raw);
    let ts = s.timestamp.to_string();
    let r = app
        .request(
            Method::POST,
            &path,
            &[
                ("content-type", "application/json"),
                ("webhook-id", "msg_nj"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &s.signature),
            ],
            Some(raw),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "invalid_json");

    let admin = app.admin_token().await;
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/suspend"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "suspended");
    let r = app
        .webhook(&path, &secret, &purchase_body("o-9", 100), &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM purchases").await, 0);
}

#[tokio::test]
async fn status_webhook_records_the_decision_and_enqueues_the_transition() {
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    assert_eq!(
        app.webhook(&path, &secret, &purchase_body("s-1", 100), &[])
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let status_path = format!("/v1/webhooks/{mid}/purchases/s-1/status");
    let r = app
        .webhook(
            &status_path,
            &secret,
            &json!({"status": "reversed", "reason": "refund"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM outbox WHERE queue = 'rewards' AND payload->'data'->>'to' = 'reversed'").await,
        1
    );
    // Confirm after reverse is refused.
    let r = app
        .webhook(&status_path, &secret, &json!({"status": "confirmed"}), &[])
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["code"], "invalid_transition");
    // Unknown order.
    let r = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases/nope/status"),
            &secret,
            &json!({"status": "confirmed"}),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .webhook(&status_path, &secret, &json!({"status": "paid"}), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn same_key_while_the_first_is_in_flight_is_409() {
    use diesel_async::AsyncConnection;
    let (app, mid, secret) = setup().await;
    let path = format!("/v1/webhooks/{mid}/purchases");
    let body = purchase_body("f-1", 100);
    let key = clicknback_core::services::idempotency::IdempotencyKey::new(
        format!("merchant:{mid}"),
        "POST /v1/webhooks/{merchant_id}/purchases",
        Some("flight-1"),
        &body,
    )
    .unwrap();
    // Another request holds the key: simulate it with a transaction holding the lock.
    let mut holder = app.db.conn().await;
    holder
        .transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<diesel::sql_types::BigInt, _>(key.lock_key())
                .execute(c)
                .await?;
            let r = app
                .webhook(&path, &secret, &body, &[("idempotency-key", "flight-1")])
                .await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
            assert_eq!(r.body["code"], "idempotency_request_in_progress");
            assert!(r.header("retry-after").is_some());
            Ok(())
        })
        .await
        .unwrap();
    let r = app
        .webhook(&path, &secret, &body, &[("idempotency-key", "flight-1")])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}
