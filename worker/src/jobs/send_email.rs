//! `SendEmail`: render, skip if the sent-log says it already went out, send
//! over SMTP, record it as sent.

use clicknback_core::{
    jobs::SendEmail,
    services::emails::{self, Claim},
};
use lettre::{AsyncTransport, Message, message::MultiPart};

use super::{JobError, JobResult};
use crate::runtime::Ctx;

pub async fn run(ctx: &Ctx, job: SendEmail) -> JobResult {
    let mut conn = ctx.db.get().await?;
    let message_id = match emails::claim(&mut conn, &job).await? {
        Claim::AlreadySent => {
            tracing::info!(email.key = %job.dedupe_key, "email already sent; skipping");
            return Ok(());
        }
        Claim::Send { message_id } => message_id,
    };
    let rendered = emails::render(&job);
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
    drop(conn);
    ctx.mailer
        .send(message)
        .await
        .map_err(|e| JobError::retry(anyhow::anyhow!("SMTP: {e}")))?;
    let mut conn = ctx.db.get().await?;
    emails::mark_sent(&mut conn, &job.dedupe_key).await?;
    metrics::counter!("emails_sent_total", "kind" => job.kind.as_str()).increment(1);
    tracing::info!(email.kind = job.kind.as_str(), email.key = %job.dedupe_key, "email sent");
    Ok(())
}
