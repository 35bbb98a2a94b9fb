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

/// A Redis key namespace of this test's own, deleted when dropped.
pub struct TestRedis {
    pub namespace: String,
    pub url: String,
}

impl TestRedis {
    pub fn new() -> Self {
        Self {
            namespace: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            url: redis_url(),
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// Every key under this namespace.
    pub async fn keys(&self) -> Vec<String> {
        let mut c = self.conn().await;
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.namespace))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .expect("scan");
            out.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let ns = self.namespace.clone();
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut c) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{ns}:*"))
                .query(&mut c)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut c);
            }
        })
        .join();
    }
}
