//! Embedded migrations: two processes starting together on an empty database
//! take turns (advisory lock), both succeed, and every migration is applied
//! once; `down.sql` reverts cleanly.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

async fn admin(sql: &str) {
    let mut c = AsyncPgConnection::establish(&clicknback_tests::db::admin_url())
        .await
        .unwrap();
    diesel::sql_query(sql).execute(&mut c).await.unwrap();
}

#[tokio::test]
async fn concurrent_starts_apply_each_migration_once() {
    let name = format!("clicknback_m_{}", uuid::Uuid::new_v4().simple());
    admin(&format!("CREATE DATABASE {name}")).await;
    let base = clicknback_tests::db::admin_url();
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let (a, b) = tokio::join!(
        clicknback_core::db::run_migrations(&url),
        clicknback_core::db::run_migrations(&url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let embedded = clicknback_core::db::embedded_versions();
    assert_eq!(
        a.len() + b.len(),
        embedded.len(),
        "each migration applied by exactly one of them"
    );
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    assert!(
        clicknback_core::db::migrations_applied(&mut conn)
            .await
            .unwrap()
    );
    drop(conn);
    // Every down.sql reverts its up.sql, and the schema comes back again.
    let redo_url = url.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        use diesel_migrations::MigrationHarness;
        let mut c = <diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
            AsyncPgConnection,
        > as Connection>::establish(&redo_url)
        .unwrap();
        let reverted = c
            .revert_all_migrations(clicknback_core::db::MIGRATIONS)
            .unwrap();
        assert_eq!(reverted.len(), embedded.len());
        let again = c
            .run_pending_migrations(clicknback_core::db::MIGRATIONS)
            .unwrap();
        assert_eq!(again.len(), embedded.len());
    })
    .await
    .unwrap();
    admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
