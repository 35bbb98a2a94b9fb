//! Signs webhook requests the way a merchant does.

use axum::http::Method;
use clicknback_core::signature::WebhookSecret;

use crate::http::{TestApp, TestResponse};

pub struct Signed {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Vec<u8>,
}

pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Signed {
    let s = WebhookSecret::parse(secret).expect("webhook secret");
    Signed {
        id: id.to_owned(),
        timestamp,
        signature: s.sign(id, timestamp, body),
        body: body.to_vec(),
    }
}

impl TestApp {
    /// Reports a purchase through the merchant's signed webhook; the new
    /// purchase's id (the webhook must be accepted).
    pub async fn report_purchase(
        &self,
        merchant: impl std::fmt::Display,
        secret: &str,
        body: &serde_json::Value,
    ) -> clicknback_core::ids::PurchaseId {
        let r = self
            .webhook(
                &format!("/v1/webhooks/{merchant}/purchases"),
                secret,
                body,
                &[],
            )
            .await;
        assert_eq!(r.status, axum::http::StatusCode::ACCEPTED, "{}", r.text);
        r.body["id"].as_str().unwrap().parse().unwrap()
    }

    /// POSTs a signed webhook; `extra` adds headers (e.g. Idempotency-Key).
    pub async fn webhook(
        &self,
        path: &str,
        secret: &str,
        body: &serde_json::Value,
        extra: &[(&str, &str)],
    ) -> TestResponse {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        self.webhook_with_id(path, secret, &id, body, extra).await
    }

    pub async fn webhook_with_id(
        &self,
        path: &str,
        secret: &str,
        id: &str,
        body: &serde_json::Value,
        extra: &[(&str, &str)],
    ) -> TestResponse {
        let raw = serde_json::to_vec(body).unwrap();
        let s = sign(secret, id, chrono::Utc::now().timestamp(), &raw);
        let ts = s.timestamp.to_string();
        let mut headers = vec![
            ("content-type", "application/json"),
            ("webhook-id", s.id.as_str()),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", s.signature.as_str()),
        ];
        headers.extend_from_slice(extra);
        self.request(Method::POST, path, &headers, Some(s.body))
            .await
    }
}

pub fn purchase_body(order_id: &str, amount_minor: i64) -> serde_json::Value {
    serde_json::json!({
        "order_id": order_id,
        "amount_minor": amount_minor,
        "currency": "EUR",
        "purchased_at": chrono::Utc::now().to_rfc3339(),
    })
}
