//! The outbox relay against real PostgreSQL and Redis: rows reach their apalis
//! queue scheduled for their due time, replicas never push a row twice, Redis
//! outages lose nothing and back off only the failed batch, and the number of
//! jobs held in Redis stays under the bound.

use std::time::Duration;

use axum::http::StatusCode;
use clicknback_core::{config::RelayConfig, db, jobs::Queue, queues, redis_conn::RedisHandle};
use clicknback_tests::{TestApp, webhook::purchase_body};
use clicknback_worker::relay::Relay;
use diesel_async::RunQueryDsl;

fn relay_config(batch: i64, bound: u64) -> RelayConfig {
    RelayConfig {
        batch_size: batch,
        poll_interval: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
        queue_bound: bound,
        lookahead: Duration::from_secs(300),
        recovery_after: Duration::from_secs(30),
    }
}

fn relay(app: &TestApp, redis_url: &str, cfg: RelayConfig) -> Relay {
    Relay::new(
        db::pool(&app.db.url, 4).unwrap(),
        RedisHandle::new(redis_url).unwrap(),
        app.redis.namespace.clone(),
        cfg,
    )
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    app.scalar(sql).await
}

async fn fill_outbox(app: &TestApp, n: i64) {
    let mut c = app.db.conn().await;
    diesel::sql_query(format!(
        "INSERT INTO outbox (queue, task_id, payload, run_at)
         SELECT 'stats', 'stats-test:' || g, jsonb_build_object('job', 'RecomputeUserStats', 'data',
                jsonb_build_object('user_id', gen_random_uuid())), now()
         FROM generate_series(1, {n}) g"
    ))
    .execute(&mut c)
    .await
    .unwrap();
}

#[tokio::test]
async fn webhook_purchase_becomes_a_scheduled_job_due_at_its_attribution_time() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Shop").await;
    let res = app
        .webhook(
            &format!("/v1/webhooks/{mid}/purchases"),
            &secret,
            &purchase_body("o-1", 1_000),
            &[],
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    let pid = res.body["id"].as_str().unwrap();
    let r = relay(&app, &app.redis.url, relay_config(100, 5_000));
    assert_eq!(r.pass().await.unwrap(), 1);

    let cfg = queues::storage_config(&app.redis.namespace, Queue::Attribution);
    let mut redis = app.redis.conn().await;
    let task_id = format!("attribute:{pid}");
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(cfg.scheduled_jobs_set())
        .arg(&task_id)
        .query_async(&mut redis)
        .await
        .unwrap();
    let due = score.expect("the job is in the scheduled set") as i64;
    let expected = chrono::Utc::now().timestamp() + 60;
    assert!(
        (due - expected).abs() <= 2,
        "due {due}, expected about {expected}"
    );
    let data: String = redis::cmd("HGET")
        .arg(cfg.job_data_hash())
        .arg(&task_id)
        .query_async(&mut redis)
        .await
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(envelope["job"], "AttributePurchase");
    assert_eq!(envelope["payload"]["purchase_id"], pid);
    assert_eq!(envelope["attempt"], 1);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn two_relays_at_once_never_push_a_row_twice() {
    let app = TestApp::new().await;
    fill_outbox(&app, 3_000).await;
    let a = relay(&app, &app.redis.url, relay_config(50, 7_000));
    let b = relay(&app, &app.redis.url, relay_config(50, 7_000));
    let drain = |r: Relay| async move {
        let mut pushed = 0;
        let mut idle = 0;
        while idle < 20 {
            let p = r.pass_queue(Queue::Stats).await.unwrap();
            pushed += p.pushed;
            if p.pushed == 0 {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            } else {
                idle = 0;
            }
        }
        pushed
    };
    let (pa, pb) = tokio::join!(drain(a), drain(b));
    assert_eq!(pa + pb, 3_000, "a pushed {pa}, b pushed {pb}");
    let cfg = queues::storage_config(&app.redis.namespace, Queue::Stats);
    let mut redis = app.redis.conn().await;
    let held: u64 = redis::cmd("HLEN")
        .arg(cfg.job_data_hash())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(held, 3_000);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn redis_down_loses_nothing_and_the_backlog_drains_afterwards() {
    // The API does not need Redis to accept purchases.
    let app = TestApp::with(&[("REDIS_URL", "redis://127.0.0.1:1/0")]).await;
    let admin = app.admin_token().await;
    let (mid, secret, _) = app.merchant(&admin, "Shop").await;
    for i in 0..5 {
        let r = app
            .webhook(
                &format!("/v1/webhooks/{mid}/purchases"),
                &secret,
                &purchase_body(&format!("o-{i}"), 100),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    }
    fill_outbox(&app, 3).await;
    // A relay whose Redis is down claims nothing and marks nothing sent.
    let down = relay(&app, "redis://127.0.0.1:1/0", relay_config(2, 5_000));
    assert!(down.pass().await.is_err());
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
        )
        .await,
        8
    );
    // Redis back: everything drains.
    let up = relay(&app, &app.redis.url, relay_config(2, 5_000));
    let mut total = 0;
    for _ in 0..20 {
        total += up.pass().await.unwrap();
    }
    assert_eq!(total, 8);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
        )
        .await,
        0
    );
    let cfg = queues::storage_config(&app.redis.namespace, Queue::Attribution);
    let mut redis = app.redis.conn().await;
    let scheduled: u64 = redis::cmd("ZCARD")
        .arg(cfg.scheduled_jobs_set())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(scheduled, 5);
}

#[tokio::test]
async fn a_failed_push_backs_off_only_its_own_batch() {
    let app = TestApp::new().await;
    fill_outbox(&app, 10).await;
    // Make the push itself fail: the queue's data hash has the wrong type.
    let cfg = queues::storage_config(&app.redis.namespace, Queue::Stats);
    let mut redis = app.redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(cfg.job_data_hash())
        .arg("not a hash")
        .query_async(&mut redis)
        .await
        .unwrap();
    let r = relay(&app, &app.redis.url, relay_config(4, 5_000));
    assert!(r.pass_queue(Queue::Stats).await.is_err());
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE relay_attempts = 1 AND last_error IS NOT NULL"
        )
        .await,
        4
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE relay_attempts = 0 AND last_error IS NULL"
        )
        .await,
        6
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE relay_attempts = 1 AND next_attempt_at > now()"
        )
        .await,
        4
    );
    // Fixed: the other rows go at once, the failed ones after their backoff.
    let _: () = redis::cmd("DEL")
        .arg(cfg.job_data_hash())
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut pushed = 0;
    for _ in 0..5 {
        pushed += r.pass_queue(Queue::Stats).await.unwrap().pushed;
    }
    assert_eq!(pushed, 6);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..3 {
        pushed += r.pass_queue(Queue::Stats).await.unwrap().pushed;
    }
    assert_eq!(pushed, 10);
}

#[tokio::test]
async fn redis_holds_no_more_than_the_bound_and_the_outbox_keeps_the_rest() {
    let app = TestApp::new().await;
    fill_outbox(&app, 1_200).await;
    let r = relay(&app, &app.redis.url, relay_config(500, 1_000));
    for _ in 0..5 {
        r.pass_queue(Queue::Stats).await.unwrap();
    }
    let cfg = queues::storage_config(&app.redis.namespace, Queue::Stats);
    let mut redis = app.redis.conn().await;
    let depth = queues::depth(&mut redis, &cfg).await.unwrap();
    assert_eq!(depth.waiting(), 1_000);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
        )
        .await,
        200
    );
}
