//! Randomized sequences over the ledger: credits, confirmations, reversals,
//! re-attributions, spending, steps run twice and steps whose transaction dies
//! half-way. After every sequence the invariants hold (reconcile finds
//! nothing), every purchase carries at most one live reward, and its net
//! cashback is exactly that reward's (paid at most once).

use chrono::Utc;
use clicknback_core::{
    ids::{MerchantId, OfferId, PurchaseId, RewardId, UserId},
    models::{
        reward::{NewReward, RewardStatus},
        user::Role,
    },
    money::{Currency, Money},
    schema::{merchants, offers, purchases, rewards},
    services::{
        ledger::{self, AccountKind, AccountRef, Transfer},
        rewards::{self as reward_svc, RewardError},
        users,
    },
};
use clicknback_tests::TestApp;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::{Rng, SeedableRng, rngs::StdRng};
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

struct World {
    user: UserId,
    offer: OfferId,
    purchases: Vec<PurchaseId>,
}

async fn world(conn: &mut AsyncPgConnection, n: usize) -> World {
    let user = users::create(
        conn,
        &format!("u{}@example.com", Uuid::new_v4().simple()),
        "password-123",
        Role::User,
    )
    .await
    .unwrap()
    .id;
    let merchant = MerchantId::new();
    diesel::insert_into(merchants::table)
        .values((
            merchants::id.eq(merchant),
            merchants::name.eq("m"),
            merchants::publishable_key.eq(format!("pk_{merchant}")),
            merchants::webhook_secret_encrypted.eq(vec![0u8; 40]),
        ))
        .execute(conn)
        .await
        .unwrap();
    let offer = OfferId::new();
    diesel::insert_into(offers::table)
        .values((
            offers::id.eq(offer),
            offers::merchant_id.eq(merchant),
            offers::name.eq("o"),
            offers::rate_bps.eq(500),
        ))
        .execute(conn)
        .await
        .unwrap();
    let mut ps = Vec::new();
    for i in 0..n {
        let id = PurchaseId::new();
        diesel::insert_into(purchases::table)
            .values((
                purchases::id.eq(id),
                purchases::merchant_id.eq(merchant),
                purchases::order_id.eq(format!("o{i}")),
                purchases::amount_minor.eq(10_000),
                purchases::currency.eq("EUR"),
                purchases::purchased_at.eq(Utc::now()),
                purchases::attribute_after.eq(Utc::now()),
                purchases::user_id.eq(user),
            ))
            .execute(conn)
            .await
            .unwrap();
        ps.push(id);
    }
    World {
        user,
        offer,
        purchases: ps,
    }
}

/// The live (not voided) reward of a purchase, if any.
async fn live(
    conn: &mut AsyncPgConnection,
    purchase: PurchaseId,
) -> Option<(RewardId, i32, String, i64)> {
    rewards::table
        .filter(rewards::purchase_id.eq(purchase))
        .filter(rewards::status.ne("voided"))
        .select((
            rewards::id,
            rewards::attribution_seq,
            rewards::status,
            rewards::amount_minor,
        ))
        .first(conn)
        .await
        .optional()
        .unwrap()
}

async fn attribute(
    conn: &mut AsyncPgConnection,
    w: &World,
    purchase: PurchaseId,
    seq: i32,
    amount: i64,
) -> Result<(), RewardError> {
    let id = RewardId::new();
    diesel::insert_into(rewards::table)
        .values(NewReward {
            id,
            purchase_id: purchase,
            attribution_seq: seq,
            user_id: w.user,
            offer_id: w.offer,
            touchpoint_id: None,
            identity_group_id: None,
            amount_minor: amount,
            currency: eur(),
            status: RewardStatus::Pending,
            fraud_score: 0.0,
            fraud_reasons: serde_json::json!([]),
            flagged: false,
            hold_until: chrono::Utc::now() + chrono::Duration::days(30),
        })
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let r = reward_svc::lock(conn, id).await;
    if let Ok(r) = r {
        reward_svc::credit(conn, &r).await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Confirm,
    Reverse,
    Reattribute,
    Spend,
}

async fn apply(
    conn: &mut AsyncPgConnection,
    w: &World,
    purchase: PurchaseId,
    op: Op,
    amount: i64,
    spend_id: &str,
) -> Result<(), RewardError> {
    match op {
        Op::Confirm => {
            if let Some((id, ..)) = live(conn, purchase).await {
                reward_svc::confirm(conn, id).await?;
            }
        }
        Op::Reverse => {
            if let Some((id, ..)) = live(conn, purchase).await {
                reward_svc::reverse(conn, id, RewardStatus::Reversed).await?;
            }
        }
        Op::Reattribute => match live(conn, purchase).await {
            Some((id, seq, status, _)) if status == "pending" => {
                reward_svc::reverse(conn, id, RewardStatus::Voided).await?;
                attribute(conn, w, purchase, seq + 1, amount).await?;
            }
            None => {
                let next: i32 = rewards::table
                    .filter(rewards::purchase_id.eq(purchase))
                    .select(diesel::dsl::max(rewards::attribution_seq))
                    .first::<Option<i32>>(conn)
                    .await?
                    .unwrap_or(0);
                if next == 0 {
                    attribute(conn, w, purchase, 1, amount).await?;
                }
            }
            _ => {}
        },
        Op::Spend => {
            let available = ledger::balance(
                conn,
                AccountRef::user(w.user, AccountKind::Available),
                eur(),
            )
            .await?;
            if available > 0 {
                ledger::post(
                    conn,
                    &Transfer {
                        id: spend_id.to_owned(),
                        from: AccountRef::user(w.user, AccountKind::Available),
                        to: AccountRef::platform(AccountKind::PayoutClearing),
                        amount: Money::new(amount.min(available), eur()).unwrap(),
                        kind: "test_spend",
                        user_id: Some(w.user),
                        purchase_id: None,
                        reward_id: None,
                        payout_id: None,
                    },
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn random_sequences_keep_every_invariant() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let w = world(&mut conn, 4).await;
        for step in 0..80 {
            let purchase = w.purchases[rng.gen_range(0..w.purchases.len())];
            let op = match rng.gen_range(0..10) {
                0..=2 => Op::Reattribute,
                3..=5 => Op::Confirm,
                6..=7 => Op::Reverse,
                _ => Op::Spend,
            };
            let amount = rng.gen_range(1..=900);
            let spend_id = format!("spend:{seed}:{step}");
            let crash = rng.gen_bool(0.15);
            let twice = rng.gen_bool(0.25);
            for _ in 0..if twice { 2 } else { 1 } {
                // A job killed half-way: its transaction never commits.
                let result = conn
                    .transaction::<(), RewardError, _>(async |c| {
                        apply(c, &w, purchase, op, amount, &spend_id).await?;
                        if crash {
                            return Err(RewardError::Db(
                                diesel::result::Error::RollbackTransaction,
                            ));
                        }
                        Ok(())
                    })
                    .await;
                match result {
                    Ok(()) | Err(RewardError::IllegalTransition { .. }) => {}
                    Err(RewardError::Db(diesel::result::Error::RollbackTransaction)) if crash => {}
                    Err(e) => panic!("seed {seed} step {step} {op:?}: {e}"),
                }
            }
            let breaches = ledger::reconcile(&mut conn).await.unwrap();
            assert!(
                breaches.is_empty(),
                "seed {seed} step {step} {op:?}: {breaches:?}"
            );
        }
        // Each purchase: at most one live reward, and net cashback equals it.
        for p in &w.purchases {
            let lives: i64 = rewards::table
                .filter(rewards::purchase_id.eq(p))
                .filter(rewards::status.ne("voided"))
                .count()
                .get_result(&mut conn)
                .await
                .unwrap();
            assert!(lives <= 1);
            #[derive(QueryableByName)]
            struct Net {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                net: i64,
            }
            let net: Net = diesel::sql_query(
                "SELECT COALESCE(sum(CASE WHEN kind = 'reward_credit' THEN amount_minor
                                          WHEN kind IN ('reward_void', 'reward_reverse', 'reward_reverse_shortfall') THEN -amount_minor
                                          ELSE 0 END), 0)::bigint AS net
                   FROM ledger_transfers WHERE purchase_id = $1",
            )
            .bind::<diesel::sql_types::Uuid, _>(p)
            .get_result(&mut conn)
            .await
            .unwrap();
            let expected = match live(&mut conn, *p).await {
                Some((_, _, status, amount)) if status == "pending" || status == "confirmed" => {
                    amount
                }
                _ => 0,
            };
            assert_eq!(
                net.net, expected,
                "seed {seed} purchase {p}: paid at most once"
            );
        }
    }
}

#[tokio::test]
async fn reversal_after_spending_books_a_receivable_that_later_credits_settle_first() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    let w = world(&mut conn, 2).await;
    let (a, b) = (w.purchases[0], w.purchases[1]);
    attribute(&mut conn, &w, a, 1, 500).await.unwrap();
    let (ra, ..) = live(&mut conn, a).await.unwrap();
    reward_svc::confirm(&mut conn, ra).await.unwrap();
    apply(&mut conn, &w, a, Op::Spend, 400, "spend:1")
        .await
        .unwrap();
    // 100 left available; reversing 500 takes 100 and books 400 owed.
    reward_svc::reverse(&mut conn, ra, RewardStatus::Reversed)
        .await
        .unwrap();
    let wallet = ledger::wallet(&mut conn, w.user).await.unwrap();
    assert_eq!(
        (wallet[0].available_minor, wallet[0].receivable_minor),
        (0, 400)
    );
    // Confirm after reverse is refused and moves nothing.
    assert!(matches!(
        reward_svc::confirm(&mut conn, ra).await,
        Err(RewardError::IllegalTransition { .. })
    ));
    // The next confirmed 300 settles the debt first.
    attribute(&mut conn, &w, b, 1, 300).await.unwrap();
    let (rb, ..) = live(&mut conn, b).await.unwrap();
    reward_svc::confirm(&mut conn, rb).await.unwrap();
    reward_svc::confirm(&mut conn, rb).await.unwrap();
    let wallet = ledger::wallet(&mut conn, w.user).await.unwrap();
    assert_eq!(
        (
            wallet[0].available_minor,
            wallet[0].receivable_minor,
            wallet[0].pending_minor
        ),
        (0, 100, 0)
    );
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());
}

#[tokio::test]
async fn reconciliation_finds_a_corrupted_row() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    let w = world(&mut conn, 1).await;
    attribute(&mut conn, &w, w.purchases[0], 1, 700)
        .await
        .unwrap();
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());
    diesel::sql_query(
        "UPDATE ledger_accounts SET balance_minor = balance_minor + 1 WHERE kind = 'pending'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let breaches = ledger::reconcile(&mut conn).await.unwrap();
    let checks: Vec<&str> = breaches.iter().map(|b| b.check).collect();
    assert!(checks.contains(&"balanced_per_currency"), "{breaches:?}");
    assert!(
        checks.contains(&"balance_matches_transfers"),
        "{breaches:?}"
    );
}

#[tokio::test]
async fn the_reconciliation_cron_logs_and_counts_a_breach() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    let w = world(&mut conn, 1).await;
    attribute(&mut conn, &w, w.purchases[0], 1, 700)
        .await
        .unwrap();
    diesel::sql_query(
        "UPDATE ledger_accounts SET balance_minor = balance_minor + 1 WHERE kind = 'pending'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let worker = app.worker(&[("SCHEDULE_RECONCILE_LEDGER", "* * * * * *")]);
    clicknback_tests::procs::eventually(std::time::Duration::from_secs(20), "a reconciliation run", || async {
        (app
            .scalar("SELECT count(*) AS n FROM cron_runs WHERE schedule = 'reconcile_ledger' AND outcome LIKE '%breach%' AND outcome <> '0 breach(es)'")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    let log = worker.log_text();
    assert!(log.contains("ledger invariant broken"), "{log}");
}

/// Credits for many users at once, each in its own transaction on its own
/// connection: they land on several platform stripes, every user holds
/// exactly their credit, the platform balance (summed over its stripes) is
/// the negative of their total, and reconciliation finds nothing.
#[tokio::test]
async fn concurrent_credits_spread_over_platform_stripes_and_reconcile_exactly() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    let mut worlds = Vec::new();
    for _ in 0..24 {
        worlds.push(world(&mut conn, 2).await);
    }
    let worlds = std::sync::Arc::new(worlds);
    let mut tasks = Vec::new();
    for i in 0..worlds.len() {
        let (worlds, db) = (worlds.clone(), app.db.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = AsyncPgConnection::establish(&db).await.unwrap();
            let w = &worlds[i];
            for (n, p) in w.purchases.iter().enumerate() {
                let amount = 100 + i as i64 + n as i64;
                c.transaction::<(), RewardError, _>(async |c| attribute(c, w, *p, 1, amount).await)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for (i, w) in worlds.iter().enumerate() {
        let want = (100 + i as i64) + (101 + i as i64);
        let wallet = ledger::wallet(&mut conn, w.user).await.unwrap();
        assert_eq!(wallet[0].pending_minor, want);
        total += want;
    }
    let expense = ledger::balance(
        &mut conn,
        AccountRef::platform(AccountKind::CashbackExpense),
        eur(),
    )
    .await
    .unwrap();
    assert_eq!(expense, -total);
    let stripes = app
        .scalar("SELECT count(*) AS n FROM ledger_accounts WHERE kind = 'cashback_expense' AND balance_minor <> 0")
        .await;
    assert!(stripes > 1, "credits used {stripes} stripe(s)");
    assert_eq!(
        app.scalar(
            "SELECT count(*) AS n FROM ledger_accounts WHERE user_id IS NOT NULL AND stripe <> 0"
        )
        .await,
        0
    );
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());
    assert!(ledger::reconcile_all(&mut conn).await.unwrap().is_empty());
}

/// A transfer whose transaction is still open when a reconciliation takes
/// its verified point is counted by the next one: the point is a snapshot,
/// not a time or a sequence number.
#[tokio::test]
async fn a_transfer_committed_after_the_verified_point_is_counted_next_time() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    let w = world(&mut conn, 3).await;
    attribute(&mut conn, &w, w.purchases[0], 1, 300)
        .await
        .unwrap();
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());

    let mut open = app.db.conn().await;
    diesel::sql_query("BEGIN").execute(&mut open).await.unwrap();
    attribute(&mut open, &w, w.purchases[1], 1, 400)
        .await
        .unwrap();
    // Taken while the credit above is uncommitted.
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());
    diesel::sql_query("COMMIT")
        .execute(&mut open)
        .await
        .unwrap();
    attribute(&mut conn, &w, w.purchases[2], 1, 500)
        .await
        .unwrap();
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());
    let sums = app
        .scalar("SELECT sum(sum_minor)::bigint AS n FROM ledger_verified_sums s JOIN ledger_accounts a ON a.id = s.account_id WHERE a.kind = 'pending'")
        .await;
    assert_eq!(sums, 1_200);

    // A transfer written since the point without its balance is found.
    diesel::sql_query(
        "INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount_minor, currency, kind)
         SELECT 'forged', d.id, c.id, 5, 'EUR', 'forged'
           FROM ledger_accounts d, ledger_accounts c
          WHERE d.kind = 'cashback_expense' AND c.kind = 'pending' LIMIT 1",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let breaches = ledger::reconcile(&mut conn).await.unwrap();
    assert!(
        breaches
            .iter()
            .any(|b| b.check == "balance_matches_transfers"),
        "{breaches:?}"
    );
    // A broken ledger does not become the verified point: still reported.
    let again = ledger::reconcile(&mut conn).await.unwrap();
    assert_eq!(again, breaches);
    assert_eq!(ledger::reconcile_all(&mut conn).await.unwrap(), breaches);
}

/// A reward written after the verified point as credited but without its
/// credit transfer is found by the incremental check.
#[tokio::test]
async fn a_credited_reward_without_its_transfer_is_found_after_the_point() {
    let app = TestApp::new().await;
    let mut conn = app.db.conn().await;
    let w = world(&mut conn, 2).await;
    attribute(&mut conn, &w, w.purchases[0], 1, 300)
        .await
        .unwrap();
    assert!(ledger::reconcile(&mut conn).await.unwrap().is_empty());
    let id = RewardId::new();
    diesel::insert_into(rewards::table)
        .values(NewReward {
            id,
            purchase_id: w.purchases[1],
            attribution_seq: 1,
            user_id: w.user,
            offer_id: w.offer,
            touchpoint_id: None,
            identity_group_id: None,
            amount_minor: 200,
            currency: eur(),
            status: RewardStatus::Pending,
            fraud_score: 0.0,
            fraud_reasons: serde_json::json!([]),
            flagged: false,
            hold_until: chrono::Utc::now(),
        })
        .execute(&mut conn)
        .await
        .unwrap();
    let breaches = ledger::reconcile(&mut conn).await.unwrap();
    assert_eq!(
        breaches.iter().map(|b| b.check).collect::<Vec<_>>(),
        ["processed_purchases_have_transfers"],
        "{breaches:?}"
    );
    assert_eq!(ledger::reconcile_all(&mut conn).await.unwrap(), breaches);
}
