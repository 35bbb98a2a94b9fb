//! Shoppers and merchants ready for attribution: a user linked to a
//! merchant's customer reference with recent clicks, and a merchant with an
//! offer.

use axum::http::{Method, StatusCode};
use chrono::Utc;
use clicknback_core::{
    ids::{IdentityGroupId, IdentityNodeId, MerchantId, PurchaseId, TouchpointId, UserId},
    models::user::Role,
    schema::{identity_groups, identity_nodes, touchpoints},
    services::{
        attribution::{self, Outcome},
        fraud::RuleScorer,
        users,
    },
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::{TestApp, webhook::purchase_body};

/// A shopper known to the merchant as `customer_ref`, with a click `ago` before now.
pub async fn shopper_with_click(
    app: &TestApp,
    merchant: MerchantId,
    customer_ref: &str,
    email: &str,
    ago: chrono::Duration,
) -> (UserId, IdentityGroupId) {
    let mut c = app.db.conn().await;
    let user = users::create(&mut c, email, "password-123", Role::User)
        .await
        .unwrap()
        .id;
    let group = IdentityGroupId::new();
    diesel::insert_into(identity_groups::table)
        .values(identity_groups::id.eq(group))
        .execute(&mut c)
        .await
        .unwrap();
    diesel::insert_into(identity_nodes::table)
        .values(vec![
            (
                identity_nodes::id.eq(IdentityNodeId::new()),
                identity_nodes::group_id.eq(group),
                identity_nodes::kind.eq("user"),
                identity_nodes::key.eq(user.to_string()),
                identity_nodes::user_id.eq(Some(user)),
                identity_nodes::merchant_id.eq(None::<MerchantId>),
            ),
            (
                identity_nodes::id.eq(IdentityNodeId::new()),
                identity_nodes::group_id.eq(group),
                identity_nodes::kind.eq("merchant_customer"),
                identity_nodes::key.eq(format!("{merchant}:customer:{customer_ref}")),
                identity_nodes::user_id.eq(None),
                identity_nodes::merchant_id.eq(Some(merchant)),
            ),
        ])
        .execute(&mut c)
        .await
        .unwrap();
    for (anon, when) in [("old-click", ago * 3), ("latest-click", ago)] {
        diesel::insert_into(touchpoints::table)
            .values((
                touchpoints::id.eq(TouchpointId::new()),
                touchpoints::group_id.eq(group),
                touchpoints::merchant_id.eq(merchant),
                touchpoints::anon_id.eq(anon),
                touchpoints::created_at.eq(Utc::now() - when),
            ))
            .execute(&mut c)
            .await
            .unwrap();
    }
    (user, group)
}

pub async fn merchant_with_offer(app: &TestApp, offer: serde_json::Value) -> (MerchantId, String) {
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Shop").await;
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/merchants/{mid}/offers"),
            Some(&admin),
            Some(offer),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (mid.parse().unwrap(), secret)
}

pub fn purchase_for(order: &str, amount: i64, customer_ref: &str) -> serde_json::Value {
    let mut b = purchase_body(order, amount);
    b["customer_ref"] = json!(customer_ref);
    b
}

/// A flagged purchase (every score flags at threshold 0) of `order` by a
/// shopper `order@example.com` linked as customer `order`, attributed as the
/// worker does.
pub async fn flagged_purchase(app: &TestApp, order: &str) -> (PurchaseId, UserId) {
    let (mid, secret) =
        merchant_with_offer(app, json!({"name": "5%", "rate_bps": 500, "active": true})).await;
    let (user, _) = shopper_with_click(
        app,
        mid,
        order,
        &format!("{order}@example.com"),
        chrono::Duration::minutes(1),
    )
    .await;
    let body = purchase_for(order, 10_000, order);
    let pid = app.report_purchase(mid, &secret, &body).await;
    let mut cfg = app.config.attribution.clone();
    cfg.fraud_threshold = 0.0;
    let mut c = app.db.conn().await;
    let out = attribution::attribute(&mut c, pid, &cfg, &RuleScorer::default(), app.cache())
        .await
        .unwrap();
    assert!(
        matches!(out, Outcome::Rewarded { flagged: true, .. }),
        "{out:?}"
    );
    (pid, user)
}

/// Attribution of one purchase as the worker runs it, with the app's settings.
pub async fn attribute(app: &TestApp, purchase: PurchaseId) -> Outcome {
    let mut c = app.db.conn().await;
    attribution::attribute(
        &mut c,
        purchase,
        &app.config.attribution,
        &RuleScorer::default(),
        app.cache(),
    )
    .await
    .unwrap()
}
