//! Money: integer minor units with an ISO-4217 currency. No floats anywhere near it.

use std::fmt;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be an ISO-4217 code of three upper-case letters, like EUR")]
    UnknownCurrency,
    #[error("amount must be a positive integer number of minor units")]
    NotPositive,
    #[error("amount is out of range")]
    Overflow,
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

    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII codes of the table above.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

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

/// A positive amount of money in minor units (cents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    /// A strictly positive amount.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if amount_minor <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(Self {
            amount_minor,
            currency,
        })
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
        fn currency_parse_accepts_only_table_entries(s in "\\PC{0,5}") {
            prop_assert_eq!(Currency::parse(&s).is_ok(), ISO_4217.contains(&s.as_str()));
        }
    }
}
