//! Test support: each test owns a PostgreSQL database cloned from a migrated
//! template and a Redis key namespace, so tests run in parallel and leave
//! nothing behind. Real PostgreSQL and Redis, never mocks of them.

pub mod canaries;
pub mod cluster;
pub mod db;
pub mod http;
pub mod money_driver;
pub mod money_model;
pub mod procs;
pub mod shoppers;
pub mod walk;
pub mod wallets;
pub mod webhook;

pub use db::TestDb;
pub use http::TestApp;
