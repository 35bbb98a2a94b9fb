//! Money: integer minor units with an ISO-4217 currency. No floats anywhere near it.
//!
//! [`Money`] is a strictly positive amount: what a purchase, a payout and a
//! ledger transfer move. An amount that may be nothing (a reward capped to
//! zero by its monthly cap) is an `Option<Money>`. [`Currency`] is stored in
//! the `CHAR(3)` columns as its code.

use std::fmt;

use diesel::{
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::{Pg, PgValue},
    serialize::{self, Output, ToSql},
    sql_types::Text,
};
use serde::{Deserialize, Serialize};

/// ISO-4217 codes currently in circulation.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SYP", "SZL", "THB", "TJS",
    "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// A validated ISO-4217 currency code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, AsExpression, FromSqlRow,
)]
#[serde(into = "String")]
#[diesel(sql_type = Text)]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be an ISO-4217 code of three upper-case letters, like EUR")]
    UnknownCurrency,
    #[error("amount must be a positive integer number of minor units")]
    NotPositive,
    #[error("amount is out of range")]
    Overflow,
    #[error("amount must be at most 10000000000 minor units")]
    TooLarge,
    #[error("currencies differ")]
    CurrencyMismatch,
}

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        if ISO_4217.binary_search(&code).is_ok() {
            let b = code.as_bytes();
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(MoneyError::UnknownCurrency)
        }
    }

    /// A code read back from the database: three capital letters (what the
    /// columns' check allows), trusted even if it has since left circulation.
    fn stored(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(MoneyError::UnknownCurrency),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from three ASCII capital letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl PartialEq<str> for Currency {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Currency {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl ToSql<Text, Pg> for Currency {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
    }
}

impl FromSql<Text, Pg> for Currency {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let code = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Currency::stored(&code)
            .map_err(|_| format!("stored currency {code:?} is not a code").into())
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z]{3}$"))
            .examples([serde_json::json!("EUR")])
            .description(Some("An ISO-4217 currency code."))
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The largest amount a request may carry, in minor units (10^10: 100
/// million in a two-decimal currency). Purchases, payouts and offer caps
/// above it are refused (422 `validation_failed`, and a CHECK in the
/// database), so sums of them stay far from `i64::MAX`.
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000;

/// A positive amount of money in minor units (cents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

fn positive(amount_minor: i64) -> Result<i64, MoneyError> {
    if amount_minor > 0 {
        Ok(amount_minor)
    } else {
        Err(MoneyError::NotPositive)
    }
}

/// What is wrong with an amount and a currency given as two fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidMoney {
    pub amount: Option<MoneyError>,
    pub currency: Option<MoneyError>,
}

impl Money {
    /// A strictly positive amount.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        Ok(Self {
            amount_minor: positive(amount_minor)?,
            currency,
        })
    }

    /// An amount and a currency code as a request sends them, each checked:
    /// the amount from 1 to [`MAX_AMOUNT_MINOR`].
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, InvalidMoney> {
        let amount = positive(amount_minor).and_then(|a| {
            if a > MAX_AMOUNT_MINOR {
                Err(MoneyError::TooLarge)
            } else {
                Ok(a)
            }
        });
        match (amount, Currency::parse(currency)) {
            (Ok(amount_minor), Ok(currency)) => Ok(Self {
                amount_minor,
                currency,
            }),
            (amount, currency) => Err(InvalidMoney {
                amount: amount.err(),
                currency: currency.err(),
            }),
        }
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch);
        }
        let amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_minor,
            currency: self.currency,
        })
    }

    /// Splits the amount in two: the first part is at most `first_minor`
    /// (nothing when that is zero or less), the second is the rest. Either is
    /// `None` when it comes to nothing.
    pub fn split(self, first_minor: i64) -> (Option<Money>, Option<Money>) {
        let first = first_minor.clamp(0, self.amount_minor);
        let part = |amount_minor| Money::new(amount_minor, self.currency).ok();
        (part(first), part(self.amount_minor - first))
    }
}

/// Cashback for an amount at a rate in basis points: floor(amount × bps / 10000).
/// Computed in 128-bit so no amount can overflow; `rate_bps` is 0..=10000 so the
/// result never exceeds the amount.
pub fn cashback_minor(amount_minor: i64, rate_bps: i32) -> i64 {
    let bps = i128::from(rate_bps.clamp(0, 10_000));
    let v = i128::from(amount_minor.max(0)) * bps / 10_000;
    v as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        let mut sorted = ISO_4217.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, ISO_4217);
    }

    #[test]
    fn parses_known_codes_only() {
        assert_eq!(Currency::parse("EUR").unwrap().as_str(), "EUR");
        for bad in ["eur", "EURO", "", "XXX", "E U", "ÉUR"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_must_be_positive() {
        let eur = Currency::parse("EUR").unwrap();
        assert!(Money::new(0, eur).is_err());
        assert!(Money::new(-5, eur).is_err());
        assert_eq!(Money::new(5, eur).unwrap().amount_minor(), 5);
        let big = Money::new(i64::MAX, eur).unwrap();
        assert_eq!(big.checked_add(big), Err(MoneyError::Overflow));
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(
            Money::new(1, eur)
                .unwrap()
                .checked_add(Money::new(1, usd).unwrap()),
            Err(MoneyError::CurrencyMismatch)
        );
    }

    #[test]
    fn parse_names_each_bad_part() {
        assert_eq!(Money::parse(5, "EUR").unwrap().amount_minor(), 5);
        let both = Money::parse(0, "eur").unwrap_err();
        assert_eq!(both.amount, Some(MoneyError::NotPositive));
        assert_eq!(both.currency, Some(MoneyError::UnknownCurrency));
        let amount = Money::parse(-1, "EUR").unwrap_err();
        assert_eq!((amount.amount.is_some(), amount.currency), (true, None));
        let huge = Money::parse(MAX_AMOUNT_MINOR + 1, "EUR").unwrap_err();
        assert_eq!(huge.amount, Some(MoneyError::TooLarge));
        assert!(Money::parse(MAX_AMOUNT_MINOR, "EUR").is_ok());
        let currency = Money::parse(1, "XXX").unwrap_err();
        assert_eq!((currency.amount, currency.currency.is_some()), (None, true));
    }

    #[test]
    fn split_takes_at_most_the_first_part() {
        let eur = Currency::parse("EUR").unwrap();
        let m = Money::new(500, eur).unwrap();
        let amounts = |(a, b): (Option<Money>, Option<Money>)| {
            (a.map(|m| m.amount_minor()), b.map(|m| m.amount_minor()))
        };
        assert_eq!(amounts(m.split(100)), (Some(100), Some(400)));
        assert_eq!(amounts(m.split(0)), (None, Some(500)));
        assert_eq!(amounts(m.split(-7)), (None, Some(500)));
        assert_eq!(amounts(m.split(500)), (Some(500), None));
        assert_eq!(amounts(m.split(9_000)), (Some(500), None));
    }

    #[test]
    fn stored_codes_are_read_back_even_out_of_circulation() {
        assert_eq!(Currency::stored("HRK").unwrap().as_str(), "HRK");
        assert!(Currency::stored("eur").is_err());
        assert!(Currency::stored("EURO").is_err());
    }

    #[test]
    fn cashback_floors() {
        assert_eq!(cashback_minor(999, 500), 49);
        assert_eq!(cashback_minor(10_000, 10_000), 10_000);
        assert_eq!(cashback_minor(i64::MAX, 10_000), i64::MAX);
    }

    proptest! {
        #[test]
        fn cashback_never_exceeds_amount(amount in 1i64..=i64::MAX, bps in 0i32..=10_000) {
            let c = cashback_minor(amount, bps);
            prop_assert!(c >= 0 && c <= amount);
        }

        #[test]
        fn split_parts_add_up(amount in 1i64..=1_000_000_000, first in i64::MIN..=i64::MAX) {
            let m = Money::new(amount, Currency::parse("EUR").unwrap()).unwrap();
            let (a, b) = m.split(first);
            let sum = a.map_or(0, |m| m.amount_minor()) + b.map_or(0, |m| m.amount_minor());
            prop_assert_eq!(sum, amount);
        }

        #[test]
        fn currency_parse_accepts_only_table_entries(s in "\\PC{0,5}") {
            prop_assert_eq!(Currency::parse(&s).is_ok(), ISO_4217.contains(&s.as_str()));
        }
    }
}
