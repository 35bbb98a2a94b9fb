//! Fixed-window rate limits in Redis, so they hold across api replicas.
//!
//! A window is one key with a TTL; `hit` increments it atomically (and sets
//! the TTL on the first hit), so a request is counted before it is let
//! through. When Redis is unreachable ([`try_hit`] fails) the api counts in
//! a [`LocalLimiter`] of its own process instead, with the same limits.

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

/// Counts a hit and says whether it is within the limit, atomically: of
/// many parallel hits at most `limit` are allowed.
pub async fn try_hit<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    l: Limit,
) -> redis::RedisResult<Decision> {
    let (n, ttl): (u64, i64) = HIT
        .key(key)
        .arg(l.window.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(decide(l, n, ttl))
}

/// Counts a hit and says whether it is within the limit (allowed when Redis fails).
pub async fn hit<C: ConnectionLike>(conn: &mut C, key: &str, l: Limit) -> Decision {
    match try_hit(conn, key, l).await {
        Ok(d) => d,
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

/// Fixed windows counted in this process, for when Redis does not answer:
/// each replica then enforces the limits on what it sees. At most
/// `capacity` windows are kept; when that many are live, a new caller is
/// refused (the table never grows past it).
pub struct LocalLimiter {
    capacity: usize,
    windows: std::sync::Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
}

impl LocalLimiter {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            windows: Default::default(),
        }
    }

    /// Counts a hit at `now`.
    pub fn hit(&self, key: &str, l: Limit, now: std::time::Instant) -> Decision {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(key) && windows.len() >= self.capacity {
            windows.retain(|_, (_, ends)| *ends > now);
            if windows.len() >= self.capacity {
                return decide(l, l.limit + 1, l.window.as_millis() as i64);
            }
        }
        let entry = windows.entry(key.to_owned()).or_insert((0, now + l.window));
        if entry.1 <= now {
            *entry = (0, now + l.window);
        }
        entry.0 += 1;
        let ttl = entry.1.saturating_duration_since(now).as_millis() as i64;
        decide(l, entry.0, ttl)
    }

    pub fn reset(&self, key: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_local_limiter_counts_windows_and_stays_bounded() {
        let l = Limit {
            limit: 3,
            window: Duration::from_secs(60),
        };
        let local = LocalLimiter::new(2);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| local.hit("a", l, t0).allowed).count();
        assert_eq!(allowed, 3);
        let d = local.hit("a", l, t0 + Duration::from_secs(59));
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 1);
        assert!(
            local.hit("a", l, t0 + Duration::from_secs(60)).allowed,
            "a new window"
        );
        assert!(local.hit("b", l, t0).allowed);
        assert!(
            !local.hit("c", l, t0).allowed,
            "full: a third caller is refused"
        );
        assert!(
            local.hit("c", l, t0 + Duration::from_secs(121)).allowed,
            "expired windows make room"
        );
        local.reset("c");
        assert_eq!(local.hit("c", l, t0).remaining, 2);
    }
}
