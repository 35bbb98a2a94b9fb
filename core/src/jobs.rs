//! Job payloads, their queues, and how to enqueue them.
//!
//! Each job type declares here, once, its name, its queue and its default
//! retry policy ([`Job`]); the worker's registry maps the name to its handler.
//! Jobs that must happen are written as outbox rows in the same transaction as
//! the data they act on ([`enqueue`]); the worker's relay moves them into the
//! apalis Redis queues. Nothing here talks to Redis.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    ids::{PayoutId, PurchaseId, UserId},
    retry::RetryPolicy,
    schema::outbox,
};

/// The queues of SPEC §4, plus `maintenance` for the cron schedules' work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    Attribution,
    Rewards,
    Emails,
    Payouts,
    Stats,
    Maintenance,
}

impl Queue {
    pub const ALL: [Queue; 6] = [
        Queue::Attribution,
        Queue::Rewards,
        Queue::Emails,
        Queue::Payouts,
        Queue::Stats,
        Queue::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Attribution => "attribution",
            Queue::Rewards => "rewards",
            Queue::Emails => "emails",
            Queue::Payouts => "payouts",
            Queue::Stats => "stats",
            Queue::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job type: its name, its queue, its retry policy, and the key that makes
/// its enqueue idempotent.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What the outbox and Redis carry in `job`; unique among job types.
    const NAME: &'static str;
    const QUEUE: Queue;
    /// The default policy; `JOB_RETRY_<JOB>` overrides it ([`crate::retry`]).
    const RETRY: RetryPolicy;
    /// Identifies this job's effect; enqueueing the same key twice is a no-op.
    fn key(&self) -> String;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributePurchase {
    pub purchase_id: PurchaseId,
    /// Set after a late identity merge: re-check a processed purchase whose
    /// reward is still pending and move it to the latest click if that changed.
    #[serde(default)]
    pub reattribute: bool,
}

impl Job for AttributePurchase {
    const NAME: &'static str = "AttributePurchase";
    const QUEUE: Queue = Queue::Attribution;
    const RETRY: RetryPolicy =
        RetryPolicy::new(10, Duration::from_secs(5), Duration::from_secs(600), 0.2);
    fn key(&self) -> String {
        format!("attribute:{}", self.purchase_id)
    }
}

crate::text_enum::text_enum! {
    /// A merchant's (or an admin's, or the hold period's) decision on a
    /// purchase, stored in `purchases.merchant_decision`.
    pub enum RewardTransition {
        Confirmed = "confirmed",
        Reversed = "reversed",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRewardTransition {
    pub purchase_id: PurchaseId,
    pub to: RewardTransition,
    pub reason: Option<String>,
    /// What asked for it (`merchant_webhook`); logged with the outcome.
    pub source: String,
}

impl Job for ApplyRewardTransition {
    const NAME: &'static str = "ApplyRewardTransition";
    const QUEUE: Queue = Queue::Rewards;
    const RETRY: RetryPolicy =
        RetryPolicy::new(10, Duration::from_secs(5), Duration::from_secs(600), 0.2);
    fn key(&self) -> String {
        format!("reward:{}:{}", self.purchase_id, self.to.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    Welcome,
    RewardCredited,
    PayoutPaid,
    PayoutFailed,
}

impl EmailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Welcome => "welcome",
            EmailKind::RewardCredited => "reward_credited",
            EmailKind::PayoutPaid => "payout_paid",
            EmailKind::PayoutFailed => "payout_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmail {
    pub kind: EmailKind,
    pub to: String,
    pub data: serde_json::Value,
    /// What caused the email (e.g. `welcome:<user_id>`): the sent-log key.
    pub dedupe_key: String,
}

impl Job for SendEmail {
    const NAME: &'static str = "SendEmail";
    const QUEUE: Queue = Queue::Emails;
    const RETRY: RetryPolicy =
        RetryPolicy::new(12, Duration::from_secs(10), Duration::from_secs(1_800), 0.2);
    fn key(&self) -> String {
        format!("email:{}", self.dedupe_key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPayout {
    pub payout_id: PayoutId,
}

impl Job for ProcessPayout {
    const NAME: &'static str = "ProcessPayout";
    const QUEUE: Queue = Queue::Payouts;
    const RETRY: RetryPolicy =
        RetryPolicy::new(10, Duration::from_secs(30), Duration::from_secs(3_600), 0.2);
    fn key(&self) -> String {
        format!("payout:{}", self.payout_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecomputeUserStats {
    pub user_id: UserId,
}

impl Job for RecomputeUserStats {
    const NAME: &'static str = "RecomputeUserStats";
    const QUEUE: Queue = Queue::Stats;
    const RETRY: RetryPolicy =
        RetryPolicy::new(5, Duration::from_secs(5), Duration::from_secs(300), 0.2);
    fn key(&self) -> String {
        format!("stats:{}", self.user_id)
    }
}

/// A scheduled (cron) task, enqueued once per tick cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSchedule {
    pub schedule: String,
    /// The tick, unix seconds.
    pub tick: i64,
}

impl Job for RunSchedule {
    const NAME: &'static str = "RunSchedule";
    const QUEUE: Queue = Queue::Maintenance;
    const RETRY: RetryPolicy =
        RetryPolicy::new(3, Duration::from_secs(5), Duration::from_secs(60), 0.2);
    fn key(&self) -> String {
        format!("cron:{}:{}", self.schedule, self.tick)
    }
}

/// A probe of the job pipeline: fails `fail_times` times (or for good when
/// `permanent`), sleeps `sleep_ms`, then records its one effect under `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub key: String,
    #[serde(default)]
    pub fail_times: i32,
    #[serde(default)]
    pub permanent: bool,
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail (retryably) until an operator marks the canary fixed.
    #[serde(default)]
    pub fail_until_fixed: bool,
    /// Record nothing: measures the job platform's own cost per job.
    #[serde(default)]
    pub noop: bool,
}

impl Job for Canary {
    const NAME: &'static str = "Canary";
    const QUEUE: Queue = Queue::Maintenance;
    const RETRY: RetryPolicy =
        RetryPolicy::new(3, Duration::from_secs(1), Duration::from_secs(10), 0.2);
    fn key(&self) -> String {
        format!("canary:{}", self.key)
    }
}

/// What the relay pushes into Redis: the job's name and payload, which attempt
/// this is, and the task id it was enqueued under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub job: String,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub task_id: String,
    pub enqueued_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewOutboxRow<'a> {
    queue: &'a str,
    task_id: &'a str,
    payload: serde_json::Value,
    attempt: i32,
    run_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
}

/// Writes a job into the outbox, due at `run_at`. Idempotent by the job's key:
/// returns false when a job with that task id was already enqueued.
pub async fn enqueue<J: Job>(
    conn: &mut AsyncPgConnection,
    job: &J,
    run_at: DateTime<Utc>,
) -> Result<bool, diesel::result::Error> {
    enqueue_as(conn, job, &job.key(), 1, run_at).await
}

/// Like [`enqueue`] under an explicit task id and attempt number (retries,
/// re-queues and sweeps use ids of their own).
pub async fn enqueue_as<J: Job>(
    conn: &mut AsyncPgConnection,
    job: &J,
    task_id: &str,
    attempt: i32,
    run_at: DateTime<Utc>,
) -> Result<bool, diesel::result::Error> {
    let payload = serde_json::json!({
        "job": J::NAME,
        "data": serde_json::to_value(job).expect("job payloads serialize"),
    });
    enqueue_raw(conn, J::QUEUE, task_id, payload, attempt, run_at).await
}

/// Writes an already-encoded `{job, data}` payload (used to re-queue dead jobs).
pub async fn enqueue_raw(
    conn: &mut AsyncPgConnection,
    queue: Queue,
    task_id: &str,
    payload: serde_json::Value,
    attempt: i32,
    run_at: DateTime<Utc>,
) -> Result<bool, diesel::result::Error> {
    let inserted = diesel::insert_into(outbox::table)
        .values(NewOutboxRow {
            queue: queue.as_str(),
            task_id,
            payload,
            attempt,
            run_at,
            next_attempt_at: Utc::now(),
        })
        .on_conflict(outbox::task_id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_roundtrip() {
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.as_str()), Some(q));
        }
    }
}
