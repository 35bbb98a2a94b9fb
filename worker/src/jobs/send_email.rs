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

use super::{JobError, JobHandler, JobMeta, JobResult};
use crate::runtime::{Ctx, SharedCtx};

/// The longest a hand-over to the SMTP server may take, connection included
/// (lettre bounds only the connect; a server that stalls after accepting the
/// connection would otherwise hold the run forever).
const SMTP_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a sent email waits for the database to take its sent-log entry.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// A claim older than this belongs to a run that died: longer than a run can
/// take (sending plus recording), with a margin.
const CLAIM_STALE_AFTER: Duration = Duration::from_secs(120);
const _: () = assert!(
    CLAIM_STALE_AFTER.as_secs() > SMTP_SEND_TIMEOUT.as_secs() + RECORD_PATIENCE.as_secs() + 30
);

impl JobHandler for SendEmail {
    async fn run(self, ctx: SharedCtx, _meta: JobMeta) -> JobResult {
        let mut conn = ctx.db.get().await?;
        let message_id = match emails::claim(&mut conn, &self, CLAIM_STALE_AFTER).await? {
            Claim::AlreadySent => {
                tracing::info!(email.key = %self.dedupe_key, "email already sent; skipping");
                return Ok(());
            }
            Claim::InFlight => {
                return Err(JobError::Defer {
                    reason: format!(
                        "email {} is being sent by another run; looking again later",
                        self.dedupe_key
                    ),
                    after: Duration::from_secs(5),
                });
            }
            Claim::Send { message_id } => message_id,
        };
        drop(conn);
        let delivery = tokio::spawn(
            async move { send_and_record(&ctx, &self, message_id).await }.in_current_span(),
        );
        delivery
            .await
            .map_err(|e| JobError::retry(anyhow::anyhow!("the delivery task failed: {e}")))?
    }
}

async fn send_and_record(ctx: &Ctx, job: &SendEmail, message_id: String) -> JobResult {
    if let Err(failure) = send(ctx, job, message_id).await {
        if failure.not_sent {
            // The server refused it or was never reached: the next attempt
            // may go at once.
            if let Ok(mut conn) = ctx.db.get().await {
                let _ = emails::release(&mut conn, &job.dedupe_key).await;
            }
        }
        // Otherwise (a timeout, a connection lost mid-way) the server may
        // have it: the claim stays until it is stale, so no run resends it
        // before then.
        return Err(failure.error);
    }
    match tokio::time::timeout(RECORD_PATIENCE, record_sent(ctx, &job.dedupe_key)).await {
        Ok(recorded) => recorded?,
        Err(_) => {
            return Err(JobError::retry(anyhow::anyhow!(
                "email {} sent but the database did not record it within {} s",
                job.dedupe_key,
                RECORD_PATIENCE.as_secs()
            )));
        }
    }
    metrics::counter!("emails_sent_total", "kind" => job.kind.as_str()).increment(1);
    tracing::info!(email.kind = job.kind.as_str(), email.key = %job.dedupe_key, "email sent");
    Ok(())
}

/// Why a message did not go out, and whether it certainly did not.
struct SendFailure {
    error: JobError,
    /// The SMTP server answered with a refusal, could not be reached, or the
    /// message could not even be built: it does not have the message.
    not_sent: bool,
}

impl From<JobError> for SendFailure {
    fn from(error: JobError) -> Self {
        Self {
            error,
            not_sent: true,
        }
    }
}

/// Whether an SMTP error means the server never took the message: it
/// answered 4xx or 5xx, or the connection was refused.
fn refused(e: &lettre::transport::smtp::Error) -> bool {
    if e.is_transient() || e.is_permanent() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = err.source();
    }
    false
}

/// Renders the message and hands it to the SMTP server.
async fn send(ctx: &Ctx, job: &SendEmail, message_id: String) -> Result<(), SendFailure> {
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
    match tokio::time::timeout(SMTP_SEND_TIMEOUT, ctx.mailer.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SendFailure {
            not_sent: refused(&e),
            error: JobError::retry(anyhow::anyhow!("SMTP: {e}")),
        }),
        Err(_) => Err(SendFailure {
            not_sent: false,
            error: JobError::retry(anyhow::anyhow!(
                "SMTP: no answer within {} s",
                SMTP_SEND_TIMEOUT.as_secs()
            )),
        }),
    }
}

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
