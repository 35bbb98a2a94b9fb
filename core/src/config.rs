//! Configuration, read once from the environment (and an optional `.env` in
//! development) and validated before anything starts.
//!
//! A missing or malformed value stops the program with one line naming the
//! variable and the form it expects. Secrets have no default outside
//! `APP_ENV=development`.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use base64::Engine;

/// The one error configuration loading can produce: which variable, and what it should look like.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var} {problem}; expected {expected}")]
pub struct ConfigError {
    pub var: String,
    pub problem: String,
    pub expected: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// A secret value: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
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
    pub relay: RelayConfig,
    pub worker: WorkerConfig,
    pub attribution: AttributionConfig,
}

/// How purchases are attributed and rewarded.
#[derive(Debug, Clone)]
pub struct AttributionConfig {
    /// Touchpoints older than this before the purchase do not count.
    pub window: Duration,
    /// A purchase with no user this long after it arrived becomes `unattributed`.
    pub unattributed_after: Duration,
    /// How long a purchase waiting for its user waits before the next look.
    pub recheck: Duration,
    /// Rewards scoring at or above this are flagged for review.
    pub fraud_threshold: f64,
    /// Pending rewards older than this are confirmed automatically.
    pub hold_period: Duration,
    /// Link-quality alert: mismatch rate above this over at least `link_min_attempts` in 24 h.
    pub link_mismatch_rate: f64,
    pub link_min_attempts: i64,
}

/// What the api's listener and middleware allow a connection and a request.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A connection whose request headers are not complete within this is closed.
    pub header_read_timeout: Duration,
    /// A request not answered within this gets a 503.
    pub request_timeout: Duration,
    /// Open connections at once; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// Requests handled at once; beyond it a 503 with `Retry-After` at once
    /// (health checks are never shed).
    pub max_in_flight: usize,
    /// Where `/metrics` is served; `None` serves it nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Database-backed gauges are recomputed at most this often.
    pub metrics_refresh: Duration,
    /// Origins allowed to call `/v1/track/*` from a browser; empty means any (`*`).
    pub sdk_allowed_origins: Vec<String>,
    /// The api's public origin (`https://api.example.com`), which state-changing
    /// board and admin calls from a browser must come from; unset, an `Origin`
    /// must name the host the request was sent to.
    pub public_origin: Option<String>,
}

/// Sign-in limits and password hashing.
#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// Sign-in attempts (any email) per client address per minute.
    pub per_ip_per_minute: u64,
    /// Registrations per client address per hour.
    pub register_per_ip_per_hour: u64,
    /// Threads that compute password hashes (each holds argon2id's 19 MiB).
    pub hash_threads: usize,
    /// Password checks waiting for a thread; beyond it a 503 at once.
    pub hash_queue: usize,
    /// How long a board session (after the login form) lasts.
    pub board_session_ttl: Duration,
}

/// Redis caches in front of hot reads. Every entry also expires by its TTL.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `false` sends every read to PostgreSQL (benchmarks compare both).
    pub enabled: bool,
    pub offer_ttl: Duration,
    pub merchant_ttl: Duration,
    pub stats_ttl: Duration,
    /// A cache read slower than this counts as a miss and goes to PostgreSQL.
    pub timeout: Duration,
}

/// Payouts and the provider that sends them.
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    pub min_amount_minor: i64,
    /// Base URL of the provider's API (`.../v1/payouts` is appended).
    pub provider_url: String,
    pub provider_key: Secret,
    /// Limit on every call to the provider.
    pub provider_timeout: Duration,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe; doubles up to `breaker_open_max`.
    pub breaker_open: Duration,
    pub breaker_open_max: Duration,
    /// Payouts unresolved (`processing`, `submitted_unknown`) for this long are
    /// looked up at the provider by the reconciliation schedule.
    pub reconcile_after: Duration,
    /// The api serves a sandbox provider at `/sandbox/provider` (development only).
    pub sandbox: bool,
}

/// How the worker runs jobs. Each job type's retry policy and each
/// schedule's cron expression are declared with the job or schedule itself;
/// their overrides (`JOB_RETRY_<JOB>`, `SCHEDULE_<NAME>`) are read by the
/// worker at start, through [`Env`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Workers heartbeat this often; a worker silent for
    /// `heartbeat × missed_heartbeats` has its in-flight jobs re-queued.
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    /// How often an idle worker asks Redis for due jobs.
    pub poll_interval: Duration,
    pub fetch_batch: usize,
    /// Concurrency per queue, in `Queue::ALL` order.
    pub concurrency: Vec<(crate::jobs::Queue, usize)>,
    /// How long running jobs may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Completed jobs are removed from Redis after this long.
    pub job_retention: Duration,
    /// Sent outbox rows are deleted after this long.
    pub outbox_retention: Duration,
}

impl WorkerConfig {
    pub fn concurrency_of(&self, q: crate::jobs::Queue) -> usize {
        self.concurrency
            .iter()
            .find(|(x, _)| *x == q)
            .map(|(_, n)| *n)
            .unwrap_or(1)
    }
}

/// Default concurrency per queue.
const DEFAULT_CONCURRENCY: &[(crate::jobs::Queue, &str, u64)] = &[
    (
        crate::jobs::Queue::Attribution,
        "QUEUE_CONCURRENCY_ATTRIBUTION",
        8,
    ),
    (crate::jobs::Queue::Rewards, "QUEUE_CONCURRENCY_REWARDS", 8),
    (crate::jobs::Queue::Emails, "QUEUE_CONCURRENCY_EMAILS", 4),
    (crate::jobs::Queue::Payouts, "QUEUE_CONCURRENCY_PAYOUTS", 4),
    (crate::jobs::Queue::Stats, "QUEUE_CONCURRENCY_STATS", 4),
    (
        crate::jobs::Queue::Maintenance,
        "QUEUE_CONCURRENCY_MAINTENANCE",
        2,
    ),
];

/// How the outbox relay moves rows into Redis.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    /// Upper bound on jobs held in Redis per queue (scheduled + ready); the
    /// outbox keeps the rest until there is room.
    pub queue_bound: u64,
    /// Rows due further ahead than this stay in the outbox.
    pub lookahead: Duration,
}

fn http_config<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<HttpConfig, ConfigError> {
    let metrics_addr = match env.raw("METRICS_ADDR").as_deref() {
        Some("off") => None,
        _ => Some(env.parsed(
            "METRICS_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 8082)),
            "a socket address like 127.0.0.1:8082, or `off`",
        )?),
    };
    let sdk_allowed_origins = env
        .or("SDK_ALLOWED_ORIGINS", "*")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty() && *o != "*")
        .map(|o| {
            let o = o.trim_end_matches('/');
            let origin = o.split_once("://").is_some_and(|(scheme, host)| {
                matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
            });
            if origin {
                Ok(o.to_owned())
            } else {
                Err(ConfigError {
                    var: "SDK_ALLOWED_ORIGINS".into(),
                    problem: format!("contains {o:?}"),
                    expected: "`*` or comma-separated origins like https://shop.example".into(),
                })
            }
        })
        .collect::<Result<_, _>>()?;
    let public_origin = env
        .raw("PUBLIC_ORIGIN")
        .map(|o| o.trim_end_matches('/').to_owned());
    if let Some(o) = &public_origin
        && !(o.starts_with("https://") || o.starts_with("http://"))
    {
        return Err(ConfigError {
            var: "PUBLIC_ORIGIN".into(),
            problem: format!("is {o:?}"),
            expected: "the api's origin, like https://api.example.com".into(),
        });
    }
    Ok(HttpConfig {
        header_read_timeout: env.secs("HTTP_HEADER_READ_TIMEOUT_SECS", 10, 1..=300)?,
        request_timeout: env.secs("HTTP_REQUEST_TIMEOUT_SECS", 30, 1..=3_600)?,
        max_connections: env.int_in("HTTP_MAX_CONNECTIONS", 1_024, 1..=1_000_000)? as usize,
        max_in_flight: env.int_in("HTTP_MAX_IN_FLIGHT", 256, 1..=1_000_000)? as usize,
        metrics_addr,
        metrics_refresh: env.secs("METRICS_GAUGE_REFRESH_SECS", 15, 1..=3_600)?,
        sdk_allowed_origins,
        public_origin,
    })
}

fn sign_in_config<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<SignInConfig, ConfigError> {
    Ok(SignInConfig {
        per_ip_per_minute: env.int_in("LOGIN_PER_IP_PER_MINUTE", 30, 1..=1_000_000)?,
        register_per_ip_per_hour: env.int_in("REGISTER_PER_IP_PER_HOUR", 20, 1..=1_000_000)?,
        hash_threads: env.int_in("PASSWORD_HASH_THREADS", 1, 1..=64)? as usize,
        hash_queue: env.int_in("PASSWORD_HASH_QUEUE", 32, 0..=100_000)? as usize,
        board_session_ttl: env.secs("BOARD_SESSION_TTL_SECS", 28_800, 60..=604_800)?,
    })
}

const DEV_PAYOUT_PROVIDER_KEY: &str = "sandbox-provider-key-development-only";

fn payout_config<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    api_addr: SocketAddr,
) -> Result<PayoutConfig, ConfigError> {
    let sandbox = env.bool("PAYOUT_SANDBOX", env.is_development())?;
    if sandbox && !env.is_development() {
        return Err(ConfigError {
            var: "PAYOUT_SANDBOX".into(),
            problem: "is true outside APP_ENV=development".into(),
            expected: "false in production (the sandbox sends no money)".into(),
        });
    }
    let sandbox_url = format!("http://{api_addr}/sandbox/provider");
    let provider_url = env.required(
        "PAYOUT_PROVIDER_URL",
        "the payout provider's base URL, like https://api.provider.example",
        Some(&sandbox_url),
    )?;
    if !(provider_url.starts_with("http://") || provider_url.starts_with("https://")) {
        return Err(ConfigError {
            var: "PAYOUT_PROVIDER_URL".into(),
            problem: "does not start with http:// or https://".into(),
            expected: "the payout provider's base URL, like https://api.provider.example".into(),
        });
    }
    let provider_key = env.required(
        "PAYOUT_PROVIDER_KEY",
        "the API key the payout provider issued",
        Some(DEV_PAYOUT_PROVIDER_KEY),
    )?;
    let breaker_open = env.secs("PAYOUT_BREAKER_OPEN_SECS", 30, 1..=3_600)?;
    let breaker_open_max = env.secs("PAYOUT_BREAKER_OPEN_MAX_SECS", 300, 1..=86_400)?;
    if breaker_open_max < breaker_open {
        return Err(ConfigError {
            var: "PAYOUT_BREAKER_OPEN_MAX_SECS".into(),
            problem: "is below PAYOUT_BREAKER_OPEN_SECS".into(),
            expected: "at least PAYOUT_BREAKER_OPEN_SECS".into(),
        });
    }
    Ok(PayoutConfig {
        min_amount_minor: env.int_in("PAYOUT_MIN_AMOUNT_MINOR", 1_000, 1..=1_000_000_000_000)?
            as i64,
        provider_url: provider_url.trim_end_matches('/').to_owned(),
        provider_key: Secret::new(provider_key),
        provider_timeout: env.millis("PAYOUT_PROVIDER_TIMEOUT_MS", 10_000, 100..=120_000)?,
        breaker_failures: env.int_in("PAYOUT_BREAKER_FAILURES", 5, 1..=1_000)? as u32,
        breaker_open,
        breaker_open_max,
        reconcile_after: env.secs("PAYOUT_RECONCILE_AFTER_SECS", 300, 1..=604_800)?,
        sandbox,
    })
}

/// Reads variables through a lookup function so tests can build a configuration in code.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
    dev: bool,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Result<Self, ConfigError> {
        let dev = match lookup("APP_ENV").as_deref().map(str::trim) {
            None | Some("") | Some("production") => false,
            Some("development") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: "APP_ENV".into(),
                    problem: format!("is {other:?}"),
                    expected: "`development` or `production`".into(),
                });
            }
        };
        Ok(Self { lookup, dev })
    }

    pub fn is_development(&self) -> bool {
        self.dev
    }

    pub fn raw(&self, var: &str) -> Option<String> {
        (self.lookup)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn missing(var: &str, expected: &str) -> ConfigError {
        ConfigError {
            var: var.into(),
            problem: "is not set".into(),
            expected: expected.into(),
        }
    }

    /// A required value; in development only, `dev_default` stands in when it is unset.
    pub fn required(
        &self,
        var: &str,
        expected: &str,
        dev_default: Option<&str>,
    ) -> Result<String, ConfigError> {
        match (self.raw(var), dev_default) {
            (Some(v), _) => Ok(v),
            (None, Some(d)) if self.dev => Ok(d.to_owned()),
            (None, _) => Err(Self::missing(var, expected)),
        }
    }

    pub fn or(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    pub fn parsed<T: FromStr>(
        &self,
        var: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError {
                var: var.into(),
                problem: format!("is {v:?}"),
                expected: expected.into(),
            }),
        }
    }

    /// An integer inside `range`.
    pub fn int_in(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let expected = format!("an integer from {} to {}", range.start(), range.end());
        let v: u64 = self.parsed(var, default, &expected)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError {
                var: var.into(),
                problem: format!("is {v}"),
                expected,
            })
        }
    }

    pub fn secs(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.int_in(var, default, range).map(Duration::from_secs)
    }

    pub fn millis(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.int_in(var, default, range).map(Duration::from_millis)
    }

    pub fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(ConfigError {
                var: var.into(),
                problem: format!("is {v:?}"),
                expected: "`true` or `false`".into(),
            }),
        }
    }
}

/// Development-only stand-ins for secrets; refused outside `APP_ENV=development`.
const DEV_JWT_SECRET: &str = "development-only-jwt-secret-change-me-0123456789";
const DEV_DATA_KEY: &str = "ZGV2ZWxvcG1lbnQtb25seS1kYXRhLWtleS0zMmJ5dGU=";

fn parse_key(var: &str, value: &str) -> Result<[u8; 32], ConfigError> {
    let bad = |problem: &str| ConfigError {
        var: var.into(),
        problem: problem.into(),
        expected: "base64 of exactly 32 random bytes (e.g. `openssl rand -base64 32`)".into(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad("is not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| bad("does not decode to 32 bytes"))
}

fn worker_config<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<WorkerConfig, ConfigError> {
    let mut concurrency = Vec::new();
    for (q, var, default) in DEFAULT_CONCURRENCY {
        concurrency.push((*q, env.int_in(var, *default, 1..=1_000)? as usize));
    }
    Ok(WorkerConfig {
        heartbeat: env.secs("JOB_HEARTBEAT_SECS", 5, 1..=300)?,
        missed_heartbeats: env.int_in("JOB_MISSED_HEARTBEATS", 3, 2..=100)? as usize,
        poll_interval: env.millis("JOB_POLL_INTERVAL_MS", 200, 10..=30_000)?,
        fetch_batch: env.int_in("JOB_FETCH_BATCH", 20, 1..=500)? as usize,
        concurrency,
        shutdown_grace: env.secs("SHUTDOWN_GRACE_SECS", 30, 0..=3_600)?,
        job_retention: env.secs("JOB_RETENTION_SECS", 3_600, 10..=2_592_000)?,
        outbox_retention: env.secs("OUTBOX_RETENTION_SECS", 86_400, 60..=2_592_000)?,
    })
}

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

        let database_url = env.required(
            "DATABASE_URL",
            "a PostgreSQL URL like postgres://user@host:5432/db",
            Some("postgres://postgres@127.0.0.1:5432/clicknback"),
        )?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: "DATABASE_URL".into(),
                problem: "does not start with postgres://".into(),
                expected: "a PostgreSQL URL like postgres://user@host:5432/db".into(),
            });
        }
        let redis_url = env.required(
            "REDIS_URL",
            "a Redis URL like redis://127.0.0.1:6379/0",
            Some("redis://127.0.0.1:6379/0"),
        )?;
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(ConfigError {
                var: "REDIS_URL".into(),
                problem: "does not start with redis:// or rediss://".into(),
                expected: "a Redis URL like redis://127.0.0.1:6379/0".into(),
            });
        }

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

        let jwt_secret = env.required(
            "JWT_SECRET",
            "a random string of at least 32 characters",
            Some(DEV_JWT_SECRET),
        )?;
        if jwt_secret.len() < 32 {
            return Err(ConfigError {
                var: "JWT_SECRET".into(),
                problem: format!("has {} characters", jwt_secret.len()),
                expected: "a random string of at least 32 characters".into(),
            });
        }

        let current_key = env.required(
            "DATA_ENCRYPTION_KEY",
            "base64 of exactly 32 random bytes (e.g. `openssl rand -base64 32`)",
            Some(DEV_DATA_KEY),
        )?;
        let mut data_encryption_keys = vec![parse_key("DATA_ENCRYPTION_KEY", &current_key)?];
        if let Some(previous) = env.raw("DATA_ENCRYPTION_PREVIOUS_KEYS") {
            for k in previous.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                data_encryption_keys.push(parse_key("DATA_ENCRYPTION_PREVIOUS_KEYS", k)?);
            }
        }

        let smtp_url = env.required(
            "SMTP_URL",
            "an SMTP URL like smtp://user:pass@host:587?tls=required or smtp://127.0.0.1:1025",
            Some("smtp://127.0.0.1:1025"),
        )?;
        if !(smtp_url.starts_with("smtp://") || smtp_url.starts_with("smtps://")) {
            return Err(ConfigError {
                var: "SMTP_URL".into(),
                problem: "does not start with smtp:// or smtps://".into(),
                expected: "an SMTP URL like smtp://127.0.0.1:1025".into(),
            });
        }

        let addr = |var: &str, default: &str| -> Result<SocketAddr, ConfigError> {
            env.parsed(
                var,
                default.parse().expect("valid default address"),
                "a socket address like 127.0.0.1:8080",
            )
        };

        let api_addr = addr("API_ADDR", "127.0.0.1:8080")?;
        let config = Self {
            app_env,
            database_url,
            database_pool_size: env.int_in("DATABASE_POOL_SIZE", 16, 1..=512)? as usize,
            redis_url,
            redis_namespace,
            api_addr,
            worker_addr: addr("WORKER_ADDR", "127.0.0.1:8081")?,
            jwt_secret: Secret::new(jwt_secret),
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
            cache: CacheConfig {
                enabled: env.bool("CACHE_ENABLED", true)?,
                offer_ttl: env.secs("OFFER_CACHE_TTL_SECS", 30, 1..=3_600)?,
                merchant_ttl: env.secs("MERCHANT_CACHE_TTL_SECS", 30, 1..=3_600)?,
                stats_ttl: env.secs("STATS_CACHE_TTL_SECS", 300, 1..=86_400)?,
                timeout: env.millis("CACHE_TIMEOUT_MS", 200, 1..=10_000)?,
            },
            http: http_config(&env)?,
            sign_in: sign_in_config(&env)?,
            payouts: payout_config(&env, api_addr)?,
            relay: RelayConfig {
                batch_size: env.int_in("OUTBOX_BATCH_SIZE", 2_000, 1..=10_000)? as i64,
                poll_interval: env.millis("OUTBOX_POLL_INTERVAL_MS", 200, 10..=60_000)?,
                max_backoff: env.secs("OUTBOX_MAX_BACKOFF_SECS", 30, 1..=3_600)?,
                queue_bound: env.int_in("QUEUE_MAX_IN_REDIS", 5_000, 100..=7_000)?,
                lookahead: env.secs("OUTBOX_LOOKAHEAD_SECS", 300, 0..=86_400)?,
            },
            worker: worker_config(&env)?,
            attribution: AttributionConfig {
                window: env.secs("ATTRIBUTION_WINDOW_SECS", 30 * 86_400, 60..=365 * 86_400)?,
                unattributed_after: env.secs(
                    "UNATTRIBUTED_AFTER_SECS",
                    7 * 86_400,
                    0..=365 * 86_400,
                )?,
                recheck: env.secs("ATTRIBUTION_RECHECK_SECS", 300, 1..=86_400)?,
                fraud_threshold: env.parsed("FRAUD_THRESHOLD", 0.7, "a number from 0 to 1")?,
                hold_period: env.secs("REWARD_HOLD_SECS", 30 * 86_400, 0..=365 * 86_400)?,
                link_mismatch_rate: env.parsed(
                    "LINK_MISMATCH_ALERT_RATE",
                    0.05,
                    "a number from 0 to 1",
                )?,
                link_min_attempts: env.int_in("LINK_MISMATCH_MIN_ATTEMPTS", 20, 1..=1_000_000)?
                    as i64,
            },
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
