//! A Redis connection that is made on first use and re-made after failures,
//! so a process starts (and answers what does not need Redis) while Redis is
//! down. The connection manager gets generous timeouts: redis-rs's default
//! 500 ms response timeout turns a busy Redis into errors.
//!
//! `REDIS_URL` names one server (`redis://host:6379/0`, `rediss://…`) or a
//! Redis Cluster by some of its nodes: `redis+cluster://host1:7000,host2:7001`
//! (`rediss+cluster://` for TLS; user and password, if any, before the first
//! node: `redis+cluster://user:pass@host1:7000,host2:7001`). The redis
//! crate's cluster client takes those nodes as its initial nodes, discovers
//! the rest and follows failovers and slot moves by itself. Every key the
//! product uses together in one script or pipeline shares a hash tag
//! (`docs/SCALING.md`), so each such call lands on one node.

use std::time::Duration;

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::sync::OnceCell;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Redis is: one server or a cluster.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
pub struct RedisHandle {
    target: Target,
    conn: std::sync::Arc<OnceCell<RedisConn>>,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.target {
            Target::Single(_) => "RedisHandle(single)",
            Target::Cluster(_) => "RedisHandle(cluster)",
        })
    }
}

pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

/// The initial nodes of a `redis+cluster://` (or `rediss+cluster://`) URL,
/// each as a URL of its own; `None` for a single-server URL.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis://", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss://", rest)
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}{auth}{h}"))
            .collect(),
    )
}

impl RedisHandle {
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        let target = match cluster_nodes(url) {
            Some(nodes) if nodes.is_empty() => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a redis+cluster:// URL needs at least one host:port",
                )));
            }
            Some(nodes) => Target::Cluster(Box::new(
                ClusterClient::builder(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(4)
                    .build()?,
            )),
            None => Target::Single(redis::Client::open(url)?),
        };
        Ok(Self {
            target,
            conn: std::sync::Arc::new(OnceCell::new()),
        })
    }

    /// Whether this names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The shared multiplexed connection (reconnects by itself once made).
    pub async fn get(&self) -> redis::RedisResult<RedisConn> {
        self.conn.get_or_try_init(|| self.open()).await.cloned()
    }

    /// A connection of its own (for a long-lived user such as the job
    /// queues, which should not share the api's or relay's pipeline).
    pub async fn open(&self) -> redis::RedisResult<RedisConn> {
        Ok(match &self.target {
            Target::Single(client) => RedisConn::Single(
                ConnectionManager::new_with_config(client.clone(), manager_config()).await?,
            ),
            Target::Cluster(client) => RedisConn::Cluster(client.get_async_connection().await?),
        })
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.get().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }
}

/// A connection to one Redis server or to a cluster; both reconnect by
/// themselves, and a cluster connection routes each command to the node
/// that holds its key.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn(single)",
            Self::Cluster(_) => "RedisConn(cluster)",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(cluster_nodes("redis://h:6379/0"), None);
        assert_eq!(
            cluster_nodes("redis+cluster://a:7000,b:7001/").unwrap(),
            vec!["redis://a:7000", "redis://b:7001"]
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:7000, b:7001").unwrap(),
            vec!["rediss://u:p@a:7000", "rediss://u:p@b:7001"]
        );
        assert!(RedisHandle::new("redis+cluster://").is_err());
        assert!(
            RedisHandle::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
                .unwrap()
                .is_cluster()
        );
        assert!(!RedisHandle::new("redis://127.0.0.1/").unwrap().is_cluster());
    }
}
