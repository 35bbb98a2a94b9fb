//! The ClickNBack worker: runs every background job, the outbox relay and the
//! cron schedules. Job handlers are thin: decode, call a core service, map
//! the error.
//!
//! Built on apalis and apalis-redis 1.0, with what they lack built on top:
//! our own retry policy and dead jobs (`runtime`), a poll strategy that does
//! not lose wake-ups (`poll`), a bounded relay (`relay`), cluster-once cron
//! (`schedules`), retention (`maintenance`) and unique worker names so orphan
//! recovery works after a crash.

pub mod closer;
pub mod jobs;
pub mod maintenance;
pub mod poll;
pub mod registry;
pub mod relay;
pub mod runtime;
pub mod schedules;
pub mod server;

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_cron::CronScheduler;
use apalis_redis::RedisStorage;
use clicknback_core::{
    config::{Config, ConfigError, Env},
    db,
    jobs::{JobEnvelope, Queue},
    queues,
    redis_conn::{RedisConn, RedisHandle},
};
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use tokio_util::sync::CancellationToken;

/// A name unique to this process start: host, pid and start time. apalis-redis
/// refuses a worker name that heartbeated recently, and orphan recovery relies
/// on names never being reused.
pub fn instance_name() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

async fn connect_redis(redis: &RedisHandle, shutdown: &CancellationToken) -> Option<RedisConn> {
    let mut wait = Duration::from_millis(500);
    loop {
        match redis.open().await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "redis unreachable; waiting");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// What a worker process runs, with the environment's overrides applied:
/// every job type with its retry policy, every schedule with its expression.
pub struct Plan {
    pub jobs: registry::Registry,
    pub schedules: Vec<(schedules::Schedule, cron::Schedule)>,
}

impl Plan {
    /// Reads `JOB_RETRY_<JOB>` and `SCHEDULE_<NAME>`, naming the variable of a bad one.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            jobs: jobs::registry().configure(env)?,
            schedules: schedules::configured(env)?,
        })
    }
}

/// An environment of just `vars`, for tests of what reads overrides.
#[cfg(test)]
fn test_env(vars: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Env::new(move |k: &str| vars.get(k).cloned()).expect("a valid APP_ENV")
}

/// Everything a worker process runs, until `shutdown` is cancelled.
pub async fn run(config: Config, plan: Plan, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.run_migrations_on_start {
        db::run_migrations(&config.database_url).await?;
    }
    let pool = db::pool(&config.database_url, config.database_pool_size)?;
    let redis = RedisHandle::new(&config.redis_url)?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(config.smtp_url.expose())
        .map_err(|e| anyhow::anyhow!("SMTP_URL: {e}"))?
        .timeout(Some(Duration::from_secs(15)))
        .build();
    let instance = instance_name();
    let metrics = server::install_metrics();
    clicknback_core::services::stats::configure(config.stats_coalesce);
    let closing = CancellationToken::new();
    let (closer, closer_task) = closer::Closer::spawn(
        pool.clone(),
        closer::PayloadStore {
            redis: redis.clone(),
            namespace: config.redis_namespace.clone(),
        },
        config.worker.close_batch,
        config.worker.close_linger,
        closing.clone(),
    );
    let ctx: runtime::SharedCtx = Arc::new(runtime::Ctx {
        db: pool.clone(),
        redis: redis.clone(),
        namespace: config.redis_namespace.clone(),
        config: config.clone(),
        mailer,
        instance: instance.clone(),
        fraud: Box::new(clicknback_core::services::fraud::RuleScorer::default()),
        cache: clicknback_core::cache::Cache::new(
            redis.clone(),
            &config.redis_namespace,
            &config.cache,
        ),
        provider: Arc::new(clicknback_core::payout_provider::HttpProvider::new(
            &config.payouts,
        )?),
        explainer: clicknback_core::fraud_explainer::OpenAiExplainer::new(&config.explainer)
            .map(|e| Arc::new(e) as Arc<dyn clicknback_core::fraud_explainer::FraudExplainer>),
        keys: clicknback_core::crypto::Keyring::new(&config.data_encryption_keys),
        paused: Default::default(),
        jobs: plan.jobs,
        closer,
        hand_back: CancellationToken::new(),
    });

    let mut background = tokio::task::JoinSet::new();
    let relay = relay::Relay::new(
        pool.clone(),
        redis.clone(),
        config.redis_namespace.clone(),
        config.relay.clone(),
    );
    background.spawn(relay.run(shutdown.clone()));
    background.spawn(server::serve(config.worker_addr, metrics, shutdown.clone()));
    background.spawn(maintenance::run(
        ctx.clone(),
        Duration::from_secs(30),
        shutdown.clone(),
    ));

    let Some(conn) = connect_redis(&redis, &shutdown).await else {
        background.join_all().await;
        return Ok(());
    };
    let w = &config.worker;
    let mut monitor = Monitor::new();
    for q in Queue::ALL {
        let storage = RedisStorage::<JobEnvelope, RedisConn>::new(conn.clone()).with_config(
            queues::storage_config(&config.redis_namespace, q)
                .batch_size(w.fetch_batch)
                .heartbeat_interval(w.heartbeat)
                .missed_heartbeats(w.missed_heartbeats)
                // Nothing subscribes to apalis's pub/sub events, and the
                // per-task lease call only decorates the job's metadata:
                // in-flight ownership (what orphan recovery uses) is kept
                // in each worker's in-flight set either way.
                .emit_events(false)
                .lock_tasks(false),
        );
        let (ctx, instance, poll, n) = (
            ctx.clone(),
            instance.clone(),
            w.poll_interval,
            w.concurrency_of(q),
        );
        monitor = monitor.register(move |restarts| {
            WorkerBuilder::new(format!("{}-{instance}-r{restarts}", q.as_str()))
                .backend(
                    storage
                        .clone()
                        .poll_with_strategy(poll::Ticker::every(poll)),
                )
                .data(q)
                .data(ctx.clone())
                .catch_panic()
                .concurrency(n)
                .build(runtime::handle)
        });
    }
    for (schedule, expr) in plan.schedules {
        let (ctx, instance) = (ctx.clone(), instance.clone());
        monitor = monitor.register(move |restarts| {
            WorkerBuilder::new(format!("cron-{}-{instance}-r{restarts}", schedule.name()))
                .backend(CronScheduler::new(expr.clone()))
                .data(schedule)
                .data(ctx.clone())
                .build(schedules::tick_handler)
        });
    }
    // After the grace, runs still going stop where they are (they never
    // report to Redis), and the monitor gives up waiting just after.
    let grace = w.shutdown_grace;
    {
        let (shutdown, hand_back) = (shutdown.clone(), ctx.hand_back.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            hand_back.cancel();
        });
    }
    let monitor = monitor
        .should_restart(|worker, error| {
            tracing::error!(worker = %worker.name(), error = %error, "worker stopped with an error; restarting it");
            true
        })
        .shutdown_timeout(grace + Duration::from_millis(300));
    tracing::info!(instance = %instance, "worker started");
    let signal = shutdown.clone();
    let result = monitor
        .run_with_signal(async move {
            signal.cancelled().await;
            Ok(())
        })
        .await;
    shutdown.cancel();
    ctx.hand_back.cancel();
    // Every job finished by now has its row closed before the process ends.
    closing.cancel();
    if let Err(e) = closer_task.await {
        tracing::warn!(error = %e, "the outbox closer stopped abnormally; the reconciler closes what it held");
    }
    handback(&conn, &config.redis_namespace, &instance).await;
    deregister(&conn, &config.redis_namespace, &instance).await;
    background.join_all().await;
    result.map_err(|e| anyhow::anyhow!("worker monitor: {e}"))?;
    tracing::info!("worker stopped");
    Ok(())
}

/// Hands every job this process still holds (fetched into its buffer and not
/// started, or stopped after the grace) back to the front of its queue, for
/// the next worker to run at once. apalis-redis would leave them in this
/// process's in-flight sets, which nothing recovers once the name is
/// deregistered. A job whose hand-back fails stays open in PostgreSQL, and
/// the relay's reconciler relays it again.
async fn handback(conn: &RedisConn, namespace: &str, instance: &str) {
    let mut c = conn.clone();
    for q in Queue::ALL {
        let cfg = queues::storage_config(namespace, q);
        // This process's workers of the queue (one per restart), by name:
        // still registered, since deregistering comes after.
        let workers = match own_workers(&mut c, &cfg, instance).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, queue = q.as_str(), "could not list this worker's in-flight jobs; the reconciler relays them again");
                continue;
            }
        };
        for worker in workers {
            match queues::hand_back(&mut c, &cfg, &worker).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        queue = q.as_str(),
                        jobs = n,
                        "jobs handed back to the queue"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = q.as_str(), "hand-back failed; the reconciler relays the jobs again")
                }
            }
        }
    }
}

/// The names under which this process registered its workers of a queue.
async fn own_workers(
    c: &mut RedisConn,
    cfg: &apalis_redis::Config,
    instance: &str,
) -> redis::RedisResult<Vec<String>> {
    let names: Vec<String> = redis::cmd("ZRANGE")
        .arg(cfg.workers_set())
        .arg(0)
        .arg(-1)
        .query_async(c)
        .await?;
    Ok(names.into_iter().filter(|n| n.contains(instance)).collect())
}

/// apalis-redis leaves a stopped worker's name registered; remove ours so the
/// board shows only live workers.
async fn deregister(conn: &RedisConn, namespace: &str, instance: &str) {
    let mut c = conn.clone();
    for q in Queue::ALL {
        let cfg = queues::storage_config(namespace, q);
        let names = own_workers(&mut c, &cfg, instance)
            .await
            .unwrap_or_default();
        for name in names {
            let _: redis::RedisResult<()> = redis::pipe()
                .zrem(cfg.workers_set(), &name)
                .del(format!("{}:workers:metadata:{name}", cfg.queue.as_ref()))
                .query_async(&mut c)
                .await;
        }
    }
}
