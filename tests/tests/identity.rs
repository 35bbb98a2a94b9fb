//! The identity graph under concurrency (merges, one user per group, the
//! order lock between webhook and checkout confirmation, one lock order), and
//! the sweeper's query plan.

use axum::http::Method;
use clicknback_core::{
    ids::{IdentityGroupId, MerchantId, UserId},
    models::{merchant::Merchant, user::Role},
    money::Money,
    services::{
        attribution::{self, Outcome},
        fraud::RuleScorer,
        idempotency::{self, IdempotencyKey},
        identity::{self, NodeKind, NodeSpec},
        merchants,
        purchases::{self, PurchaseError},
        tracking::{self, LinkOutcome},
        users,
    },
};
use clicknback_tests::{
    TestApp,
    http::TestResponse,
    shoppers::{merchant_with_offer, shopper_with_click},
    webhook::purchase_body,
};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

async fn node(c: &mut AsyncPgConnection, anon: &str) -> IdentityGroupId {
    identity::ensure_node(c, &NodeSpec::anon(anon))
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_merges_end_in_one_consistent_graph() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    for round in 0..10 {
        let (a, b, d) = (
            format!("a{round}"),
            format!("b{round}"),
            format!("d{round}"),
        );
        let (ga, gb, gd) = (
            node(&mut c, &a).await,
            node(&mut c, &b).await,
            node(&mut c, &d).await,
        );
        // Two merges touching the same group at once: a+b and b+d.
        let (mut c1, mut c2) = (app.db.conn().await, app.db.conn().await);
        let (r1, r2) = tokio::join!(
            c1.transaction::<identity::Merge, diesel::result::Error, _>(async |c| {
                identity::merge(c, ga, gb, "test").await
            }),
            c2.transaction::<identity::Merge, diesel::result::Error, _>(async |c| {
                identity::merge(c, gb, gd, "test").await
            }),
        );
        assert!(matches!(r1.unwrap(), identity::Merge::Merged(_)));
        assert!(matches!(r2.unwrap(), identity::Merge::Merged(_)));
        // Every node ends in one group, which is not itself merged away.
        let groups: Vec<IdentityGroupId> = clicknback_core::schema::identity_nodes::table
            .filter(clicknback_core::schema::identity_nodes::key.eq_any([&a, &b, &d]))
            .select(clicknback_core::schema::identity_nodes::group_id)
            .load(&mut c)
            .await
            .unwrap();
        assert_eq!(groups.len(), 3, "no node lost");
        assert!(
            groups.iter().all(|g| *g == groups[0]),
            "round {round}: {groups:?}"
        );
        let merged: Option<IdentityGroupId> = clicknback_core::schema::identity_groups::table
            .find(groups[0])
            .select(clicknback_core::schema::identity_groups::merged_into_id)
            .first(&mut c)
            .await
            .unwrap();
        assert_eq!(merged, None, "the survivor is live");
    }
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM identity_merges")
            .await,
        20
    );
}

#[tokio::test]
async fn the_sweeper_query_uses_its_partial_index() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    #[derive(QueryableByName)]
    struct Plan {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    diesel::sql_query("SET enable_seqscan = off")
        .execute(&mut c)
        .await
        .unwrap();
    let plan: Vec<Plan> = diesel::sql_query(
        "EXPLAIN SELECT id FROM purchases
          WHERE rewards_processed_at IS NULL AND status = 'received' AND attribute_after <= now()
          ORDER BY attribute_after, id LIMIT 100",
    )
    .load(&mut c)
    .await
    .unwrap();
    let text: String = plan
        .iter()
        .map(|p| p.line.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("purchases_due_attribution_idx"), "{text}");
}

/// The live group of a purchase (its recorded group, followed through merges).
async fn purchase_group(c: &mut AsyncPgConnection, order: &str) -> Option<IdentityGroupId> {
    use clicknback_core::schema::purchases;
    let g: Option<IdentityGroupId> = purchases::table
        .filter(purchases::order_id.eq(order))
        .select(purchases::identity_group_id)
        .first(c)
        .await
        .unwrap();
    match g {
        Some(g) => Some(
            clicknback_core::services::attribution::surviving_group(c, g)
                .await
                .unwrap(),
        ),
        None => None,
    }
}

async fn user_group(c: &mut AsyncPgConnection, user: UserId) -> IdentityGroupId {
    identity::group_of(c, NodeKind::User, &user.to_string())
        .await
        .unwrap()
        .expect("the user has a node")
}

async fn anon_group(c: &mut AsyncPgConnection, anon: &str) -> IdentityGroupId {
    identity::group_of(c, NodeKind::Anon, anon)
        .await
        .unwrap()
        .expect("the browser has a node")
}

/// Groups holding more than one user node (must always be zero).
async fn groups_with_several_users(app: &TestApp) -> i64 {
    app.scalar(
        "SELECT count(*) AS n FROM (SELECT group_id FROM identity_nodes WHERE kind = 'user'
           GROUP BY group_id HAVING count(*) > 1) g",
    )
    .await
}

fn busy_app_overrides() -> [(&'static str, &'static str); 3] {
    [
        ("ATTRIBUTION_DELAY_SECS", "60"),
        ("TRACK_RATE_LIMIT_PER_MINUTE", "100000"),
        ("WEBHOOK_RATE_LIMIT_PER_MINUTE", "100000"),
    ]
}

async fn confirm_over_http(
    app: &TestApp,
    pk: &str,
    anon: &str,
    order: &str,
    token: &str,
) -> TestResponse {
    let body = json!({"anon_id": anon, "order_id": order, "purchase_token": token});
    app.request(
        Method::POST,
        "/v1/track/purchase",
        &[
            ("content-type", "application/json"),
            ("x-publishable-key", pk),
        ],
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

fn order_body(order: &str, token: &str, customer: Option<&str>) -> serde_json::Value {
    let mut body = purchase_body(order, 10_000);
    body["purchase_token"] = json!(token);
    if let Some(c) = customer {
        body["customer_ref"] = json!(c);
    }
    body
}

/// The merchant's webhook for an order, straight into the service.
async fn ingest(
    c: &mut AsyncPgConnection,
    merchant: &Merchant,
    order: &str,
    token: &str,
    customer: Option<&str>,
) -> Result<idempotency::Outcome, PurchaseError> {
    let body = order_body(order, token, customer);
    let key = IdempotencyKey::new(
        format!("merchant:{}", merchant.id),
        "POST /v1/webhooks/{merchant_id}/purchases",
        Some(&format!("key-{order}")),
        &body,
    )
    .unwrap();
    let input = purchases::ValidPurchase {
        order_id: order.to_owned(),
        amount: Money::parse(10_000, "EUR").unwrap(),
        purchased_at: chrono::Utc::now(),
        customer_ref: customer.map(str::to_owned),
        purchase_token: Some(token.to_owned()),
        sub_id: None,
    };
    purchases::ingest(c, merchant, &key, input, std::time::Duration::from_secs(60)).await
}

#[tokio::test]
async fn webhook_and_sdk_confirmation_together_always_link() {
    // Checkout: the merchant's webhook and the page's confirmation of the same
    // order arrive at the same moment, for 60 orders of one shopper.
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, _, _) = app.merchant(&admin, "Shop").await;
    let mut c = app.db.conn().await;
    let merchant = merchants::get(&mut c, mid.parse().unwrap()).await.unwrap();
    let user = users::create(&mut c, "checkout@example.com", "password-123", Role::User)
        .await
        .unwrap()
        .id;
    tracking::identify(&mut c, user, "checkout-browser")
        .await
        .unwrap();
    let (mut hook, mut page) = (app.db.conn().await, app.db.conn().await);
    for i in 0..60 {
        let (order, token) = (format!("o-{i}"), format!("tok-{i}"));
        let (w, s) = tokio::join!(
            ingest(&mut hook, &merchant, &order, &token, None),
            tracking::confirm_purchase(&mut page, &merchant, "checkout-browser", &order, &token),
        );
        assert_eq!(w.unwrap().status, 202);
        assert_ne!(s.unwrap(), LinkOutcome::Mismatch);
    }
    let shopper = user_group(&mut c, user).await;
    let mut unlinked = Vec::new();
    for i in 0..60 {
        let order = format!("o-{i}");
        if purchase_group(&mut c, &order).await != Some(shopper) {
            unlinked.push(order);
        }
    }
    assert!(
        unlinked.is_empty(),
        "{} of 60 never linked: {unlinked:?}",
        unlinked.len()
    );
    assert_eq!(
        app.scalar("SELECT matched AS n FROM link_quality_daily")
            .await,
        60
    );
}

#[tokio::test]
async fn two_users_identifying_one_anon_id_never_share_a_group() {
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "0")]).await;
    let (mid, secret) =
        merchant_with_offer(&app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let mut c = app.db.conn().await;
    let merchant = merchants::get(&mut c, mid).await.unwrap();
    let first = users::create(&mut c, "first@example.com", "password-123", Role::User)
        .await
        .unwrap()
        .id;
    let latest = users::create(&mut c, "latest@example.com", "password-123", Role::User)
        .await
        .unwrap()
        .id;

    // Sequentially: a shared computer, the first account signs in, then another.
    tracking::click(&mut c, &merchant, "shared-device", None, None)
        .await
        .unwrap();
    tracking::identify(&mut c, first, "shared-device")
        .await
        .unwrap();
    tracking::identify(&mut c, latest, "shared-device")
        .await
        .unwrap();
    assert_eq!(groups_with_several_users(&app).await, 0);
    let (g_first, g_latest) = (
        user_group(&mut c, first).await,
        user_group(&mut c, latest).await,
    );
    assert_ne!(g_first, g_latest, "two users never share a group");
    assert_eq!(
        anon_group(&mut c, "shared-device").await,
        g_latest,
        "the browser moves to the latest user"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM touchpoints WHERE group_id = '{g_first}' AND anon_id = 'shared-device'"
        ))
        .await,
        1,
        "the first user keeps the click made while it was signed in"
    );
    // The database refuses a second user node in a group, whoever writes it.
    let refused = diesel::sql_query(format!(
        "UPDATE identity_nodes SET group_id = '{g_first}' WHERE kind = 'user' AND user_id = '{latest}'"
    ))
    .execute(&mut c)
    .await;
    assert!(
        matches!(
            refused,
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        ),
        "{refused:?}"
    );

    // A later purchase from the browser pays the latest user.
    tracking::click(&mut c, &merchant, "shared-device", None, None)
        .await
        .unwrap();
    let pid = app
        .report_purchase(mid, &secret, &order_body("o-shared", "tok-shared", None))
        .await;
    assert_eq!(
        tracking::confirm_purchase(&mut c, &merchant, "shared-device", "o-shared", "tok-shared")
            .await
            .unwrap(),
        LinkOutcome::Linked
    );
    let outcome = attribution::attribute(
        &mut c,
        pid,
        &app.config.attribution,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Rewarded { .. }), "{outcome:?}");
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM rewards WHERE purchase_id = '{pid}' AND user_id = '{latest}'"
        ))
        .await,
        1,
        "the cashback goes to the latest user"
    );

    // Concurrently: two accounts identify one fresh browser at the same moment.
    for round in 0..12 {
        let anon = format!("raced-{round}");
        let (a, b) = (
            users::create(
                &mut c,
                &format!("a{round}@example.com"),
                "password-123",
                Role::User,
            )
            .await
            .unwrap()
            .id,
            users::create(
                &mut c,
                &format!("b{round}@example.com"),
                "password-123",
                Role::User,
            )
            .await
            .unwrap()
            .id,
        );
        let (mut c1, mut c2) = (app.db.conn().await, app.db.conn().await);
        let (r1, r2) = tokio::join!(
            tracking::identify(&mut c1, a, &anon),
            tracking::identify(&mut c2, b, &anon)
        );
        r1.unwrap();
        r2.unwrap();
        assert_eq!(groups_with_several_users(&app).await, 0, "round {round}");
        let browser = anon_group(&mut c, &anon).await;
        let (ga, gb) = (user_group(&mut c, a).await, user_group(&mut c, b).await);
        assert_ne!(ga, gb, "round {round}");
        assert!(
            browser == ga || browser == gb,
            "round {round}: the browser is with one of them"
        );
    }
}

#[tokio::test]
async fn identify_and_track_purchase_together_never_deadlock() {
    // A returning shopper signs in on a browser whose click is older than the
    // account's group, while the checkout page confirms an order the webhook
    // already put in the account's group, and the next order's webhook and
    // confirmation arrive too: all at once, for many shoppers.
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Shop").await;
    let mid: MerchantId = mid.parse().unwrap();
    let mut c = app.db.conn().await;
    let merchant = merchants::get(&mut c, mid).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(app.db.conn().await);
    }
    for i in 0..25 {
        let anon = format!("device-{i}");
        let customer = format!("cust-{i}");
        tracking::click(&mut c, &merchant, &anon, None, None)
            .await
            .unwrap();
        let (user, _) = shopper_with_click(
            &app,
            mid,
            &customer,
            &format!("s{i}@example.com"),
            chrono::Duration::minutes(5),
        )
        .await;
        let (a_order, a_token) = (format!("a-{i}"), format!("ta-{i}"));
        let (b_order, b_token) = (format!("b-{i}"), format!("tb-{i}"));
        app.report_purchase(
            mid,
            &secret,
            &order_body(&a_order, &a_token, Some(&customer)),
        )
        .await;
        let [c1, c2, c3, c4] = &mut conns[..] else {
            unreachable!()
        };
        let (id, a, w, b) = tokio::join!(
            tracking::identify(c1, user, &anon),
            tracking::confirm_purchase(c2, &merchant, &anon, &a_order, &a_token),
            ingest(c3, &merchant, &b_order, &b_token, Some(&customer)),
            tracking::confirm_purchase(c4, &merchant, &anon, &b_order, &b_token),
        );
        id.unwrap_or_else(|e| panic!("identify {i}: {e:?}"));
        assert_eq!(
            a.unwrap_or_else(|e| panic!("confirm {i}: {e:?}")),
            LinkOutcome::Linked
        );
        w.unwrap_or_else(|e| panic!("webhook {i}: {e:?}"));
        b.unwrap_or_else(|e| panic!("confirm {i}: {e:?}"));
        let g = user_group(&mut c, user).await;
        assert_eq!(anon_group(&mut c, &anon).await, g, "shopper {i}");
        for order in [&a_order, &b_order] {
            assert_eq!(purchase_group(&mut c, order).await, Some(g), "{order}");
        }
    }
    assert_eq!(groups_with_several_users(&app).await, 0);
}

#[tokio::test]
async fn a_confirmation_with_another_token_never_links_or_merges() {
    let app = TestApp::with(&busy_app_overrides()).await;
    let admin = app.admin_token().await;
    let (mid, secret, pk) = app.merchant(&admin, "Shop").await;
    let mut c = app.db.conn().await;
    let owner = users::create(&mut c, "owner@example.com", "password-123", Role::User)
        .await
        .unwrap()
        .id;
    tracking::identify(&mut c, owner, "owner-browser")
        .await
        .unwrap();
    // Before the webhook: the owner's page confirms, then a stranger guesses
    // the order id with another token.
    let r = confirm_over_http(&app, &pk, "owner-browser", "o-1", "right").await;
    assert_eq!(r.body["result"], "pending", "{}", r.text);
    let r = confirm_over_http(&app, &pk, "stranger", "o-1", "guess").await;
    assert_eq!(r.body["result"], "pending", "{}", r.text);
    assert_ne!(
        anon_group(&mut c, "stranger").await,
        user_group(&mut c, owner).await,
        "a wrong token merges nothing"
    );
    app.report_purchase(
        mid.parse::<MerchantId>().unwrap(),
        &secret,
        &order_body("o-1", "right", None),
    )
    .await;
    assert_eq!(
        purchase_group(&mut c, "o-1").await,
        Some(user_group(&mut c, owner).await)
    );
    // After the webhook: a wrong token is a mismatch and moves nothing.
    let r = confirm_over_http(&app, &pk, "stranger", "o-1", "guess-again").await;
    assert_eq!(r.body["result"], "mismatch", "{}", r.text);
    assert_eq!(
        purchase_group(&mut c, "o-1").await,
        Some(user_group(&mut c, owner).await)
    );
    assert_ne!(
        anon_group(&mut c, "stranger").await,
        user_group(&mut c, owner).await
    );
}
