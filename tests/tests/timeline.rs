//! A purchase's timeline: one purchase walked through the SDK's
//! confirmation, the webhook and its replay, attribution flagged for review,
//! an admin's approval, the merchant's confirmation and a payout, with a
//! real worker; then its timeline lists each of those in time order, by
//! purchase id and by merchant and order id, for admins only, and the search
//! finds it by order id, purchase id and the shopper's email.

use axum::http::{Method, StatusCode};
use clicknback_tests::{
    TestApp,
    walk::{CASHBACK, PAYOUT, WEBHOOK_KEY, walk},
};
use serde_json::Value;

/// The index of the first entry of `kind` that `pred` accepts.
fn position(entries: &[Value], kind: &str, pred: impl Fn(&Value) -> bool) -> usize {
    entries
        .iter()
        .position(|e| e["kind"] == kind && pred(&e["detail"]))
        .unwrap_or_else(|| {
            panic!(
                "no {kind} entry that matches in:\n{}",
                serde_json::to_string_pretty(entries).unwrap()
            )
        })
}

#[tokio::test]
async fn a_purchase_timeline_lists_everything_that_happened_to_it_in_order() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "1")]).await;
    let w = walk(&app, "T-1001", &[]).await;
    let admin = w.admin_token.clone();

    let r = app
        .json(
            Method::GET,
            &format!("/v1/admin/purchases/{}/timeline", w.purchase),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = r.body;
    assert_eq!(t["purchase"]["id"], w.purchase.to_string());
    assert_eq!(t["purchase"]["status"], "confirmed");
    assert_eq!(t["user_id"], w.user.to_string());
    assert_eq!(t["user_email"], w.email);
    let entries = t["entries"].as_array().unwrap().clone();
    let times: Vec<chrono::DateTime<chrono::Utc>> = entries
        .iter()
        .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|p| p[0] <= p[1]),
        "entries in time order: {times:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| !e["summary"].as_str().unwrap().is_empty())
    );

    let any = |_: &Value| true;
    let click = position(&entries, "click", |d| {
        d["landing_url"] == "https://shop.example/p/1?ref=cnb"
    });
    let user_linked = position(&entries, "identity_linked", |d| {
        d["user_id"] == w.user.to_string()
    });
    let sdk_pending = position(&entries, "sdk_confirmation", |d| d["outcome"] == "pending");
    let received = position(&entries, "webhook_received", |d| {
        d["idempotency_key"] == WEBHOOK_KEY
    });
    let token = position(&entries, "token_check", |d| d["matched"] == true);
    let recorded = position(&entries, "purchase_recorded", any);
    let merged = position(&entries, "identity_merged", |d| {
        d["reason"] == "purchase_confirmation"
    });
    let replayed = position(&entries, "webhook_replayed", |d| {
        d["idempotency_key"] == WEBHOOK_KEY
    });
    let sdk_linked = position(&entries, "sdk_confirmation", |d| d["outcome"] == "linked");
    let attribution = position(&entries, "job_run", |d| {
        d["job_key"] == format!("attribute:{}", w.purchase) && d["outcome"] == "done"
    });
    let scored = position(&entries, "fraud_scored", |d| {
        d["flagged"] == true && d["cashback_minor"] == CASHBACK && d["fraud_score"].is_number()
    });
    let reviewed = position(&entries, "reviewed", |d| {
        d["review"] == "approved" && d["reviewer"] == w.admin_email
    });
    // The reviewer's explanation, or why there is none yet.
    let explained = position(&entries, "fraud_explained", |d| {
        ["pending", "done", "failed", "disabled"].contains(&d["status"].as_str().unwrap_or(""))
    });
    assert!(explained > scored, "explained after it was flagged");
    let credit = position(&entries, "ledger_transfer", |d| {
        d["kind"] == "reward_credit" && d["to"] == "pending" && d["amount_minor"] == CASHBACK
    });
    let status = position(&entries, "status_received", |d| d["status"] == "confirmed");
    let confirm_job = position(&entries, "job_run", |d| {
        d["job_key"] == format!("reward:{}:confirmed", w.purchase)
            && d["attempt"] == 1
            && d["outcome"] == "done"
            && d["error"].is_null()
    });
    let available = position(&entries, "ledger_transfer", |d| {
        d["kind"] == "reward_confirm" && d["from"] == "pending" && d["to"] == "available"
    });
    let payout = position(&entries, "payout", |d| {
        d["payout_id"] == w.payout.to_string()
            && d["spent_minor"] == PAYOUT
            && d["status"] == "paid"
            && d["destination"].as_str().unwrap().ends_with("3000")
    });
    let payout_job = position(&entries, "job_run", |d| {
        d["job_key"] == format!("payout:{}", w.payout) && d["outcome"] == "done"
    });
    let email = position(&entries, "email", |d| {
        d["email"] == "payout_paid" && d["status"] == "sent"
    });

    let order = [
        ("click", click),
        ("sdk confirmation (pending)", sdk_pending),
        ("webhook received", received),
        ("token check", token),
        ("purchase recorded", recorded),
        ("webhook replayed", replayed),
        ("sdk confirmation (linked)", sdk_linked),
        ("fraud scored", scored),
        ("attribution job done", attribution),
        ("review", reviewed),
        ("credit to pending", credit),
        ("status webhook", status),
        ("pending to available", available),
        ("confirm job done", confirm_job),
        ("payout", payout),
        ("payout job done", payout_job),
        ("payout email", email),
    ];
    for pair in order.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "{} before {}:\n{}",
            pair[0].0,
            pair[1].0,
            serde_json::to_string_pretty(&entries).unwrap()
        );
    }
    assert!(
        user_linked < sdk_pending,
        "the user signed in before checking out"
    );
    assert!(
        sdk_pending < merged && merged < received,
        "the checkout's confirmation joined the browser to the order"
    );
    // Nothing secret: no purchase token, no full IBAN.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("ptok-T-1001"), "{text}");
    assert!(!text.contains("DE89370400440532013000"), "{text}");

    // By merchant and order id: the same timeline.
    let by_order = app
        .json(
            Method::GET,
            &format!(
                "/v1/admin/merchants/{}/orders/{}/timeline",
                w.merchant, w.order_id
            ),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_order.status, StatusCode::OK, "{}", by_order.text);
    assert_eq!(by_order.body["entries"], t["entries"]);
    let missing = app
        .json(
            Method::GET,
            &format!("/v1/admin/merchants/{}/orders/nope/timeline", w.merchant),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
    let missing = app
        .json(
            Method::GET,
            &format!("/v1/admin/purchases/{}/timeline", uuid::Uuid::now_v7()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);

    // The search: by order id, purchase id and the shopper's email.
    for q in [
        w.order_id.clone(),
        w.purchase.to_string(),
        w.email.to_uppercase(),
    ] {
        let r = app
            .json(
                Method::GET,
                &format!("/v1/admin/purchases/search?q={}", urlencode(&q)),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let hits = r.body.as_array().unwrap();
        assert_eq!(hits.len(), 1, "{q}: {}", r.text);
        assert_eq!(hits[0]["purchase_id"], w.purchase.to_string());
        assert_eq!(hits[0]["user_email"], w.email);
    }
    let none = app
        .json(
            Method::GET,
            "/v1/admin/purchases/search?q=unknown-order",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(none.body, serde_json::json!([]));

    // Admins only.
    let shopper = app
        .token_for(
            "someone@example.com",
            clicknback_core::models::user::Role::User,
        )
        .await;
    for path in [
        format!("/v1/admin/purchases/{}/timeline", w.purchase),
        format!("/v1/admin/purchases/search?q={}", w.order_id),
    ] {
        let r = app.json(Method::GET, &path, Some(&shopper), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        let r = app.json(Method::GET, &path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text);
    }
}

#[tokio::test]
async fn a_checkout_confirmation_with_the_wrong_token_is_on_the_timeline_as_a_mismatch() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, pk) = app.merchant(&admin, "Mismatch Shop").await;
    let mut body = clicknback_tests::webhook::purchase_body("M-1", 5_000);
    body["purchase_token"] = serde_json::json!("right-token");
    let id = app.report_purchase(&mid, &secret, &body).await;
    let r = app
        .request(
            Method::POST,
            "/v1/track/purchase",
            &[
                ("content-type", "application/json"),
                ("x-publishable-key", &pk),
            ],
            Some(
                serde_json::to_vec(&serde_json::json!({
                    "anon_id": "anon-mismatch-1", "order_id": "M-1", "purchase_token": "wrong-token"
                }))
                .unwrap(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["result"], "mismatch");
    let t = app
        .json(
            Method::GET,
            &format!("/v1/admin/purchases/{id}/timeline"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    let kinds: Vec<(&str, &Value)> = t.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), &e["detail"]))
        .collect();
    let webhook = kinds
        .iter()
        .position(|(k, _)| *k == "webhook_received")
        .unwrap();
    let mismatch = kinds
        .iter()
        .position(|(k, d)| *k == "sdk_confirmation" && d["outcome"] == "mismatch")
        .unwrap_or_else(|| panic!("{}", t.text));
    assert!(webhook < mismatch);
    // Attribution has not run: its job is listed, open.
    assert!(
        kinds.iter().any(|(k, d)| *k == "job_run"
            && d["job_key"] == format!("attribute:{id}")
            && d["outcome"].is_null()),
        "{}",
        t.text
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
