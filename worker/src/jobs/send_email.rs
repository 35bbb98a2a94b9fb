//! `SendEmail`: claim the message in the sent-log (skip it if it went out,
//! wait if another run holds it), send over SMTP, record it as sent.
//!
//! Sending and recording run as a task of their own: once the SMTP server
//! has the message, the record is written even if the job's run is dropped
//! (its queue restarted, the run abandoned by apalis), so only the death of
//! the process itself can leave a sent email unrecorded.

use clicknback_core::{
    jobs::SendEmail,
    services::emails::{self, Claim},
};
use std::time::{Duration, Instant};

use lettre::{AsyncTransport, Message, message::MultiPart};
use tracing::Instrument;

use super::{JobError, JobResult};
use crate::runtime::{Ctx, SharedCtx};

/// A claim older than this belongs to a run that died: longer than a run can
/// take (the SMTP timeout, 15 s, plus [`RECORD_PATIENCE`]).
const CLAIM_STALE_AFTER: Duration = Duration::from_secs(60);

pub async fn run(ctx: SharedCtx, job: SendEmail) -> JobResult {
    let mut conn = ctx.db.get().await?;
    let message_id = match emails::claim(&mut conn, &job, CLAIM_STALE_AFTER).await? {
        Claim::AlreadySent => {
            tracing::info!(email.key = %job.dedupe_key, "email already sent; skipping");
            return Ok(());
        }
        Claim::InFlight => {
            return Err(JobError::Defer {
                reason: format!(
                    "email {} is being sent by another run; looking again later",
                    job.dedupe_key
                ),
                after: Duration::from_secs(5),
            });
        }
        Claim::Send { message_id } => message_id,
    };
    drop(conn);
    let delivery = tokio::spawn(
        async move { send_and_record(&ctx, &job, message_id).await }.in_current_span(),
    );
    delivery
        .await
        .map_err(|e| JobError::retry(anyhow::anyhow!("the delivery task failed: {e}")))?
}

async fn send_and_record(ctx: &Ctx, job: &SendEmail, message_id: String) -> JobResult {
    if let Err(e) = send(ctx, job, message_id).await {
        // Not sent: the next attempt may go at once.
        if let Ok(mut conn) = ctx.db.get().await {
            let _ = emails::release(&mut conn, &job.dedupe_key).await;
        }
        return Err(e);
    }
    record_sent(ctx, &job.dedupe_key).await?;
    metrics::counter!("emails_sent_total", "kind" => job.kind.as_str()).increment(1);
    tracing::info!(email.kind = job.kind.as_str(), email.key = %job.dedupe_key, "email sent");
    Ok(())
}

/// Renders the message and hands it to the SMTP server.
async fn send(ctx: &Ctx, job: &SendEmail, message_id: String) -> JobResult {
    let rendered = emails::render(job);
    let to = job
        .to
        .parse()
        .map_err(|e| JobError::permanent(anyhow::anyhow!("recipient address: {e}")))?;
    let from = ctx
        .config
        .email_from
        .parse()
        .map_err(|e| JobError::permanent(anyhow::anyhow!("EMAIL_FROM: {e}")))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(rendered.subject)
        .message_id(Some(message_id))
        .multipart(MultiPart::alternative_plain_html(
            rendered.text,
            rendered.html,
        ))
        .map_err(|e| JobError::permanent(anyhow::anyhow!("building the message: {e}")))?;
    ctx.mailer
        .send(message)
        .await
        .map_err(|e| JobError::retry(anyhow::anyhow!("SMTP: {e}")))?;
    Ok(())
}

/// How long a sent email waits for the database to take its sent-log entry.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// Records a sent email. The message is out: failing here would have the
/// retry send it again, so a database that is briefly unreachable (a restart,
/// a failover) is waited for rather than handing the job back.
async fn record_sent(ctx: &Ctx, dedupe_key: &str) -> JobResult {
    let deadline = Instant::now() + RECORD_PATIENCE;
    let mut wait = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut conn = ctx.db.get().await?;
            emails::mark_sent(&mut conn, dedupe_key).await?;
            Ok::<(), JobError>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, email.key = %dedupe_key, retry_in_ms = wait.as_millis() as u64, "email sent but not yet recorded as sent; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(3));
            }
            Err(e) => return Err(e),
        }
    }
}
