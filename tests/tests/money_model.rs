//! The model-based test of the money path: generated sequences of events
//! (clicks, identifies, purchase confirmations with right and wrong tokens,
//! webhooks in any order and replayed, merchant decisions before and after
//! attribution, reviews of flagged rewards, hold periods ending, payouts and
//! the provider's answers, with faults of the job system on the way) run
//! through the real api and jobs on real PostgreSQL and Redis
//! (`clicknback_tests::money_driver`), and every wallet and purchase status
//! compared with the reference model (`clicknback_tests::money_model`) and
//! the ledger's invariants. See docs/MONEY-MODEL.md.
//!
//! `MONEY_MODEL_CASES` (or `PROPTEST_CASES`) sets how many sequences run,
//! `MONEY_MODEL_STEPS` their longest length; a failure prints the shrunk
//! sequence, which becomes a named regression test below.

use clicknback_tests::{
    money_driver::Driver,
    money_model::{
        Ask, BROWSERS, Case, Event, Fault, MERCHANTS, Order, Provider, SHOPPERS, Step,
    },
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

fn env_usize(names: &[&str], default: usize) -> usize {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn order() -> impl Strategy<Value = Order> {
    (0..MERCHANTS, 1_000i64..5_000, prop::bool::weighted(0.3)).prop_map(
        |(merchant, amount_minor, odd_hour)| Order {
            merchant,
            amount_minor,
            odd_hour,
        },
    )
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        12 => Just(Fault::None),
        2 => Just(Fault::RunTwice),
        1 => Just(Fault::Lost),
        1 => Just(Fault::Killed),
        1 => Just(Fault::Stopped),
        1 => Just(Fault::RedisFlushed),
    ]
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::Paid),
        Just(Provider::Refused),
        Just(Provider::TimeoutThenPaid),
        Just(Provider::TimeoutThenFailed),
    ]
}

fn event(orders: usize) -> impl Strategy<Value = Event> {
    let o = 0..orders;
    prop_oneof![
        3 => (0..BROWSERS, 0..MERCHANTS).prop_map(|(browser, merchant)| Event::Click { browser, merchant }),
        3 => (0..SHOPPERS, 0..BROWSERS).prop_map(|(shopper, browser)| Event::Identify { shopper, browser }),
        3 => (o.clone(), prop::bool::weighted(0.2)).prop_map(|(order, replay)| Event::Webhook { order, replay }),
        3 => (o.clone(), 0..BROWSERS, prop::bool::weighted(0.8))
            .prop_map(|(order, browser, right_token)| Event::Sdk { order, browser, right_token }),
        2 => (o.clone(), any::<bool>()).prop_map(|(order, reverse)| Event::Decide { order, reverse }),
        2 => (o, any::<bool>()).prop_map(|(order, approve)| Event::Review { order, approve }),
        1 => Just(Event::HoldElapsed),
        2 => (0..SHOPPERS, prop_oneof![Just(Ask::Half), Just(Ask::All), Just(Ask::MoreThanAvailable)])
            .prop_map(|(shopper, ask)| Event::Payout { shopper, ask }),
        1 => provider().prop_map(Event::ProviderAnswers),
    ]
}

/// At most four orders: a shopper then never has five purchases in an hour,
/// so the burst rule of the fraud scorer never decides a flag.
fn case(max_steps: usize) -> impl Strategy<Value = Case> {
    prop::collection::vec(order(), 1..=4).prop_flat_map(move |orders| {
        let steps = prop::collection::vec(
            (event(orders.len()), fault()).prop_map(|(event, fault)| Step { event, fault }),
            1..=max_steps,
        );
        (Just(orders), steps).prop_map(|(orders, steps)| Case { orders, steps })
    })
}

#[test]
fn money_converges_to_what_the_model_says() {
    let cases = env_usize(&["MONEY_MODEL_CASES", "PROPTEST_CASES"], 200) as u32;
    let max_steps = env_usize(&["MONEY_MODEL_STEPS"], 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let driver = rt.block_on(Driver::new());
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let steps = std::sync::atomic::AtomicUsize::new(0);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<&str, usize>::new());
    let result = runner.run(&case(max_steps), |c| {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        steps.fetch_add(c.steps.len(), std::sync::atomic::Ordering::Relaxed);
        let out = rt.block_on(driver.check(&c)).map_err(TestCaseError::fail)?;
        let mut seen = seen.lock().expect("tally");
        for s in out.statuses.iter().flatten() {
            *seen.entry(s.as_str()).or_default() += 1;
        }
        let moved = out.wallets.iter().filter(|w| w.paid_out > 0 || w.receivable < 0).count();
        *seen.entry("shoppers paid out or owing").or_default() += moved;
        Ok(())
    });
    let secs = started.elapsed().as_secs_f64();
    let (runs, steps) = (runs.into_inner(), steps.into_inner());
    eprintln!(
        "money model: {runs} sequences, {steps} steps in {secs:.1} s ({:.1} sequences/s, {:.1} steps/s)",
        runs as f64 / secs,
        steps as f64 / secs
    );
    eprintln!("money model: purchases by final status {:?}", seen.into_inner().expect("tally"));
    rt.block_on(async move { drop(driver) });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Replays one sequence through the driver on a database of its own.
async fn replay(orders: Vec<Order>, steps: Vec<(Event, Fault)>) {
    let driver = Driver::new().await;
    let steps = steps
        .into_iter()
        .map(|(event, fault)| Step { event, fault })
        .collect();
    if let Err(e) = driver.check(&Case { orders, steps }).await {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_case() {
    replay(
        vec![Order { merchant: 0, amount_minor: 1045, odd_hour: false }],
        vec![
            (Event::Click { browser: 1, merchant: 0 }, Fault::None),
            (Event::Sdk { order: 0, browser: 2, right_token: true }, Fault::None),
            (Event::Sdk { order: 0, browser: 1, right_token: true }, Fault::None),
            (Event::Webhook { order: 0, replay: false }, Fault::None),
            (Event::Identify { shopper: 2, browser: 2 }, Fault::None),
        ],
    )
    .await;
}
