//! The identity graph: groups of identifiers we believe are one person.
//!
//! Nodes are unique by (kind, key): `anon` (a browser's anonymous id), `user`
//! (an account), `merchant_customer` (a merchant's customer id, or a purchase
//! confirmation awaiting its webhook: key `<merchant>:order:<order id>`). A
//! merge keeps the older group, moves every node, touchpoint and purchase of
//! the other into it, points the absorbed group at the survivor and appends to
//! the merge log.
//!
//! A group holds at most one user (enforced by the unique index
//! `identity_nodes_one_user_per_group`): two groups that each hold a user are
//! never merged ([`Merge::TwoUsers`]), and a browser identified by a second
//! user moves, alone, to that user's group ([`UserLink::Moved`]); the first
//! user keeps what was linked before.
//!
//! Lock order, everywhere (so that identify, the checkout confirmation, the
//! webhook and attribution never deadlock):
//! 1. the order lock ([`lock_order`], an advisory lock on merchant and order
//!    id), taken first by webhook ingestion and the checkout confirmation;
//! 2. identity groups, `FOR UPDATE`, two at a time and in id order
//!    ([`merge`], [`link_user`]); a group merged away while waited for is let
//!    go again before its survivor is locked;
//! 3. purchases (rows of the groups locked in 2, or the one purchase the
//!    attribution job locks, which then takes no group lock).
//!
//! Node inserts (first sightings) come before 2 and never wait on anything
//! but another first sighting of the same node.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::attribution::surviving_group;
use crate::{
    db,
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

/// The transaction-scoped lock on one order of a merchant. The webhook that
/// reports the order and the checkout page's confirmation of it both take it
/// before they read anything, so whichever commits second sees the first:
/// under READ COMMITTED neither would otherwise see the other's uncommitted
/// rows, and both would commit without linking.
pub async fn lock_order(
    conn: &mut AsyncPgConnection,
    merchant: MerchantId,
    order_id: &str,
) -> Result<(), diesel::result::Error> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(db::lock_key(&format!(
            "order\0{merchant}\0{order_id}"
        )))
        .execute(conn)
        .await?;
    Ok(())
}

/// The user of a group: `None` while nobody has identified in it. A group
/// holds at most one user node (the unique index
/// `identity_nodes_one_user_per_group`), so there is never a choice to make.
pub async fn user_of(
    mut conn: &AsyncPgConnection,
    group: IdentityGroupId,
) -> Result<Option<UserId>, diesel::result::Error> {
    let users: Vec<Option<UserId>> = identity_nodes::table
        .filter(identity_nodes::group_id.eq(group))
        .filter(identity_nodes::kind.eq(NodeKind::User))
        .select(identity_nodes::user_id)
        .load(&mut conn)
        .await?;
    match users.as_slice() {
        [] => Ok(None),
        [user] => Ok(*user),
        // Ruled out by the index; were it ever not, nobody is guessed at.
        _ => {
            tracing::error!(group.id = %group, "a group holds several users; not attributable");
            Ok(None)
        }
    }
}

/// Why the lock of two groups has to be taken again.
enum Relock {
    /// One of them was merged away while we waited for its lock.
    Moved,
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for Relock {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

/// Two live groups, locked.
struct Pair {
    /// The older group (by creation, then id): the survivor of a merge.
    older: IdentityGroupId,
    newer: IdentityGroupId,
}

/// Locks the live groups of `a` and `b` (`FOR UPDATE`, in id order) and
/// returns them, or `None` when they are one group. A group merged away while
/// we waited is let go again (the savepoint is rolled back, which releases the
/// row locks taken after it) before the survivors are locked, so no lock is
/// ever taken out of id order.
async fn lock_pair(
    conn: &mut AsyncPgConnection,
    a: IdentityGroupId,
    b: IdentityGroupId,
) -> Result<Option<Pair>, diesel::result::Error> {
    loop {
        let (a, b) = (
            surviving_group(conn, a).await?,
            surviving_group(conn, b).await?,
        );
        if a == b {
            return Ok(None);
        }
        let locked = conn
            .transaction::<Pair, Relock, _>(async move |conn| {
                let rows: Vec<(IdentityGroupId, Option<IdentityGroupId>, DateTime<Utc>)> =
                    identity_groups::table
                        .filter(identity_groups::id.eq_any([a, b]))
                        .order(identity_groups::id)
                        .select((
                            identity_groups::id,
                            identity_groups::merged_into_id,
                            identity_groups::created_at,
                        ))
                        .for_update()
                        .load(conn)
                        .await?;
                if rows.len() != 2 || rows.iter().any(|(_, into, _)| into.is_some()) {
                    return Err(Relock::Moved);
                }
                let mut rows = rows;
                rows.sort_by_key(|(id, _, created)| (*created, *id));
                Ok(Pair {
                    older: rows[0].0,
                    newer: rows[1].0,
                })
            })
            .await;
        match locked {
            Ok(pair) => return Ok(Some(pair)),
            Err(Relock::Moved) => continue,
            Err(Relock::Db(e)) => return Err(e),
        }
    }
}

/// What [`merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// One group now: the survivor.
    Merged(IdentityGroupId),
    /// Each group holds another user; they stay apart (a group holds at most
    /// one user). Both are the live groups of the arguments, in their order,
    /// and both stay locked until the transaction ends.
    TwoUsers(IdentityGroupId, IdentityGroupId),
}

impl Merge {
    /// The survivor, or `prefer` when the groups stayed apart.
    pub fn or(
        self,
        prefer: impl FnOnce(IdentityGroupId, IdentityGroupId) -> IdentityGroupId,
    ) -> IdentityGroupId {
        match self {
            Merge::Merged(g) => g,
            Merge::TwoUsers(a, b) => prefer(a, b),
        }
    }
}

/// Merges the groups of `a` and `b` (inside the caller's transaction), unless
/// each holds a user: two users are never merged.
pub async fn merge(
    conn: &mut AsyncPgConnection,
    a: IdentityGroupId,
    b: IdentityGroupId,
    reason: &str,
) -> Result<Merge, diesel::result::Error> {
    let Some(pair) = lock_pair(conn, a, b).await? else {
        return Ok(Merge::Merged(surviving_group(conn, a).await?));
    };
    if let (Some(x), Some(y)) = (
        user_of(conn, pair.older).await?,
        user_of(conn, pair.newer).await?,
    ) {
        debug_assert_ne!(x, y, "a user node lives in one group");
        let (a, b) = (
            surviving_group(conn, a).await?,
            surviving_group(conn, b).await?,
        );
        tracing::info!(group.a = %a, group.b = %b, reason, "groups of two users left apart");
        return Ok(Merge::TwoUsers(a, b));
    }
    absorb(conn, pair, reason).await.map(Merge::Merged)
}

/// Moves everything of `pair.newer` into `pair.older` (both locked).
async fn absorb(
    conn: &mut AsyncPgConnection,
    pair: Pair,
    reason: &str,
) -> Result<IdentityGroupId, diesel::result::Error> {
    let (survivor, absorbed) = (pair.older, pair.newer);
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

/// What [`link_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLink {
    /// The browser was already the user's.
    Already(IdentityGroupId),
    /// The browser's group, with nobody signed in before, merged into the user's.
    Merged(IdentityGroupId),
    /// The browser was another user's: its anon node alone moved to this
    /// user's group. The other user keeps everything linked before (their
    /// touchpoints, purchases and other identifiers).
    Moved {
        from: IdentityGroupId,
        to: IdentityGroupId,
    },
}

/// Links the browser `anon` (in group `anon_group`) to `user` (in group
/// `user_group`) inside the caller's transaction: the latest user to sign in
/// on a browser is the one it belongs to from then on.
pub async fn link_user(
    conn: &mut AsyncPgConnection,
    anon: &str,
    anon_group: IdentityGroupId,
    user_group: IdentityGroupId,
) -> Result<UserLink, diesel::result::Error> {
    let Some(pair) = lock_pair(conn, anon_group, user_group).await? else {
        return Ok(UserLink::Already(surviving_group(conn, user_group).await?));
    };
    let (from, to) = (
        surviving_group(conn, anon_group).await?,
        surviving_group(conn, user_group).await?,
    );
    if user_of(conn, from).await?.is_none() {
        return absorb(conn, pair, "identify").await.map(UserLink::Merged);
    }
    diesel::update(
        identity_nodes::table
            .filter(identity_nodes::kind.eq(NodeKind::Anon))
            .filter(identity_nodes::key.eq(anon))
            .filter(identity_nodes::group_id.eq(from)),
    )
    .set((
        identity_nodes::group_id.eq(to),
        identity_nodes::linked_at.eq(Utc::now()),
    ))
    .execute(conn)
    .await?;
    metrics::counter!("identity_anon_moved_total").increment(1);
    tracing::info!(group.from = %from, group.to = %to, "browser moved to the user who signed in last");
    Ok(UserLink::Moved { from, to })
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
