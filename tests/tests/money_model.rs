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
//! `MONEY_MODEL_EXTRA_STEPS` how many events at most join the orders' own; a failure prints the shrunk
//! sequence, which becomes a named regression test below.

use clicknback_tests::{
    money_driver::Driver,
    money_model::{Ask, BROWSERS, Case, Event, Fault, MERCHANTS, Order, Provider, SHOPPERS, Step},
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
        1 => (0..BROWSERS, 0..MERCHANTS).prop_map(|(browser, merchant)| Event::Click { browser, merchant }),
        1 => (0..SHOPPERS, 0..BROWSERS).prop_map(|(shopper, browser)| Event::Identify { shopper, browser }),
        1 => o.clone().prop_map(|order| Event::Webhook { order, replay: true }),
        1 => (o.clone(), 0..BROWSERS, prop::bool::weighted(0.5))
            .prop_map(|(order, browser, right_token)| Event::Sdk { order, browser, right_token }),
        3 => (o.clone(), any::<bool>()).prop_map(|(order, reverse)| Event::Decide { order, reverse }),
        3 => (o, any::<bool>()).prop_map(|(order, approve)| Event::Review { order, approve }),
        2 => Just(Event::HoldElapsed),
        3 => (0..SHOPPERS, prop_oneof![Just(Ask::Half), Just(Ask::All), Just(Ask::MoreThanAvailable)])
            .prop_map(|(shopper, ask)| Event::Payout { shopper, ask }),
        2 => provider().prop_map(Event::ProviderAnswers),
    ]
}

/// What makes an order a reward: a shopper signs in on a browser, the
/// browser clicks the merchant, the checkout page confirms the order (most
/// often with its token) and the merchant reports it, in any order.
fn story(order: usize, merchant: usize) -> impl Strategy<Value = Vec<Event>> {
    (0..SHOPPERS, 0..BROWSERS, prop::bool::weighted(0.85)).prop_map(
        move |(shopper, browser, right_token)| {
            vec![
                Event::Identify { shopper, browser },
                Event::Click { browser, merchant },
                Event::Sdk {
                    order,
                    browser,
                    right_token,
                },
                Event::Webhook {
                    order,
                    replay: false,
                },
            ]
        },
    )
}

/// Money out, at the end of some sequences: the holds end, the first
/// order's shopper asks for everything available, the merchant decides on an order while the
/// payout is reserved, and the provider answers.
fn cash_out(orders: usize) -> impl Strategy<Value = Vec<Event>> {
    (0..SHOPPERS, 0..orders, any::<bool>(), provider()).prop_map(
        |(shopper, order, reverse, answer)| {
            vec![
                Event::HoldElapsed,
                Event::Payout {
                    shopper,
                    ask: Ask::All,
                },
                Event::Decide { order, reverse },
                Event::ProviderAnswers(answer),
            ]
        },
    )
}

/// At most three orders: a shopper then never has five purchases in an
/// hour, so the burst rule of the fraud scorer never decides a flag. Each
/// order's story and some other events, shuffled together, each step with
/// its fault.
fn case(max_extra: usize) -> impl Strategy<Value = Case> {
    prop::collection::vec(order(), 1..=3).prop_flat_map(move |orders| {
        let stories: Vec<_> = orders
            .iter()
            .enumerate()
            .map(|(i, o)| story(i, o.merchant))
            .collect();
        let extra = prop::collection::vec(event(orders.len()), 0..=max_extra);
        let tail = prop::option::weighted(0.5, cash_out(orders.len()));
        (Just(orders), stories, extra, tail)
            .prop_flat_map(|(orders, stories, extra, tail)| {
                // The payout is asked by the first order's shopper.
                let first = match stories[0][0] {
                    Event::Identify { shopper, .. } => shopper,
                    _ => 0,
                };
                let tail = tail.map(|t| {
                    t.into_iter()
                        .map(|e| match e {
                            Event::Payout { ask, .. } => Event::Payout {
                                shopper: first,
                                ask,
                            },
                            e => e,
                        })
                        .collect::<Vec<_>>()
                });
                let events: Vec<Event> = stories.into_iter().flatten().chain(extra).collect();
                let n = events.len() + tail.as_ref().map_or(0, Vec::len);
                (
                    Just(orders),
                    Just(events).prop_shuffle(),
                    Just(tail.unwrap_or_default()),
                    prop::collection::vec(fault(), n),
                )
            })
            .prop_map(|(orders, events, tail, faults)| Case {
                orders,
                steps: events
                    .into_iter()
                    .chain(tail)
                    .zip(faults)
                    .map(|(event, fault)| Step { event, fault })
                    .collect(),
            })
    })
}

/// Runs `cases` generated sequences on a database and a `TestApp` of their
/// own, each sequence with merchants, shoppers and orders of its own; with
/// `binaries`, against the `clicknback-api` and `clicknback-worker` binaries
/// as child processes, the faults real process kills and restarts.
fn run_sequences(cases: u32, binaries: bool) {
    let max_extra = env_usize(&["MONEY_MODEL_EXTRA_STEPS"], 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let driver = rt.block_on(async {
        if binaries {
            Driver::with_binaries().await
        } else {
            Driver::new().await
        }
    });
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 150,
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let steps = std::sync::atomic::AtomicUsize::new(0);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<&str, usize>::new());
    let result = runner.run(&case(max_extra), |c| {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        steps.fetch_add(c.steps.len(), std::sync::atomic::Ordering::Relaxed);
        let out = rt.block_on(driver.check(&c)).map_err(TestCaseError::fail)?;
        let mut seen = seen.lock().expect("tally");
        for s in out.statuses.iter().flatten() {
            *seen.entry(s.as_str()).or_default() += 1;
        }
        let moved = out
            .wallets
            .iter()
            .filter(|w| w.paid_out > 0 || w.receivable < 0)
            .count();
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
    eprintln!(
        "money model: purchases by final status {:?}",
        seen.into_inner().expect("tally")
    );
    if let Some(t) = driver.tally() {
        eprintln!(
            "money model: workers killed {} ({} with a job of the step unfinished in Redis), \
             stopped {}, jobs lost {}, queues flushed {}, jobs relayed again {}, \
             email claims of killed runs aged {}",
            t.kills,
            t.kills_with_open_jobs,
            t.stops,
            t.lost_jobs,
            t.flushes,
            t.rerelayed,
            t.stale_claims
        );
    }
    rt.block_on(async move { drop(driver) });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// How many sequences each of the two tests below runs (they run in
/// parallel, each on its own database).
fn cases_per_test() -> u32 {
    let total = env_usize(&["MONEY_MODEL_CASES", "PROPTEST_CASES"], DEFAULT_CASES);
    total.div_ceil(2) as u32
}

/// Sequences in the default suite (both tests together).
const DEFAULT_CASES: usize = 200;

#[test]
fn money_converges_to_what_the_model_says() {
    run_sequences(cases_per_test(), false);
}

#[test]
fn money_converges_to_what_the_model_says_in_parallel() {
    run_sequences(cases_per_test(), false);
}

/// The same sequences against the binaries built next to this test (the
/// release ones under `cargo test --release`): `MONEY_MODEL_CASES`
/// sequences (default 100), the faults real SIGKILLs, SIGTERMs and Redis
/// losses. `./scripts/money-model.sh --binaries N` runs it.
#[test]
#[ignore = "long: ./scripts/money-model.sh --binaries N"]
fn money_converges_against_the_binaries() {
    run_sequences(
        env_usize(&["MONEY_MODEL_CASES", "PROPTEST_CASES"], 100) as u32,
        true,
    );
}

/// Replays one sequence through the driver on a database of its own.
async fn replay(orders: Vec<Order>, steps: Vec<(Event, Fault)>) {
    replay_on(Driver::new().await, orders, steps).await;
}

/// Replays one sequence through `driver`.
async fn replay_on(driver: Driver, orders: Vec<Order>, steps: Vec<(Event, Fault)>) {
    let steps = steps
        .into_iter()
        .map(|(event, fault)| Step { event, fault })
        .collect();
    if let Err(e) = driver.check(&Case { orders, steps }).await {
        panic!("{e}");
    }
}

/// Found by the generated sequences (the model had the receivable's sign
/// of the ledger, the wallet shows what is owed): the merchant reverses a
/// confirmed order while its cashback is reserved for a payout the provider
/// then pays; the shopper owes the cashback, shown as a receivable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_while_the_payout_is_reserved_leaves_the_shopper_owing() {
    replay(
        vec![Order {
            merchant: 1,
            amount_minor: 4_248,
            odd_hour: false,
        }],
        vec![
            (
                Event::Identify {
                    shopper: 0,
                    browser: 0,
                },
                Fault::None,
            ),
            (
                Event::Click {
                    browser: 0,
                    merchant: 1,
                },
                Fault::None,
            ),
            (
                Event::Sdk {
                    order: 0,
                    browser: 0,
                    right_token: true,
                },
                Fault::None,
            ),
            (
                Event::Sdk {
                    order: 0,
                    browser: 0,
                    right_token: false,
                },
                Fault::None,
            ),
            (
                Event::Webhook {
                    order: 0,
                    replay: false,
                },
                Fault::None,
            ),
            (Event::HoldElapsed, Fault::None),
            (
                Event::Payout {
                    shopper: 0,
                    ask: Ask::All,
                },
                Fault::None,
            ),
            (
                Event::Decide {
                    order: 0,
                    reverse: true,
                },
                Fault::None,
            ),
            (
                Event::ProviderAnswers(Provider::TimeoutThenPaid),
                Fault::None,
            ),
        ],
    )
    .await;
}

/// A reward whose checkout browser and click came from two browsers that
/// confirmed the order with the same token, its shopper signing in last,
/// and every job of the way lost, run twice or handed back: attributed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_confirmed_from_two_browsers_is_attributed_through_lost_and_repeated_jobs() {
    let (orders, steps) = two_browsers_every_fault();
    replay(orders, steps).await;
}

/// The same sequence against the binaries built next to this test: every
/// fault once as a real SIGKILL, SIGTERM, Redis loss or second relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_survive_every_fault_of_an_order_confirmed_from_two_browsers() {
    let (orders, steps) = two_browsers_every_fault();
    let driver = Driver::with_binaries().await;
    replay_on(driver, orders, steps).await;
}

/// One order confirmed from two browsers with the same token, its shopper
/// signing in last, every fault on the way.
fn two_browsers_every_fault() -> (Vec<Order>, Vec<(Event, Fault)>) {
    (
        vec![Order {
            merchant: 0,
            amount_minor: 1_045,
            odd_hour: false,
        }],
        vec![
            (
                Event::Click {
                    browser: 1,
                    merchant: 0,
                },
                Fault::None,
            ),
            (
                Event::Sdk {
                    order: 0,
                    browser: 2,
                    right_token: true,
                },
                Fault::None,
            ),
            (
                Event::Sdk {
                    order: 0,
                    browser: 1,
                    right_token: true,
                },
                Fault::RunTwice,
            ),
            (
                Event::Webhook {
                    order: 0,
                    replay: false,
                },
                Fault::Lost,
            ),
            (
                Event::Identify {
                    shopper: 2,
                    browser: 2,
                },
                Fault::Stopped,
            ),
            (
                Event::Decide {
                    order: 0,
                    reverse: false,
                },
                Fault::Killed,
            ),
            (
                Event::Webhook {
                    order: 0,
                    replay: true,
                },
                Fault::RedisFlushed,
            ),
        ],
    )
}

/// A flagged reward an admin approved, then re-attributed to a later click a
/// merge brought (the shopper signs in on a second browser), keeps the
/// admin's approval: once the hold ends the cashback is available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_reward_re_attributed_after_a_merge_keeps_its_approval() {
    replay(
        vec![Order {
            merchant: 0,
            amount_minor: 2_000,
            odd_hour: true,
        }],
        vec![
            (
                Event::Identify {
                    shopper: 0,
                    browser: 0,
                },
                Fault::None,
            ),
            (
                Event::Click {
                    browser: 0,
                    merchant: 0,
                },
                Fault::None,
            ),
            (
                Event::Click {
                    browser: 1,
                    merchant: 0,
                },
                Fault::None,
            ),
            (
                Event::Sdk {
                    order: 0,
                    browser: 0,
                    right_token: true,
                },
                Fault::None,
            ),
            (
                Event::Webhook {
                    order: 0,
                    replay: false,
                },
                Fault::None,
            ),
            (
                Event::Review {
                    order: 0,
                    approve: true,
                },
                Fault::None,
            ),
            (
                Event::Identify {
                    shopper: 0,
                    browser: 1,
                },
                Fault::None,
            ),
            (Event::HoldElapsed, Fault::None),
        ],
    )
    .await;
}
