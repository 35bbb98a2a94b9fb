//! Shoppers with money: a user with an available balance, and payout
//! requests as a client sends them.

use axum::http::{Method, StatusCode};
use clicknback_core::{
    ids::UserId,
    models::user::Role,
    money::{Currency, Money},
    services::{
        ledger::{self, AccountKind, AccountRef, Transfer},
        users,
    },
};
use serde_json::Value;

use crate::TestApp;

/// A user with `available` minor units of EUR available; returns (id, token).
pub async fn funded_user(app: &TestApp, email: &str, available: i64) -> (UserId, String) {
    let mut c = app.db.conn().await;
    let user = users::create(&mut c, email, "password-123", Role::User)
        .await
        .unwrap();
    drop(c);
    if available > 0 {
        fund(app, user.id, available).await;
    }
    let token = app.state.tokens.issue(user.id, Role::User).access_token;
    (user.id, token)
}

/// Makes `amount` minor units of EUR available to `user` (once per user).
pub async fn fund(app: &TestApp, user: UserId, amount: i64) {
    let mut c = app.db.conn().await;
    ledger::post(
        &mut c,
        &Transfer {
            id: format!("test:fund:{user}"),
            from: AccountRef::platform(AccountKind::CashbackExpense),
            to: AccountRef::user(user, AccountKind::Available),
            amount: Money::new(amount, Currency::parse("EUR").unwrap()).unwrap(),
            kind: "reward_credit",
            user_id: Some(user),
            purchase_id: None,
            reward_id: None,
            payout_id: None,
        },
    )
    .await
    .unwrap();
}

/// `POST /v1/payouts` under `key`: (status, body, `Idempotent-Replayed`).
pub async fn request_payout(
    app: &TestApp,
    token: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value, Option<String>) {
    let auth = format!("Bearer {token}");
    let r = app
        .request(
            Method::POST,
            "/v1/payouts",
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
                ("idempotency-key", key),
            ],
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await;
    let replayed = r.header("idempotent-replayed").map(str::to_owned);
    (r.status, r.body, replayed)
}
