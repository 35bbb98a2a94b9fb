//! `TestApp`: the real router over a test database and Redis namespace,
//! called in-process with `oneshot`, or, once [`TestApp::send_to`] names a
//! running `clicknback-api`, over HTTP to it.

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode},
};
use clicknback_core::{config::Config, models::user::Role, services::users};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::db::{TestDb, TestRedis};

pub struct TestApp {
    pub db: TestDb,
    pub redis: TestRedis,
    pub config: Config,
    pub router: Router,
    pub state: clicknback_api::AppState,
    /// A running api's base URL and the client that calls it: requests go
    /// there instead of the in-process router.
    remote: std::sync::OnceLock<(String, reqwest::Client)>,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The configuration a test runs with, plus overrides.
pub fn test_config(db_url: &str, redis: &TestRedis, overrides: &[(&str, &str)]) -> Config {
    let mut vars: std::collections::HashMap<String, String> = [
        ("APP_ENV", "development"),
        ("JWT_SECRET", "test-secret-test-secret-test-secret-0123"),
        (
            "DATA_ENCRYPTION_KEY",
            "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdDE=",
        ),
        ("RUN_MIGRATIONS_ON_START", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.insert("DATABASE_URL".into(), db_url.to_owned());
    vars.insert("REDIS_URL".into(), redis.url.clone());
    vars.insert("REDIS_NAMESPACE".into(), redis.namespace.clone());
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).expect("valid test configuration")
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    pub async fn with(overrides: &[(&str, &str)]) -> Self {
        Self::on(TestRedis::new(), overrides).await
    }

    /// An app on the Redis (or Redis Cluster) at `redis_url`.
    pub async fn on_redis(redis_url: &str, overrides: &[(&str, &str)]) -> Self {
        Self::on(TestRedis::at(redis_url), overrides).await
    }

    async fn on(redis: TestRedis, overrides: &[(&str, &str)]) -> Self {
        let db = TestDb::new().await;
        let config = test_config(&db.url, &redis, overrides);
        let state = clicknback_api::build_state(config.clone(), None).expect("state");
        let router = clicknback_api::router(state.clone());
        Self {
            db,
            redis,
            config,
            router,
            state,
            remote: Default::default(),
        }
    }

    /// From now on every request goes over HTTP to the api at `base` (a
    /// `clicknback-api` serving this test's database and Redis namespace).
    pub fn send_to(&self, base: &str) {
        self.remote
            .set((base.to_owned(), crate::procs::http_client()))
            .expect("requests are sent to one api");
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> TestResponse {
        if let Some((base, client)) = self.remote.get() {
            let mut req = client.request(method, format!("{base}{uri}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            let res = req.send().await.unwrap_or_else(|e| panic!("{uri}: {e}"));
            let status = res.status();
            let headers = res.headers().clone();
            let bytes = res.bytes().await.unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return TestResponse {
                status,
                headers,
                body,
                text,
            };
        }
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn json(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth.as_deref() {
            headers.push(("authorization", a));
        }
        self.request(
            method,
            uri,
            &headers,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
        )
        .await
    }

    /// The api's read-through cache (the same Redis namespace as the test).
    pub fn cache(&self) -> &clicknback_core::cache::Cache {
        &self.state.cache
    }

    /// Creates a user with the role and returns an access token for it.
    pub async fn token_for(&self, email: &str, role: Role) -> String {
        let mut conn = self.db.conn().await;
        let user = users::create(&mut conn, email, "password-123", role)
            .await
            .expect("user");
        self.state.tokens.issue(user.id, role).access_token
    }

    /// Runs a query returning one `n BIGINT` column on the test database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = self.db.conn().await;
        diesel_async::RunQueryDsl::get_result::<N>(diesel::sql_query(sql), &mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
    }

    /// A request without a body, with a bearer token.
    pub async fn call(&self, method: Method, path: &str, token: &str) -> TestResponse {
        self.json(method, path, Some(token), None).await
    }

    /// Runs a statement on the test database; the number of rows it touched.
    pub async fn execute(&self, sql: &str) -> usize {
        let mut c = self.db.conn().await;
        diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs a query returning one `t TEXT` column (or no row) on the test database.
    pub async fn scalar_text(&self, sql: &str) -> Option<String> {
        #[derive(diesel::QueryableByName)]
        struct T {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let mut c = self.db.conn().await;
        diesel_async::RunQueryDsl::get_result::<T>(diesel::sql_query(sql), &mut c)
            .await
            .map(|r| r.t)
            .ok()
    }

    pub async fn admin_token(&self) -> String {
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        self.token_for(&email, Role::Admin).await
    }

    /// Creates a merchant through the API; returns (id, webhook secret, publishable key).
    pub async fn merchant(&self, admin: &str, name: &str) -> (String, String, String) {
        let res = self
            .json(
                Method::POST,
                "/v1/admin/merchants",
                Some(admin),
                Some(serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
        (
            res.body["id"].as_str().unwrap().to_owned(),
            res.body["webhook_secret"].as_str().unwrap().to_owned(),
            res.body["publishable_key"].as_str().unwrap().to_owned(),
        )
    }
}
