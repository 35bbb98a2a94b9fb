//! The identity graph under concurrency, and the sweeper's query plan.

use clicknback_core::ids::IdentityGroupId;
use clicknback_core::services::identity::{self, NodeSpec};
use clicknback_tests::TestApp;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

async fn node(c: &mut AsyncPgConnection, anon: &str) -> IdentityGroupId {
    identity::ensure_node(c, &NodeSpec::anon(anon))
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_merges_end_in_one_consistent_graph() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    for round in 0..10 {
        let (a, b, d) = (
            format!("a{round}"),
            format!("b{round}"),
            format!("d{round}"),
        );
        let (ga, gb, gd) = (
            node(&mut c, &a).await,
            node(&mut c, &b).await,
            node(&mut c, &d).await,
        );
        // Two merges touching the same group at once: a+b and b+d.
        let (mut c1, mut c2) = (app.db.conn().await, app.db.conn().await);
        let (r1, r2) = tokio::join!(
            c1.transaction::<IdentityGroupId, diesel::result::Error, _>(async |c| {
                identity::merge(c, ga, gb, "test").await
            }),
            c2.transaction::<IdentityGroupId, diesel::result::Error, _>(async |c| {
                identity::merge(c, gb, gd, "test").await
            }),
        );
        r1.unwrap();
        r2.unwrap();
        // Every node ends in one group, which is not itself merged away.
        let groups: Vec<IdentityGroupId> = clicknback_core::schema::identity_nodes::table
            .filter(clicknback_core::schema::identity_nodes::key.eq_any([&a, &b, &d]))
            .select(clicknback_core::schema::identity_nodes::group_id)
            .load(&mut c)
            .await
            .unwrap();
        assert_eq!(groups.len(), 3, "no node lost");
        assert!(
            groups.iter().all(|g| *g == groups[0]),
            "round {round}: {groups:?}"
        );
        let merged: Option<IdentityGroupId> = clicknback_core::schema::identity_groups::table
            .find(groups[0])
            .select(clicknback_core::schema::identity_groups::merged_into_id)
            .first(&mut c)
            .await
            .unwrap();
        assert_eq!(merged, None, "the survivor is live");
    }
    assert_eq!(
        app.scalar("SELECT count(*) AS n FROM identity_merges")
            .await,
        20
    );
}

#[tokio::test]
async fn the_sweeper_query_uses_its_partial_index() {
    let app = TestApp::new().await;
    let mut c = app.db.conn().await;
    #[derive(QueryableByName)]
    struct Plan {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    diesel::sql_query("SET enable_seqscan = off")
        .execute(&mut c)
        .await
        .unwrap();
    let plan: Vec<Plan> = diesel::sql_query(
        "EXPLAIN SELECT id FROM purchases
          WHERE rewards_processed_at IS NULL AND status = 'received' AND attribute_after <= now()
          ORDER BY attribute_after, id LIMIT 100",
    )
    .load(&mut c)
    .await
    .unwrap();
    let text: String = plan
        .iter()
        .map(|p| p.line.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("purchases_due_attribution_idx"), "{text}");
}
