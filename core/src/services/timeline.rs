//! A purchase's timeline for operators: everything that happened to one
//! purchase, in time order, from the records each part of the system keeps
//! (the order's webhooks and checkout confirmations, its identity, every run
//! of its jobs, its rewards and their review, its ledger transfers, its
//! emails, and the payouts that spent its cashback). Also the search that
//! finds a purchase by order id, purchase id or the shopper's email.
//!
//! It only reads, and reads each source with an indexed query; what a source
//! no longer holds (outbox rows are pruned after their retention) is simply
//! not listed. It never shows secrets: no tokens, keys' values other than the
//! idempotency key a merchant chose, or payout destinations beyond their mask.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ledger::AccountKind, ops, payouts::PayoutStatus, purchases::PurchaseView};
use crate::jobs::SendEmail;
use crate::{
    ids::{MerchantId, PurchaseId, UserId},
    models::{
        purchase::{Purchase, PurchaseStatus},
        reward::{Reward, RewardStatus},
    },
    money::Currency,
    schema::{email_log, purchase_events, purchases, rewards, touchpoints, users},
    text_enum::text_enum,
};

text_enum! {
    /// What a timeline entry is. The first six are recorded as they happen
    /// in `purchase_events`; the others are read from where they live.
    pub enum EntryKind {
        /// The merchant's purchase webhook, first answered (`idempotency_key`).
        WebhookReceived = "webhook_received",
        /// The same webhook again under the same key: the first answer replayed.
        WebhookReplayed = "webhook_replayed",
        /// The merchant's status webhook (`status`, `reason`, `idempotency_key`).
        StatusReceived = "status_received",
        StatusReplayed = "status_replayed",
        /// The checkout page's confirmation through the SDK, with its `outcome`
        /// (`linked`, `pending`, `mismatch`).
        SdkConfirmation = "sdk_confirmation",
        /// The webhook's purchase token checked against an earlier confirmation (`matched`).
        TokenCheck = "token_check",
        /// The purchase row was written (`attribute_after`: when attribution is due).
        PurchaseRecorded = "purchase_recorded",
        /// The referral click the reward was attributed to.
        Click = "click",
        /// An identifier joined the purchase's identity group (`node`: its kind).
        IdentityLinked = "identity_linked",
        /// Another identity group merged into the purchase's (`reason`).
        IdentityMerged = "identity_merged",
        /// One run of a job (`job_key`, `chain`, `cause`, `attempt`, `outcome`, `error`).
        JobRun = "job_run",
        /// A reward written by attribution, with its fraud score and reasons.
        FraudScored = "fraud_scored",
        /// The explanation of a flagged reward for its reviewer (`status`:
        /// `done` with `text` and `model`, or why there is none: `pending`,
        /// `failed`, `disabled`).
        FraudExplained = "fraud_explained",
        /// An admin's review of a flagged reward (`review`, `reviewer`).
        Reviewed = "reviewed",
        /// A ledger transfer of the purchase's money.
        LedgerTransfer = "ledger_transfer",
        /// An email about it (`status`: `sent` or not yet).
        Email = "email",
        /// A payout that spent (part of) its cashback (`spent_minor` of `amount_minor`).
        Payout = "payout",
    }
}

/// The kinds recorded in `purchase_events` as they happen.
const RECORDED: [EntryKind; 6] = [
    EntryKind::WebhookReceived,
    EntryKind::WebhookReplayed,
    EntryKind::StatusReceived,
    EntryKind::StatusReplayed,
    EntryKind::SdkConfirmation,
    EntryKind::TokenCheck,
];

/// One thing that happened to a purchase.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
    /// One line for a person to read.
    pub summary: String,
    /// The facts behind it (the fields named by its kind).
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// A purchase and everything that happened to it, oldest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    pub purchase: PurchaseView,
    /// The shopper it was attributed to, when it was.
    pub user_id: Option<UserId>,
    pub user_email: Option<String>,
    pub entries: Vec<Entry>,
}

/// A purchase the search found.
#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct Match {
    pub purchase_id: PurchaseId,
    pub merchant_id: MerchantId,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PurchaseStatus,
    pub user_email: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Records a fact about a merchant's order in the caller's transaction.
pub async fn record(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
    order_id: &str,
    kind: EntryKind,
    detail: Value,
) -> Result<(), diesel::result::Error> {
    debug_assert!(RECORDED.contains(&kind), "{kind} is not recorded");
    diesel::insert_into(purchase_events::table)
        .values((
            purchase_events::merchant_id.eq(merchant_id),
            purchase_events::order_id.eq(order_id),
            purchase_events::kind.eq(kind),
            purchase_events::detail.eq(detail),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Purchases matching `q`, newest first, at most `limit`: a purchase id, an
/// order id (of any merchant), or a shopper's email (their purchases).
pub async fn search(
    conn: &mut AsyncPgConnection,
    q: &str,
    limit: i64,
) -> Result<Vec<Match>, diesel::result::Error> {
    let q = q.trim();
    if q.is_empty() {
        return Ok(Vec::new());
    }
    let base = purchases::table
        .left_join(users::table.on(users::id.nullable().eq(purchases::user_id)))
        .order((purchases::created_at.desc(), purchases::id.desc()))
        .limit(limit)
        .select((
            purchases::id,
            purchases::merchant_id,
            purchases::order_id,
            purchases::amount_minor,
            purchases::currency,
            purchases::status,
            users::email.nullable(),
            purchases::created_at,
        ))
        .into_boxed();
    let q_owned = q.to_owned();
    let filtered = match Uuid::parse_str(q) {
        Ok(id) => base.filter(
            purchases::id
                .eq(PurchaseId::from(id))
                .or(purchases::order_id.eq(q_owned)),
        ),
        Err(_) if q.contains('@') => base.filter(users::email.eq(q.to_lowercase())),
        Err(_) => base.filter(purchases::order_id.eq(q_owned)),
    };
    filtered.load(conn).await
}

/// The purchase of a merchant's order, if there is one.
pub async fn find_by_order(
    conn: &mut AsyncPgConnection,
    merchant_id: MerchantId,
    order_id: &str,
) -> Result<Option<PurchaseId>, diesel::result::Error> {
    purchases::table
        .filter(purchases::merchant_id.eq(merchant_id))
        .filter(purchases::order_id.eq(order_id))
        .select(purchases::id)
        .first(conn)
        .await
        .optional()
}

#[derive(QueryableByName)]
struct MergeRow {
    #[diesel(sql_type = Timestamptz)]
    merged_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    surviving_group_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    merged_group_id: Uuid,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    nodes_moved: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    touchpoints_moved: i32,
}

#[derive(QueryableByName)]
struct NodeRow {
    #[diesel(sql_type = Timestamptz)]
    linked_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    user_id: Option<Uuid>,
}

#[derive(QueryableByName)]
struct TransferRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = BigInt)]
    amount_minor: i64,
    #[diesel(sql_type = Text)]
    currency: String,
    #[diesel(sql_type = Text)]
    debit: AccountKind,
    #[diesel(sql_type = Text)]
    credit: AccountKind,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    payout_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

const TRANSFER_COLUMNS: &str = "SELECT t.id, t.kind, t.amount_minor, t.currency::text AS currency,
        d.kind AS debit, c.kind AS credit, t.payout_id, t.created_at
   FROM ledger_transfers t
   JOIN ledger_accounts d ON d.id = t.debit_account_id
   JOIN ledger_accounts c ON c.id = t.credit_account_id";

#[derive(QueryableByName)]
struct PayoutRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    amount_minor: i64,
    #[diesel(sql_type = Text)]
    status: PayoutStatus,
    #[diesel(sql_type = Text)]
    destination_masked: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    completed_at: Option<DateTime<Utc>>,
}

fn entry(at: DateTime<Utc>, kind: EntryKind, summary: String, detail: Value) -> Entry {
    Entry {
        at,
        kind,
        summary,
        detail,
    }
}

/// The timeline of a purchase, or `None` when there is no such purchase.
pub async fn of_purchase(
    conn: &mut AsyncPgConnection,
    id: PurchaseId,
) -> Result<Option<Timeline>, diesel::result::Error> {
    let Some(p): Option<Purchase> = purchases::table
        .find(id)
        .select(Purchase::as_select())
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let mut entries = Vec::new();
    entries.push(entry(
        p.created_at,
        EntryKind::PurchaseRecorded,
        format!(
            "purchase {} recorded: {} {} (attribution due {})",
            p.order_id,
            p.amount_minor,
            p.currency,
            p.attribute_after.to_rfc3339()
        ),
        json!({"attribute_after": p.attribute_after, "purchased_at": p.purchased_at}),
    ));
    events(conn, &p, &mut entries).await?;
    identity(conn, &p, &mut entries).await?;
    let rewards: Vec<Reward> = rewards::table
        .filter(rewards::purchase_id.eq(id))
        .order(rewards::attribution_seq.asc())
        .select(Reward::as_select())
        .load(conn)
        .await?;
    rewards_and_reviews(conn, &rewards, &mut entries).await?;
    let transfers: Vec<TransferRow> =
        diesel::sql_query(format!("{TRANSFER_COLUMNS} WHERE t.purchase_id = $1"))
            .bind::<SqlUuid, _>(id.into_uuid())
            .load(conn)
            .await?;
    for t in &transfers {
        entries.push(transfer_entry(t));
    }
    let mut job_keys = vec![format!("attribute:{id}")];
    for to in crate::jobs::RewardTransition::ALL {
        job_keys.push(format!("reward:{id}:{}", to.as_str()));
    }
    // The reward emails (and their jobs); a payout's emails are named by
    // the payout, so they are looked up by its prefix.
    let mut email_keys: Vec<String> = Vec::new();
    for r in &rewards {
        let key = SendEmail::reward_key(r.id);
        job_keys.push(SendEmail::job_key(&key));
        email_keys.push(key);
    }
    for r in rewards.iter().filter(|r| r.status != RewardStatus::Voided) {
        for (payout, spent) in spending_payouts(conn, r.user_id, r.currency, &transfers).await? {
            job_keys.push(format!("payout:{}", payout.id));
            email_keys.push(format!("{}%", SendEmail::payout_key(payout.id.into(), "")));
            entries.push(payout_entry(&payout, spent));
        }
    }
    emails(conn, &email_keys, &mut entries).await?;
    for key in &job_keys {
        job_runs(conn, key, &mut entries).await?;
    }
    // Stable: entries of the same instant keep the order they were read in.
    entries.sort_by_key(|e| e.at);
    let user_email = match p.user_id {
        Some(u) => users::table
            .find(u)
            .select(users::email)
            .first(conn)
            .await
            .optional()?,
        None => None,
    };
    Ok(Some(Timeline {
        purchase: PurchaseView::from(&p),
        user_id: p.user_id,
        user_email,
        entries,
    }))
}

async fn events(
    conn: &mut AsyncPgConnection,
    p: &Purchase,
    out: &mut Vec<Entry>,
) -> Result<(), diesel::result::Error> {
    let rows: Vec<(EntryKind, Value, DateTime<Utc>)> = purchase_events::table
        .filter(purchase_events::merchant_id.eq(p.merchant_id))
        .filter(purchase_events::order_id.eq(&p.order_id))
        .order((purchase_events::created_at.asc(), purchase_events::id.asc()))
        .select((
            purchase_events::kind,
            purchase_events::detail,
            purchase_events::created_at,
        ))
        .load(conn)
        .await?;
    for (kind, detail, at) in rows {
        let key = detail["idempotency_key"].as_str().unwrap_or_default();
        let summary = match kind {
            EntryKind::WebhookReceived => format!("purchase webhook received (key {key})"),
            EntryKind::WebhookReplayed => {
                format!("purchase webhook replayed: same key {key}, first answer sent again")
            }
            EntryKind::StatusReceived => format!(
                "status webhook: {} (key {key})",
                detail["status"].as_str().unwrap_or_default()
            ),
            EntryKind::StatusReplayed => format!("status webhook replayed (key {key})"),
            EntryKind::SdkConfirmation => format!(
                "checkout page confirmation through the SDK: {}",
                detail["outcome"].as_str().unwrap_or_default()
            ),
            EntryKind::TokenCheck => {
                if detail["matched"].as_bool() == Some(true) {
                    "webhook's purchase token matched the checkout page's: linked".to_owned()
                } else {
                    "webhook's purchase token did not match the checkout page's: nothing linked"
                        .to_owned()
                }
            }
            other => other.to_string(),
        };
        out.push(entry(at, kind, summary, detail));
    }
    Ok(())
}

/// The merges that built the purchase's identity group (walked back through
/// every group merged into it) and when each identifier joined it.
async fn identity(
    conn: &mut AsyncPgConnection,
    p: &Purchase,
    out: &mut Vec<Entry>,
) -> Result<(), diesel::result::Error> {
    let Some(group) = p.identity_group_id else {
        return Ok(());
    };
    let merges: Vec<MergeRow> = diesel::sql_query(
        "WITH RECURSIVE g(id) AS (
             SELECT $1::uuid
             UNION
             SELECT m.merged_group_id FROM identity_merges m JOIN g ON m.surviving_group_id = g.id
         )
         SELECT m.merged_at, m.surviving_group_id, m.merged_group_id, m.reason, m.nodes_moved, m.touchpoints_moved
           FROM identity_merges m WHERE m.surviving_group_id IN (SELECT id FROM g)
          ORDER BY m.merged_at LIMIT 200",
    )
    .bind::<SqlUuid, _>(group.into_uuid())
    .load(conn)
    .await?;
    for m in merges {
        out.push(entry(
            m.merged_at,
            EntryKind::IdentityMerged,
            format!(
                "identity merged ({}): {} identifiers and {} clicks joined",
                m.reason, m.nodes_moved, m.touchpoints_moved
            ),
            json!({"reason": m.reason, "surviving_group_id": m.surviving_group_id,
                   "merged_group_id": m.merged_group_id, "nodes_moved": m.nodes_moved,
                   "touchpoints_moved": m.touchpoints_moved}),
        ));
    }
    let nodes: Vec<NodeRow> = diesel::sql_query(
        "SELECT COALESCE(linked_at, created_at) AS linked_at, kind, user_id
           FROM identity_nodes WHERE group_id = $1 ORDER BY 1 LIMIT 200",
    )
    .bind::<SqlUuid, _>(group.into_uuid())
    .load(conn)
    .await?;
    for n in nodes {
        let summary = match n.user_id {
            Some(u) => format!("identity: user {u} linked"),
            None => format!("identity: {} identifier linked", n.kind),
        };
        out.push(entry(
            n.linked_at,
            EntryKind::IdentityLinked,
            summary,
            json!({"node": n.kind, "user_id": n.user_id, "group_id": group}),
        ));
    }
    Ok(())
}

async fn rewards_and_reviews(
    conn: &mut AsyncPgConnection,
    rewards: &[Reward],
    out: &mut Vec<Entry>,
) -> Result<(), diesel::result::Error> {
    for r in rewards {
        if let Some(t) = r.touchpoint_id {
            let tp: Option<(DateTime<Utc>, Option<String>)> = touchpoints::table
                .find(t)
                .select((touchpoints::created_at, touchpoints::landing_url))
                .first(conn)
                .await
                .optional()?;
            if let Some((at, landing_url)) = tp {
                out.push(entry(
                    at,
                    EntryKind::Click,
                    "referral click the reward is attributed to".to_owned(),
                    json!({"touchpoint_id": t, "landing_url": landing_url, "offer_id": r.offer_id}),
                ));
            }
        }
        out.push(entry(
            r.created_at,
            EntryKind::FraudScored,
            format!(
                "attributed to user {}: cashback {} {}, fraud score {:.2}{}",
                r.user_id,
                r.amount_minor,
                r.currency,
                r.fraud_score,
                if r.flagged {
                    ", flagged for review"
                } else {
                    ""
                }
            ),
            json!({"reward_id": r.id, "attribution_seq": r.attribution_seq, "user_id": r.user_id,
                   "cashback_minor": r.amount_minor, "currency": r.currency,
                   "fraud_score": r.fraud_score, "fraud_reasons": r.fraud_reasons,
                   "flagged": r.flagged, "status": r.status}),
        ));
        if r.flagged {
            let e = super::explanations::state_of(conn, r.id).await?;
            if let Some(status) = e.status {
                out.push(entry(
                    e.explained_at.unwrap_or(r.created_at),
                    EntryKind::FraudExplained,
                    match &e.text {
                        Some(text) => format!("fraud explanation: {text}"),
                        None => format!("fraud explanation: {status}"),
                    },
                    json!({"reward_id": r.id, "status": status, "text": e.text,
                           "model": e.model, "explained_at": e.explained_at}),
                ));
            }
        }
        if let (Some(review), Some(at)) = (r.review, r.reviewed_at) {
            let reviewer: Option<String> = match r.reviewed_by {
                Some(u) => users::table
                    .find(u)
                    .select(users::email)
                    .first(conn)
                    .await
                    .optional()?,
                None => None,
            };
            out.push(entry(
                at,
                EntryKind::Reviewed,
                format!(
                    "fraud review: {review} by {}",
                    reviewer.as_deref().unwrap_or("an unknown admin")
                ),
                json!({"reward_id": r.id, "review": review, "reviewer_id": r.reviewed_by,
                       "reviewer": reviewer}),
            ));
        }
    }
    Ok(())
}

fn transfer_entry(t: &TransferRow) -> Entry {
    entry(
        t.created_at,
        EntryKind::LedgerTransfer,
        format!(
            "ledger: {} {} {} → {} ({})",
            t.amount_minor, t.currency, t.debit, t.credit, t.kind
        ),
        json!({"transfer_id": t.id, "kind": t.kind, "amount_minor": t.amount_minor,
               "currency": t.currency, "from": t.debit, "to": t.credit, "payout_id": t.payout_id}),
    )
}

fn payout_entry(p: &PayoutRow, spent: i64) -> Entry {
    entry(
        p.created_at,
        EntryKind::Payout,
        format!(
            "payout {} of {} spent {} of this cashback (now {}{})",
            p.id,
            p.amount_minor,
            spent,
            p.status,
            p.completed_at
                .map(|c| format!(", completed {}", c.to_rfc3339()))
                .unwrap_or_default()
        ),
        json!({"payout_id": p.id, "amount_minor": p.amount_minor, "spent_minor": spent,
               "status": p.status, "destination": p.destination_masked,
               "completed_at": p.completed_at}),
    )
}

/// The payouts that spent this purchase's cashback, with how much of it
/// each spent: the user's available money is spent oldest first, so each
/// credit to `available` is a lot that the debits out of it use up in
/// order, and a payout spent this purchase where its debit met one of this
/// purchase's lots.
async fn spending_payouts(
    conn: &mut AsyncPgConnection,
    user: UserId,
    currency: Currency,
    own: &[TransferRow],
) -> Result<Vec<(PayoutRow, i64)>, diesel::result::Error> {
    let available = AccountKind::Available;
    let own_credits: Vec<&str> = own
        .iter()
        .filter(|t| t.credit == available)
        .map(|t| t.id.as_str())
        .collect();
    if own_credits.is_empty() {
        return Ok(Vec::new());
    }
    let moves: Vec<TransferRow> = diesel::sql_query(format!(
        "{TRANSFER_COLUMNS}
          WHERE (d.user_id = $1 AND d.kind = $3 AND d.currency = $2)
             OR (c.user_id = $1 AND c.kind = $3 AND c.currency = $2)
          ORDER BY t.created_at, t.id LIMIT 10000"
    ))
    .bind::<SqlUuid, _>(user.into_uuid())
    .bind::<Text, _>(currency.as_str())
    .bind::<Text, _>(available)
    .load(conn)
    .await?;
    // Lots: (amount left, whether it is this purchase's).
    let mut lots: VecDeque<(i64, bool)> = VecDeque::new();
    let mut spent: HashMap<Uuid, i64> = HashMap::new();
    for t in &moves {
        if t.credit == available {
            lots.push_back((t.amount_minor, own_credits.contains(&t.id.as_str())));
            continue;
        }
        let mut need = t.amount_minor;
        while need > 0 {
            let Some(lot) = lots.front_mut() else { break };
            let take = need.min(lot.0);
            if lot.1
                && let Some(payout) = t.payout_id
            {
                *spent.entry(payout).or_default() += take;
            }
            lot.0 -= take;
            need -= take;
            if lot.0 == 0 {
                lots.pop_front();
            }
        }
    }
    if spent.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = spent.keys().copied().collect();
    let payouts: Vec<PayoutRow> = diesel::sql_query(
        "SELECT id, amount_minor, status, destination_masked, created_at, completed_at
           FROM payouts WHERE id = ANY($1) ORDER BY created_at",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(payouts
        .into_iter()
        .map(|p| {
            let s = spent[&p.id];
            (p, s)
        })
        .collect())
}

/// The emails of `keys` (dedupe keys; a trailing `%` is a prefix).
async fn emails(
    conn: &mut AsyncPgConnection,
    keys: &[String],
    out: &mut Vec<Entry>,
) -> Result<(), diesel::result::Error> {
    for key in keys {
        let q = email_log::table
            .select((
                email_log::dedupe_key,
                email_log::kind,
                email_log::status,
                email_log::attempts,
                email_log::created_at,
                email_log::sent_at,
            ))
            .into_boxed();
        let q = match key.strip_suffix('%') {
            Some(prefix) => q.filter(email_log::dedupe_key.like(format!("{prefix}%"))),
            None => q.filter(email_log::dedupe_key.eq(key)),
        };
        type EmailRow = (
            String,
            String,
            String,
            i32,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<EmailRow> = q.load(conn).await?;
        for (dedupe_key, kind, status, attempts, created_at, sent_at) in rows {
            out.push(entry(
                sent_at.unwrap_or(created_at),
                EntryKind::Email,
                format!("email {kind}: {status} after {attempts} attempt(s)"),
                json!({"dedupe_key": dedupe_key, "email": kind, "status": status,
                       "attempts": attempts, "sent_at": sent_at}),
            ));
        }
    }
    Ok(())
}

/// Every run of the job `job_key` the outbox still holds, each with its
/// attempt, outcome and error (and its dead-job record when it died).
async fn job_runs(
    conn: &mut AsyncPgConnection,
    job_key: &str,
    out: &mut Vec<Entry>,
) -> Result<(), diesel::result::Error> {
    for chain in ops::chains(conn, job_key).await? {
        for run in chain.runs {
            let outcome = run.outcome.map(|o| o.as_str()).unwrap_or("open");
            let at = run.finished_at.or(run.sent_at).unwrap_or(run.run_at);
            let mut summary = format!(
                "job {job_key}: attempt {} of chain {} ({}) {outcome}",
                run.attempt, chain.chain, chain.cause
            );
            if let Some(e) = &run.last_error {
                summary.push_str(&format!(": {e}"));
            }
            out.push(entry(
                at,
                EntryKind::JobRun,
                summary,
                json!({"job_key": job_key, "task_id": run.task_id, "chain": chain.chain,
                       "cause": chain.cause, "attempt": run.attempt, "run_at": run.run_at,
                       "sent_at": run.sent_at, "finished_at": run.finished_at,
                       "outcome": run.outcome, "recovered": run.recovered,
                       "dead_id": run.dead_id, "error": run.last_error}),
            ));
        }
    }
    Ok(())
}
