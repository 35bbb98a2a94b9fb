//! Transactional emails: the templates (text and HTML) and the sent-log that
//! makes a retried `SendEmail` skip what already went out. Sending itself is
//! the worker's (lettre over SMTP).

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::{
    crypto::sha256,
    jobs::{EmailKind, SendEmail},
    schema::email_log,
};

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn money(data: &serde_json::Value) -> String {
    let minor = data["amount_minor"].as_i64().unwrap_or_default();
    let currency = data["currency"].as_str().unwrap_or("");
    format!("{}.{:02} {currency}", minor / 100, (minor % 100).abs())
}

pub fn render(job: &SendEmail) -> Rendered {
    let d = &job.data;
    let (subject, lines): (String, Vec<String>) = match job.kind {
        EmailKind::Welcome => (
            "Welcome to ClickNBack".into(),
            vec![
                "Welcome to ClickNBack!".into(),
                "Shop through our partners' links and part of every purchase comes back to your wallet.".into(),
            ],
        ),
        EmailKind::RewardCredited => (
            format!("You earned {} cashback", money(d)),
            vec![
                format!("Good news: {} cashback is on its way to your wallet.", money(d)),
                format!("Order {} at {}. It becomes available once the merchant confirms the purchase.",
                    d["order_id"].as_str().unwrap_or("-"), d["merchant"].as_str().unwrap_or("the merchant")),
            ],
        ),
        EmailKind::PayoutPaid => (
            format!("Your payout of {} is on its way", money(d)),
            vec![format!("We sent {} to {}.", money(d), d["destination"].as_str().unwrap_or("your account"))],
        ),
        EmailKind::PayoutFailed => (
            format!("Your payout of {} could not be sent", money(d)),
            vec![
                format!("The payout of {} could not be completed: {}.", money(d), d["reason"].as_str().unwrap_or("the provider refused it")),
                "The amount is back in your available balance.".into(),
            ],
        ),
    };
    let text = format!("{}\n\n— ClickNBack\n", lines.join("\n\n"));
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">{}<p>— ClickNBack</p></body></html>",
        lines
            .iter()
            .map(|l| format!("<p>{}</p>", esc(l)))
            .collect::<String>()
    );
    Rendered {
        subject,
        text,
        html,
    }
}

/// The Message-ID of an email: derived from what caused it, so a resend after
/// a crash carries the same id and mail clients fold the two.
pub fn message_id(dedupe_key: &str) -> String {
    let h = sha256(dedupe_key.as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("<{hex}@clicknback>")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Not sent yet and now ours: send it, then call [`mark_sent`] (or
    /// [`release`] if sending failed).
    Send { message_id: String },
    /// Already went out.
    AlreadySent,
    /// Another run claimed it less than `stale_after` ago: it may have handed
    /// the message to the SMTP server and be recording that. Look again later.
    InFlight,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    mine: bool,
}

/// Records the attempt in the sent-log and says whether to send. A claim
/// older than `stale_after` belongs to a run that died and is taken over
/// (the one case an email can go out twice: a crash between the SMTP
/// server's accept and [`mark_sent`]).
pub async fn claim(
    conn: &mut AsyncPgConnection,
    job: &SendEmail,
    stale_after: std::time::Duration,
) -> Result<Claim, diesel::result::Error> {
    use diesel::sql_types::{Double, Text};
    let message_id = message_id(&job.dedupe_key);
    let c: Claimed = diesel::sql_query(
        "INSERT INTO email_log (dedupe_key, kind, recipient, message_id, status, claimed_at)
         VALUES ($1, $2, $3, $4, 'sending', now())
         ON CONFLICT (dedupe_key) DO UPDATE SET
           attempts = email_log.attempts + 1,
           claimed_at = CASE WHEN email_log.status <> 'sent'
                              AND (email_log.claimed_at IS NULL
                                   OR email_log.claimed_at < now() - make_interval(secs => $5))
                             THEN now() ELSE email_log.claimed_at END
         RETURNING status, claimed_at IS NOT DISTINCT FROM now() AS mine",
    )
    .bind::<Text, _>(&job.dedupe_key)
    .bind::<Text, _>(job.kind.as_str())
    .bind::<Text, _>(&job.to)
    .bind::<Text, _>(&message_id)
    .bind::<Double, _>(stale_after.as_secs_f64())
    .get_result(conn)
    .await?;
    Ok(if c.status == "sent" {
        Claim::AlreadySent
    } else if c.mine {
        Claim::Send { message_id }
    } else {
        Claim::InFlight
    })
}

/// Gives a claim back after sending failed, so the retry need not wait for it
/// to go stale.
pub async fn release(
    conn: &mut AsyncPgConnection,
    dedupe_key: &str,
) -> Result<(), diesel::result::Error> {
    diesel::update(
        email_log::table
            .find(dedupe_key)
            .filter(email_log::status.ne("sent")),
    )
    .set(email_log::claimed_at.eq(None::<chrono::DateTime<Utc>>))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_sent(
    conn: &mut AsyncPgConnection,
    dedupe_key: &str,
) -> Result<(), diesel::result::Error> {
    diesel::update(email_log::table.find(dedupe_key))
        .set((
            email_log::status.eq("sent"),
            email_log::sent_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind_with_escaped_html() {
        for kind in [
            EmailKind::Welcome,
            EmailKind::RewardCredited,
            EmailKind::PayoutPaid,
            EmailKind::PayoutFailed,
        ] {
            let r = render(&SendEmail {
                kind,
                to: "a@b.c".into(),
                data: serde_json::json!({"amount_minor": 1234, "currency": "EUR", "merchant": "<Shop>", "order_id": "o"}),
                dedupe_key: "k".into(),
            });
            assert!(!r.subject.is_empty());
            assert!(!r.text.is_empty());
            assert!(!r.html.contains("<Shop>"));
        }
        assert_eq!(message_id("welcome:1"), message_id("welcome:1"));
        assert_ne!(message_id("welcome:1"), message_id("welcome:2"));
    }
}
