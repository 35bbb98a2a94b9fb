//! Fixed-window rate limits in Redis, so they hold across api replicas.
//!
//! A window is one key with a TTL; `hit` increments it atomically (and sets
//! the TTL on the first hit). When Redis is unreachable the limiter lets the
//! request through and logs it: a limiter must not take ingestion down.

use std::time::Duration;

use redis::aio::ConnectionLike;

/// A limit: `limit` hits per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub limit: u64,
    pub window: Duration,
}

/// Where a caller stands against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
    pub window_secs: u64,
}

impl Decision {
    fn open(l: Limit) -> Self {
        Self {
            allowed: true,
            limit: l.limit,
            remaining: l.limit,
            reset_secs: l.window.as_secs(),
            window_secs: l.window.as_secs(),
        }
    }

    /// `RateLimit-Policy` header value (IETF ratelimit-headers draft).
    pub fn policy_header(&self) -> String {
        format!("{};w={}", self.limit, self.window_secs)
    }

    /// `RateLimit` header value.
    pub fn limit_header(&self) -> String {
        format!(
            "limit={}, remaining={}, reset={}",
            self.limit, self.remaining, self.reset_secs
        )
    }
}

/// Hashed once per process; `invoke_async` sends EVALSHA and loads it on a miss.
static HIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(HIT_LUA));
const HIT_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

fn decide(l: Limit, count: u64, ttl_ms: i64) -> Decision {
    Decision {
        allowed: count <= l.limit,
        limit: l.limit,
        remaining: l.limit.saturating_sub(count),
        reset_secs: (ttl_ms.max(0) as u64).div_ceil(1_000),
        window_secs: l.window.as_secs(),
    }
}

/// Counts a hit and says whether it is within the limit.
pub async fn hit<C: ConnectionLike>(conn: &mut C, key: &str, l: Limit) -> Decision {
    let r: redis::RedisResult<(u64, i64)> = HIT
        .key(key)
        .arg(l.window.as_millis() as u64)
        .invoke_async(conn)
        .await;
    match r {
        Ok((n, ttl)) => decide(l, n, ttl),
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; allowing the request");
            Decision::open(l)
        }
    }
}

/// Where a key stands without counting a hit.
pub async fn peek<C: ConnectionLike>(conn: &mut C, key: &str, l: Limit) -> Decision {
    let r: redis::RedisResult<(Option<u64>, i64)> =
        redis::pipe().get(key).pttl(key).query_async(conn).await;
    match r {
        Ok((n, ttl)) => {
            let n = n.unwrap_or(0);
            let mut d = decide(
                l,
                n,
                if n == 0 {
                    l.window.as_millis() as i64
                } else {
                    ttl
                },
            );
            d.allowed = n < l.limit;
            d
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; allowing the request");
            Decision::open(l)
        }
    }
}

pub async fn reset<C: ConnectionLike>(conn: &mut C, key: &str) {
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(conn).await;
}
