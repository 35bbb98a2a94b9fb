//! Drives the events of [`crate::money_model`] through the real code paths:
//! the api router in-process for everything a merchant, a browser, a shopper
//! or an admin sends, and the jobs as the worker runs them (the outbox relay's
//! passes, jobs fetched from the apalis Redis queues and run by the worker's
//! runtime, the settle sweep), on real PostgreSQL and Redis, with the payout
//! provider faked by a real HTTP server (wiremock) and email to a real SMTP
//! sink. After each step the system is let settle: relay passes, jobs and
//! sweeps until nothing is left to do (bounded), with the step's fault
//! applied to the jobs first (run twice, lost by Redis, taken by a worker
//! that is killed or stopped, a queue's Redis contents lost).
//!
//! Time is the driver's: attribution has no delay, a hold period "elapses"
//! by moving `hold_until` (and the purchase's `settle_due_at`) into the past,
//! and work due later (a retry's backoff, a coalesced statistics run) is
//! moved to now before each pass. Nothing sleeps waiting for a timer.
//!
//! One database, one Redis namespace and one `TestApp` serve many cases;
//! each case has merchants, shoppers, browsers and orders of its own, and
//! only its own are compared with the model.
//!
//! [`Driver::with_binaries`] runs the same cases against the release
//! binaries instead: `clicknback-api` and `clicknback-worker` as child
//! processes, every event over HTTP, and the faults real — the worker
//! SIGKILLed or SIGTERMed at a random moment after the step's jobs were
//! enqueued and a new one started, the step's jobs deleted from Redis after
//! the relay marked them sent, the queues' keys deleted, a finished job
//! relayed again. Settling is waiting (bounded, polling) until the outbox has
//! nothing open and no purchase is due for the settle sweep; the comparison
//! is the same.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use apalis::prelude::{Data, WorkerContext};
use axum::http::{Method, StatusCode};
use chrono::{DateTime, Timelike, Utc};
use clicknback_core::{
    ids::{MerchantId, PayoutId, PurchaseId, UserId},
    jobs::{JobEnvelope, Queue},
    models::user::Role,
    queues,
    services::{auth, ledger, rewards},
};
use clicknback_worker::{relay::Relay, runtime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{method, path, path_regex},
};

use crate::{
    TestApp,
    money_model::{
        BROWSERS, Case, Event, Fault, MERCHANTS, MIN_PAYOUT, Model, Order, Provider, RATE_BPS,
        SHOPPERS, Status, Step, Wallet,
    },
    procs::{ApiProcess, SmtpSink, WorkerProcess},
};

/// How long the provider takes when it answers too late.
const SLOW_ANSWER: Duration = Duration::from_millis(600);
/// The provider call's timeout in these runs.
const PROVIDER_TIMEOUT_MS: &str = "150";
/// Passes of relay, jobs and sweeps before a step counts as stuck.
const MAX_ROUNDS: usize = 40;
/// How long the binaries may take to settle a step before it counts as stuck.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The latest moment after a step's jobs are enqueued at which its fault
/// strikes the running worker (a uniformly random moment up to this).
const FAULT_WINDOW_MS: u64 = 300;

/// What the fake provider answers, by payout reference.
type Answers = Arc<Mutex<HashMap<String, Provider>>>;

pub struct Driver {
    pub app: TestApp,
    ctx: runtime::SharedCtx,
    relay: Relay,
    redis: clicknback_core::redis_conn::RedisConn,
    worker: WorkerContext,
    answers: Answers,
    admin: String,
    password_hash: String,
    _smtp: SmtpSink,
    _provider: MockServer,
    /// Cases run so far, for unique worker names.
    runs: std::sync::atomic::AtomicUsize,
    /// The release binaries, when the cases run against them.
    procs: Option<Procs>,
}

/// The api and worker processes of a run against the binaries.
struct Procs {
    /// Runs for as long as the driver; dropped, it is killed.
    _api: ApiProcess,
    worker: tokio::sync::Mutex<WorkerProcess>,
    /// The worker's environment (every new one gets the same).
    env: Vec<(String, String)>,
    tally: Mutex<FaultTally>,
}

/// What the faults did to the worker processes in a run against the binaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultTally {
    /// Workers SIGKILLed.
    pub kills: usize,
    /// Of those, killed while a job of the step was in Redis, unfinished
    /// (waiting, or taken and running).
    pub kills_with_open_jobs: usize,
    /// Workers stopped with SIGTERM (graceful hand-back).
    pub stops: usize,
    /// Jobs deleted from Redis after the relay marked them sent.
    pub lost_jobs: usize,
    /// Times the queues' keys were deleted.
    pub flushes: usize,
    /// Finished jobs relayed again.
    pub rerelayed: usize,
    /// Email claims of killed runs aged past their staleness.
    pub stale_claims: usize,
}

/// One case's own merchants, shoppers, browsers and orders.
struct World {
    tag: String,
    merchants: Vec<(MerchantId, String, String)>,
    shoppers: Vec<(UserId, String)>,
    browsers: Vec<String>,
    orders: Vec<Order>,
    purchases: HashMap<usize, PurchaseId>,
    /// The last webhook of each order: its message id and body, to replay.
    sent: HashMap<usize, (String, Value)>,
    waiting_payouts: Vec<PayoutId>,
    normal_time: DateTime<Utc>,
    odd_time: DateTime<Utc>,
}

impl World {
    fn order_id(&self, o: usize) -> String {
        format!("{}-order-{o}", self.tag)
    }
    fn token(&self, o: usize) -> String {
        format!("{}-token-{o}", self.tag)
    }
}

/// The latest past instant at `hour`:00 UTC.
fn last(hour: u32) -> DateTime<Utc> {
    let now = Utc::now();
    let at = now
        .with_hour(hour)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .expect("a valid hour");
    if at > now {
        at - chrono::Duration::days(1)
    } else {
        at
    }
}

fn provider_answer(answers: &Answers, req: &Request) -> ResponseTemplate {
    let get = req.method.as_str() == "GET";
    let reference = if get {
        req.url
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    } else {
        req.body_json::<Value>()
            .ok()
            .and_then(|b| b["reference"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let answer = answers.lock().expect("answers").get(&reference).copied();
    let payout = |code: u16, status: &str| {
        ResponseTemplate::new(code).set_body_json(json!({
            "id": format!("po_{reference}"),
            "reference": reference,
            "status": status,
            "failure_reason": if status == "failed" { json!("account closed") } else { Value::Null },
        }))
    };
    match (answer, get) {
        (None, true) => ResponseTemplate::new(404),
        (None, false) => ResponseTemplate::new(503),
        (Some(Provider::Paid), _) => payout(201, "paid"),
        (Some(Provider::Refused), true) => ResponseTemplate::new(404),
        (Some(Provider::Refused), false) => ResponseTemplate::new(422)
            .set_body_json(json!({"error": {"message": "account closed"}})),
        (Some(Provider::TimeoutThenPaid), true) => payout(200, "paid"),
        (Some(Provider::TimeoutThenFailed), true) => payout(200, "failed"),
        (Some(Provider::TimeoutThenPaid), false) => payout(201, "paid").set_delay(SLOW_ANSWER),
        (Some(Provider::TimeoutThenFailed), false) => payout(201, "failed").set_delay(SLOW_ANSWER),
    }
}

/// Runs one of the driver's own statements. Those that touch many rows
/// (every open outbox row, say) lock them in their own order while the
/// worker's statements lock some of the same rows in theirs; when
/// PostgreSQL resolves such a deadlock by aborting the driver's statement,
/// it is run again.
async fn exec(app: &TestApp, sql: &str) {
    let mut c = app.state.db.get().await.expect("pooled connection");
    for attempt in 1.. {
        match diesel::sql_query(sql).execute(&mut *c).await {
            Ok(_) => return,
            Err(e) if attempt < 5 && e.to_string().contains("deadlock detected") => {
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

fn id_list<T: std::fmt::Display>(ids: impl IntoIterator<Item = T>) -> String {
    let ids: Vec<String> = ids.into_iter().map(|i| format!("'{i}'")).collect();
    if ids.is_empty() {
        "NULL".into()
    } else {
        ids.join(",")
    }
}

impl Driver {
    /// The api in-process and jobs run by the driver (see the module doc).
    pub async fn new() -> Self {
        Self::build(false).await
    }

    /// The release `clicknback-api` and `clicknback-worker` as child
    /// processes (built next to the test executable).
    pub async fn with_binaries() -> Self {
        Self::build(true).await
    }

    /// What the faults did to the worker processes so far (binaries only).
    pub fn tally(&self) -> Option<FaultTally> {
        self.procs.as_ref().map(|p| *p.tally.lock().expect("tally"))
    }

    async fn build(binaries: bool) -> Self {
        let smtp = SmtpSink::start().await;
        let provider = MockServer::start().await;
        let answers: Answers = Default::default();
        for (verb, matcher) in [("POST", None), ("GET", Some(r"^/v1/payouts/[0-9a-f-]+$"))] {
            let a = answers.clone();
            let mock = match matcher {
                None => Mock::given(method(verb)).and(path("/v1/payouts")),
                Some(re) => Mock::given(method(verb)).and(path_regex(re)),
            };
            mock.respond_with(move |req: &Request| provider_answer(&a, req))
                .mount(&provider)
                .await;
        }
        let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
        let provider_url = provider.uri();
        let min_payout = MIN_PAYOUT.to_string();
        let env = [
            ("ATTRIBUTION_DELAY_SECS", "0"),
            ("FRAUD_THRESHOLD", "0.2"),
            ("REWARD_HOLD_SECS", "86400"),
            ("JOB_RECOVERY_AFTER_SECS", "1"),
            ("RATE_LIMITS_ENABLED", "false"),
            ("SMTP_URL", &smtp_url),
            ("PAYOUT_PROVIDER_URL", &provider_url),
            ("PAYOUT_PROVIDER_TIMEOUT_MS", PROVIDER_TIMEOUT_MS),
            ("PAYOUT_BREAKER_FAILURES", "1000"),
            ("PAYOUT_MIN_AMOUNT_MINOR", &min_payout),
            ("STATS_COALESCE_SECS", "0"),
        ];
        let app = TestApp::with(&env).await;
        let procs = if binaries {
            let api = app.api_process(&env).await;
            app.send_to(&api.base);
            // The worker keeps what is due later in the outbox (the driver
            // moves it to now), sweeps every second and recovers lost jobs
            // a second after they were sent (`JOB_RECOVERY_AFTER_SECS`).
            let worker_env: Vec<(String, String)> = env
                .iter()
                .copied()
                .chain([
                    ("OUTBOX_LOOKAHEAD_SECS", "0"),
                    ("SCHEDULE_SETTLE_REWARDS", "* * * * * *"),
                    ("SHUTDOWN_GRACE_SECS", "10"),
                ])
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let mut redis = app.redis.conn().await;
            clicknback_core::services::ops::set_paused(
                &mut redis,
                &app.config.redis_namespace,
                Queue::Payouts,
                true,
            )
            .await
            .expect("pause payouts");
            let worker = start_worker(&app, &worker_env).await;
            Some(Procs {
                _api: api,
                worker: tokio::sync::Mutex::new(worker),
                env: worker_env,
                tally: Default::default(),
            })
        } else {
            None
        };
        let config = app.config.clone();
        let db = app.state.db.clone();
        let redis_handle = app.state.redis.clone();
        let ctx: runtime::SharedCtx = Arc::new(runtime::Ctx {
            db: db.clone(),
            redis: redis_handle.clone(),
            namespace: config.redis_namespace.clone(),
            config: config.clone(),
            mailer: lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&smtp_url)
                .expect("smtp url")
                .build(),
            instance: "money-model".into(),
            fraud: Box::new(clicknback_core::services::fraud::RuleScorer::default()),
            cache: app.state.cache.clone(),
            provider: Arc::new(
                clicknback_core::payout_provider::HttpProvider::new(&config.payouts)
                    .expect("provider"),
            ),
            explainer: None,
            keys: app.state.keys.clone(),
            paused: Default::default(),
            jobs: clicknback_worker::jobs::registry(),
            closer: clicknback_worker::closer::Closer::spawn(
                db.clone(),
                clicknback_worker::closer::PayloadStore {
                    redis: redis_handle.clone(),
                    namespace: config.redis_namespace.clone(),
                },
                config.worker.close_batch,
                config.worker.close_linger,
                Default::default(),
            )
            .0,
            hand_back: Default::default(),
        });
        let relay = Relay::new(
            db,
            redis_handle,
            config.redis_namespace.clone(),
            config.relay.clone(),
        );
        let redis = app.redis.conn().await;
        let admin = app.admin_token().await;
        let password_hash = auth::hash_password("password-123".into())
            .await
            .expect("hash");
        let d = Self {
            app,
            ctx,
            relay,
            redis,
            worker: WorkerContext::new("money-model-worker"),
            answers,
            admin,
            password_hash,
            _smtp: smtp,
            _provider: provider,
            runs: Default::default(),
            procs,
        };
        if d.procs.is_none() {
            d.register(d.worker.name()).await;
        }
        d
    }

    fn ns(&self) -> &str {
        &self.ctx.namespace
    }

    /// Registers a worker name in every queue, as apalis does at start.
    async fn register(&self, name: &str) {
        let mut c = self.redis.clone();
        for q in Queue::ALL {
            let cfg = queues::storage_config(self.ns(), q);
            let _: () = redis::cmd("ZADD")
                .arg(cfg.workers_set())
                .arg(Utc::now().timestamp())
                .arg(name)
                .query_async(&mut c)
                .await
                .expect("register worker");
        }
    }

    /// Removes a worker name from every queue (a killed worker whose
    /// heartbeats stopped, or a stopped one).
    async fn deregister(&self, name: &str) {
        let mut c = self.redis.clone();
        for q in Queue::ALL {
            let cfg = queues::storage_config(self.ns(), q);
            let _: () = redis::cmd("ZREM")
                .arg(cfg.workers_set())
                .arg(name)
                .query_async(&mut c)
                .await
                .expect("deregister worker");
        }
    }

    async fn world(&self, case: &Case) -> World {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("m{n}x{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut merchants = Vec::new();
        for m in 0..MERCHANTS {
            let (id, secret, pk) = self
                .app
                .merchant(&self.admin, &format!("{tag} shop {m}"))
                .await;
            let r = self
                .app
                .json(
                    Method::POST,
                    &format!("/v1/admin/merchants/{id}/offers"),
                    Some(&self.admin),
                    Some(json!({"name": "cashback", "rate_bps": RATE_BPS, "active": true,
                                 "starts_at": (Utc::now() - chrono::Duration::days(3)).to_rfc3339()})),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            // Active for days: purchases are dated up to a day back, at the
            // hour that decides their flag.
            exec(
                &self.app,
                &format!(
                    "UPDATE offer_activations SET activated_at = now() - interval '3 days'
                      WHERE merchant_id = '{id}'"
                ),
            )
            .await;
            let mid: MerchantId = id.parse().expect("merchant id");
            clicknback_core::services::offers::invalidate_cache(&self.app.state.cache, mid).await;
            merchants.push((mid, secret, pk));
        }
        let mut shoppers = Vec::new();
        let mut c = self.app.state.db.get().await.expect("pooled connection");
        for s in 0..SHOPPERS {
            use clicknback_core::schema::users;
            let id = UserId::new();
            diesel::insert_into(users::table)
                .values((
                    users::id.eq(id),
                    users::email.eq(format!("{tag}-shopper-{s}@example.com")),
                    users::password_hash.eq(&self.password_hash),
                    users::role.eq("user"),
                ))
                .execute(&mut *c)
                .await
                .expect("shopper");
            shoppers.push((id, self.app.state.tokens.issue(id, Role::User).access_token));
        }
        World {
            browsers: (0..BROWSERS)
                .map(|b| format!("{tag}-browser-{b}"))
                .collect(),
            tag,
            merchants,
            shoppers,
            orders: case.orders.clone(),
            purchases: HashMap::new(),
            sent: HashMap::new(),
            waiting_payouts: Vec::new(),
            normal_time: last(12),
            odd_time: last(3),
        }
    }

    async fn sdk(&self, w: &World, merchant: usize, uri: &str, body: Value) -> StatusCode {
        let r = self
            .app
            .request(
                Method::POST,
                uri,
                &[
                    ("content-type", "application/json"),
                    ("x-publishable-key", &w.merchants[merchant].2),
                ],
                Some(serde_json::to_vec(&body).expect("json")),
            )
            .await;
        r.status
    }

    /// Applies one event through the api; checks the answer the model
    /// expects where the model decides it.
    async fn apply(&self, w: &mut World, m: &Model, e: &Event, step: usize) -> Result<(), String> {
        let check = |what: &str, got: StatusCode, ok: bool, good: StatusCode| {
            if ok == (got == good) {
                Ok(())
            } else {
                Err(format!(
                    "step {step} {what}: the system answered {got}, the model expected {}",
                    if ok { "success" } else { "a refusal" }
                ))
            }
        };
        match *e {
            Event::Click { browser, merchant } => {
                let s = self
                    .sdk(
                        w,
                        merchant,
                        "/v1/track/click",
                        json!({"anon_id": w.browsers[browser]}),
                    )
                    .await;
                if s.is_success() {
                    Ok(())
                } else {
                    Err(format!("step {step} click: {s}"))
                }
            }
            Event::Identify { shopper, browser } => {
                let r = self
                    .app
                    .json(
                        Method::POST,
                        "/v1/track/identify",
                        Some(&w.shoppers[shopper].1),
                        Some(json!({"anon_id": w.browsers[browser]})),
                    )
                    .await;
                check("identify", r.status, true, StatusCode::NO_CONTENT)
            }
            Event::Webhook { order, replay } => {
                let o = w.orders[order];
                let (mid, secret, _) = &w.merchants[o.merchant];
                let uri = format!("/v1/webhooks/{mid}/purchases");
                let (msg, body) = match (replay, w.sent.get(&order)) {
                    (true, Some((msg, body))) => (msg.clone(), body.clone()),
                    _ => {
                        let at = if o.odd_hour {
                            w.odd_time
                        } else {
                            w.normal_time
                        };
                        let body = json!({
                            "order_id": w.order_id(order),
                            "amount_minor": o.amount_minor,
                            "currency": "EUR",
                            "purchased_at": at.to_rfc3339(),
                            "purchase_token": w.token(order),
                        });
                        (format!("msg_{}", uuid::Uuid::new_v4().simple()), body)
                    }
                };
                let r = self
                    .app
                    .webhook_with_id(&uri, secret, &msg, &body, &[])
                    .await;
                let first = !w.purchases.contains_key(&order);
                match r.status {
                    StatusCode::ACCEPTED => {
                        let id: PurchaseId = r.body["id"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| format!("step {step} webhook: no id in {}", r.text))?;
                        if let Some(before) = w.purchases.insert(order, id)
                            && before != id
                        {
                            return Err(format!("step {step}: a second purchase for one order"));
                        }
                        w.sent.insert(order, (msg, body));
                        Ok(())
                    }
                    StatusCode::CONFLICT if !first => Ok(()),
                    s => Err(format!("step {step} webhook: {s} {}", r.text)),
                }
            }
            Event::Sdk {
                order,
                browser,
                right_token,
            } => {
                let token = if right_token {
                    w.token(order)
                } else {
                    format!("{}-wrong-{step}", w.tag)
                };
                let s = self
                    .sdk(
                        w,
                        w.orders[order].merchant,
                        "/v1/track/purchase",
                        json!({"anon_id": w.browsers[browser], "order_id": w.order_id(order), "purchase_token": token}),
                    )
                    .await;
                if s.is_success() {
                    Ok(())
                } else {
                    Err(format!("step {step} purchase confirmation: {s}"))
                }
            }
            Event::Decide { order, reverse } => {
                let o = w.orders[order];
                let (mid, secret, _) = &w.merchants[o.merchant];
                let r = self
                    .app
                    .webhook(
                        &format!("/v1/webhooks/{mid}/purchases/{}/status", w.order_id(order)),
                        secret,
                        &json!({"status": if reverse { "reversed" } else { "confirmed" }, "reason": "merchant"}),
                        &[],
                    )
                    .await;
                let accepted = m.accepts_decision(order, reverse);
                check(
                    "merchant decision",
                    r.status,
                    accepted,
                    StatusCode::ACCEPTED,
                )
            }
            Event::Review { order, approve } => {
                let Some(pid) = w.purchases.get(&order) else {
                    return Ok(());
                };
                let r = self
                    .app
                    .json(
                        Method::POST,
                        &format!(
                            "/v1/admin/purchases/{pid}/{}",
                            if approve { "approve" } else { "reject" }
                        ),
                        Some(&self.admin),
                        None,
                    )
                    .await;
                check("review", r.status, m.reviewable(order), StatusCode::OK)
            }
            Event::HoldElapsed => {
                let ids = id_list(w.purchases.values());
                exec(
                    &self.app,
                    &format!(
                        "UPDATE rewards SET hold_until = now() - interval '1 second'
                          WHERE purchase_id IN ({ids}) AND hold_until > now() - interval '1 second'"
                    ),
                )
                .await;
                exec(
                    &self.app,
                    &format!(
                        "UPDATE purchases SET settle_due_at = now()
                          WHERE id IN ({ids}) AND settle_due_at IS NOT NULL"
                    ),
                )
                .await;
                Ok(())
            }
            Event::Payout { shopper, ask } => {
                let amount = ask.amount(m.wallet(shopper).available);
                let (status, body, _) = crate::wallets::request_payout(
                    &self.app,
                    &w.shoppers[shopper].1,
                    &format!("{}-payout-{step}", w.tag),
                    &json!({"amount_minor": amount, "currency": "EUR",
                            "destination": {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"}}),
                )
                .await;
                let ok = amount >= MIN_PAYOUT && amount <= m.wallet(shopper).available;
                check("payout request", status, ok, StatusCode::ACCEPTED)?;
                if status == StatusCode::ACCEPTED {
                    let id = body["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or("payout without id")?;
                    w.waiting_payouts.push(id);
                }
                Ok(())
            }
            Event::ProviderAnswers(answer) => {
                let mut a = self.answers.lock().expect("answers");
                for id in w.waiting_payouts.drain(..) {
                    a.insert(id.to_string(), answer);
                }
                Ok(())
            }
        }
    }

    /// Runs a case through the system and the model side by side; `Err`
    /// says where they part.
    pub async fn check(&self, case: &Case) -> Result<crate::money_model::Outcome, String> {
        let mut w = self.world(case).await;
        let mut m = Model::new(&case.orders);
        let last = Step {
            event: Event::ProviderAnswers(Provider::Paid),
            fault: Fault::None,
        };
        // The provider answers what still waits, and the system settles.
        for (i, s) in case.steps.iter().chain([&last]).enumerate() {
            let payouts = matches!(s.event, Event::ProviderAnswers(_));
            let Some(p) = &self.procs else {
                self.apply(&mut w, &m, &s.event, i).await?;
                m.apply(&s.event);
                self.settle(s.fault, payouts)
                    .await
                    .map_err(|e| format!("step {i} ({:?}): {e}", s.event))?;
                continue;
            };
            let before = self.last_outbox_id().await;
            self.prepare(p, s.fault, payouts)
                .await
                .map_err(|e| format!("step {i}: {e}"))?;
            self.apply(&mut w, &m, &s.event, i).await?;
            m.apply(&s.event);
            self.strike(p, s.fault, payouts, before)
                .await
                .map_err(|e| format!("step {i} ({:?}, {:?}): {e}", s.event, s.fault))?;
        }
        self.compare(&w, &m).await?;
        Ok(m.outcome())
    }

    async fn compare(&self, w: &World, m: &Model) -> Result<(), String> {
        let mut diffs = Vec::new();
        for (s, (_, token)) in w.shoppers.iter().enumerate() {
            let r = self
                .app
                .json(Method::GET, "/v1/me/wallet", Some(token), None)
                .await;
            let got = r.body["data"]
                .as_array()
                .and_then(|d| d.iter().find(|e| e["currency"] == "EUR"))
                .map(|e| Wallet {
                    pending: e["pending_minor"].as_i64().unwrap_or(i64::MIN),
                    available: e["available_minor"].as_i64().unwrap_or(i64::MIN),
                    reserved: e["reserved_minor"].as_i64().unwrap_or(i64::MIN),
                    paid_out: e["paid_out_minor"].as_i64().unwrap_or(i64::MIN),
                    receivable: e["receivable_minor"].as_i64().unwrap_or(i64::MIN),
                })
                .unwrap_or_default();
            let want = m.wallet(s);
            if got != want {
                diffs.push(format!(
                    "shopper {s}: wallet {got:?}, the model says {want:?}"
                ));
            }
        }
        let mut c = self.app.state.db.get().await.expect("pooled connection");
        for o in 0..w.orders.len() {
            use clicknback_core::schema::purchases;
            let got: Option<(String, Option<String>)> = match w.purchases.get(&o) {
                Some(id) => Some(
                    purchases::table
                        .find(id)
                        .select((purchases::status, purchases::status_reason))
                        .first(&mut *c)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let want = m.status(o).map(Status::as_str);
            if got.as_ref().map(|g| g.0.as_str()) != want {
                diffs.push(format!(
                    "order {o}: status {got:?}, the model says {want:?}"
                ));
            }
        }
        let breaches = ledger::reconcile(&mut c).await.map_err(|e| e.to_string())?;
        for b in breaches {
            diffs.push(format!("ledger invariant {}: {}", b.check, b.detail));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("\n"))
        }
    }

    // --- the worker, as it runs jobs -------------------------------------

    fn queues(payouts: bool) -> Vec<Queue> {
        Queue::ALL
            .into_iter()
            .filter(|q| payouts || *q != Queue::Payouts)
            .collect()
    }

    /// Relay passes, jobs and sweeps until nothing is left to do, the fault
    /// applied to the first jobs Redis holds. Payouts run only when the
    /// provider has answered (`payouts`), so a reservation can meet a
    /// reversal between the request and the answer.
    pub async fn settle(&self, fault: Fault, payouts: bool) -> Result<(), String> {
        let allowed = Self::queues(payouts);
        let names = id_list(allowed.iter().map(|q| q.as_str()));
        let mut fault = fault;
        for _ in 0..MAX_ROUNDS {
            // What is due later is due now: the driver's clock. And the
            // reconciler looks for sent, open jobs in Redis a while after it
            // last did: that while has passed.
            exec(
                &self.app,
                &format!(
                    "WITH later AS (
                        UPDATE outbox SET run_at = now(), next_attempt_at = now()
                         WHERE finished_at IS NULL AND sent_at IS NULL AND queue IN ({names})
                           AND (run_at > now() OR next_attempt_at > now()) RETURNING 1)
                     UPDATE outbox SET checked_at = checked_at - interval '1 hour'
                      WHERE finished_at IS NULL AND sent_at IS NOT NULL AND queue IN ({names})"
                ),
            )
            .await;
            let queues = self.open_queues(&allowed).await;
            for &q in &queues {
                self.relay
                    .pass_queue(q)
                    .await
                    .map_err(|e| format!("relay: {e:#}"))?;
            }
            self.work(&queues, &mut fault).await?;
            let mut c = self.app.state.db.get().await.expect("pooled connection");
            let swept = rewards::settle_due(&mut c, Utc::now(), 1_000)
                .await
                .map_err(|e| e.to_string())?;
            if swept.due == 0 && self.open_queues(&allowed).await.is_empty() {
                return Ok(());
            }
        }
        Err("the system did not settle".into())
    }

    /// The queues of `allowed` with jobs still open in the outbox.
    async fn open_queues(&self, allowed: &[Queue]) -> Vec<Queue> {
        let mut c = self.app.state.db.get().await.expect("pooled connection");
        use clicknback_core::schema::outbox;
        let open: Vec<String> = outbox::table
            .filter(outbox::finished_at.is_null())
            .select(outbox::queue)
            .distinct()
            .load(&mut *c)
            .await
            .expect("open queues");
        allowed
            .iter()
            .copied()
            .filter(|q| open.iter().any(|o| o == q.as_str()))
            .collect()
    }

    /// Takes every job Redis holds for `queues` and runs it (or applies the
    /// fault to it).
    async fn work(&self, queues: &[Queue], fault: &mut Fault) -> Result<usize, String> {
        let mut ran = 0;
        let mut c = self.redis.clone();
        if *fault == Fault::RedisFlushed {
            self.flush(queues).await?;
            *fault = Fault::None;
            return Ok(1);
        }
        for &q in queues {
            let cfg = queues::storage_config(self.ns(), q);
            loop {
                let faulty = *fault != Fault::None;
                let worker = if faulty {
                    let n = std::sync::atomic::AtomicUsize::load(
                        &self.runs,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let w =
                        WorkerContext::new(&format!("money-model-{fault:?}-{n}-{}", q.as_str()));
                    self.register(w.name()).await;
                    w
                } else {
                    self.worker.clone()
                };
                let tasks = apalis_redis::queries::fetch_next(&mut c, &worker, &cfg)
                    .await
                    .map_err(|e| format!("fetch: {e}"))?;
                if tasks.is_empty() {
                    if faulty {
                        self.deregister(worker.name()).await;
                    }
                    break;
                }
                ran += tasks.len();
                let inflight = cfg.inflight_set_for(&worker);
                match *fault {
                    Fault::Lost => {
                        for t in &tasks {
                            let id = t.task_id().map(|i| i.to_string()).unwrap_or_default();
                            clicknback_core::services::ops::delete_from_redis(
                                &mut c,
                                self.ns(),
                                q,
                                &id,
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                            let _: () = redis::cmd("SREM")
                                .arg(&inflight)
                                .arg(&id)
                                .query_async(&mut c)
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                        self.deregister(worker.name()).await;
                    }
                    // Killed before it ran them: its in-flight set stays,
                    // and nobody recovers a deregistered worker's.
                    Fault::Killed => self.deregister(worker.name()).await,
                    Fault::Stopped => {
                        queues::hand_back(&mut c, &cfg, worker.name())
                            .await
                            .map_err(|e| e.to_string())?;
                        self.deregister(worker.name()).await;
                    }
                    Fault::None | Fault::RunTwice | Fault::RedisFlushed => {
                        let times = if *fault == Fault::RunTwice { 2 } else { 1 };
                        for t in tasks {
                            let id = t.task_id().cloned().ok_or("a task without id")?;
                            let env: JobEnvelope = serde_json::from_slice(&t.args)
                                .map_err(|e| format!("envelope: {e}"))?;
                            let mut ok = true;
                            for _ in 0..times {
                                ok &= runtime::handle(
                                    env.clone(),
                                    id.clone(),
                                    Data::new(q),
                                    Data::new(self.ctx.clone()),
                                )
                                .await
                                .is_ok();
                            }
                            // The ack apalis gives a finished job (a failed
                            // one goes back to the queue).
                            let target = if ok {
                                cfg.done_jobs_set()
                            } else {
                                cfg.active_jobs_list()
                            };
                            let mut p = redis::pipe();
                            p.srem(&inflight, id.to_string());
                            if ok {
                                p.sadd(target, id.to_string());
                            } else {
                                p.rpush(target, id.to_string());
                            }
                            let _: () = p.query_async(&mut c).await.map_err(|e| e.to_string())?;
                        }
                    }
                }
                *fault = Fault::None;
            }
        }
        // A fault with nothing to act on is spent.
        *fault = Fault::None;
        Ok(ran)
    }

    /// Deletes the keys of `queues` in Redis (what a flushed Redis loses),
    /// except the registered workers.
    async fn flush(&self, queues: &[Queue]) -> Result<(), String> {
        let mut c = self.redis.clone();
        for q in queues {
            let prefix = queues::queue_name(self.ns(), *q);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let workers = queues::storage_config(self.ns(), *q).workers_set();
            let doomed: Vec<&String> = keys.iter().filter(|k| **k != workers).collect();
            if !doomed.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(doomed)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

// --- the release binaries, as they run jobs --------------------------------

/// Starts a worker and waits until it runs (its signal handling in place,
/// its queues' workers registered), so a fault never meets a process that
/// is still starting.
async fn start_worker(app: &TestApp, env: &[(String, String)]) -> WorkerProcess {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = app.worker(&refs);
    crate::procs::eventually(Duration::from_secs(20), "the worker to start", || {
        let started = w.log_text().contains("worker started");
        async move { started.then_some(()) }
    })
    .await;
    w
}

/// A uniformly random moment within the fault window.
async fn random_moment() {
    let ms = rand::random::<u64>() % (FAULT_WINDOW_MS + 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Task {
    #[diesel(sql_type = diesel::sql_types::Text)]
    queue: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    task_id: String,
}

impl Driver {
    async fn count(&self, sql: &str) -> i64 {
        let mut c = self.app.state.db.get().await.expect("pooled connection");
        diesel::sql_query(sql)
            .get_result::<Count>(&mut *c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
    }

    async fn tasks(&self, sql: &str) -> Vec<(Queue, String)> {
        let mut c = self.app.state.db.get().await.expect("pooled connection");
        diesel::sql_query(sql)
            .load::<Task>(&mut *c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .filter_map(|t| {
                Queue::ALL
                    .into_iter()
                    .find(|q| q.as_str() == t.queue)
                    .map(|q| (q, t.task_id))
            })
            .collect()
    }

    /// The newest outbox row: rows after it are the next step's jobs.
    async fn last_outbox_id(&self) -> i64 {
        self.count("SELECT coalesce(max(id), 0) AS n FROM outbox")
            .await
    }

    /// Stops the running worker gracefully (SIGTERM: it hands its jobs back)
    /// and waits for it to exit; no worker runs until [`Self::restart`].
    async fn stop_worker(&self, p: &Procs) {
        let mut w = p.worker.lock().await;
        if w.child.try_wait().ok().flatten().is_some() {
            return;
        }
        w.term();
        let code = w.wait(Duration::from_secs(20)).await;
        assert_eq!(
            code,
            Some(0),
            "the worker's graceful stop: {}",
            w.log_text()
        );
    }

    /// Before a step's event: a worker runs (a new one if a failed case
    /// left none), except under `Lost`, where none runs while the step's
    /// jobs are relayed and lost; the payouts queue is paused unless the
    /// provider answers in this step.
    async fn prepare(&self, p: &Procs, fault: Fault, payouts: bool) -> Result<(), String> {
        let mut r = self.redis.clone();
        clicknback_core::services::ops::set_paused(&mut r, self.ns(), Queue::Payouts, !payouts)
            .await
            .map_err(|e| e.to_string())?;
        let exited = p
            .worker
            .lock()
            .await
            .child
            .try_wait()
            .ok()
            .flatten()
            .is_some();
        if exited {
            self.restart(p).await;
        }
        if fault == Fault::Lost {
            self.stop_worker(p).await;
        }
        Ok(())
    }

    /// A new worker in place of the one that was killed or stopped.
    async fn restart(&self, p: &Procs) {
        let mut w = p.worker.lock().await;
        *w = start_worker(&self.app, &p.env).await;
    }

    /// Applies the step's fault to the running system, then waits until it
    /// settles.
    async fn strike(
        &self,
        p: &Procs,
        fault: Fault,
        payouts: bool,
        before: i64,
    ) -> Result<(), String> {
        let allowed = Self::queues(payouts);
        let mut r = self.redis.clone();
        match fault {
            Fault::None | Fault::RunTwice => {}
            Fault::Killed => {
                random_moment().await;
                let mut w = p.worker.lock().await;
                w.kill9();
                w.wait(Duration::from_secs(10)).await;
                drop(w);
                let open = self
                    .count(&format!(
                        "SELECT count(*) AS n FROM outbox WHERE id > {before}
                          AND sent_at IS NOT NULL AND finished_at IS NULL"
                    ))
                    .await;
                {
                    let mut t = p.tally.lock().expect("tally");
                    t.kills += 1;
                    t.kills_with_open_jobs += usize::from(open > 0);
                }
                self.restart(p).await;
            }
            Fault::Stopped => {
                random_moment().await;
                self.stop_worker(p).await;
                p.tally.lock().expect("tally").stops += 1;
                self.restart(p).await;
            }
            Fault::Lost => {
                // The worker was stopped before the event: the relay marks
                // the step's jobs sent, and Redis loses them.
                for &q in &allowed {
                    self.relay
                        .pass_queue(q)
                        .await
                        .map_err(|e| format!("relay: {e:#}"))?;
                }
                let sent = self
                    .tasks(&format!(
                        "SELECT queue, task_id FROM outbox WHERE id > {before}
                          AND sent_at IS NOT NULL AND finished_at IS NULL"
                    ))
                    .await;
                for (q, id) in &sent {
                    clicknback_core::services::ops::delete_from_redis(&mut r, self.ns(), *q, id)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                p.tally.lock().expect("tally").lost_jobs += sent.len();
                self.restart(p).await;
            }
            Fault::RedisFlushed => {
                random_moment().await;
                self.flush(&allowed).await?;
                p.tally.lock().expect("tally").flushes += 1;
            }
        }
        self.wait_settled(p, &allowed).await?;
        if fault == Fault::RunTwice {
            // The step's finished jobs relayed again: Redis forgets them
            // and the outbox reopens them.
            let done = self
                .tasks(&format!(
                    "SELECT queue, task_id FROM outbox WHERE id > {before} AND outcome = 'done'"
                ))
                .await;
            for (q, id) in &done {
                clicknback_core::services::ops::delete_from_redis(&mut r, self.ns(), *q, id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            exec(
                &self.app,
                &format!(
                    "UPDATE outbox SET finished_at = NULL, outcome = NULL, sent_at = NULL,
                            checked_at = NULL, next_attempt_at = now()
                      WHERE id > {before} AND outcome = 'done'"
                ),
            )
            .await;
            p.tally.lock().expect("tally").rerelayed += done.len();
            self.wait_settled(p, &allowed).await?;
        }
        Ok(())
    }

    /// Waits (bounded, polling) until the outbox has nothing open in
    /// `allowed` and no purchase is due for the settle sweep. What is due
    /// later (a retry's backoff, a coalesced run, a paused queue's job put
    /// back) is moved to now on the way: the driver's clock.
    async fn wait_settled(&self, p: &Procs, allowed: &[Queue]) -> Result<(), String> {
        let names = id_list(allowed.iter().map(|q| q.as_str()));
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            exec(
                &self.app,
                &format!(
                    "UPDATE outbox SET run_at = now(), next_attempt_at = now()
                      WHERE finished_at IS NULL AND sent_at IS NULL AND queue IN ({names})
                        AND (run_at > now() OR next_attempt_at > now())"
                ),
            )
            .await;
            // An email claim a killed run left goes stale after two minutes
            // (`CLAIM_STALE_AFTER`), and the job defers until then: those
            // minutes pass at once too. A live run holds its claim for
            // milliseconds.
            let aged = self
                .count(
                    "WITH aged AS (
                        UPDATE email_log SET claimed_at = now() - interval '1 day'
                         WHERE status = 'sending' AND claimed_at > now() - interval '1 hour'
                           AND claimed_at < now() - interval '2 seconds' RETURNING 1)
                     SELECT count(*) AS n FROM aged",
                )
                .await;
            p.tally.lock().expect("tally").stale_claims += aged as usize;
            let open = self
                .count(&format!(
                    "SELECT count(*) AS n FROM outbox WHERE finished_at IS NULL AND queue IN ({names})"
                ))
                .await;
            let due = self
                .count(
                    "SELECT count(*) AS n FROM purchases
                      WHERE settle_due_at IS NOT NULL AND settle_due_at <= now()",
                )
                .await;
            if open == 0 && due == 0 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let mut w = p.worker.lock().await;
                let exited = w.child.try_wait().ok().flatten();
                return Err(format!(
                    "the system did not settle in {SETTLE_TIMEOUT:?}: {open} jobs open, {due} purchases due; \
                     worker exited: {exited:?}; worker log tail:\n{}",
                    tail(&w.log_text(), 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
