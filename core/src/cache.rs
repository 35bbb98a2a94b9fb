//! Read-through caching in Redis for hot reads (the active offer of a
//! merchant, a merchant, a user's statistics).
//!
//! Every entry has a TTL, and writers invalidate synchronously after their
//! transaction commits. Invalidation also bumps a generation counter next to
//! the entry, and a reader stores what it loaded only if the generation is
//! still the one it saw before loading: a read that raced a write can never
//! put the old value back after the writer returned.
//!
//! Redis is an accelerator here, never the source of truth: a cache that is
//! off, slow or unreachable sends the read to PostgreSQL.

use std::{future::Future, sync::LazyLock, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use crate::{config::CacheConfig, redis_conn::RedisHandle};

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms unless the generation moved past `ARGV[1]`.
static FILL: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FILL_LUA));
const FILL_LUA: &str = r"
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Bumps the generation (kept a day, far longer than any load) and drops the entry.
static INVALIDATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(INVALIDATE_LUA));
const INVALIDATE_LUA: &str = r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 86400000)
redis.call('DEL', KEYS[1])
return 1
";

/// An id as it appears in a key: itself when it is letters, digits, `-`
/// and `_` only, else `=` followed by its bytes in hex (`=` never starts a
/// plain id, and hex has no `:`).
fn key_part(id: &str) -> std::borrow::Cow<'_, str> {
    let plain = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        std::borrow::Cow::Borrowed(id)
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        std::borrow::Cow::Owned(format!("={hex}"))
    }
}

#[derive(Clone, Debug)]
pub struct Cache {
    redis: Option<RedisHandle>,
    namespace: String,
    cfg: CacheConfig,
}

impl Cache {
    pub fn new(redis: RedisHandle, namespace: &str, cfg: &CacheConfig) -> Self {
        Self {
            redis: cfg.enabled.then_some(redis),
            namespace: namespace.to_owned(),
            cfg: cfg.clone(),
        }
    }

    /// A cache that always loads from the source.
    pub fn off() -> Self {
        let ttl = Duration::from_secs(1);
        Self {
            redis: None,
            namespace: String::new(),
            cfg: CacheConfig {
                enabled: false,
                offer_ttl: ttl,
                merchant_ttl: ttl,
                stats_ttl: ttl,
                timeout: ttl,
            },
        }
    }

    /// TTLs and timeouts.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    pub fn is_on(&self) -> bool {
        self.redis.is_some()
    }

    /// The Redis key of an entry: `<namespace>:cache:{<kind>:<id>}` (apart
    /// from the queues, which live under `<namespace>:<queue>{…}:`). Its
    /// generation counter lives apart, under `<namespace>:cache-gen:`, so
    /// that no id makes an entry's key another entry's counter; an id other
    /// than letters, digits, `-` and `_` (a uuid, a publishable key) is
    /// written as `=` and its hex, so that no id reaches into another kind.
    /// The braces are a Redis Cluster hash tag: an entry and its counter
    /// (which one script reads together) share a slot, and entries spread
    /// over the cluster by kind and id.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:cache:{{{kind}:{}}}", self.namespace, key_part(id))
    }

    fn generation_key(&self, kind: &str, id: &str) -> String {
        format!("{}:cache-gen:{{{kind}:{}}}", self.namespace, key_part(id))
    }

    /// The cached value of `kind:id`, or what `load` returns (then cached for `ttl`).
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        kind: &'static str,
        id: &str,
        ttl: Duration,
        load: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Some(redis) = &self.redis else {
            return load().await;
        };
        let key = self.key(kind, id);
        let gen_key = self.generation_key(kind, id);
        let read = tokio::time::timeout(self.cfg.timeout, async {
            let mut c = redis.get().await?;
            redis::cmd("MGET")
                .arg(&key)
                .arg(&gen_key)
                .query_async::<(Option<Vec<u8>>, Option<String>)>(&mut c)
                .await
        })
        .await
        .map_err(|_| "too slow".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let generation = match read {
            Ok((Some(bytes), _)) => match serde_json::from_slice(&bytes) {
                Ok(v) => {
                    metrics::counter!("cache_requests_total", "cache" => kind, "outcome" => "hit")
                        .increment(1);
                    return Ok(v);
                }
                Err(e) => {
                    tracing::warn!(cache = kind, error = %e, "unreadable cache entry; reloading");
                    None
                }
            },
            Ok((None, generation)) => Some(generation.unwrap_or_else(|| "0".to_owned())),
            Err(e) => {
                tracing::debug!(cache = kind, error = %e, "cache unavailable; reading the database");
                metrics::counter!("cache_requests_total", "cache" => kind, "outcome" => "error")
                    .increment(1);
                return load().await;
            }
        };
        metrics::counter!("cache_requests_total", "cache" => kind, "outcome" => "miss")
            .increment(1);
        let value = load().await?;
        if let (Some(generation), Ok(bytes)) = (generation, serde_json::to_vec(&value)) {
            let _ = tokio::time::timeout(self.cfg.timeout, async {
                let mut c = redis.get().await?;
                FILL.key(&key)
                    .key(&gen_key)
                    .arg(generation)
                    .arg(bytes)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        }
        Ok(value)
    }

    /// Drops `kind:id` so the next read loads it afresh. Call after the write
    /// committed. A failure is logged and counted; the entry then still
    /// expires by its TTL.
    pub async fn invalidate(&self, kind: &'static str, id: &str) {
        let Some(redis) = &self.redis else {
            return;
        };
        let key = self.key(kind, id);
        let gen_key = self.generation_key(kind, id);
        let mut last = None;
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_secs(2), async {
                let mut c = redis.get().await?;
                INVALIDATE
                    .key(&key)
                    .key(&gen_key)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
            match r {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("timed out".to_owned()),
            }
        }
        metrics::counter!("cache_invalidation_failures_total", "cache" => kind).increment(1);
        tracing::error!(
            cache = kind,
            key,
            error = last.unwrap_or_default(),
            "cache invalidation failed; the entry expires by its TTL"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_id_names_another_entry_or_a_generation() {
        let cfg = CacheConfig {
            enabled: false,
            offer_ttl: Duration::from_secs(1),
            merchant_ttl: Duration::from_secs(1),
            stats_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let c = Cache {
            redis: None,
            namespace: "ns".into(),
            cfg,
        };
        assert_eq!(
            c.key("merchant:pk", "pk_abc-1"),
            "ns:cache:{merchant:pk:pk_abc-1}"
        );
        // An entry and its counter share a cluster hash tag.
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(
            tag(&c.key("offer:active", "m-1")),
            tag(&c.generation_key("offer:active", "m-1"))
        );
        let ids = ["pk_a", "pk_a:gen", "pk:pk_a", "=706b5f61", "", "a b"];
        let mut keys: Vec<String> = Vec::new();
        for kind in ["merchant", "merchant:pk"] {
            for id in ids {
                keys.push(c.key(kind, id));
                keys.push(c.generation_key(kind, id));
            }
        }
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "every (kind, id) has keys of its own");
        assert!(keys.iter().all(|k| k.matches(':').count() <= 4));
    }
}
