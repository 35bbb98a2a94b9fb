//! PostgreSQL going away under a request (a restart, a failover) is a 503
//! "retry shortly" with `Retry-After`, not a 500.

use axum::{http::StatusCode, response::IntoResponse};
use clicknback_api::error::ApiError;
use clicknback_core::db::is_unavailable;
use clicknback_tests::db::TestDb;
use diesel_async::RunQueryDsl;

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

#[tokio::test]
async fn a_connection_terminated_by_the_server_answers_503() {
    let db = TestDb::new().await;
    let mut victim = db.conn().await;
    let Pid { pid } = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut victim)
        .await
        .unwrap();
    // What `pg_ctl stop -m fast` and a failover do to every session.
    let mut admin = db.conn().await;
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
        .execute(&mut admin)
        .await
        .unwrap();

    let err = diesel::sql_query("SELECT 1 AS pid")
        .get_result::<Pid>(&mut victim)
        .await
        .err()
        .expect("the terminated connection fails");
    assert!(is_unavailable(&err), "not seen as unavailable: {err:?}");
    let res = ApiError::from(err).into_response();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));

    // An error of the query itself stays a 500.
    let err = diesel::sql_query("SELECT no_such_column FROM pg_class")
        .execute(&mut admin)
        .await
        .unwrap_err();
    assert!(!is_unavailable(&err), "{err:?}");
    assert_eq!(
        ApiError::from(err).into_response().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}
