//! ClickNBack's domain, shared by the api and the worker: money, ids, the
//! diesel schema and models, the services that hold the business rules, and
//! the job payloads with how to enqueue them. It never serves HTTP and never
//! runs jobs itself.

pub mod breaker;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod db;
pub mod fraud_explainer;
pub mod ids;
pub mod jobs;
pub mod models;
pub mod money;
pub mod payout_provider;
pub mod queues;
pub mod redis_conn;
pub mod retry;
#[rustfmt::skip]
pub mod schema;
pub mod services;
pub mod signature;
pub mod telemetry;
mod text_enum;
