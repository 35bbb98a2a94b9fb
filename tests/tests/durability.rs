//! Jobs survive what happens around them, with real worker processes,
//! PostgreSQL and Redis: a graceful restart hands running and buffered jobs
//! to the next worker, a re-queued dead job is a new chain of attempts that
//! retries and dies by its policy (re-queued and canaries enqueued from the
//! command line while Redis is down too), and jobs Redis forgot are relayed
//! again from PostgreSQL.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use clicknback_core::{
    config::RelayConfig,
    db,
    jobs::{Canary, Queue},
    redis_conn::RedisHandle,
};
use clicknback_tests::{
    TestApp,
    canaries::{canaries, canary, enqueue},
    procs::eventually,
};
use clicknback_worker::relay::Relay;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

/// How many jobs the maintenance queue's in-flight sets hold, per set.
async fn in_flight(app: &TestApp) -> Vec<(String, u64)> {
    let mut c = app.redis.conn().await;
    let mut out = Vec::new();
    let inflight =
        clicknback_core::queues::storage_config(&app.redis.namespace, Queue::Maintenance)
            .inflight_jobs_set()
            .to_owned();
    for k in app.redis.keys_matching(&format!("{inflight}:*")).await {
        let n: u64 = redis::cmd("SCARD")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        out.push((k, n));
    }
    out
}

#[tokio::test]
async fn a_graceful_restart_hands_running_and_buffered_jobs_to_the_next_worker() {
    let app = TestApp::new().await;
    for i in 1..=6 {
        enqueue(
            &app,
            Canary {
                sleep_ms: 4_000,
                ..canary(&format!("g{i}"))
            },
        )
        .await;
    }
    let mut first = app.worker(&[
        ("QUEUE_CONCURRENCY_MAINTENANCE", "1"),
        ("SHUTDOWN_GRACE_SECS", "1"),
    ]);
    // One runs; the other five are fetched into the worker's buffer.
    eventually(
        Duration::from_secs(20),
        "one job running, six fetched",
        || async {
            let started: i32 = canaries(&app).await.iter().map(|r| r.runs).sum();
            let held: u64 = in_flight(&app).await.iter().map(|(_, n)| n).sum();
            (started == 1 && held == 6).then_some(())
        },
    )
    .await;
    let old_sets = in_flight(&app).await;
    first.term();
    assert_eq!(
        first.wait(Duration::from_secs(15)).await,
        Some(0),
        "exit 0; log:\n{}",
        first.log_text()
    );
    assert!(
        canaries(&app).await.iter().all(|r| !r.completed),
        "the 4 s job cannot finish within the 1 s grace"
    );
    for (set, _) in &old_sets {
        assert!(
            !app.redis.keys_matching(set).await.contains(set),
            "{set} was handed back"
        );
    }

    let started = Instant::now();
    let second = app.worker(&[("QUEUE_CONCURRENCY_MAINTENANCE", "6")]);
    let rows = eventually(
        Duration::from_secs(30),
        "all six jobs to complete on the next worker",
        || async {
            let rows = canaries(&app).await;
            (rows.len() == 6 && rows.iter().all(|r| r.completed)).then_some(rows)
        },
    )
    .await;
    // Six 4 s jobs at once: picked up at the new worker's first fetch.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}; log:\n{}",
        started.elapsed(),
        second.log_text()
    );
    for r in &rows {
        assert_eq!(r.effects, 1, "{} completed once", r.key);
    }
    // The one stopped after the grace ran again; the buffered ones ran once.
    let mut runs: Vec<i32> = rows.iter().map(|r| r.runs).collect();
    runs.sort_unstable();
    assert_eq!(runs, [1, 1, 1, 1, 1, 2]);
    eventually(
        Duration::from_secs(5),
        "every in-flight set empty",
        || async {
            in_flight(&app)
                .await
                .iter()
                .all(|(_, n)| *n == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM outbox WHERE finished_at IS NULL")
            .await,
        0,
        "every job's outcome is recorded"
    );
}

#[derive(Debug, QueryableByName)]
struct Run {
    #[diesel(sql_type = diesel::sql_types::Text)]
    task_id: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempt: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    outcome: Option<String>,
}

#[tokio::test]
async fn dead_jobs_are_requeued_and_canaries_enqueued_while_redis_is_down() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    let data = serde_json::to_value(canary("down")).unwrap();
    clicknback_core::services::ops::record(
        &mut c,
        Queue::Maintenance,
        "canary:down",
        Some("Canary"),
        Some(&data),
        3,
        "boom",
    )
    .await
    .unwrap();
    let id = app
        .scalar("SELECT id AS n FROM dead_jobs WHERE task_id = 'canary:down'")
        .await;
    // Nothing listens on port 9: Redis is down for these commands.
    let down = [("REDIS_URL", "redis://127.0.0.1:9/0")];
    let (code, printed) = app
        .worker_command(&["requeue-dead", &id.to_string()], &down)
        .await;
    assert_eq!(code, 0, "{printed}");
    let (code, printed) = app
        .worker_command(&["canary", "--key", "down-canary"], &down)
        .await;
    assert_eq!(code, 0, "{printed}");
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM outbox
              WHERE task_id IN ('canary:down#q{id}', 'canary:down-canary') AND sent_at IS NULL"
        ))
        .await,
        2,
        "both wait in the outbox for the relay"
    );
    let (code, printed) = app.worker_command(&["pause", "maintenance"], &down).await;
    assert_ne!(code, 0, "pausing needs Redis: {printed}");
    assert!(printed.contains("Redis is unreachable"), "{printed}");
}

#[tokio::test]
async fn a_requeued_dead_job_retries_and_dies_again_by_its_policy() {
    let app = TestApp::new().await;
    let _w = app.worker(&[("JOB_RETRY_CANARY", "attempts=3,base=1s,cap=2s,jitter=0")]);
    enqueue(
        &app,
        Canary {
            fail_times: 5,
            ..canary("again")
        },
    )
    .await;
    let dead_sql = "SELECT count(*) AS n FROM dead_jobs WHERE task_id LIKE 'canary:again%'";
    eventually(Duration::from_secs(30), "the first death", || async {
        (app.scalar(dead_sql).await == 1).then_some(())
    })
    .await;
    assert_eq!(canaries(&app).await[0].runs, 3);
    let id = app
        .scalar("SELECT id AS n FROM dead_jobs WHERE task_id = 'canary:again#a3'")
        .await;

    let (code, printed) = app
        .worker_command(&["requeue-dead", &id.to_string()], &[])
        .await;
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains(&format!("canary:again#q{id}")),
        "{printed}"
    );

    eventually(Duration::from_secs(30), "the second death", || async {
        (app.scalar(dead_sql).await == 2).then_some(())
    })
    .await;
    let row = &canaries(&app).await[0];
    assert_eq!(
        (row.runs, row.effects, row.completed),
        (6, 0, false),
        "runs 4, 5 and 6, then dead again"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) AS n FROM dead_jobs WHERE task_id = 'canary:again#q{id}#a3' AND attempts = 3 AND requeued_at IS NULL"
        ))
        .await,
        1
    );
    let mut c = app.db.conn().await;
    let runs: Vec<Run> = diesel::sql_query(
        "SELECT task_id, attempt, outcome FROM outbox WHERE job_key = 'canary:again' ORDER BY created_at, id",
    )
    .load(&mut c)
    .await
    .unwrap();
    let seen: Vec<(&str, i32, Option<&str>)> = runs
        .iter()
        .map(|r| (r.task_id.as_str(), r.attempt, r.outcome.as_deref()))
        .collect();
    let q = format!("canary:again#q{id}");
    let (q2, q3) = (format!("{q}#a2"), format!("{q}#a3"));
    assert_eq!(
        seen,
        [
            ("canary:again", 1, Some("superseded")),
            ("canary:again#a2", 2, Some("superseded")),
            ("canary:again#a3", 3, Some("dead")),
            (q.as_str(), 1, Some("superseded")),
            (q2.as_str(), 2, Some("superseded")),
            (q3.as_str(), 3, Some("dead")),
        ]
    );

    // The job's view shows both chains, each with its attempts in order.
    let admin = app.admin_token().await;
    let r = app
        .json(
            Method::GET,
            &format!("/v1/admin/queues/maintenance/jobs/canary:again%23q{id}%23a3"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "dead");
    let chains = r.body["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{}", r.text);
    assert_eq!(
        (&chains[0]["chain"], &chains[0]["cause"]),
        (&"canary:again".into(), &"enqueue".into())
    );
    assert_eq!(
        (&chains[1]["chain"], &chains[1]["cause"]),
        (&q.clone().into(), &"requeue".into())
    );
    for chain in chains {
        let attempts: Vec<i64> = chain["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["attempt"].as_i64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 2, 3]);
        let last = &chain["runs"][2];
        assert_eq!(last["outcome"], "dead");
        assert!(last["dead_id"].is_i64());
        assert!(
            last["last_error"]
                .as_str()
                .unwrap()
                .contains("failing on attempt 3")
        );
    }
}

#[tokio::test]
async fn jobs_relayed_before_redis_is_flushed_still_run() {
    let app = TestApp::new().await;
    for i in 1..=3 {
        enqueue(&app, canary(&format!("f{i}"))).await;
    }
    let relay = Relay::new(
        db::pool(&app.db.url, 2).unwrap(),
        RedisHandle::new(&app.redis.url).unwrap(),
        app.redis.namespace.clone(),
        RelayConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            queue_bound: 5_000,
            lookahead: Duration::from_secs(300),
            recovery_after: Duration::from_secs(30),
        },
    );
    assert_eq!(relay.pass().await.unwrap(), 3);
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM outbox WHERE sent_at IS NOT NULL")
            .await,
        3
    );

    // Redis forgets everything of this deployment (only this test's keys).
    let all = app.redis.keys().await;
    assert!(!all.is_empty());
    let mut c = app.redis.conn().await;
    for key in &all {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    assert!(app.redis.keys().await.is_empty());

    let started = Instant::now();
    let w = app.worker(&[("JOB_RECOVERY_AFTER_SECS", "2")]);
    let rows = eventually(
        Duration::from_secs(30),
        "the forgotten jobs to run",
        || async {
            let rows = canaries(&app).await;
            (rows.len() == 3 && rows.iter().all(|r| r.completed)).then_some(rows)
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}; log:\n{}",
        started.elapsed(),
        w.log_text()
    );
    for r in &rows {
        assert_eq!((r.runs, r.effects), (1, 1), "{}", r.key);
    }
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM outbox WHERE recovered = 1 AND outcome = 'done' AND finished_at IS NOT NULL"
        )
        .await,
        3
    );
}
