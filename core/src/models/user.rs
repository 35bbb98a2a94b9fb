use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::{ids::UserId, schema::users, text_enum::text_enum};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: UserId,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
}

text_enum! {
    /// What an account may do: a shopper's, or an admin's.
    pub enum Role {
        User = "user",
        Admin = "admin",
    }
}
