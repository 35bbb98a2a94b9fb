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
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn check_password(password: &str) -> Result<(), UserError> {
    let n = password.chars().count();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        Ok(())
    } else {
        Err(UserError::WeakPassword)
    }
}

/// Creates a user; for `Role::User` the welcome email is enqueued through the
/// outbox in the same transaction.
pub async fn create(
    conn: &mut AsyncPgConnection,
    email: &str,
    password: &str,
    role: Role,
) -> Result<User, UserError> {
    let email = Email::parse(email)?;
    check_password(password)?;
    let hash = auth::hash_password(password.to_owned()).await?;
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
                let job = SendEmail {
                    kind: EmailKind::Welcome,
                    to: user.email.clone(),
                    data: serde_json::json!({ "email": user.email }),
                    dedupe_key: format!("welcome:{}", user.id),
                };
                jobs::enqueue(conn, &job, Utc::now()).await?;
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

/// Checks credentials. The same error, and about the same time, whether the
/// email is unknown or the password wrong.
pub async fn authenticate(
    conn: &mut AsyncPgConnection,
    email: &str,
    password: &str,
) -> Result<User, UserError> {
    let user = match Email::parse(email) {
        Ok(e) => users::table
            .filter(users::email.eq(e.as_str()))
            .select(User::as_select())
            .first(conn)
            .await
            .optional()?,
        Err(_) => None,
    };
    let ok = auth::verify_password(
        password.to_owned(),
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await;
    match user {
        Some(u) if ok => Ok(u),
        _ => Err(UserError::InvalidCredentials),
    }
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
