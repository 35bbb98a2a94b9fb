//! The admin API: merchants, offers and the audit log. Every route requires an
//! admin token and every change is audit-logged by the core services.

pub mod audit;
pub mod jobs;
pub mod merchants;
pub mod offers;
pub mod purchases;
pub mod timeline;
