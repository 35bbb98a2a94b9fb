//! The product on a real Redis Cluster (three primaries with a replica each,
//! started from the installed `redis-server`): jobs run through the worker
//! binary, every key of the queues stays in one slot, rate-limit and cache keys
//! spread over the primaries, and a primary that dies mid-run and fails over
//! to its replica loses no job (what asynchronous replication lost is relayed
//! again from PostgreSQL).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use axum::http::{Method, StatusCode};
use clicknback_core::{
    jobs::{Canary, Queue},
    models::user::Role,
    queues,
    services::users,
};
use clicknback_tests::{
    TestApp,
    canaries::{canaries, canary, enqueue},
    cluster::TestCluster,
    procs::eventually,
};
use serde_json::json;

/// Waits until `n` canaries completed; each applied its effect once.
async fn all_completed(app: &TestApp, n: usize, within: Duration) {
    let rows = eventually(within, "every canary to complete", || async {
        let rows = canaries(app).await;
        (rows.len() == n && rows.iter().all(|r| r.completed)).then_some(rows)
    })
    .await;
    for r in rows {
        assert_eq!(r.effects, 1, "{} applied its effect once: {r:?}", r.key);
    }
}

#[tokio::test]
async fn jobs_run_on_a_cluster_and_each_queue_keeps_to_one_slot() {
    let cluster = TestCluster::start().await;
    let app = TestApp::on_redis(&cluster.url(), &[]).await;
    for i in 0..20 {
        enqueue(&app, canary(&format!("c-{i}"))).await;
    }
    let mut worker = app.worker(&[]);
    all_completed(&app, 20, Duration::from_secs(60)).await;

    let keys = app.redis.keys().await;
    let mut queue_slots = BTreeSet::new();
    for q in Queue::ALL {
        let prefix = queues::queue_name(&app.redis.namespace, q);
        let mut slots = BTreeSet::new();
        for k in keys.iter().filter(|k| k.starts_with(&prefix)) {
            slots.insert(cluster.slot_of(k).await);
        }
        assert!(slots.len() <= 1, "{prefix}: keys in slots {slots:?}");
        if q == Queue::Maintenance {
            assert_eq!(slots.len(), 1, "the canaries' queue has keys: {keys:?}");
        }
        queue_slots.extend(slots);
    }
    assert_eq!(
        queue_slots,
        BTreeSet::from([cluster.slot_of("core:apalis:queues:list").await]),
        "every queue in the slot of apalis's one global key"
    );
    worker.term();
    assert_eq!(
        worker.wait(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn rate_limits_and_caches_work_and_spread_over_the_primaries() {
    let cluster = TestCluster::start().await;
    let app = TestApp::on_redis(&cluster.url(), &[("LOGIN_MAX_FAILURES", "3")]).await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "jane@example.com", "right-password", Role::User)
        .await
        .unwrap();
    let login = |email: &str| json!({"email": email, "password": "wrong-password"});
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = app
            .json(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(login("jane@example.com")),
            )
            .await;
        codes.push(r.status);
    }
    assert_eq!(
        codes,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "the failure limit counts in the cluster"
    );
    for i in 0..24 {
        app.json(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(login(&format!("someone-{i}@example.com"))),
        )
        .await;
    }
    for i in 0..24 {
        let id = format!("m-{i}");
        let v: String = app
            .cache()
            .get_or_load("offer:active", &id, Duration::from_secs(60), || async {
                Ok::<_, std::convert::Infallible>(format!("offer of {i}"))
            })
            .await
            .unwrap();
        assert_eq!(v, format!("offer of {i}"));
        let again: String = app
            .cache()
            .get_or_load("offer:active", &id, Duration::from_secs(60), || async {
                Ok::<_, std::convert::Infallible>("loaded again".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(again, format!("offer of {i}"), "served from the cache");
    }
    let keys = app.redis.keys().await;
    for what in [":rl:", ":cache:"] {
        let mut primaries = BTreeSet::new();
        for k in keys.iter().filter(|k| k.contains(what)) {
            primaries.insert(cluster.primary_of(k).await);
        }
        assert!(
            primaries.len() >= 2,
            "{what} keys spread over the primaries: {primaries:?} of {keys:?}"
        );
    }
}

#[tokio::test]
async fn a_primary_failing_over_mid_run_loses_no_job() {
    let mut cluster = TestCluster::start().await;
    let app = TestApp::on_redis(&cluster.url(), &[]).await;
    let n = 30;
    for i in 0..n {
        enqueue(
            &app,
            Canary {
                sleep_ms: 200,
                ..canary(&format!("f-{i:02}"))
            },
        )
        .await;
    }
    let mut worker = app.worker(&[
        ("JOB_RECOVERY_AFTER_SECS", "3"),
        ("QUEUE_CONCURRENCY_MAINTENANCE", "2"),
    ]);
    eventually(
        Duration::from_secs(60),
        "the first canaries to run",
        || async {
            let done = canaries(&app).await.iter().filter(|r| r.completed).count();
            (done >= 2).then_some(())
        },
    )
    .await;
    // The primary holding the canaries' queue dies; its replica takes over
    // after the node timeout.
    let queue = queues::queue_name(&app.redis.namespace, Queue::Maintenance);
    let primary = cluster.primary_of(&queue).await;
    let killed_at = Instant::now();
    cluster.kill(primary);
    eventually(
        Duration::from_secs(30),
        "a replica to serve the queue's slot",
        || async { cluster.serving(&queue).await.filter(|p| *p != primary) },
    )
    .await;
    cluster.wait_until_ok().await;
    let failover = killed_at.elapsed();
    all_completed(&app, n, Duration::from_secs(90)).await;
    eprintln!(
        "failover took {failover:?}; every job done {:?} after the kill",
        killed_at.elapsed()
    );
    worker.term();
    assert_eq!(
        worker.wait(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        worker.log_text()
    );
}
