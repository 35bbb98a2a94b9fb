//! Per-test databases cloned from a template that holds every migration.
//!
//! The template's name carries a hash of the migrations, so a changed migration
//! makes a new template. Creating it is serialised across test processes with an
//! advisory lock.

use std::sync::OnceLock;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};

/// The server to create databases on (a maintenance database URL).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL has a database path");
    format!("{base}/{db}")
}

fn migrations_hash() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap_or_default());
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn admin_exec(sql: &str) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(&admin_url()).await?;
    diesel::sql_query(sql).execute(&mut conn).await?;
    Ok(())
}

/// The migrated template, created once per test run (any process).
async fn template() -> anyhow::Result<String> {
    static NAME: OnceLock<String> = OnceLock::new();
    let name = NAME
        .get_or_init(|| format!("clicknback_tpl_{}", migrations_hash()))
        .clone();
    let mut conn = AsyncPgConnection::establish(&admin_url()).await?;
    diesel::sql_query("SELECT pg_advisory_lock(7262533)")
        .execute(&mut conn)
        .await?;
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        e: bool,
    }
    let exists: Exists = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{name}' AND datistemplate) AS e"
    ))
    .get_result(&mut conn)
    .await?;
    if !exists.e {
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        clicknback_core::db::run_migrations(&url_for(&name)).await?;
        diesel::sql_query(format!("ALTER DATABASE {name} WITH is_template = true"))
            .execute(&mut conn)
            .await?;
    }
    diesel::sql_query("SELECT pg_advisory_unlock(7262533)")
        .execute(&mut conn)
        .await?;
    Ok(name)
}

/// A database of this test's own, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let tpl = template().await.expect("template database");
        let name = format!("clicknback_t_{}", uuid::Uuid::new_v4().simple());
        admin_exec(&format!("CREATE DATABASE {name} TEMPLATE {tpl}"))
            .await
            .expect("create test database");
        let url = url_for(&name);
        Self { name, url }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(admin_exec(&format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )));
            }
        })
        .join();
    }
}

/// A Redis key namespace of this test's own, deleted when dropped. Works
/// against one Redis server or a cluster (`TEST_REDIS_URL=redis+cluster://…`).
pub struct TestRedis {
    pub namespace: String,
    pub url: String,
}

/// The servers to scan for keys: the one server, or every primary of a
/// cluster (as `CLUSTER NODES` on its first node lists them).
fn scan_targets(url: &str) -> Vec<String> {
    let Some(nodes) = clicknback_core::redis_conn::cluster_nodes(url) else {
        return vec![url.to_owned()];
    };
    // Any node that answers (one may have been killed by the test).
    let Some((scheme, listing)) = nodes.iter().find_map(|node| {
        let mut c = redis::Client::open(node.as_str())
            .ok()?
            .get_connection()
            .ok()?;
        let listing: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c).ok()?;
        Some((node.split_once("://")?.0.to_owned(), listing))
    }) else {
        return Vec::new();
    };
    listing
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(2)
                .is_some_and(|f| f.contains("master") && !f.contains("fail"))
        })
        .filter_map(|l| l.split(' ').nth(1))
        .map(|addr| format!("{scheme}://{}", addr.split('@').next().unwrap()))
        .collect()
}

/// Every key matching `pattern` on every server of `url` (blocking).
fn keys_blocking(url: &str, pattern: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for server in scan_targets(url) {
        let Ok(mut c) = redis::Client::open(server.as_str()).and_then(|c| c.get_connection())
        else {
            continue;
        };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, batch)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut c)
            else {
                break;
            };
            out.extend(batch.into_iter().map(|k| (server.clone(), k)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    out
}

impl TestRedis {
    pub fn new() -> Self {
        Self::at(&redis_url())
    }

    /// A namespace of its own on the Redis (or cluster) at `url`.
    pub fn at(url: &str) -> Self {
        Self {
            namespace: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            url: url.to_owned(),
        }
    }

    /// Whether the tests run against a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        clicknback_core::redis_conn::cluster_nodes(&self.url).is_some()
    }

    pub async fn conn(&self) -> clicknback_core::redis_conn::RedisConn {
        clicknback_core::redis_conn::RedisHandle::new(&self.url)
            .expect("TEST_REDIS_URL")
            .open()
            .await
            .expect("redis")
    }

    /// Every key under this namespace: `<ns>:…` and the queues' `{<ns>:<queue>}:…`.
    pub async fn keys(&self) -> Vec<String> {
        self.keys_matching(&format!("*{}:*", self.namespace)).await
    }

    /// Every key matching the SCAN pattern, on every server.
    pub async fn keys_matching(&self, pattern: &str) -> Vec<String> {
        let (url, pattern) = (self.url.clone(), pattern.to_owned());
        tokio::task::spawn_blocking(move || keys_blocking(&url, &pattern))
            .await
            .expect("scan")
            .into_iter()
            .map(|(_, k)| k)
            .collect()
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let pattern = format!("*{}:*", self.namespace);
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            // One key per DEL: a cluster refuses keys of several slots in one.
            let keys = keys_blocking(&url, &pattern);
            let mut by_server: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (server, key) in keys {
                by_server.entry(server).or_default().push(key);
            }
            for (server, keys) in by_server {
                let Ok(mut c) =
                    redis::Client::open(server.as_str()).and_then(|c| c.get_connection())
                else {
                    continue;
                };
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.del(k).ignore();
                }
                let _: redis::RedisResult<()> = pipe.query(&mut c);
            }
        })
        .join();
    }
}
