//! The identity graph: groups of identifiers we believe are one person.
//!
//! Nodes are unique by (kind, key): `anon` (a browser's anonymous id), `user`
//! (an account), `merchant_customer` (a merchant's customer id, or a purchase
//! confirmation awaiting its webhook: key `<merchant>:order:<order id>`). A
//! merge keeps the older group, moves every node, touchpoint and purchase of
//! the other into it, points the absorbed group at the survivor and appends to
//! the merge log. Both group rows are locked in id order first, so concurrent
//! merges over the same groups serialise into one consistent graph.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::attribution::surviving_group;
use crate::{
    ids::{IdentityGroupId, IdentityNodeId, MerchantId, UserId},
    schema::{
        identity_groups, identity_merges, identity_nodes, link_quality_daily, purchases,
        touchpoints,
    },
    text_enum::text_enum,
};

text_enum! {
    /// What a node of the identity graph identifies.
    pub enum NodeKind {
        /// A browser's anonymous id.
        Anon = "anon",
        /// An account.
        User = "user",
        /// A merchant's customer id, or a purchase confirmation awaiting its webhook.
        MerchantCustomer = "merchant_customer",
    }
}

/// A node to find or create.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub kind: NodeKind,
    pub key: String,
    pub merchant_id: Option<MerchantId>,
    pub user_id: Option<UserId>,
    pub validation_data: Option<serde_json::Value>,
}

impl NodeSpec {
    pub fn anon(anon_id: &str) -> Self {
        Self {
            kind: NodeKind::Anon,
            key: anon_id.to_owned(),
            merchant_id: None,
            user_id: None,
            validation_data: None,
        }
    }

    pub fn user(user: UserId) -> Self {
        Self {
            kind: NodeKind::User,
            key: user.to_string(),
            merchant_id: None,
            user_id: Some(user),
            validation_data: None,
        }
    }

    pub fn pending_order(merchant: MerchantId, order_id: &str, purchase_token: &str) -> Self {
        Self {
            kind: NodeKind::MerchantCustomer,
            key: order_key(merchant, order_id),
            merchant_id: Some(merchant),
            user_id: None,
            validation_data: Some(
                serde_json::json!({ "order_id": order_id, "purchase_token": purchase_token }),
            ),
        }
    }
}

pub fn order_key(merchant: MerchantId, order_id: &str) -> String {
    format!("{merchant}:order:{order_id}")
}

/// The current group of a node, if the node exists.
pub async fn group_of(
    conn: &mut AsyncPgConnection,
    kind: NodeKind,
    key: &str,
) -> Result<Option<IdentityGroupId>, diesel::result::Error> {
    identity_nodes::table
        .filter(identity_nodes::kind.eq(kind))
        .filter(identity_nodes::key.eq(key))
        .select(identity_nodes::group_id)
        .first(conn)
        .await
        .optional()
}

/// The node's group, creating node (and a new group) on first sight.
pub async fn ensure_node(
    conn: &mut AsyncPgConnection,
    spec: &NodeSpec,
) -> Result<IdentityGroupId, diesel::result::Error> {
    if let Some(g) = group_of(conn, spec.kind, &spec.key).await? {
        return Ok(g);
    }
    let group = IdentityGroupId::new();
    diesel::insert_into(identity_groups::table)
        .values(identity_groups::id.eq(group))
        .execute(conn)
        .await?;
    let inserted = diesel::insert_into(identity_nodes::table)
        .values((
            identity_nodes::id.eq(IdentityNodeId::new()),
            identity_nodes::group_id.eq(group),
            identity_nodes::kind.eq(spec.kind),
            identity_nodes::key.eq(&spec.key),
            identity_nodes::merchant_id.eq(spec.merchant_id),
            identity_nodes::user_id.eq(spec.user_id),
            identity_nodes::validation_data.eq(&spec.validation_data),
            identity_nodes::linked_at.eq(Utc::now()),
        ))
        .on_conflict((identity_nodes::kind, identity_nodes::key))
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        return Ok(group);
    }
    diesel::delete(identity_groups::table.find(group))
        .execute(conn)
        .await?;
    group_of(conn, spec.kind, &spec.key)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

/// Merges the groups of `a` and `b` (inside the caller's transaction) and
/// returns the survivor.
pub async fn merge(
    conn: &mut AsyncPgConnection,
    a: IdentityGroupId,
    b: IdentityGroupId,
    reason: &str,
) -> Result<IdentityGroupId, diesel::result::Error> {
    let (a, b) = (
        surviving_group(conn, a).await?,
        surviving_group(conn, b).await?,
    );
    if a == b {
        return Ok(a);
    }
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let mut locked = Vec::new();
    for g in [first, second] {
        let row: (
            IdentityGroupId,
            Option<IdentityGroupId>,
            chrono::DateTime<Utc>,
        ) = identity_groups::table
            .find(g)
            .select((
                identity_groups::id,
                identity_groups::merged_into_id,
                identity_groups::created_at,
            ))
            .for_update()
            .first(conn)
            .await?;
        locked.push(row);
    }
    // Another merge may have absorbed one of them while we waited for the lock.
    if locked.iter().any(|(_, into, _)| into.is_some()) {
        return Box::pin(merge(conn, a, b, reason)).await;
    }
    locked.sort_by_key(|(id, _, created)| (*created, *id));
    let (survivor, absorbed) = (locked[0].0, locked[1].0);
    let nodes = diesel::update(identity_nodes::table.filter(identity_nodes::group_id.eq(absorbed)))
        .set(identity_nodes::group_id.eq(survivor))
        .execute(conn)
        .await?;
    let tps = diesel::update(touchpoints::table.filter(touchpoints::group_id.eq(absorbed)))
        .set(touchpoints::group_id.eq(survivor))
        .execute(conn)
        .await?;
    diesel::update(purchases::table.filter(purchases::identity_group_id.eq(absorbed)))
        .set(purchases::identity_group_id.eq(survivor))
        .execute(conn)
        .await?;
    diesel::update(identity_groups::table.find(absorbed))
        .set(identity_groups::merged_into_id.eq(survivor))
        .execute(conn)
        .await?;
    diesel::insert_into(identity_merges::table)
        .values((
            identity_merges::id.eq(Uuid::now_v7()),
            identity_merges::surviving_group_id.eq(survivor),
            identity_merges::merged_group_id.eq(absorbed),
            identity_merges::reason.eq(reason),
            identity_merges::nodes_moved.eq(nodes as i32),
            identity_merges::touchpoints_moved.eq(tps as i32),
        ))
        .execute(conn)
        .await?;
    tracing::info!(group.survivor = %survivor, group.absorbed = %absorbed, nodes, touchpoints = tps, reason, "identity groups merged");
    Ok(survivor)
}

/// Counts a purchase-token validation for the merchant's link quality.
pub async fn count_link(
    conn: &mut AsyncPgConnection,
    merchant: MerchantId,
    matched: bool,
) -> Result<(), diesel::result::Error> {
    let day = Utc::now().date_naive();
    let (m, x) = if matched { (1i64, 0i64) } else { (0, 1) };
    diesel::insert_into(link_quality_daily::table)
        .values((
            link_quality_daily::merchant_id.eq(merchant),
            link_quality_daily::day.eq(day),
            link_quality_daily::matched.eq(m),
            link_quality_daily::mismatched.eq(x),
        ))
        .on_conflict((link_quality_daily::merchant_id, link_quality_daily::day))
        .do_update()
        .set((
            link_quality_daily::matched.eq(link_quality_daily::matched + m),
            link_quality_daily::mismatched.eq(link_quality_daily::mismatched + x),
        ))
        .execute(conn)
        .await?;
    if !matched {
        metrics::counter!("purchase_token_mismatches_total").increment(1);
    }
    Ok(())
}
