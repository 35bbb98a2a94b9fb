//! Typed ids, so a user id never goes where a merchant id belongs.
//!
//! Each is a `Uuid` underneath: stored in the `UUID` columns as-is (diesel
//! `ToSql`/`FromSql` delegate to the `Uuid`), serialized as the bare uuid
//! string, and documented in OpenAPI as a `uuid`-formatted string.

use std::fmt;

use diesel_derive_newtype::DieselNewType;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            DieselNewType, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7): inserts land at the end of the index.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn into_uuid(self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    )*};
}

id_type!(
    /// A shopper's or an admin's account.
    UserId,
    MerchantId,
    OfferId,
    PurchaseId,
    RewardId,
    PayoutId,
    /// A group of identifiers believed to be one person.
    IdentityGroupId,
    /// One identifier in the identity graph (an anonymous browser, an account, a merchant's customer).
    IdentityNodeId,
    /// A recorded click.
    TouchpointId,
    /// An account of the ledger (a user's or the platform's).
    LedgerAccountId,
    /// An entry of the audit log.
    AuditEntryId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_the_bare_uuid() {
        let id = PurchaseId::new();
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!(id.0.to_string())
        );
        let back: PurchaseId = serde_json::from_value(serde_json::json!(id.0)).unwrap();
        assert_eq!(back, id);
        assert_eq!(id.to_string().parse::<PurchaseId>().unwrap(), id);
    }
}
