//! The worker platform with real worker processes, PostgreSQL, Redis and SMTP:
//! retries with growing delays, dead jobs and re-queue, permanent failures,
//! crash recovery after SIGKILL, cluster-once cron, graceful shutdown and the
//! welcome email sent exactly once.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use clicknback_core::jobs::{self, Canary};
use clicknback_tests::{
    TestApp,
    procs::{SmtpSink, WorkerProcess, eventually},
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

#[derive(Debug, QueryableByName)]
struct CanaryRow {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    runs: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    last_attempt: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    effects: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    worker: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    completed: bool,
}

/// The canary `key` once its effect is recorded, waiting at most `within`.
async fn completed(app: &TestApp, key: &str, within: Duration, what: &str) -> CanaryRow {
    eventually(within, what, || async {
        canary_state(app, key).await.filter(|r| r.completed)
    })
    .await
}

async fn canary_state(app: &TestApp, key: &str) -> Option<CanaryRow> {
    let mut c = app.db.conn().await;
    diesel::sql_query(
        "SELECT runs, last_attempt, effects, worker, completed_at IS NOT NULL AS completed FROM canary_runs WHERE key = $1",
    )
    .bind::<diesel::sql_types::Text, _>(key)
    .get_result(&mut c)
    .await
    .ok()
}

async fn enqueue(app: &TestApp, job: Canary) {
    let mut c = app.db.conn().await;
    jobs::enqueue(&mut c, &job, chrono::Utc::now())
        .await
        .unwrap();
}

fn canary(key: &str) -> Canary {
    Canary {
        key: key.into(),
        fail_times: 0,
        permanent: false,
        sleep_ms: 0,
        fail_until_fixed: false,
        noop: false,
    }
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    app.scalar(sql).await
}

const FAST_RETRY: (&str, &str) = ("JOB_RETRY_CANARY", "attempts=4,base=1s,cap=10s,jitter=0");

#[tokio::test]
async fn a_job_failing_twice_is_retried_with_growing_delays_and_succeeds_on_attempt_3() {
    let app = TestApp::new().await;
    let _w = app.worker(&[FAST_RETRY]);
    enqueue(
        &app,
        Canary {
            fail_times: 2,
            ..canary("twice")
        },
    )
    .await;
    let row = completed(
        &app,
        "twice",
        Duration::from_secs(30),
        "the canary to succeed",
    )
    .await;
    assert_eq!((row.runs, row.last_attempt, row.effects), (3, 3, 1));
    // The retries went through the outbox, due 1 s then 2 s after each failure.
    #[derive(QueryableByName)]
    struct Delay {
        #[diesel(sql_type = diesel::sql_types::Text)]
        task_id: String,
        #[diesel(sql_type = diesel::sql_types::Double)]
        delay: f64,
    }
    let mut c = app.db.conn().await;
    let delays: Vec<Delay> = diesel::sql_query(
        "SELECT task_id, extract(epoch FROM run_at - created_at)::float8 AS delay
           FROM outbox WHERE task_id LIKE 'canary:twice#a%' ORDER BY attempt",
    )
    .load(&mut c)
    .await
    .unwrap();
    assert_eq!(
        delays
            .iter()
            .map(|d| d.task_id.as_str())
            .collect::<Vec<_>>(),
        ["canary:twice#a2", "canary:twice#a3"]
    );
    assert!((delays[0].delay - 1.0).abs() < 0.2, "{}", delays[0].delay);
    assert!((delays[1].delay - 2.0).abs() < 0.2, "{}", delays[1].delay);
}

#[tokio::test]
async fn an_always_failing_job_ends_dead_and_succeeds_once_requeued_after_a_fix() {
    let app = TestApp::new().await;
    let _w = app.worker(&[FAST_RETRY]);
    enqueue(
        &app,
        Canary {
            fail_until_fixed: true,
            ..canary("broken")
        },
    )
    .await;
    eventually(Duration::from_secs(40), "the job to be dead", || async {
        (scalar(
            &app,
            "SELECT count(*) AS n FROM dead_jobs WHERE task_id LIKE 'canary:broken%'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let row = canary_state(&app, "broken").await.unwrap();
    assert_eq!(
        (row.runs, row.effects),
        (4, 0),
        "max attempts were used, no effect"
    );

    // The operator sees it with its error and attempt count.
    let admin = app.admin_token().await;
    let dead = app
        .json(
            Method::GET,
            "/v1/admin/queues/maintenance/jobs?state=dead",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text);
    let job = &dead.body[0];
    assert_eq!(job["attempt"], 4);
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("broken until fixed")
    );
    let stats = app
        .json(Method::GET, "/v1/admin/queues", Some(&admin), None)
        .await;
    let maint = stats
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "maintenance")
        .unwrap()
        .clone();
    assert_eq!(maint["dead"], 1);

    // Fixed, then re-queued: it runs again and succeeds, once.
    let mut c = app.db.conn().await;
    diesel::sql_query("UPDATE canary_runs SET fixed = true WHERE key = 'broken'")
        .execute(&mut c)
        .await
        .unwrap();
    let id = job["dead_id"].as_i64().unwrap();
    let r = app
        .json(
            Method::POST,
            &format!("/v1/admin/dead-jobs/{id}/requeue"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let row = completed(
        &app,
        "broken",
        Duration::from_secs(20),
        "the re-queued job to succeed",
    )
    .await;
    assert_eq!(row.effects, 1);
    assert_eq!(
        row.last_attempt, 1,
        "a re-queued job starts again at attempt 1"
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM dead_jobs WHERE requeued_at IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_permanent_error_goes_dead_on_attempt_1() {
    let app = TestApp::new().await;
    let _w = app.worker(&[FAST_RETRY]);
    enqueue(
        &app,
        Canary {
            permanent: true,
            ..canary("perm")
        },
    )
    .await;
    eventually(Duration::from_secs(20), "the job to be dead", || async {
        (scalar(&app, "SELECT count(*) AS n FROM dead_jobs WHERE attempts = 1 AND last_error LIKE '%fails for good%'").await == 1)
            .then_some(())
    })
    .await;
    assert_eq!(canary_state(&app, "perm").await.unwrap().runs, 1);
    // A payload that cannot be decoded is permanent too.
    let mut c = app.db.conn().await;
    jobs::enqueue_raw(
        &mut c,
        jobs::Queue::Maintenance,
        "canary:garbled",
        json!({"job": "Canary", "data": {"nope": 1}}),
        1,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "the malformed job to be dead", || async {
        (scalar(&app, "SELECT count(*) AS n FROM dead_jobs WHERE task_id = 'canary:garbled' AND attempts = 1").await == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_of_unknown_type_is_dead_in_the_queue_it_came_from() {
    let app = TestApp::new().await;
    let _w = app.worker(&[]);
    let mut c = app.db.conn().await;
    jobs::enqueue_raw(
        &mut c,
        jobs::Queue::Emails,
        "fax:1",
        json!({"job": "SendFax", "data": {"to": "+4930123456"}}),
        1,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "the unknown job to be dead",
        || async {
            (scalar(
                &app,
                "SELECT count(*) AS n FROM dead_jobs WHERE task_id = 'fax:1' AND attempts = 1",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        scalar(
            &app,
            r#"SELECT count(*) AS n FROM dead_jobs WHERE queue = 'emails' AND last_error = 'unknown job type "SendFax"'"#
        )
        .await,
        1,
        "dead in its own queue, its error naming the type"
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM dead_jobs WHERE queue <> 'emails'"
        )
        .await,
        0
    );

    // The board's list and the operator command show it.
    let admin = app.admin_token().await;
    let dead = app
        .json(
            Method::GET,
            "/v1/admin/queues/emails/jobs?state=dead",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text);
    assert_eq!(dead.body[0]["job"], "SendFax");
    assert_eq!(dead.body[0]["last_error"], r#"unknown job type "SendFax""#);
    let (code, printed) = app
        .worker_command(&["jobs", "emails", "--state", "dead"], &[])
        .await;
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains(r#""last_error": "unknown job type \"SendFax\"""#),
        "{printed}"
    );
}

#[tokio::test]
async fn a_bad_retry_or_schedule_override_stops_the_worker_at_start() {
    let app = TestApp::new().await;
    let (code, printed) = app
        .worker_command(&["queues"], &[("JOB_RETRY_SEND_EMAIL", "attempts=0")])
        .await;
    assert_eq!(code, 2, "{printed}");
    assert!(
        printed.contains(
            "configuration error: JOB_RETRY_SEND_EMAIL has attempts=0; expected comma-separated attempts=N"
        ),
        "{printed}"
    );
    let (code, printed) = app
        .worker_command(&["run"], &[("SCHEDULE_RECONCILE_LEDGER", "0 10 * * *")])
        .await;
    assert_eq!(code, 2, "{printed}");
    assert!(
        printed.contains(r#"configuration error: SCHEDULE_RECONCILE_LEDGER is "0 10 * * *"; expected a cron expression with seconds first"#),
        "{printed}"
    );
}

#[tokio::test]
async fn a_sigkilled_worker_loses_nothing_and_the_effect_happens_once() {
    let app = TestApp::new().await;
    let mut first = app.worker(&[]);
    enqueue(
        &app,
        Canary {
            sleep_ms: 4_000,
            ..canary("slow")
        },
    )
    .await;
    eventually(Duration::from_secs(20), "the slow job to start", || async {
        canary_state(&app, "slow").await.filter(|r| r.runs == 1)
    })
    .await;
    first.kill9();
    assert_eq!(
        first.wait(Duration::from_secs(5)).await,
        None,
        "killed by a signal"
    );
    let killed_at = std::time::Instant::now();
    let second = app.worker(&[]);
    let row = completed(
        &app,
        "slow",
        Duration::from_secs(30),
        "the job to complete on the second worker",
    )
    .await;
    // Orphan bound: heartbeat 1 s × 3 missed, plus the 4 s job and pickup.
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "took {:?}",
        killed_at.elapsed()
    );
    assert_eq!(row.runs, 2);
    assert_eq!(row.effects, 1);
    assert_ne!(row.worker, None);
    drop(second);
}

#[tokio::test]
async fn a_worker_with_every_slot_busy_keeps_its_jobs() {
    // Long jobs holding every slot of a queue must not make the worker look
    // dead: another worker would re-queue them and run them a second time.
    // Heartbeats are stamped in whole seconds, so the harness's 1 s × 3
    // tolerates a beat only about 2 s late; on a loaded machine one can be,
    // and that is the crash case, not this one. 5 missed beats keep this
    // test about busy slots.
    let tolerant = ("JOB_MISSED_HEARTBEATS", "5");
    let app = TestApp::new().await;
    let _first = app.worker(&[("QUEUE_CONCURRENCY_MAINTENANCE", "2"), tolerant]);
    for key in ["busy-1", "busy-2"] {
        enqueue(
            &app,
            Canary {
                sleep_ms: 8_000,
                ..canary(key)
            },
        )
        .await;
    }
    eventually(
        Duration::from_secs(20),
        "both slow jobs to start",
        || async {
            let a = canary_state(&app, "busy-1").await?;
            let b = canary_state(&app, "busy-2").await?;
            (a.runs >= 1 && b.runs >= 1).then_some(())
        },
    )
    .await;
    let _second = app.worker(&[tolerant]);
    for key in ["busy-1", "busy-2"] {
        let row = completed(&app, key, Duration::from_secs(30), "the slow job to finish").await;
        assert_eq!(
            row.runs, 1,
            "{key} ran again elsewhere while it was running"
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_the_running_job_finish() {
    let app = TestApp::new().await;
    let mut w = app.worker(&[("SHUTDOWN_GRACE_SECS", "20")]);
    enqueue(
        &app,
        Canary {
            sleep_ms: 3_000,
            ..canary("graceful")
        },
    )
    .await;
    eventually(Duration::from_secs(20), "the job to start", || async {
        canary_state(&app, "graceful").await.filter(|r| r.runs == 1)
    })
    .await;
    w.term();
    assert_eq!(
        w.wait(Duration::from_secs(25)).await,
        Some(0),
        "exit 0; log:\n{}",
        w.log_text()
    );
    let row = canary_state(&app, "graceful").await.unwrap();
    assert!(row.completed, "the in-flight job finished before exit");
    assert_eq!((row.runs, row.effects), (1, 1));
}

#[tokio::test]
async fn two_workers_running_the_same_cron_schedule_produce_one_run_per_tick() {
    let app = TestApp::new().await;
    let every_second = [("SCHEDULE_PURGE_IDEMPOTENCY_KEYS", "* * * * * *")];
    let _a = app.worker(&every_second);
    let _b = app.worker(&every_second);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Both counts from one statement (one snapshot): the workers keep ticking
    // while the test reads, and a claim and its enqueue commit together.
    let mismatched = scalar(
        &app,
        "SELECT (SELECT count(*) FROM cron_runs WHERE schedule = 'purge_idempotency_keys') \
              - (SELECT count(*) FROM outbox WHERE task_id LIKE 'cron:purge_idempotency_keys:%') AS n",
    )
    .await;
    assert_eq!(mismatched, 0, "one run enqueued per claimed tick");
    let ticks = scalar(
        &app,
        "SELECT count(*) AS n FROM cron_runs WHERE schedule = 'purge_idempotency_keys'",
    )
    .await;
    assert!(ticks >= 3, "{ticks} ticks");
    let finished = scalar(
        &app,
        "SELECT count(*) AS n FROM cron_runs WHERE schedule = 'purge_idempotency_keys' AND outcome LIKE 'purged%'",
    )
    .await;
    assert!(finished >= ticks - 2, "{finished} of {ticks} runs finished");
    let claimers = scalar(
        &app,
        "SELECT count(DISTINCT claimed_by) AS n FROM cron_runs",
    )
    .await;
    assert!(claimers >= 1);
}

#[tokio::test]
async fn a_second_run_of_an_email_waits_while_the_first_holds_it() {
    // Two runs of one SendEmail at once (a run re-queued while the first is
    // still recording its send, the database briefly away): the second waits
    // instead of sending the message again.
    use clicknback_core::{
        jobs::{EmailKind, SendEmail},
        services::emails::{self, Claim},
    };
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    let job = SendEmail {
        kind: EmailKind::Welcome,
        to: "twice@example.com".into(),
        data: json!({}),
        dedupe_key: "welcome:twice".into(),
    };
    let minute = Duration::from_secs(60);
    let first = emails::claim(&mut c, &job, minute).await.unwrap();
    assert!(matches!(first, Claim::Send { .. }), "{first:?}");
    assert_eq!(
        emails::claim(&mut c, &job, minute).await.unwrap(),
        Claim::InFlight
    );
    // A failed send gives the claim back; the retry goes at once.
    emails::release(&mut c, "welcome:twice").await.unwrap();
    assert!(matches!(
        emails::claim(&mut c, &job, minute).await.unwrap(),
        Claim::Send { .. }
    ));
    // A claim older than the longest run is a run that died: taken over.
    assert!(matches!(
        emails::claim(&mut c, &job, Duration::ZERO).await.unwrap(),
        Claim::Send { .. }
    ));
    emails::mark_sent(&mut c, "welcome:twice").await.unwrap();
    assert_eq!(
        emails::claim(&mut c, &job, Duration::ZERO).await.unwrap(),
        Claim::AlreadySent
    );
}

#[tokio::test]
async fn registering_sends_one_welcome_email_even_if_the_worker_dies_right_after() {
    let app = TestApp::new().await;
    let smtp = SmtpSink::start().await;
    let mut first = app.worker(&[("SMTP_URL", &smtp.url())]);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"email": "new@example.com", "password": "password-123"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mail = eventually(Duration::from_secs(20), "the welcome email", || async {
        smtp.messages().into_iter().next()
    })
    .await;
    // Killed the moment the worker has recorded the send, before it acknowledges the job.
    eventually(Duration::from_secs(5), "the sent-log entry", || async {
        (scalar(
            &app,
            "SELECT count(*) AS n FROM email_log WHERE status = 'sent'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    first.kill9();
    assert!(mail.contains("To: new@example.com"), "{mail}");
    assert!(mail.contains("Welcome to ClickNBack"));
    assert!(mail.contains("text/html") && mail.contains("text/plain"));
    // Whatever the killed worker left in flight is run again by the next one.
    let _second = app.worker(&[("SMTP_URL", &smtp.url())]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(smtp.messages().len(), 1, "exactly one welcome email");
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM email_log WHERE status = 'sent'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn an_smtp_outage_is_retried_with_backoff_and_the_email_goes_out_afterwards() {
    let app = TestApp::new().await;
    let port = clicknback_tests::procs::free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    let _w = app.worker(&[
        ("SMTP_URL", &url),
        (
            "JOB_RETRY_SEND_EMAIL",
            "attempts=10,base=1s,cap=2s,jitter=0",
        ),
    ]);
    app.json(
        Method::POST,
        "/v1/auth/register",
        None,
        Some(json!({"email": "later@example.com", "password": "password-123"})),
    )
    .await;
    eventually(Duration::from_secs(20), "a failed attempt", || async {
        (scalar(
            &app,
            "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'email:welcome:%#a2'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    // The SMTP server comes up on that port.
    let smtp = SmtpSink::start_on(port).await;
    eventually(
        Duration::from_secs(20),
        "the email after the outage",
        || async { smtp.messages().into_iter().next() },
    )
    .await;
    assert_eq!(scalar(&app, "SELECT count(*) AS n FROM dead_jobs").await, 0);
}

#[tokio::test]
async fn a_run_still_going_is_not_overlapped_by_the_next_tick() {
    let app = TestApp::new().await;
    // Another replica's run of the schedule holds its lock for the whole test.
    let mut holder = app.db.conn().await;
    let key = clicknback_core::db::lock_key("schedule:purge_idempotency_keys");
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(key)
        .execute(&mut holder)
        .await
        .unwrap();
    let _w = app.worker(&[("SCHEDULE_PURGE_IDEMPOTENCY_KEYS", "* * * * * *")]);
    eventually(Duration::from_secs(20), "ticks to be skipped", || async {
        (scalar(&app, "SELECT count(*) AS n FROM cron_runs WHERE outcome = 'skipped: previous run still going'").await >= 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM cron_runs WHERE outcome LIKE 'purged%'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn finished_jobs_leave_redis_after_the_retention_period() {
    let app = TestApp::new().await;
    let _w = app.worker(&[]);
    for i in 0..5 {
        enqueue(
            &app,
            Canary {
                noop: true,
                ..canary(&format!("r{i}"))
            },
        )
        .await;
    }
    let cfg =
        clicknback_core::queues::storage_config(&app.redis.namespace, jobs::Queue::Maintenance);
    let mut redis = app.redis.conn().await;
    let done = eventually(Duration::from_secs(20), "the jobs to finish", || {
        let mut redis = redis.clone();
        let key = cfg.done_jobs_set();
        async move {
            let n: u64 = redis::cmd("SCARD")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            (n >= 5).then_some(n)
        }
    })
    .await;
    assert!(done >= 5);
    // Not yet past retention: kept.
    let kept = clicknback_core::services::ops::prune_done(
        &mut redis,
        &app.redis.namespace,
        jobs::Queue::Maintenance,
        chrono::Utc::now() - chrono::Duration::hours(1),
        1_000,
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(kept, 0);
    let pruned = clicknback_core::services::ops::prune_done(
        &mut redis,
        &app.redis.namespace,
        jobs::Queue::Maintenance,
        chrono::Utc::now() + chrono::Duration::seconds(5),
        1_000,
        1_000,
    )
    .await
    .unwrap();
    assert!(pruned >= 5);
    let (data, done): (u64, u64) = redis::pipe()
        .hlen(cfg.job_data_hash())
        .scard(cfg.done_jobs_set())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!((data, done), (0, 0));
}

/// However young, finished jobs beyond the newest `JOB_RETENTION_COUNT` of a
/// queue leave Redis at the next maintenance round.
#[tokio::test]
async fn finished_jobs_stay_under_the_count_bound() {
    let app = TestApp::new().await;
    let _w = app.worker(&[("JOB_RETENTION_COUNT", "3")]);
    for i in 0..12 {
        enqueue(&app, canary(&format!("c{i}"))).await;
    }
    let cfg =
        clicknback_core::queues::storage_config(&app.redis.namespace, jobs::Queue::Maintenance);
    let redis = app.redis.conn().await;
    // All twelve ran (each records its run) and at most three stay in Redis.
    eventually(
        Duration::from_secs(60),
        "twelve finished jobs, three kept",
        || {
            let mut redis = redis.clone();
            let (done, data) = (cfg.done_jobs_set(), cfg.job_data_hash());
            let app = &app;
            async move {
                let finished = app
                    .scalar("SELECT count(*) AS n FROM canary_runs WHERE completed_at IS NOT NULL")
                    .await;
                let (kept, payloads): (u64, u64) = redis::pipe()
                    .scard(done)
                    .hlen(data)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                (finished >= 12 && kept <= 3 && payloads <= 3).then_some(())
            }
        },
    )
    .await;
}

/// How many jobs of the maintenance queue Redis holds as done (the canaries,
/// and any schedule tick run meanwhile).
async fn redis_done(app: &TestApp) -> u64 {
    let cfg =
        clicknback_core::queues::storage_config(&app.redis.namespace, jobs::Queue::Maintenance);
    let mut redis = app.redis.conn().await;
    redis::cmd("SCARD")
        .arg(cfg.done_jobs_set())
        .query_async(&mut redis)
        .await
        .unwrap()
}

const CLOSED_DONE: &str = "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'canary:%' AND finished_at IS NOT NULL AND outcome = 'done'";
const OPEN: &str =
    "SELECT count(*) AS n FROM outbox WHERE task_id LIKE 'canary:%' AND finished_at IS NULL";
const RAN_ONCE: &str = "SELECT count(*) AS n FROM canary_runs WHERE runs = 1 AND effects = 1 AND completed_at IS NOT NULL";
const EFFECT_ONCE: &str =
    "SELECT count(*) AS n FROM canary_runs WHERE effects = 1 AND completed_at IS NOT NULL";

/// Rows of finished jobs are closed in batches by the worker itself (the
/// reconciler, an hour away here, plays no part).
#[tokio::test]
async fn a_burst_of_jobs_ends_with_every_row_closed_by_the_batches() {
    let app = TestApp::new().await;
    let _w = app.worker(&[("JOB_RECOVERY_AFTER_SECS", "3600")]);
    for i in 0..300 {
        enqueue(&app, canary(&format!("burst{i}"))).await;
    }
    eventually(
        Duration::from_secs(30),
        "300 rows closed as done",
        || async { (scalar(&app, CLOSED_DONE).await == 300).then_some(()) },
    )
    .await;
    assert_eq!(scalar(&app, OPEN).await, 0);
    // A loaded machine can miss heartbeats and run a job twice (orphan
    // recovery); its effect still happens once.
    assert_eq!(scalar(&app, EFFECT_ONCE).await, 300);
}

/// A worker whose close batches never fill nor linger out while it lives,
/// after it ran `n` jobs: all done in Redis, every row still open.
async fn finished_but_unclosed(app: &TestApp, n: i64, prefix: &str) -> WorkerProcess {
    let w = app.worker(&[
        ("JOB_CLOSE_BATCH", "10000"),
        ("JOB_CLOSE_LINGER_MS", "600000"),
        ("JOB_RECOVERY_AFTER_SECS", "3600"),
    ]);
    for i in 0..n {
        enqueue(app, canary(&format!("{prefix}{i}"))).await;
    }
    eventually(
        Duration::from_secs(30),
        "the jobs done in Redis",
        || async { (redis_done(app).await == n as u64).then_some(()) },
    )
    .await;
    assert_eq!(scalar(app, OPEN).await, n, "no row closed yet");
    w
}

/// A worker killed after its jobs were acknowledged in Redis but before their
/// rows were closed: the reconciler closes them from Redis's done set, and
/// not one job runs again.
#[tokio::test]
async fn a_worker_killed_before_its_close_flush_still_ends_with_every_job_done_once() {
    let app = TestApp::new().await;
    let mut first = finished_but_unclosed(&app, 40, "unflushed").await;
    first.kill9();
    assert_eq!(first.wait(Duration::from_secs(5)).await, None);
    let _second = app.worker(&[("JOB_RECOVERY_AFTER_SECS", "1")]);
    eventually(
        Duration::from_secs(30),
        "the reconciler to close the 40 rows",
        || async { (scalar(&app, CLOSED_DONE).await == 40).then_some(()) },
    )
    .await;
    // Give a wrongly relayed job time to run again before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scalar(&app, RAN_ONCE).await, 40);
}

/// A graceful stop writes the batch it holds before the process ends.
#[tokio::test]
async fn a_graceful_stop_closes_the_rows_of_every_finished_job() {
    let app = TestApp::new().await;
    let mut w = finished_but_unclosed(&app, 20, "stop").await;
    w.term();
    assert_eq!(w.wait(Duration::from_secs(15)).await, Some(0));
    assert_eq!(scalar(&app, CLOSED_DONE).await, 20);
    assert_eq!(scalar(&app, RAN_ONCE).await, 20);
}

/// A job that succeeded keeps no payload in Redis once its row is closed
/// (PostgreSQL has the record), only its place in the done set with its
/// status and finish time; runs that failed keep theirs. The ops views of the
/// finished job read its payload from the outbox.
#[tokio::test]
async fn a_finished_job_leaves_no_payload_in_redis_and_its_views_read_the_outbox() {
    let app = TestApp::new().await;
    let _w = app.worker(&[FAST_RETRY]);
    enqueue(&app, canary("plain")).await;
    enqueue(
        &app,
        Canary {
            fail_times: 1,
            ..canary("retried")
        },
    )
    .await;
    enqueue(
        &app,
        Canary {
            permanent: true,
            ..canary("doomed")
        },
    )
    .await;
    let cfg =
        clicknback_core::queues::storage_config(&app.redis.namespace, jobs::Queue::Maintenance);
    let mut redis = app.redis.conn().await;
    eventually(
        Duration::from_secs(30),
        "the successful runs' payloads gone from Redis",
        || {
            let mut redis = redis.clone();
            let data = cfg.job_data_hash();
            let app = &app;
            async move {
                let closed = app
                    .scalar("SELECT count(*) AS n FROM outbox WHERE task_id IN ('canary:plain', 'canary:retried#a2') AND outcome = 'done'")
                    .await;
                let dead = app
                    .scalar("SELECT count(*) AS n FROM dead_jobs WHERE task_id = 'canary:doomed'")
                    .await;
                let (a, b): (bool, bool) = redis::pipe()
                    .hexists(&data, "canary:plain")
                    .hexists(&data, "canary:retried#a2")
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                (closed == 2 && dead == 1 && !a && !b).then_some(())
            }
        },
    )
    .await;
    for id in ["canary:plain", "canary:retried#a2"] {
        let done: bool = redis::cmd("SISMEMBER")
            .arg(cfg.done_jobs_set())
            .arg(id)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(done, "{id} is in the done set");
        let meta: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}:{id}", cfg.job_meta_hash()))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(meta.get("status").map(String::as_str), Some("Done"), "{id}");
        let at: i64 = meta["done_at"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - at).abs() < 60, "{id}");
        assert!(!meta.contains_key("result"), "{id}: {meta:?}");
    }
    // The runs that failed (retried, dead) keep their payloads.
    let (first, doomed): (bool, bool) = redis::pipe()
        .hexists(cfg.job_data_hash(), "canary:retried")
        .hexists(cfg.job_data_hash(), "canary:doomed")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(first && doomed, "retried {first}, dead {doomed}");
    // Nothing ran twice.
    assert_eq!(canary_state(&app, "plain").await.unwrap().runs, 1);
    assert_eq!(canary_state(&app, "retried").await.unwrap().runs, 2);

    // The ops views: the job's page, and the list of done jobs.
    let admin = app.admin_token().await;
    let r = app
        .json(
            Method::GET,
            "/v1/admin/queues/maintenance/jobs/canary:plain",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "done");
    assert_eq!(r.body["job"], "Canary");
    assert_eq!(r.body["payload"]["key"], "plain");
    assert!(r.body["finished_at"].is_string(), "{:?}", r.body);
    let r = app
        .json(
            Method::GET,
            "/v1/admin/queues/maintenance/jobs?state=done",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let listed = r.body.as_array().unwrap();
    let plain = listed
        .iter()
        .find(|j| j["task_id"] == "canary:plain")
        .expect("the finished job is listed");
    assert_eq!(plain["payload"]["key"], "plain");

    // The reconciler takes a finished job without payload as done, not lost.
    let found = clicknback_core::queues::presence(
        &mut redis,
        &cfg,
        &["canary:plain".to_owned(), "canary:nowhere".to_owned()],
    )
    .await
    .unwrap();
    assert_eq!(
        found,
        [
            clicknback_core::queues::Presence::Done,
            clicknback_core::queues::Presence::Lost
        ]
    );
    // And deleting it from the ops api still finds it in Redis.
    let r = app
        .json(
            Method::DELETE,
            "/v1/admin/queues/maintenance/jobs/canary:plain",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
}

/// A paused queue's jobs are put back, not run, however busy the queue was
/// before the pause (the flag a worker read stands for at most
/// `PAUSE_CHECK_EVERY`); resumed, each runs once.
#[tokio::test]
async fn a_job_of_a_paused_queue_waits_and_runs_once_after_resume() {
    let app = TestApp::new().await;
    let _w = app.worker(&[]);
    enqueue(&app, canary("before")).await;
    completed(
        &app,
        "before",
        Duration::from_secs(30),
        "the first canary to run",
    )
    .await;
    let app = &app;
    let pause = |paused: bool| async move {
        let mut redis = app.redis.conn().await;
        clicknback_core::services::ops::set_paused(
            &mut redis,
            &app.redis.namespace,
            jobs::Queue::Maintenance,
            paused,
        )
        .await
        .unwrap();
    };
    pause(true).await;
    // Longer than a worker may go on with the flag it read before the pause.
    tokio::time::sleep(clicknback_worker::runtime::PAUSE_CHECK_EVERY * 2).await;
    enqueue(app, canary("paused")).await;
    eventually(Duration::from_secs(30), "the job put back", || async {
        (scalar(
            app,
            "SELECT count(*) AS n FROM outbox WHERE task_id = 'canary:paused' AND outcome = 'superseded'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(
        canary_state(app, "paused").await.is_none(),
        "a job of a paused queue does not run"
    );
    pause(false).await;
    let row = completed(
        app,
        "paused",
        Duration::from_secs(30),
        "the job to run after resume",
    )
    .await;
    assert_eq!((row.runs, row.effects), (1, 1));
}
