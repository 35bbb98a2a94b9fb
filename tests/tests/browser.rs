//! The job board in a real headless Chromium (Debian's), driven by
//! playwright-core: 401 without credentials; with them, real counts, a dead
//! job's error and its chains of runs, a re-queue with a click that makes
//! the job succeed in a second chain, and the purchase page showing the
//! timeline of a purchase walked through webhook, review, confirmation and
//! payout (`docs/screenshots/timeline.png` when SCREENSHOT_DIR is set); and
//! `/docs` rendered with every request to another origin aborted.
//!
//! Runs when CLICKNBACK_BROWSER_TESTS=1 (the test command sets it after
//! installing Chromium and playwright-core).

use std::time::Duration;

use clicknback_core::{jobs, models::user::Role, services::users};
use clicknback_tests::{TestApp, procs::eventually, walk::walk};
use diesel_async::RunQueryDsl;

#[tokio::test]
async fn the_board_shows_a_dead_job_and_requeues_it_with_a_click() {
    if std::env::var("CLICKNBACK_BROWSER_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set CLICKNBACK_BROWSER_TESTS=1 (./scripts/test.sh does) to run the browser test"
        );
        return;
    }
    let app = TestApp::with(&[("ATTRIBUTION_DELAY_SECS", "1")]).await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "board@example.com", "board-password", Role::Admin)
        .await
        .unwrap();
    // A purchase with a full timeline; its worker also runs the canary.
    let walked = walk(
        &app,
        "A-1001",
        &[("JOB_RETRY_CANARY", "attempts=1,base=1s,cap=1s")],
    )
    .await;
    let job = jobs::Canary {
        key: "board".into(),
        fail_times: 0,
        permanent: false,
        sleep_ms: 0,
        fail_until_fixed: true,
        noop: false,
    };
    jobs::enqueue(&mut c, &job, chrono::Utc::now())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the canary to be dead", || async {
        (app.scalar("SELECT count(*) AS n FROM dead_jobs").await == 1).then_some(())
    })
    .await;
    diesel::sql_query("UPDATE canary_runs SET fixed = true")
        .execute(&mut c)
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let out = tokio::process::Command::new("node")
        .arg(dir.join("board.mjs"))
        .current_dir(&dir)
        .env("BOARD_URL", format!("http://{addr}/board"))
        .env("ADMIN_EMAIL", "board@example.com")
        .env("ADMIN_PASSWORD", "board-password")
        .env("QUEUE", "maintenance")
        .env("EXPECT_ERROR", "broken until fixed")
        .env("TIMELINE_QUERY", &walked.order_id)
        .envs(
            std::env::var("SCREENSHOT_DIR")
                .ok()
                .map(|d| ("TIMELINE_SCREENSHOT_DIR", d)),
        )
        .envs(
            std::env::var("BOARD_SCREENSHOT_DIR")
                .ok()
                .map(|d| ("SCREENSHOT_DIR", d)),
        )
        .output()
        .await
        .expect("node runs the browser script");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser test failed:\n{log}");
    eprintln!("{log}");
    // The click re-queued it and the job then succeeded.
    eventually(
        Duration::from_secs(20),
        "the re-queued canary to succeed",
        || async {
            (app.scalar("SELECT count(*) AS n FROM canary_runs WHERE completed_at IS NOT NULL")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn docs_render_with_every_other_origin_blocked() {
    if std::env::var("CLICKNBACK_BROWSER_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set CLICKNBACK_BROWSER_TESTS=1 (./scripts/test.sh does) to run the browser test"
        );
        return;
    }
    let app = TestApp::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let out = tokio::process::Command::new("node")
        .arg(dir.join("docs.mjs"))
        .current_dir(&dir)
        .env("DOCS_URL", format!("http://{addr}/docs"))
        .output()
        .await
        .expect("node runs the browser script");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "docs browser test failed:\n{log}");
    assert!(log.contains("none elsewhere"), "{log}");
    eprintln!("{log}");
}
