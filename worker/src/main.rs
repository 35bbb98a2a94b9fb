//! `clicknback-worker`: runs the jobs, the outbox relay and the cron schedules.

use clap::{Parser, Subcommand};
use clicknback_core::{
    config::{Config, ConfigError, Env},
    telemetry,
};
use clicknback_worker::Plan;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "clicknback-worker",
    version,
    about = "ClickNBack background worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (the default).
    Run,
    /// Counts per queue and state, with the outbox backlog.
    Queues,
    /// List jobs of a queue in one state (scheduled, ready, running, retrying, done, dead, outbox).
    Jobs {
        queue: String,
        #[arg(long, default_value = clicknback_core::services::ops::JobState::Dead.as_str())]
        state: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Re-queue one dead job by its dead-job id (see `jobs QUEUE --state dead`).
    RequeueDead { id: i64 },
    /// Re-queue every dead job of a queue.
    RequeueAll { queue: String },
    /// Delete a waiting, finished or dead job.
    Delete { queue: String, task_id: String },
    /// Pause a queue: its jobs wait until it is resumed.
    Pause { queue: String },
    /// Resume a paused queue.
    Resume { queue: String },
    /// Workers alive, with their last heartbeat.
    Workers,
    /// Enqueue a canary job that proves the pipeline end to end.
    Canary {
        #[arg(long)]
        key: Option<String>,
        /// Fail this many attempts before succeeding.
        #[arg(long, default_value_t = 0)]
        fail_times: i32,
        /// Fail for good (goes dead at once).
        #[arg(long)]
        permanent: bool,
        /// Fail (retryably) on every run until its `canary_runs` row is
        /// marked fixed, however often it is re-queued.
        #[arg(long)]
        fail_until_fixed: bool,
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (config, plan) = match load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    telemetry::init(!config.is_development());
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                signal.cancel();
            });
            clicknback_worker::run(config, plan, shutdown).await
        }
        other => ops(other, config).await,
    };
    if let Err(e) = result {
        tracing::error!(error = %format!("{e:#}"), "clicknback-worker failed");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The configuration, then the jobs' and schedules' overrides (read after
/// `Config` has loaded `.env` in development), all validated before anything runs.
fn load() -> Result<(Config, Plan), ConfigError> {
    let config = Config::from_env()?;
    let plan = Plan::from_env(&Env::new(|k| std::env::var(k).ok())?)?;
    Ok((config, plan))
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn ops(command: Command, config: clicknback_core::config::Config) -> anyhow::Result<()> {
    use clicknback_core::{db, jobs, redis_conn::RedisHandle, services::ops};
    let mut conn = db::connect(&config.database_url).await?;
    // Redis is reached only by the commands that read or change it: re-queuing
    // dead jobs and enqueuing canaries write the outbox alone, so they work
    // while Redis is down (the relay pushes them once it is back).
    let redis = RedisHandle::new(&config.redis_url)?;
    let redis = async || {
        redis
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("Redis is unreachable ({e}); this command needs it"))
    };
    let ns = config.redis_namespace.as_str();
    let print =
        |v: serde_json::Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match command {
        Command::Queues => {
            let stats = ops::stats(&mut conn, &mut redis().await?, ns).await?;
            println!(
                "{:<12} {:>8} {:>7} {:>9} {:>7} {:>8} {:>8} {:>8} {:>6}  paused",
                "queue",
                "outbox",
                "oldest",
                "scheduled",
                "ready",
                "running",
                "retrying",
                "done",
                "dead"
            );
            for q in stats {
                println!(
                    "{:<12} {:>8} {:>6}s {:>9} {:>7} {:>8} {:>8} {:>8} {:>6}  {}",
                    q.queue,
                    q.outbox_backlog,
                    q.outbox_oldest_age_secs,
                    q.scheduled,
                    q.ready,
                    q.running,
                    q.retrying,
                    q.done,
                    q.dead,
                    q.paused
                );
            }
        }
        Command::Jobs {
            queue,
            state,
            limit,
        } => {
            let list = ops::list(
                &mut conn,
                &mut redis().await?,
                ns,
                ops::parse_queue(&queue)?,
                ops::parse_state(&state)?,
                limit,
            )
            .await?;
            print(serde_json::to_value(list)?);
        }
        Command::RequeueDead { id } => {
            println!("re-queued as {}", ops::requeue_dead(&mut conn, id).await?)
        }
        Command::RequeueAll { queue } => {
            println!(
                "{} job(s) re-queued",
                ops::requeue_all_dead(&mut conn, ops::parse_queue(&queue)?).await?
            )
        }
        Command::Delete { queue, task_id } => {
            ops::delete_job(
                &mut conn,
                &mut redis().await?,
                ns,
                ops::parse_queue(&queue)?,
                &task_id,
            )
            .await?;
            println!("deleted {task_id}");
        }
        Command::Pause { queue } => {
            ops::set_paused(&mut redis().await?, ns, ops::parse_queue(&queue)?, true).await?;
            println!("{queue} paused");
        }
        Command::Resume { queue } => {
            ops::set_paused(&mut redis().await?, ns, ops::parse_queue(&queue)?, false).await?;
            println!("{queue} resumed");
        }
        Command::Workers => print(serde_json::to_value(
            ops::workers(&mut redis().await?, ns).await?,
        )?),
        Command::Canary {
            key,
            fail_times,
            permanent,
            fail_until_fixed,
            sleep_ms,
        } => {
            let job = jobs::Canary {
                key: key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                fail_times,
                permanent,
                sleep_ms,
                fail_until_fixed,
                noop: false,
            };
            jobs::enqueue(&mut conn, &job, chrono::Utc::now()).await?;
            println!("canary {} enqueued", job.key);
        }
        Command::Run => unreachable!("handled by main"),
    }
    Ok(())
}
