//! The job board and login limits: no anonymous access to any board page or
//! API, Basic credentials of an admin work, and the operator actions.

use axum::http::{Method, StatusCode};
use base64::Engine;
use clicknback_core::{jobs, models::user::Role, services::users};
use clicknback_tests::TestApp;
use serde_json::json;

fn basic(email: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"))
    )
}

#[tokio::test]
async fn board_and_its_api_require_an_admin() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "ops@example.com", "ops-password", Role::Admin)
        .await
        .unwrap();
    users::create(&mut c, "shopper@example.com", "shop-password", Role::User)
        .await
        .unwrap();
    let user_token = app.token_for("another@example.com", Role::User).await;
    for path in [
        "/board",
        "/board/api/queues",
        "/board/api/workers",
        "/board/api/queues/emails/jobs?state=dead",
    ] {
        let anon = app.request(Method::GET, path, &[], None).await;
        assert_eq!(anon.status, StatusCode::UNAUTHORIZED, "{path}");
        // No Basic challenge: a browser gets the login form, not a prompt
        // whose cached credentials it would send with every request.
        assert!(anon.header("www-authenticate").is_none(), "{path}");
        if path == "/board" {
            assert!(anon.text.contains("/board/login"), "the login form");
        }
        let wrong = app
            .request(
                Method::GET,
                path,
                &[("authorization", &basic("ops@example.com", "nope-nope"))],
                None,
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        let shopper = app
            .request(
                Method::GET,
                path,
                &[(
                    "authorization",
                    &basic("shopper@example.com", "shop-password"),
                )],
                None,
            )
            .await;
        assert_eq!(shopper.status, StatusCode::FORBIDDEN, "{path}");
        let bearer = format!("Bearer {user_token}");
        let user = app
            .request(Method::GET, path, &[("authorization", &bearer)], None)
            .await;
        assert_eq!(user.status, StatusCode::FORBIDDEN, "{path}");
        let ok = app
            .request(
                Method::GET,
                path,
                &[("authorization", &basic("ops@example.com", "ops-password"))],
                None,
            )
            .await;
        assert_eq!(ok.status, StatusCode::OK, "{path}: {}", ok.text);
    }
    for (method, path) in [
        (Method::POST, "/board/api/queues/emails/pause"),
        (Method::POST, "/board/api/queues/emails/dead/requeue"),
        (Method::POST, "/board/api/dead-jobs/1/requeue"),
        (Method::DELETE, "/board/api/queues/emails/jobs/x"),
        (Method::POST, "/v1/admin/queues/emails/pause"),
    ] {
        let anon = app.request(method, path, &[], None).await;
        assert_eq!(anon.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let page = app
        .request(
            Method::GET,
            "/board",
            &[("authorization", &basic("ops@example.com", "ops-password"))],
            None,
        )
        .await;
    assert!(page.text.contains("job board"));
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
}

#[tokio::test]
async fn queue_counts_pause_resume_delete_and_requeue() {
    let app = TestApp::new().await;
    let admin = app.admin_token().await;
    // Three emails waiting in the outbox, one dead job.
    let mut c = app.db.conn().await;
    for i in 0..3 {
        let job = jobs::SendEmail {
            kind: jobs::EmailKind::Welcome,
            to: format!("u{i}@example.com"),
            data: json!({}),
            dedupe_key: format!("welcome:{i}"),
        };
        jobs::enqueue(&mut c, &job, chrono::Utc::now())
            .await
            .unwrap();
    }
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "INSERT INTO dead_jobs (queue, task_id, payload, attempts, last_error)
             VALUES ('emails', 'email:welcome:dead', '{\"job\":\"SendEmail\",\"data\":{}}', 12, 'SMTP: connection refused')",
        ),
        &mut c,
    )
    .await
    .unwrap();
    let stats = app
        .json(Method::GET, "/v1/admin/queues", Some(&admin), None)
        .await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    let emails = stats
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "emails")
        .unwrap()
        .clone();
    assert_eq!(emails["outbox_backlog"], 3);
    assert_eq!(emails["dead"], 1);
    assert_eq!(emails["paused"], false);

    let r = app
        .json(
            Method::POST,
            "/v1/admin/queues/emails/pause",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.body["paused"], true);
    let stats = app
        .json(Method::GET, "/v1/admin/queues", Some(&admin), None)
        .await;
    assert!(
        stats
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "emails" && q["paused"] == true)
    );
    app.json(
        Method::POST,
        "/v1/admin/queues/emails/resume",
        Some(&admin),
        None,
    )
    .await;

    let outbox = app
        .json(
            Method::GET,
            "/v1/admin/queues/emails/jobs?state=outbox",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(outbox.body.as_array().unwrap().len(), 3);
    let r = app
        .json(
            Method::DELETE,
            "/v1/admin/queues/emails/jobs/email:welcome:0",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .json(
            Method::DELETE,
            "/v1/admin/queues/emails/jobs/email:welcome:0",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = app
        .json(
            Method::POST,
            "/v1/admin/queues/emails/dead/requeue",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.body["requeued"], 1);
    let outbox = app
        .json(
            Method::GET,
            "/v1/admin/queues/emails/jobs?state=outbox",
            Some(&admin),
            None,
        )
        .await;
    assert!(outbox.body.as_array().unwrap().iter().any(|j| {
        j["task_id"]
            .as_str()
            .unwrap()
            .starts_with("email:welcome:dead#q")
    }));
    let r = app
        .json(
            Method::GET,
            "/v1/admin/queues/nope/jobs",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .json(
            Method::GET,
            "/v1/admin/queues/emails/jobs?state=weird",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let audit = app
        .json(Method::GET, "/v1/admin/audit-log", Some(&admin), None)
        .await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in [
        "queue.pause",
        "queue.resume",
        "job.delete",
        "job.requeue_all",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
}

#[tokio::test]
async fn five_failed_logins_lock_the_email_and_address_out() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    users::create(&mut c, "victim@example.com", "right-password", Role::User)
        .await
        .unwrap();
    let attempt = |password: &'static str| {
        let app = &app;
        async move {
            app.json(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": "victim@example.com", "password": password})),
            )
            .await
        }
    };
    for i in 0..5 {
        let r = attempt("wrong-password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert_eq!(r.header("ratelimit-policy"), Some("5;w=900"));
    }
    let r = attempt("wrong-password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["code"], "too_many_login_attempts");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 900);
    assert!(r.header("ratelimit").unwrap().contains("remaining=0"));
    // Even the right password waits for the window.
    assert_eq!(
        attempt("right-password").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another email from the same address is not affected.
    users::create(&mut c, "other@example.com", "other-password", Role::User)
        .await
        .unwrap();
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "other@example.com", "password": "other-password"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn register_and_me() {
    let app = TestApp::new().await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"email": "Me@Example.com", "password": "password-123"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["email"], "me@example.com");
    let dup = app
        .json(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"email": "me@example.com", "password": "password-123"})),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["code"], "email_taken");
    let weak = app
        .json(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"email": "x@example.com", "password": "short"})),
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    let login = app
        .json(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "me@example.com", "password": "password-123"})),
        )
        .await;
    let token = login.body["access_token"].as_str().unwrap();
    let me = app.json(Method::GET, "/v1/me", Some(token), None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], "me@example.com");
    // The welcome email waits in the outbox, written with the user.
    let outbox = app
        .json(
            Method::GET,
            "/v1/admin/queues/emails/jobs?state=outbox",
            Some(&app.admin_token().await),
            None,
        )
        .await;
    assert_eq!(outbox.body[0]["job"], "SendEmail");
}
