//! What every handler shares: configuration, the database pool, Redis, and the
//! keys for tokens, cursors and sealed secrets.

use std::sync::Arc;

use clicknback_core::{
    cache::Cache,
    config::Config,
    crypto::Keyring,
    db::{DbConn, DbPool},
    redis_conn::RedisHandle,
    services::{auth::Tokens, pagination::CursorCodec},
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::ApiError;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: DbPool,
    pub redis: RedisHandle,
    pub keys: Keyring,
    pub tokens: Tokens,
    pub cursors: CursorCodec,
    pub cache: Cache,
    pub metrics: Option<PrometheusHandle>,
    pub sessions: crate::session::Sessions,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        db: DbPool,
        redis: RedisHandle,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let keys = Keyring::new(&config.data_encryption_keys);
        let tokens = Tokens::new(
            config.jwt_secret.expose().as_bytes(),
            &config.jwt_issuer,
            &config.jwt_audience,
            config.access_token_ttl,
        );
        let cursors = CursorCodec::new(config.jwt_secret.expose().as_bytes());
        let cache = Cache::new(redis.clone(), &config.redis_namespace, &config.cache);
        clicknback_core::services::stats::configure(config.stats_coalesce);
        clicknback_core::services::auth::configure_hashing(
            clicknback_core::services::auth::HashingLimits {
                threads: config.sign_in.hash_threads,
                queue: config.sign_in.hash_queue,
            },
        );
        let sessions = crate::session::Sessions::new(
            config.jwt_secret.expose().as_bytes(),
            config.sign_in.board_session_ttl,
            !config.is_development(),
        );
        Self(Arc::new(Inner {
            config,
            db,
            redis,
            keys,
            tokens,
            cursors,
            cache,
            metrics,
            sessions,
        }))
    }

    pub async fn conn(&self) -> Result<DbConn, ApiError> {
        Ok(self.db.get().await?)
    }
}
