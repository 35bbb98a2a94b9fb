//! Where a payout goes, parsed once into types that can only hold a valid
//! value: an [`Iban`] (structure and mod-97 check) or a [`PaypalEmail`].

use super::request::DestinationInput;
use crate::services::FieldError;

/// An IBAN without spaces, in upper case, whose mod-97 check holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iban(String);

impl Iban {
    /// Spaces are dropped and letters upper-cased before the checks.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        normalise_iban(raw).map(Self).ok_or_else(|| {
            FieldError::new(
                "destination.value",
                "is not a valid IBAN (country, check digits and account, mod-97)",
            )
        })
    }
}

impl AsRef<str> for Iban {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A trimmed e-mail address a PayPal payout can be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaypalEmail(String);

impl PaypalEmail {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        normalise_email(raw)
            .map(Self)
            .ok_or_else(|| FieldError::new("destination.value", "is not a valid e-mail address"))
    }
}

impl AsRef<str> for PaypalEmail {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A payout destination that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutDestination {
    Iban(Iban),
    Paypal(PaypalEmail),
}

impl PayoutDestination {
    /// The destination the client sent: `type` picks the form, `value` must fit it.
    pub fn parse(input: &DestinationInput) -> Result<Self, FieldError> {
        match input.kind.as_str() {
            "iban" => Iban::parse(&input.value).map(Self::Iban),
            "paypal" => PaypalEmail::parse(&input.value).map(Self::Paypal),
            _ => Err(FieldError::new(
                "destination.type",
                "must be `iban` or `paypal`",
            )),
        }
    }

    /// The `type` it is stored and shown under.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Iban(_) => "iban",
            Self::Paypal(_) => "paypal",
        }
    }

    /// The normalised value (what is sealed and sent to the provider).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Iban(i) => i.as_ref(),
            Self::Paypal(e) => e.as_ref(),
        }
    }

    /// The masked form shown to users and admins.
    pub fn masked(&self) -> String {
        mask(self.kind(), self.as_str())
    }
}

/// An IBAN without spaces in upper case, if its structure and mod-97 check hold.
pub fn normalise_iban(raw: &str) -> Option<String> {
    let iban: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let b = iban.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    let rearranged = b[4..].iter().chain(&b[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = if c.is_ascii_digit() {
            (c - b'0') as u32
        } else {
            (c - b'A') as u32 + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then_some(iban)
}

fn normalise_email(raw: &str) -> Option<String> {
    let v = raw.trim();
    let (local, domain) = v.split_once('@')?;
    let ok = !local.is_empty()
        && v.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@');
    ok.then(|| v.to_owned())
}

/// The masked form shown to users and admins.
pub fn mask(kind: &str, destination: &str) -> String {
    match kind {
        "iban" => {
            let n = destination.len();
            format!("{} •••• {}", &destination[..4], &destination[n - 4..])
        }
        _ => match destination.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}•••@{domain}")
            }
            None => "•••".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn iban_checksum_and_masking() {
        let iban = normalise_iban("de89 3704 0044 0532 0130 00").unwrap();
        assert_eq!(iban, "DE89370400440532013000");
        assert_eq!(mask("iban", &iban), "DE89 •••• 3000");
        assert!(normalise_iban("DE88 3704 0044 0532 0130 00").is_none());
        assert!(normalise_iban("GB82 WEST 1234 5698 7654 32").is_some());
        assert!(normalise_iban("DE89").is_none());
        assert_eq!(mask("paypal", "jane@example.com"), "j•••@example.com");
    }

    /// The check digits that make `country ++ "00" ++ account` a valid IBAN.
    fn with_check_digits(country: &str, account: &str) -> String {
        let rem = format!("{account}{country}00")
            .bytes()
            .fold(0u32, |rem, c| {
                let v = if c.is_ascii_digit() {
                    (c - b'0') as u32
                } else {
                    (c - b'A') as u32 + 10
                };
                if v >= 10 {
                    (rem * 100 + v) % 97
                } else {
                    (rem * 10 + v) % 97
                }
            });
        format!("{country}{:02}{account}", 98 - rem)
    }

    proptest! {
        #[test]
        fn a_well_formed_iban_parses_whatever_its_spacing_and_case(
            country in "[A-Z]{2}",
            account in "[0-9A-Z]{11,30}",
            spaced in any::<bool>(),
            lower in any::<bool>(),
        ) {
            let iban = with_check_digits(&country, &account);
            let mut raw = iban.clone();
            if spaced {
                raw = raw.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" ");
            }
            if lower {
                raw = raw.to_ascii_lowercase();
            }
            let parsed = Iban::parse(&raw).unwrap();
            prop_assert_eq!(parsed.as_ref(), iban.as_str());
            let masked = PayoutDestination::Iban(parsed).masked();
            prop_assert!(masked.starts_with(&iban[..4]) && masked.ends_with(&iban[iban.len() - 4..]));
        }

        #[test]
        fn one_changed_digit_fails_the_check(
            country in "[A-Z]{2}",
            account in "[0-9]{11,30}",
            at in any::<prop::sample::Index>(),
            by in 1u8..10,
        ) {
            let iban = with_check_digits(&country, &account);
            let mut bytes = iban.into_bytes();
            let i = 4 + at.index(bytes.len() - 4);
            bytes[i] = b'0' + (bytes[i] - b'0' + by) % 10;
            prop_assert!(Iban::parse(std::str::from_utf8(&bytes).unwrap()).is_err());
        }

        #[test]
        fn an_iban_is_refused_outside_its_length_or_alphabet(raw in "[A-Z]{2}[0-9]{2}[0-9A-Z]{0,10}|.*[^0-9A-Za-z\\s].*") {
            prop_assert!(Iban::parse(&raw).is_err());
        }

        #[test]
        fn an_address_parses_trimmed(
            local in "[a-z0-9._+-]{1,30}",
            domain in "[a-z0-9-]{1,20}\\.[a-z]{2,6}",
            pad in " {0,3}",
        ) {
            let address = format!("{local}@{domain}");
            let parsed = PaypalEmail::parse(&format!("{pad}{address}{pad}")).unwrap();
            prop_assert_eq!(parsed.as_ref(), address.as_str());
        }

        #[test]
        fn text_without_an_at_and_a_dotted_domain_is_not_an_address(raw in "[a-z.]{0,20}(@[a-z]{0,10})?") {
            prop_assert!(PaypalEmail::parse(&raw).is_err());
        }

        #[test]
        fn the_type_picks_the_form(kind in "[a-z]{0,8}", value in ".{0,40}") {
            let input = DestinationInput { kind: kind.clone(), value };
            match PayoutDestination::parse(&input) {
                Ok(d) => prop_assert_eq!(d.kind(), kind.as_str()),
                Err(e) => prop_assert_eq!(
                    e.field,
                    if kind == "iban" || kind == "paypal" { "destination.value" } else { "destination.type" }
                ),
            }
        }
    }
}
