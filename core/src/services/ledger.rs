//! The double-entry ledger. Every movement is one transfer from a debit
//! account to a credit account, with an id derived from what caused it and
//! unique in the database, so posting the same transfer twice moves money
//! once. Balances (credits minus debits) are kept in step with the transfers
//! in the caller's transaction; the database refuses a user balance below zero
//! (and a receivable above zero: a receivable holds what a user owes).
//!
//! Reward lifecycle: attribution credits `pending`; confirmation moves pending
//! to `available`, settling any receivable first; reversal voids what is still
//! pending, or takes a confirmed amount back from `available` and books the
//! shortfall the user already spent on their `receivable`.
//!
//! One rule for every credit into a user's `available` account (a reward's
//! confirmation, a failed payout's release): it goes through
//! [`credit_available`], which settles the user's open receivable first, in
//! the same transaction. Money a user owes is never spendable again.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::pagination::{TextCursor, newest_first};
use crate::{
    db,
    ids::{LedgerAccountId, PayoutId, PurchaseId, RewardId, UserId},
    models::reward::RewardStatus,
    money::{Currency, Money},
    schema::{ledger_accounts, ledger_transfers},
    text_enum::text_enum,
};

text_enum! {
    /// A ledger account: a user's (pending, available, reserved, paid out,
    /// receivable) or the platform's (cashback expense, payout clearing).
    pub enum AccountKind {
        Pending = "pending",
        Available = "available",
        Reserved = "reserved",
        PaidOut = "paid_out",
        /// What a user owes (never above zero).
        Receivable = "receivable",
        CashbackExpense = "cashback_expense",
        PayoutClearing = "payout_clearing",
    }
}

impl AccountKind {
    pub fn is_platform(self) -> bool {
        matches!(
            self,
            AccountKind::CashbackExpense | AccountKind::PayoutClearing
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Whose account: a user's, or the platform's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRef {
    pub user: Option<UserId>,
    pub kind: AccountKind,
}

impl AccountRef {
    pub fn user(user: UserId, kind: AccountKind) -> Self {
        Self {
            user: Some(user),
            kind,
        }
    }
    pub fn platform(kind: AccountKind) -> Self {
        Self { user: None, kind }
    }
}

/// How many sub-accounts each platform account is split into.
pub const PLATFORM_STRIPES: i16 = 16;

/// The stripe a transfer uses on a platform account: one per user, so the
/// transfers of one transaction (one user's) share it; user accounts have
/// only stripe 0.
fn stripe_for(account: AccountRef, t: &Transfer) -> i16 {
    use std::hash::{Hash, Hasher};
    if !account.kind.is_platform() {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    match t.user_id {
        Some(u) => u.hash(&mut h),
        None => t.id.hash(&mut h),
    }
    (h.finish() % PLATFORM_STRIPES as u64) as i16
}

/// The id of an account (stripe 0 of a platform account), created on first use.
pub async fn account_id(
    conn: &mut AsyncPgConnection,
    account: AccountRef,
    currency: Currency,
) -> Result<LedgerAccountId, diesel::result::Error> {
    stripe_id(conn, account, currency, 0).await
}

async fn stripe_id(
    conn: &mut AsyncPgConnection,
    account: AccountRef,
    currency: Currency,
    stripe: i16,
) -> Result<LedgerAccountId, diesel::result::Error> {
    if let Some(id) = find_account(conn, account, currency, stripe).await? {
        return Ok(id);
    }
    diesel::insert_into(ledger_accounts::table)
        .values((
            ledger_accounts::id.eq(LedgerAccountId::new()),
            ledger_accounts::user_id.eq(account.user),
            ledger_accounts::kind.eq(account.kind),
            ledger_accounts::currency.eq(currency),
            ledger_accounts::stripe.eq(stripe),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    find_account(conn, account, currency, stripe)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

async fn find_account(
    mut conn: &AsyncPgConnection,
    account: AccountRef,
    currency: Currency,
    stripe: i16,
) -> Result<Option<LedgerAccountId>, diesel::result::Error> {
    let mut q = ledger_accounts::table
        .filter(ledger_accounts::kind.eq(account.kind))
        .filter(ledger_accounts::currency.eq(currency))
        .filter(ledger_accounts::stripe.eq(stripe))
        .select(ledger_accounts::id)
        .into_boxed();
    q = match account.user {
        Some(u) => q.filter(ledger_accounts::user_id.eq(u)),
        None => q.filter(ledger_accounts::user_id.is_null()),
    };
    q.first(&mut conn).await.optional()
}

/// A balance (credits minus debits); zero for an account never used. A
/// platform account's is the sum of its stripes.
pub async fn balance(
    conn: &mut AsyncPgConnection,
    account: AccountRef,
    currency: Currency,
) -> Result<i64, diesel::result::Error> {
    if account.kind.is_platform() {
        #[derive(QueryableByName)]
        struct Sum {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let sum: Sum = diesel::sql_query(
            "SELECT COALESCE(sum(balance_minor), 0)::bigint AS n FROM ledger_accounts
              WHERE user_id IS NULL AND kind = $1 AND currency = $2",
        )
        .bind::<diesel::sql_types::Text, _>(account.kind.as_str())
        .bind::<diesel::sql_types::Text, _>(currency.as_str())
        .get_result(conn)
        .await?;
        return Ok(sum.n);
    }
    let id = account_id(conn, account, currency).await?;
    ledger_accounts::table
        .find(id)
        .select(ledger_accounts::balance_minor)
        .first(conn)
        .await
}

/// One movement of money.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Derived from the cause, e.g. `reward:<purchase>:1:credit`.
    pub id: String,
    pub from: AccountRef,
    pub to: AccountRef,
    pub amount: Money,
    pub kind: &'static str,
    pub user_id: Option<UserId>,
    pub purchase_id: Option<PurchaseId>,
    pub reward_id: Option<RewardId>,
    pub payout_id: Option<PayoutId>,
}

/// Whether a transfer moved money now or had already been posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Now,
    Already,
}

/// Posts a transfer inside the caller's transaction. Idempotent by id.
pub async fn post(conn: &mut AsyncPgConnection, t: &Transfer) -> Result<Posted, LedgerError> {
    let posted = post_many(conn, std::slice::from_ref(t)).await?;
    Ok(posted[0])
}

/// Posts transfers inside the caller's transaction, each idempotent by id,
/// in a fixed number of statements: the accounts' ids (one pipeline), the
/// transfers (one insert), then one balance update per account touched by a
/// transfer posted now, summed, in account id order (one pipeline:
/// PostgreSQL runs them in order, so concurrent posts lock rows in the same
/// order and cannot deadlock, and the round trips do not add up while the
/// rows are held). A user's balance is checked once its transfers of this
/// call are summed. Returns, per transfer, whether it moved money now.
pub async fn post_many(
    conn: &mut AsyncPgConnection,
    transfers: &[Transfer],
) -> Result<Vec<Posted>, LedgerError> {
    if transfers.is_empty() {
        return Ok(Vec::new());
    }
    // Every (account, currency, stripe) the transfers name, once.
    let mut keys: Vec<(AccountRef, Currency, i16)> = Vec::new();
    for t in transfers {
        let currency = t.amount.currency();
        for a in [t.from, t.to] {
            let key = (a, currency, stripe_for(a, t));
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let found = {
        let c: &AsyncPgConnection = conn;
        futures::future::try_join_all(keys.iter().map(|&(a, cur, s)| find_account(c, a, cur, s)))
            .await?
    };
    let mut ids = Vec::with_capacity(keys.len());
    for (&(a, cur, s), found) in keys.iter().zip(found) {
        ids.push(match found {
            Some(id) => id,
            None => stripe_id(conn, a, cur, s).await?,
        });
    }
    let id_of = |a: AccountRef, t: &Transfer| {
        let key = (a, t.amount.currency(), stripe_for(a, t));
        ids[keys
            .iter()
            .position(|k| *k == key)
            .expect("every key was resolved")]
    };
    let rows: Vec<_> = transfers
        .iter()
        .map(|t| {
            (
                ledger_transfers::id.eq(&t.id),
                ledger_transfers::debit_account_id.eq(id_of(t.from, t)),
                ledger_transfers::credit_account_id.eq(id_of(t.to, t)),
                ledger_transfers::amount_minor.eq(t.amount.amount_minor()),
                ledger_transfers::currency.eq(t.amount.currency()),
                ledger_transfers::kind.eq(t.kind),
                ledger_transfers::user_id.eq(t.user_id),
                ledger_transfers::purchase_id.eq(t.purchase_id),
                ledger_transfers::reward_id.eq(t.reward_id),
                ledger_transfers::payout_id.eq(t.payout_id),
            )
        })
        .collect();
    let inserted: Vec<String> = diesel::insert_into(ledger_transfers::table)
        .values(rows)
        .on_conflict(ledger_transfers::id)
        .do_nothing()
        .returning(ledger_transfers::id)
        .get_results(conn)
        .await?;
    let mut posted = Vec::with_capacity(transfers.len());
    let mut counted = std::collections::HashSet::new();
    let mut deltas: std::collections::BTreeMap<LedgerAccountId, i64> = Default::default();
    for t in transfers {
        // A transfer named twice in one call moves money once.
        let now = inserted.contains(&t.id) && counted.insert(t.id.as_str());
        if now {
            let amount = t.amount.amount_minor();
            *deltas.entry(id_of(t.from, t)).or_default() -= amount;
            *deltas.entry(id_of(t.to, t)).or_default() += amount;
        }
        posted.push(if now { Posted::Now } else { Posted::Already });
    }
    let c: &AsyncPgConnection = conn;
    futures::future::try_join_all(
        deltas
            .iter()
            .filter(|(_, d)| **d != 0)
            .map(|(&id, &d)| add_to_balance(c, id, d)),
    )
    .await?;
    Ok(posted)
}

/// Adds `delta` to an account's balance; a user's balance going negative is
/// [`LedgerError::InsufficientFunds`].
async fn add_to_balance(
    mut conn: &AsyncPgConnection,
    id: LedgerAccountId,
    delta: i64,
) -> Result<usize, LedgerError> {
    diesel::update(ledger_accounts::table.find(id))
        .set(ledger_accounts::balance_minor.eq(ledger_accounts::balance_minor + delta))
        .execute(&mut conn)
        .await
        .map_err(|e| {
            if db::check_violation(&e, "ledger_accounts_user_balance_non_negative") {
                LedgerError::InsufficientFunds
            } else {
                LedgerError::from(e)
            }
        })
}

/// How [`credit_available`] split a credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreditSplit {
    /// What settled the user's receivable.
    pub settled_minor: i64,
    /// What became available.
    pub available_minor: i64,
}

/// Credits `t.amount` from `t.from` into the user's `available` account
/// (`t.to`), settling what the user owes on their receivable first: that part
/// goes `t.from` → receivable under `settle_id` (kind
/// `receivable_settlement`), the rest is `t` itself. In the caller's
/// transaction, with the receivable row locked so two credits cannot both
/// settle the same debt. The caller runs it once per cause (its status guards
/// it): the split depends on the receivable at the time.
pub async fn credit_available(
    conn: &mut AsyncPgConnection,
    t: &Transfer,
    settle_id: &str,
) -> Result<CreditSplit, LedgerError> {
    let user =
        t.to.user
            .filter(|_| t.to.kind == AccountKind::Available)
            .expect("credit_available credits a user's available account");
    let currency = t.amount.currency();
    let receivable = account_id(
        conn,
        AccountRef::user(user, AccountKind::Receivable),
        currency,
    )
    .await?;
    let balance: i64 = ledger_accounts::table
        .find(receivable)
        .select(ledger_accounts::balance_minor)
        .for_update()
        .first(conn)
        .await?;
    let (settle, rest) = t.amount.split(-balance);
    let mut split = CreditSplit::default();
    if let Some(settle) = settle {
        post(
            conn,
            &Transfer {
                id: settle_id.to_owned(),
                to: AccountRef::user(user, AccountKind::Receivable),
                amount: settle,
                kind: "receivable_settlement",
                ..t.clone()
            },
        )
        .await?;
        split.settled_minor = settle.amount_minor();
    }
    if let Some(rest) = rest {
        post(
            conn,
            &Transfer {
                amount: rest,
                ..t.clone()
            },
        )
        .await?;
        split.available_minor = rest.amount_minor();
    }
    Ok(split)
}

/// A user's balances in one currency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WalletBalance {
    pub currency: Currency,
    pub pending_minor: i64,
    pub available_minor: i64,
    pub reserved_minor: i64,
    pub paid_out_minor: i64,
    /// What the user owes after a reversal of cashback already spent.
    pub receivable_minor: i64,
}

/// Every currency the user has touched.
pub async fn wallet(
    conn: &mut AsyncPgConnection,
    user: UserId,
) -> Result<Vec<WalletBalance>, diesel::result::Error> {
    let rows: Vec<(Currency, AccountKind, i64)> = ledger_accounts::table
        .filter(ledger_accounts::user_id.eq(user))
        .select((
            ledger_accounts::currency,
            ledger_accounts::kind,
            ledger_accounts::balance_minor,
        ))
        .order(ledger_accounts::currency.asc())
        .load(conn)
        .await?;
    let mut out: Vec<WalletBalance> = Vec::new();
    for (currency, kind, balance) in rows {
        if out.last().is_none_or(|w| w.currency != currency) {
            out.push(WalletBalance {
                currency,
                pending_minor: 0,
                available_minor: 0,
                reserved_minor: 0,
                paid_out_minor: 0,
                receivable_minor: 0,
            });
        }
        let w = out.last_mut().expect("just pushed");
        match kind {
            AccountKind::Pending => w.pending_minor = balance,
            AccountKind::Available => w.available_minor = balance,
            AccountKind::Reserved => w.reserved_minor = balance,
            AccountKind::PaidOut => w.paid_out_minor = balance,
            AccountKind::Receivable => w.receivable_minor = -balance,
            AccountKind::CashbackExpense | AccountKind::PayoutClearing => {}
        }
    }
    Ok(out)
}

/// A ledger row as a user's transaction history shows it.
#[derive(Debug, Clone, Queryable, serde::Serialize, utoipa::ToSchema)]
pub struct TransferView {
    pub id: String,
    pub kind: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub purchase_id: Option<PurchaseId>,
    pub payout_id: Option<PayoutId>,
    pub created_at: DateTime<Utc>,
}

/// The user's transfers, newest first, at most `limit`; `after` is the
/// `(created_at, id)` of the previous page's last row.
pub async fn transfers(
    conn: &mut AsyncPgConnection,
    user: UserId,
    after: Option<TextCursor>,
    limit: i64,
) -> Result<Vec<TransferView>, diesel::result::Error> {
    let q = ledger_transfers::table
        .filter(ledger_transfers::user_id.eq(user))
        .limit(limit)
        .select((
            ledger_transfers::id,
            ledger_transfers::kind,
            ledger_transfers::amount_minor,
            ledger_transfers::currency,
            ledger_transfers::purchase_id,
            ledger_transfers::payout_id,
            ledger_transfers::created_at,
        ))
        .into_boxed();
    let q = newest_first!(q, ledger_transfers, after);
    q.load(conn).await
}

/// What broke an invariant, for the reconciliation report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Breach {
    pub check: &'static str,
    pub detail: String,
}

#[derive(QueryableByName)]
struct Detail {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

#[derive(QueryableByName)]
struct Point {
    #[diesel(sql_type = diesel::sql_types::Text)]
    snapshot: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    xmin: String,
}

/// The transfers (`t`) and rewards (`r`) a reconciliation looks at: those
/// written since the verified point, or all of them.
fn since(point: Option<&Point>, alias: &str) -> String {
    match point {
        // The snapshot's text form is digits and colons only: read from the
        // database, never from outside.
        Some(p) => format!(
            "{alias}.xact >= '{}'::xid8 AND NOT pg_visible_in_snapshot({alias}.xact, '{}'::pg_snapshot)",
            p.xmin, p.snapshot
        ),
        None => "true".to_owned(),
    }
}

/// Checks every ledger invariant; returns what is broken (empty when sound).
///
/// Incremental: balances are checked against the transfer sums verified at
/// the last point plus the transfers written since, and only rewards written
/// since are checked for their credit. When nothing is broken this becomes
/// the new verified point. Runs in its own repeatable-read transaction (one
/// snapshot for every check); two runs at once cannot both advance the point
/// (the loser fails with a serialization error and moves nothing).
pub async fn reconcile(conn: &mut AsyncPgConnection) -> Result<Vec<Breach>, diesel::result::Error> {
    conn.build_transaction()
        .repeatable_read()
        .run(async |conn| {
            let point: Option<Point> = diesel::sql_query(
                "SELECT snapshot::text AS snapshot, pg_snapshot_xmin(snapshot)::text AS xmin
                   FROM ledger_verified_point",
            )
            .get_result(conn)
            .await
            .optional()?;
            let breaches = checks(conn, point.as_ref()).await?;
            if breaches.is_empty() {
                advance(conn, point.as_ref()).await?;
            }
            Ok(breaches)
        })
        .await
}

/// Checks every invariant over the whole ledger, ignoring (and not moving)
/// the verified point: for an operator who suspects a stored transfer.
pub async fn reconcile_all(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<Breach>, diesel::result::Error> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| checks(conn, None).await)
        .await
}

/// Per account: what its transfers in scope add up to (credits minus debits).
fn deltas(point: Option<&Point>) -> String {
    format!(
        "SELECT id, sum(delta) AS delta FROM (
                SELECT credit_account_id AS id, amount_minor AS delta FROM ledger_transfers t WHERE {w}
                UNION ALL
                SELECT debit_account_id, -amount_minor FROM ledger_transfers t WHERE {w}) x
          GROUP BY id",
        w = since(point, "t")
    )
}

async fn checks(
    conn: &mut AsyncPgConnection,
    point: Option<&Point>,
) -> Result<Vec<Breach>, diesel::result::Error> {
    // Without a point nothing was verified: every sum starts at zero.
    let verified = if point.is_some() {
        "COALESCE(v.sum_minor, 0)"
    } else {
        "0"
    };
    let matches = format!(
        "WITH d AS ({deltas})
         SELECT a.id::text || ' (' || a.kind || ') holds ' || a.balance_minor || ' but its transfers give '
                || ({verified} + COALESCE(d.delta, 0)) AS detail
           FROM ledger_accounts a
           LEFT JOIN ledger_verified_sums v ON v.account_id = a.id
           LEFT JOIN d ON d.id = a.id
          WHERE a.balance_minor <> {verified} + COALESCE(d.delta, 0)",
        deltas = deltas(point)
    );
    let no_credit = format!(
        "SELECT 'purchase ' || r.purchase_id::text || ' reward ' || r.id::text || ' has no credit transfer' AS detail
           FROM rewards r
          WHERE {since} AND r.status IN ({}) AND r.amount_minor > 0
            AND NOT EXISTS (SELECT 1 FROM ledger_transfers t
                             WHERE t.purchase_id = r.purchase_id AND t.reward_id = r.id AND t.kind = 'reward_credit')",
        RewardStatus::sql_list(&RewardStatus::CREDITED),
        since = since(point, "r"),
    );
    let checks: [(&'static str, &str); 4] = [
        (
            "balanced_per_currency",
            "SELECT currency || ': accounts sum to ' || sum(balance_minor) AS detail
               FROM ledger_accounts GROUP BY currency HAVING sum(balance_minor) <> 0",
        ),
        ("balance_matches_transfers", &matches),
        (
            "user_balances_not_negative",
            "SELECT id::text || ' (' || kind || ') is ' || balance_minor AS detail FROM ledger_accounts
              WHERE user_id IS NOT NULL AND ((kind <> 'receivable' AND balance_minor < 0)
                                          OR (kind = 'receivable' AND balance_minor > 0))",
        ),
        ("processed_purchases_have_transfers", &no_credit),
    ];
    let mut out = Vec::new();
    for (check, sql) in checks {
        let mut rows: Vec<Detail> = diesel::sql_query(sql).load(conn).await?;
        // One order for one ledger, whatever plan PostgreSQL picks: reports
        // of two runs compare line by line.
        rows.sort_by(|a, b| a.detail.cmp(&b.detail));
        out.extend(rows.into_iter().map(|r| Breach {
            check,
            detail: r.detail,
        }));
    }
    Ok(out)
}

/// Makes this transaction's snapshot the verified point, adding the
/// transfers written since the previous one to the verified sums. The point
/// row is written first: a concurrent run that already moved it makes this
/// one fail (repeatable read) before anything is counted twice.
async fn advance(
    conn: &mut AsyncPgConnection,
    point: Option<&Point>,
) -> Result<(), diesel::result::Error> {
    let moved = match point {
        Some(p) => diesel::sql_query(
            "UPDATE ledger_verified_point SET snapshot = pg_current_snapshot(), verified_at = now()
                  WHERE snapshot::text = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&p.snapshot)
        .execute(conn)
        .await?,
        None => diesel::sql_query(
            "INSERT INTO ledger_verified_point (id, snapshot) VALUES (true, pg_current_snapshot())",
        )
        .execute(conn)
        .await?,
    };
    if moved != 1 {
        return Err(diesel::result::Error::NotFound);
    }
    diesel::sql_query(format!(
        "INSERT INTO ledger_verified_sums (account_id, sum_minor)
         SELECT id, delta FROM ({}) d
         ON CONFLICT (account_id) DO UPDATE SET sum_minor = ledger_verified_sums.sum_minor + EXCLUDED.sum_minor",
        deltas(point)
    ))
    .execute(conn)
    .await?;
    Ok(())
}
