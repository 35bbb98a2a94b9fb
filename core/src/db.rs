//! PostgreSQL access: the connection pool, embedded migrations and the error
//! helpers every service shares. Functions take a connection, never the pool.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{
    AsyncConnection, AsyncPgConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{Object, Pool},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Any key for the advisory lock that serialises migrations across processes.
const MIGRATION_LOCK_KEY: i64 = 0x636c_6b62_6d69_6772; // "clkbmigr"

/// The pool of connections to `database_url`. A connection is handed out
/// again without a round trip to check it (`RecyclingMethod::Fast`): one
/// whose socket is closed (the server restarted or ended it) or whose
/// transaction state is broken is dropped instead, and a query on a
/// connection that died unseen fails as any query can, for its caller's
/// retry. Checking with `SELECT 1` on every checkout cost a round trip on
/// every job and request.
pub fn pool(database_url: &str, max_size: usize) -> anyhow::Result<DbPool> {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// Applies pending migrations. Two processes starting together take turns on
/// an advisory lock, so the second finds nothing left to do. Each migration is
/// logged as it is applied.
pub async fn run_migrations(database_url: &str) -> anyhow::Result<Vec<String>> {
    run_migrations_with_progress(database_url, |step| {
        tracing::info!(
            migration = %step.name,
            step = step.index,
            total = step.total,
            elapsed_ms = step.elapsed.as_millis() as u64,
            "migration applied"
        );
    })
    .await
}

/// One applied migration, as reported to the progress callback.
#[derive(Debug, Clone)]
pub struct MigrationStep {
    /// 1-based position among the pending migrations of this run.
    pub index: usize,
    pub total: usize,
    pub name: String,
    pub elapsed: std::time::Duration,
}

/// [`run_migrations`], calling `progress` after each migration. Every
/// migration runs in a transaction of its own, so an interrupted run leaves
/// the database at a step boundary and the next run goes on from there.
pub async fn run_migrations_with_progress(
    database_url: &str,
    mut progress: impl FnMut(MigrationStep) + Send + 'static,
) -> anyhow::Result<Vec<String>> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        use diesel::Connection;
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
            <AsyncConnectionWrapper<AsyncPgConnection> as Connection>::establish(&url)?;
        diesel::RunQueryDsl::execute(
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY),
            &mut conn,
        )?;
        let result = (|| -> anyhow::Result<Vec<String>> {
            let pending = conn
                .pending_migrations(MIGRATIONS)
                .map_err(|e| anyhow::anyhow!("reading pending migrations failed: {e}"))?;
            let total = pending.len();
            let mut applied = Vec::with_capacity(total);
            for (i, migration) in pending.iter().enumerate() {
                let started = std::time::Instant::now();
                let version = conn.run_migration(migration.as_ref()).map_err(|e| {
                    anyhow::anyhow!("applying migration {} failed: {e}", migration.name())
                })?;
                progress(MigrationStep {
                    index: i + 1,
                    total,
                    name: migration.name().to_string(),
                    elapsed: started.elapsed(),
                });
                applied.push(version.to_string());
            }
            Ok(applied)
        })();
        diesel::RunQueryDsl::execute(
            diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY),
            &mut conn,
        )?;
        result
    })
    .await?
}

/// The versions of every embedded migration.
pub fn embedded_versions() -> Vec<String> {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
        .unwrap_or_default()
}

#[derive(diesel::QueryableByName)]
struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
}

/// Whether every embedded migration has been applied to this database.
pub async fn migrations_applied(conn: &mut AsyncPgConnection) -> Result<bool, DieselError> {
    let applied: Vec<Version> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load(conn)
        .await?;
    let applied: std::collections::HashSet<String> =
        applied.into_iter().map(|v| v.version).collect();
    Ok(embedded_versions().iter().all(|v| applied.contains(v)))
}

/// Connects once outside the pool (for CLI commands and checks).
pub async fn connect(database_url: &str) -> Result<AsyncPgConnection, diesel::ConnectionError> {
    AsyncPgConnection::establish(database_url).await
}

/// The name of the unique constraint a write violated, if that is what failed.
pub fn unique_violation(err: &DieselError) -> Option<&str> {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            info.constraint_name()
        }
        _ => None,
    }
}

/// Whether a query failed because PostgreSQL went away (a restart, a
/// failover, a dropped connection) rather than because of the query: worth
/// answering "retry shortly", not "internal error".
pub fn is_unavailable(err: &DieselError) -> bool {
    match err {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            // a failover that left us on a standby
            | DatabaseErrorKind::ReadOnlyTransaction,
            _,
        )
        | DieselError::BrokenTransactionManager => true,
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let m = info.message().to_ascii_lowercase();
            [
                "terminating connection",
                "connection closed",
                "server closed the connection",
                "the database system is shutting down",
                "the database system is starting up",
                "the database system is in recovery mode",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
    }
}

/// Whether a write broke a CHECK constraint of the given name.
pub fn check_violation(err: &DieselError, name: &str) -> bool {
    matches!(err, DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, info)
        if info.constraint_name() == Some(name))
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

async fn try_lock(conn: &mut AsyncPgConnection, sql: &str, key: i64) -> Result<bool, DieselError> {
    let row: Locked = diesel::sql_query(sql)
        .bind::<diesel::sql_types::BigInt, _>(key)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// A transaction-scoped advisory lock that is taken only if free.
pub async fn try_xact_lock(conn: &mut AsyncPgConnection, key: i64) -> Result<bool, DieselError> {
    try_lock(conn, "SELECT pg_try_advisory_xact_lock($1) AS locked", key).await
}

/// A session advisory lock that is taken only if free; release it with
/// [`session_unlock`] on the same connection (a closed connection releases it).
pub async fn try_session_lock(conn: &mut AsyncPgConnection, key: i64) -> Result<bool, DieselError> {
    try_lock(conn, "SELECT pg_try_advisory_lock($1) AS locked", key).await
}

pub async fn session_unlock(conn: &mut AsyncPgConnection, key: i64) -> Result<bool, DieselError> {
    try_lock(conn, "SELECT pg_advisory_unlock($1) AS locked", key).await
}

/// A stable 64-bit lock key for a string (first 8 bytes of its SHA-256).
pub fn lock_key(s: &str) -> i64 {
    let d = crate::crypto::sha256(s.as_bytes());
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}
