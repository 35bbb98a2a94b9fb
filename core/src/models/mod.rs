//! Row types, next to the reusable queries over them.

pub mod audit;
pub mod merchant;
pub mod offer;
pub mod outbox;
pub mod purchase;
pub mod reward;
pub mod user;
