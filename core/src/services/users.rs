//! Users: registration (with the welcome email enqueued in the same
//! transaction), credentials, and lookups.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{
    db,
    ids::UserId,
    jobs::{self, EmailKind, SendEmail},
    models::user::{NewUser, Role, User},
    schema::users,
    services::auth,
};

/// A syntactically valid, normalised (trimmed, lower-cased) email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        let e = raw.trim().to_lowercase();
        let valid = e.len() <= 254
            && !e.chars().any(|c| c.is_whitespace() || c.is_control())
            && match e.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        if valid {
            Ok(Self(e))
        } else {
            Err(UserError::InvalidEmail)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("email is not a valid address")]
    InvalidEmail,
    #[error("password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")]
    WeakPassword,
    #[error("an account with this email already exists")]
    DuplicateEmail,
    #[error("email or password is incorrect")]
    InvalidCredentials,
    #[error("user not found")]
    NotFound,
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    /// Too many password checks are waiting (see [`auth::HashingLimits`]).
    #[error("too many sign-ins are being checked; retry shortly")]
    Busy,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<auth::HashError> for UserError {
    fn from(e: auth::HashError) -> Self {
        match e {
            auth::HashError::Busy => UserError::Busy,
            auth::HashError::Failed(m) => UserError::Internal(anyhow::anyhow!(m)),
        }
    }
}

fn check_password(password: &str) -> Result<(), UserError> {
    let n = password.chars().count();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        Ok(())
    } else {
        Err(UserError::WeakPassword)
    }
}

/// How long one address gets at most one welcome email.
pub const WELCOME_WINDOW_SECS: i64 = 86_400;

/// The welcome email's sent-log key: the address (hashed) and the window, so
/// an address gets at most one welcome per window whatever creates accounts.
pub fn welcome_key(email: &str, at: chrono::DateTime<Utc>) -> String {
    let h: String = crate::crypto::sha256(email.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "welcome:{h}:{}",
        at.timestamp().div_euclid(WELCOME_WINDOW_SECS)
    )
}

/// A validated account with its password hashed, ready to be stored.
pub struct NewAccount {
    email: Email,
    hash: String,
    role: Role,
}

/// Validates and hashes, without a database connection: hashing waits for
/// a hashing thread ([`auth::HashingLimits`]), and nothing should hold a
/// connection meanwhile.
pub async fn prepare(email: &str, password: &str, role: Role) -> Result<NewAccount, UserError> {
    let email = Email::parse(email)?;
    check_password(password)?;
    let hash = auth::hash_password(password.to_owned()).await?;
    Ok(NewAccount { email, hash, role })
}

/// Stores a prepared account; for `Role::User` the welcome email is enqueued
/// through the outbox in the same transaction.
pub async fn insert(conn: &mut AsyncPgConnection, account: NewAccount) -> Result<User, UserError> {
    let NewAccount { email, hash, role } = account;
    let id = UserId::new();
    let result = conn
        .transaction::<User, UserError, _>(async move |conn| {
            let user: User = diesel::insert_into(users::table)
                .values(NewUser {
                    id,
                    email: email.as_str(),
                    password_hash: &hash,
                    role,
                })
                .returning(User::as_returning())
                .get_result(conn)
                .await?;
            if role == Role::User {
                let now = Utc::now();
                let job = SendEmail {
                    kind: EmailKind::Welcome,
                    to: user.email.clone(),
                    data: serde_json::json!({ "email": user.email }),
                    dedupe_key: welcome_key(&user.email, now),
                };
                jobs::enqueue(conn, &job, now).await?;
            }
            Ok(user)
        })
        .await;
    match result {
        Err(UserError::Db(e)) if db::unique_violation(&e) == Some("users_email_key") => {
            Err(UserError::DuplicateEmail)
        }
        other => {
            if let Ok(u) = &other {
                tracing::info!(user.id = %u.id, user.role = %u.role, "user created");
            }
            other
        }
    }
}

/// Creates a user ([`prepare`] then [`insert`]).
pub async fn create(
    conn: &mut AsyncPgConnection,
    email: &str,
    password: &str,
    role: Role,
) -> Result<User, UserError> {
    let account = prepare(email, password, role).await?;
    insert(conn, account).await
}

/// The account an email names, if any (an invalid address names none).
pub async fn find_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<User>, UserError> {
    let Ok(e) = Email::parse(email) else {
        return Ok(None);
    };
    Ok(users::table
        .filter(users::email.eq(e.as_str()))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Checks a password against the account [`find_by_email`] found, without a
/// database connection. The same error, and about the same time, whether the
/// account is unknown or the password wrong.
pub async fn check_credentials(user: Option<User>, password: &str) -> Result<User, UserError> {
    let ok = auth::verify_password(
        password.to_owned(),
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    match user {
        Some(u) if ok => Ok(u),
        _ => Err(UserError::InvalidCredentials),
    }
}

/// Checks credentials ([`find_by_email`] then [`check_credentials`]); the
/// connection is held while the hash is checked, so request handlers call
/// the two themselves and let the connection go in between.
pub async fn authenticate(
    conn: &mut AsyncPgConnection,
    email: &str,
    password: &str,
) -> Result<User, UserError> {
    let user = find_by_email(conn, email).await?;
    check_credentials(user, password).await
}

pub async fn get(conn: &mut AsyncPgConnection, id: UserId) -> Result<User, UserError> {
    users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(UserError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_parse() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "", "a", "a@b", "@b.c", "a@.b", "a@b.", "a b@c.d", "a@b@c.d", "a@b..c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
