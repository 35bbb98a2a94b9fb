//! The business rules. Each service owns its transactions and returns its own
//! error enum; the api and the worker only translate those errors.

pub mod attribution;
pub mod audit;
pub mod auth;
pub mod canary;
pub mod cron;
pub mod emails;
pub mod explanations;
pub mod fraud;
pub mod idempotency;
pub mod identity;
pub mod ledger;
pub mod link_quality;
pub mod merchants;
pub mod offers;
pub mod ops;
pub mod pagination;
pub mod payouts;
pub mod purchases;
pub mod rate_limit;
pub mod rewards;
pub mod stats;
pub mod timeline;
pub mod tracking;
pub mod users;

/// Who performs an admin action, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user_id: crate::ids::UserId,
    pub request_id: Option<String>,
}

/// One invalid field of a request, for the problem+json `errors` list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: &str) -> Self {
        Self {
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }
}
