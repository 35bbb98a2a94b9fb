//! Canary jobs (`jobs::Canary`) as the job tests use them: enqueue one
//! through the outbox, and read back what every canary did.

use clicknback_core::jobs::{self, Canary};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use crate::TestApp;

/// What one canary did: how often it ran and applied its effect.
#[derive(Debug, QueryableByName)]
pub struct CanaryRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub key: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub runs: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub effects: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub completed: bool,
}

/// Every canary of the test's database, by key.
pub async fn canaries(app: &TestApp) -> Vec<CanaryRow> {
    let mut c = app.db.conn().await;
    diesel::sql_query(
        "SELECT key, runs, effects, completed_at IS NOT NULL AS completed FROM canary_runs ORDER BY key",
    )
    .load(&mut c)
    .await
    .unwrap()
}

/// A canary that succeeds at once.
pub fn canary(key: &str) -> Canary {
    Canary {
        key: key.into(),
        fail_times: 0,
        permanent: false,
        sleep_ms: 0,
        fail_until_fixed: false,
        noop: false,
    }
}

/// Enqueues `job` through the outbox, due now.
pub async fn enqueue(app: &TestApp, job: Canary) {
    let mut c = app.db.conn().await;
    assert!(
        jobs::enqueue(&mut c, &job, chrono::Utc::now())
            .await
            .unwrap()
    );
}
