//! Configuration, read once from the environment (and an optional `.env` in
//! development) and validated before anything starts.
//!
//! A missing or malformed value stops the program with one line naming the
//! variable and the form it expects. Secrets have no default outside
//! `APP_ENV=development`.

mod attribution;
mod cache;
mod env;
mod explainer;
mod http;
mod payouts;
mod relay;
mod secrets;
mod sign_in;
mod worker;

use std::{net::SocketAddr, time::Duration};

pub use attribution::AttributionConfig;
pub use cache::CacheConfig;
pub use env::{ConfigError, Env, UrlForm};
pub use explainer::{ExplainerConfig, SANDBOX_MODEL};
pub use http::HttpConfig;
pub use payouts::PayoutConfig;
pub use relay::RelayConfig;
pub use secrets::Secret;
pub use sign_in::SignInConfig;
pub use worker::WorkerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// Settings shared by the api and the worker.
#[derive(Debug, Clone)]
pub struct Config {
    pub app_env: AppEnv,
    pub database_url: String,
    pub database_pool_size: usize,
    pub redis_url: String,
    /// Prefix of every Redis key this deployment uses (queues, limits, caches).
    pub redis_namespace: String,
    pub api_addr: SocketAddr,
    pub worker_addr: SocketAddr,
    pub jwt_secret: Secret,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl: Duration,
    /// Current data-encryption key first, then previous keys still accepted for decryption.
    pub data_encryption_keys: Vec<[u8; 32]>,
    pub smtp_url: Secret,
    pub email_from: String,
    pub attribution_delay: Duration,
    pub webhook_tolerance: Duration,
    /// How long a rotated-out webhook secret keeps verifying.
    pub webhook_secret_grace: Duration,
    pub idempotency_retention: Duration,
    pub max_body_bytes: usize,
    /// Failed logins allowed per email and client address within `login_window`.
    pub login_max_failures: u64,
    pub login_window: Duration,
    /// SDK tracking calls allowed per client address per minute.
    pub track_per_minute: u64,
    /// Load balancers whose `X-Forwarded-For` is believed: behind them the
    /// client address (for per-address limits) is the nearest untrusted hop.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub run_migrations_on_start: bool,
    /// `false` turns every rate limit off (benchmarks compare both).
    pub rate_limits_enabled: bool,
    /// Signed webhooks allowed per merchant per minute, unless the merchant
    /// has its own `webhook_rate_limit_per_minute`.
    pub webhook_per_minute: u64,
    /// Reward movements for one user inside this window share one statistics recompute.
    pub stats_coalesce: Duration,
    pub cache: CacheConfig,
    pub http: HttpConfig,
    pub sign_in: SignInConfig,
    pub payouts: PayoutConfig,
    /// Explains flagged purchases to the admins who review them.
    pub explainer: ExplainerConfig,
    pub relay: RelayConfig,
    pub worker: WorkerConfig,
    pub attribution: AttributionConfig,
}

const DATABASE_URL: UrlForm<'static> = UrlForm {
    expected: "a PostgreSQL URL like postgres://user@host:5432/db",
    schemes: &["postgres://"],
    aliases: &["postgresql://"],
    expected_scheme: None,
};

const REDIS_URL: UrlForm<'static> = UrlForm {
    expected: "a Redis URL like redis://127.0.0.1:6379/0, or a cluster's nodes like redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
    schemes: &[
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ],
    aliases: &[],
    expected_scheme: None,
};

const SMTP_URL: UrlForm<'static> = UrlForm {
    expected: "an SMTP URL like smtp://user:pass@host:587?tls=required or smtp://127.0.0.1:1025",
    schemes: &["smtp://", "smtps://"],
    aliases: &[],
    expected_scheme: Some("an SMTP URL like smtp://127.0.0.1:1025"),
};

impl Config {
    /// Loads from the process environment, reading `.env` first in development.
    pub fn from_env() -> Result<Self, ConfigError> {
        if std::env::var("APP_ENV").as_deref() == Ok("development") {
            let _ = dotenvy::dotenv();
        }
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(lookup)?;
        let app_env = if env.is_development() {
            AppEnv::Development
        } else {
            AppEnv::Production
        };

        let database_url = env.url(
            "DATABASE_URL",
            &DATABASE_URL,
            Some("postgres://postgres@127.0.0.1:5432/clicknback"),
        )?;
        let redis_url = env.url("REDIS_URL", &REDIS_URL, Some("redis://127.0.0.1:6379/0"))?;

        let redis_namespace = env.or("REDIS_NAMESPACE", "clicknback");
        if !redis_namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError {
                var: "REDIS_NAMESPACE".into(),
                problem: format!("is {redis_namespace:?}"),
                expected: "letters, digits, `_` or `-`".into(),
            });
        }

        let jwt_secret = secrets::jwt_secret(&env)?;
        let data_encryption_keys = secrets::data_encryption_keys(&env)?;

        let smtp_url = env.url("SMTP_URL", &SMTP_URL, Some("smtp://127.0.0.1:1025"))?;

        let addr = |var: &str, default: &str| -> Result<SocketAddr, ConfigError> {
            env.parsed(
                var,
                default.parse().expect("valid default address"),
                "a socket address like 127.0.0.1:8080",
            )
        };

        let api_addr = addr("API_ADDR", "127.0.0.1:8080")?;
        let explainer = explainer::read(&env, api_addr)?;
        let mut attribution = attribution::read(&env)?;
        attribution.explain_flagged = explainer.enabled();
        let config = Self {
            app_env,
            database_url,
            database_pool_size: env.int_in("DATABASE_POOL_SIZE", 16, 1..=512)? as usize,
            redis_url,
            redis_namespace,
            api_addr,
            worker_addr: addr("WORKER_ADDR", "127.0.0.1:8081")?,
            jwt_secret,
            jwt_issuer: env.or("JWT_ISSUER", "clicknback"),
            jwt_audience: env.or("JWT_AUDIENCE", "clicknback-api"),
            access_token_ttl: env.secs("ACCESS_TOKEN_TTL_SECS", 900, 60..=86_400)?,
            data_encryption_keys,
            smtp_url: Secret::new(smtp_url),
            email_from: env.or("EMAIL_FROM", "ClickNBack <no-reply@clicknback.local>"),
            attribution_delay: env.secs("ATTRIBUTION_DELAY_SECS", 60, 0..=86_400)?,
            webhook_tolerance: env.secs("WEBHOOK_TOLERANCE_SECS", 300, 1..=3_600)?,
            webhook_secret_grace: env.secs("WEBHOOK_SECRET_GRACE_SECS", 86_400, 0..=2_592_000)?,
            idempotency_retention: env.secs(
                "IDEMPOTENCY_RETENTION_SECS",
                86_400,
                60..=2_592_000,
            )?,
            max_body_bytes: env.int_in("MAX_BODY_BYTES", 65_536, 1_024..=10_485_760)? as usize,
            login_max_failures: env.int_in("LOGIN_MAX_FAILURES", 5, 1..=1_000)?,
            login_window: env.secs("LOGIN_WINDOW_SECS", 900, 1..=86_400)?,
            track_per_minute: env.int_in("TRACK_RATE_LIMIT_PER_MINUTE", 300, 1..=1_000_000)?,
            trusted_proxies: env
                .raw("TRUSTED_PROXIES")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    // `::ffff:a.b.c.d` and `a.b.c.d` are one address.
                    p.parse::<std::net::IpAddr>()
                        .map(|ip| ip.to_canonical())
                        .map_err(|_| ConfigError {
                            var: "TRUSTED_PROXIES".into(),
                            problem: format!("contains {p:?}"),
                            expected: "comma-separated IP addresses of your load balancers".into(),
                        })
                })
                .collect::<Result<_, _>>()?,
            run_migrations_on_start: env.bool("RUN_MIGRATIONS_ON_START", true)?,
            rate_limits_enabled: env.bool("RATE_LIMITS_ENABLED", true)?,
            webhook_per_minute: env.int_in(
                "WEBHOOK_RATE_LIMIT_PER_MINUTE",
                1_200,
                1..=10_000_000,
            )?,
            stats_coalesce: env.secs("STATS_COALESCE_SECS", 5, 0..=3_600)?,
            cache: cache::read(&env)?,
            http: http::read(&env)?,
            sign_in: sign_in::read(&env)?,
            payouts: payouts::read(&env, api_addr)?,
            explainer,
            relay: relay::read(&env)?,
            worker: worker::read(&env)?,
            attribution,
        };
        // A webhook's idempotency record must outlive the window in which its
        // signature verifies, or a replay after the purge is accepted again.
        if config.idempotency_retention < config.webhook_tolerance {
            return Err(ConfigError {
                var: "IDEMPOTENCY_RETENTION_SECS".into(),
                problem: format!(
                    "is {} seconds, below WEBHOOK_TOLERANCE_SECS ({} seconds)",
                    config.idempotency_retention.as_secs(),
                    config.webhook_tolerance.as_secs()
                ),
                expected: "at least WEBHOOK_TOLERANCE_SECS".into(),
            });
        }
        Ok(config)
    }

    pub fn is_development(&self) -> bool {
        self.app_env == AppEnv::Development
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn development_has_defaults_for_everything() {
        let cfg = load(&[("APP_ENV", "development")]).unwrap();
        assert_eq!(cfg.api_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.attribution_delay, Duration::from_secs(60));
    }

    #[test]
    fn the_explainer_is_the_sandbox_in_development_and_off_without_it() {
        let dev = ("APP_ENV", "development");
        let cfg = load(&[dev]).unwrap();
        assert!(cfg.explainer.sandbox && cfg.attribution.explain_flagged);
        assert_eq!(
            cfg.explainer.url.as_deref(),
            Some("http://127.0.0.1:8080/sandbox/explainer/v1")
        );
        assert_eq!(cfg.explainer.model, SANDBOX_MODEL);
        let off = load(&[dev, ("FRAUD_EXPLAINER_SANDBOX", "false")]).unwrap();
        assert!(!off.explainer.enabled() && !off.attribution.explain_flagged);
        assert!(off.explainer.key.is_none());
        let err = load(&[dev, ("FRAUD_EXPLAINER_URL", "http://127.0.0.1:11434/v1")]).unwrap_err();
        assert_eq!(
            err.var, "FRAUD_EXPLAINER_MODEL",
            "a real API needs its model named"
        );
        let local = load(&[
            dev,
            ("FRAUD_EXPLAINER_URL", "http://127.0.0.1:11434/v1/"),
            ("FRAUD_EXPLAINER_MODEL", "llama3.2"),
        ])
        .unwrap();
        assert_eq!(
            local.explainer.url.as_deref(),
            Some("http://127.0.0.1:11434/v1")
        );
        assert!(
            local.explainer.key.is_none(),
            "no sandbox key for a real API"
        );
        let err = load(&[
            dev,
            ("FRAUD_EXPLAINER_BREAKER_OPEN_SECS", "60"),
            ("FRAUD_EXPLAINER_BREAKER_OPEN_MAX_SECS", "10"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "FRAUD_EXPLAINER_BREAKER_OPEN_MAX_SECS");
    }

    #[test]
    fn production_requires_secrets_and_names_the_variable() {
        let err = load(&[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("REDIS_URL", "redis://h"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "JWT_SECRET");
        assert!(err.to_string().contains("JWT_SECRET is not set"));
    }

    #[test]
    fn malformed_values_are_named_with_their_expected_form() {
        let err = load(&[
            ("APP_ENV", "development"),
            ("ATTRIBUTION_DELAY_SECS", "soon"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "ATTRIBUTION_DELAY_SECS");
        assert!(err.expected.contains("integer"));
        let err = load(&[
            ("APP_ENV", "development"),
            ("DATA_ENCRYPTION_KEY", "c2hvcnQ="),
        ])
        .unwrap_err();
        assert_eq!(err.var, "DATA_ENCRYPTION_KEY");
        let err = load(&[("APP_ENV", "staging")]).unwrap_err();
        assert_eq!(err.var, "APP_ENV");
    }

    #[test]
    fn urls_are_checked_by_scheme_with_one_message_each() {
        let dev = ("APP_ENV", "development");
        let err = load(&[dev, ("DATABASE_URL", "mysql://h/db")]).unwrap_err();
        assert_eq!(err.problem, "does not start with postgres://");
        assert!(load(&[dev, ("DATABASE_URL", "postgresql://h/db")]).is_ok());
        let err = load(&[dev, ("REDIS_URL", "http://h")]).unwrap_err();
        assert_eq!(
            err.problem,
            "does not start with redis:// or rediss:// or redis+cluster:// or rediss+cluster://"
        );
        assert!(load(&[dev, ("REDIS_URL", "redis+cluster://h1:7000,h2:7000")]).is_ok());
        let err = load(&[dev, ("SMTP_URL", "mail://h")]).unwrap_err();
        assert_eq!(err.problem, "does not start with smtp:// or smtps://");
        assert_eq!(err.expected, "an SMTP URL like smtp://127.0.0.1:1025");
        let err = load(&[dev, ("PAYOUT_PROVIDER_URL", "ftp://h")]).unwrap_err();
        assert_eq!(err.problem, "does not start with http:// or https://");
    }

    #[test]
    fn idempotency_records_must_outlive_the_signature_tolerance() {
        let err = load(&[
            ("APP_ENV", "development"),
            ("WEBHOOK_TOLERANCE_SECS", "600"),
            ("IDEMPOTENCY_RETENTION_SECS", "300"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "IDEMPOTENCY_RETENTION_SECS");
        assert!(err.to_string().contains("WEBHOOK_TOLERANCE_SECS"), "{err}");
        assert!(
            load(&[
                ("APP_ENV", "development"),
                ("WEBHOOK_TOLERANCE_SECS", "600"),
                ("IDEMPOTENCY_RETENTION_SECS", "600"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn trusted_proxies_are_canonical_and_http_settings_parse() {
        let cfg = load(&[
            ("APP_ENV", "development"),
            ("TRUSTED_PROXIES", "::ffff:10.0.0.2, 10.0.0.3"),
            (
                "SDK_ALLOWED_ORIGINS",
                "https://shop.example, http://localhost:3000/",
            ),
            ("METRICS_ADDR", "off"),
        ])
        .unwrap();
        let lb: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert!(cfg.trusted_proxies.contains(&lb));
        assert_eq!(
            cfg.http.sdk_allowed_origins,
            ["https://shop.example", "http://localhost:3000"]
        );
        assert_eq!(cfg.http.metrics_addr, None);
        let cfg = load(&[("APP_ENV", "development")]).unwrap();
        assert!(
            cfg.http.sdk_allowed_origins.is_empty(),
            "any origin by default"
        );
        assert_eq!(cfg.http.metrics_addr.unwrap().to_string(), "127.0.0.1:8082");
        let err = load(&[
            ("APP_ENV", "development"),
            ("SDK_ALLOWED_ORIGINS", "shop.example"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "SDK_ALLOWED_ORIGINS");
    }
}
