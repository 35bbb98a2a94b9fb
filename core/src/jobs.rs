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
    ids::{PayoutId, PurchaseId, RewardId, UserId},
    retry::RetryPolicy,
    schema::outbox,
};

/// The queues of SPEC §4, plus `maintenance` for the cron schedules' work and
/// `explanations` for the fraud explainer's slow calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    Attribution,
    Rewards,
    Emails,
    Payouts,
    Stats,
    Maintenance,
    Explanations,
}

impl Queue {
    pub const ALL: [Queue; 7] = [
        Queue::Attribution,
        Queue::Rewards,
        Queue::Emails,
        Queue::Payouts,
        Queue::Stats,
        Queue::Maintenance,
        Queue::Explanations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Attribution => "attribution",
            Queue::Rewards => "rewards",
            Queue::Emails => "emails",
            Queue::Payouts => "payouts",
            Queue::Stats => "stats",
            Queue::Maintenance => "maintenance",
            Queue::Explanations => "explanations",
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

impl SendEmail {
    /// The sent-log key of a reward's "you earned" email.
    pub fn reward_key(reward: crate::ids::RewardId) -> String {
        format!("reward:{reward}")
    }

    /// A reward's "you earned" email to `to`: its amount, and the order and
    /// merchant it came from. Sent once per reward (its sent-log key), whether
    /// the reward was credited by its attribution or by an admin's approval
    /// after a fraud review.
    pub fn reward_credited(
        reward: crate::ids::RewardId,
        to: &str,
        amount_minor: i64,
        currency: crate::money::Currency,
        order_id: &str,
        merchant: &str,
    ) -> Self {
        Self {
            kind: EmailKind::RewardCredited,
            to: to.to_owned(),
            data: serde_json::json!({
                "amount_minor": amount_minor,
                "currency": currency,
                "order_id": order_id,
                "merchant": merchant,
            }),
            dedupe_key: Self::reward_key(reward),
        }
    }

    /// The sent-log key of a payout's email (`suffix`: which one), and the
    /// prefix every email of the payout shares (with an empty `suffix`).
    pub fn payout_key(payout: crate::ids::PayoutId, suffix: &str) -> String {
        format!("payout:{payout}:{suffix}")
    }

    /// The job key of the email with sent-log key `dedupe_key`.
    pub fn job_key(dedupe_key: &str) -> String {
        format!("email:{dedupe_key}")
    }
}

impl Job for SendEmail {
    const NAME: &'static str = "SendEmail";
    const QUEUE: Queue = Queue::Emails;
    const RETRY: RetryPolicy =
        RetryPolicy::new(12, Duration::from_secs(10), Duration::from_secs(1_800), 0.2);
    fn key(&self) -> String {
        Self::job_key(&self.dedupe_key)
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

/// Asks the fraud explainer about a flagged reward and stores its answer
/// (`services::explanations`). Idempotent: a reward whose explanation is no
/// longer pending is left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainFlaggedPurchase {
    pub reward_id: RewardId,
}

impl Job for ExplainFlaggedPurchase {
    const NAME: &'static str = "ExplainFlaggedPurchase";
    const QUEUE: Queue = Queue::Explanations;
    const RETRY: RetryPolicy =
        RetryPolicy::new(6, Duration::from_secs(10), Duration::from_secs(600), 0.2);
    fn key(&self) -> String {
        format!("explain:{}", self.reward_id)
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
    enqueue_raw(conn, J::QUEUE, task_id, payload_of(job), attempt, run_at).await
}

fn payload_of<J: Job>(job: &J) -> serde_json::Value {
    serde_json::json!({
        "job": J::NAME,
        "data": serde_json::to_value(job).expect("job payloads serialize"),
    })
}

/// Writes several jobs of one type, each `(task id, job, run at)`, in one
/// insert (for a step that enqueues many in its transaction). Idempotent
/// like [`enqueue_as`]: a task id already in the outbox inserts nothing.
/// Returns how many were written.
pub async fn enqueue_many<J: Job>(
    conn: &mut AsyncPgConnection,
    jobs: &[(String, J, DateTime<Utc>)],
) -> Result<usize, diesel::result::Error> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let rows: Vec<NewOutboxRow> = jobs
        .iter()
        .map(|(task_id, job, run_at)| NewOutboxRow {
            queue: J::QUEUE.as_str(),
            task_id,
            payload: payload_of(job),
            attempt: 1,
            run_at: *run_at,
            next_attempt_at: now,
        })
        .collect();
    diesel::insert_into(outbox::table)
        .values(rows)
        .on_conflict(outbox::task_id)
        .do_nothing()
        .execute(conn)
        .await
}

/// Writes an already-encoded `{job, data}` payload (used to re-queue dead jobs).
/// An id already in the outbox inserts nothing and returns false: the
/// earlier job of that id stands (a deliberate duplicate, logged here).
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
    if inserted == 0 {
        tracing::debug!(job.id = %task_id, queue = queue.as_str(), "job already enqueued under this id; the earlier one stands");
    }
    Ok(inserted == 1)
}

/// Where a run's task id comes from. A job's first chain is its key (the
/// idempotency key of [`Job::key`]), optionally with a cause of its own
/// (`#s<tick>` a sweep, `#r<ms>` a re-attribution, `#q<dead id>` a re-queue
/// of a dead job); each later run of that chain appends one run suffix to
/// the chain: `#a<n>` attempt n, `#d<ms>` a deferral, `#p<ms>` a paused
/// queue's put-back. So every run has an id of its own, and its job, cause,
/// chain and attempt can be read back from it (and from the outbox's
/// `job_key` and `chain` columns).
pub mod run_id {
    /// The job: the task id up to its first `#`.
    pub fn job_key(task_id: &str) -> &str {
        task_id.split('#').next().unwrap_or(task_id)
    }

    /// The chain a run belongs to: its task id without its run suffix.
    pub fn chain(task_id: &str) -> &str {
        match task_id.rsplit_once('#') {
            Some((head, tail))
                if tail.len() > 1
                    && matches!(tail.as_bytes()[0], b'a' | b'd' | b'p')
                    && tail[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                head
            }
            _ => task_id,
        }
    }

    /// What started a chain: `enqueue` for a job's key, else the cause
    /// suffix's name.
    pub fn cause(chain: &str) -> &'static str {
        match chain.rsplit_once('#').map(|(_, t)| t.as_bytes().first()) {
            None => "enqueue",
            Some(Some(b'q')) => "requeue",
            Some(Some(b's')) => "sweep",
            Some(Some(b'r')) => "reattribute",
            Some(Some(b'l')) => "late",
            Some(_) => "other",
        }
    }

    /// The id of attempt `n` of the chain `task_id` belongs to.
    pub fn attempt(task_id: &str, n: u32) -> String {
        format!("{}#a{n}", chain(task_id))
    }

    /// The id of a deferred run (`#d`) or a paused put-back (`#p`) of the
    /// chain, due at `at_ms`.
    pub fn later(task_id: &str, kind: char, at_ms: i64) -> String {
        format!("{}#{kind}{at_ms}", chain(task_id))
    }

    /// The first run of the chain that re-queues the dead-job record `dead_id`.
    pub fn requeue(task_id: &str, dead_id: i64) -> String {
        format!("{}#q{dead_id}", job_key(task_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_of_every_chain_has_an_id_of_its_own() {
        use run_id::*;
        let first = "canary:x";
        assert_eq!(attempt(first, 2), "canary:x#a2");
        assert_eq!(attempt(&attempt(first, 2), 3), "canary:x#a3");
        let second = requeue(&attempt(first, 3), 7);
        assert_eq!(second, "canary:x#q7");
        assert_eq!(attempt(&second, 2), "canary:x#q7#a2");
        assert_ne!(attempt(&second, 2), attempt(first, 2));
        let third = requeue(&attempt(&second, 3), 9);
        assert_eq!(attempt(&third, 2), "canary:x#q9#a2");
        assert_eq!(later("canary:x#q7#a2", 'd', 5), "canary:x#q7#d5");
        assert_eq!(attempt("canary:x#q7#d5", 3), "canary:x#q7#a3");
        assert_eq!(attempt("attribute:1#s60", 2), "attribute:1#s60#a2");
        assert_eq!(chain("attribute:1#s60#p99"), "attribute:1#s60");
        assert_eq!(job_key("attribute:1#s60#p99"), "attribute:1");
        assert_eq!(cause(chain("canary:x#q7#a2")), "requeue");
        assert_eq!(cause(chain("attribute:1#s60#a2")), "sweep");
        assert_eq!(cause(chain("canary:x#a2")), "enqueue");
        // A key that merely ends in a letter and digits is not a run suffix.
        assert_eq!(chain("canary:x#abc"), "canary:x#abc");
    }

    #[test]
    fn queue_names_roundtrip() {
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.as_str()), Some(q));
        }
    }
}
