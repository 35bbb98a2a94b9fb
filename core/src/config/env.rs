//! The environment reader: typed, ranged values, each error naming the
//! variable and the form it expects.

use std::{str::FromStr, time::Duration};

/// The one error configuration loading can produce: which variable, and what it should look like.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var} {problem}; expected {expected}")]
pub struct ConfigError {
    pub var: String,
    pub problem: String,
    pub expected: String,
}

/// Reads variables through a lookup function so tests can build a configuration in code.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
    dev: bool,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Result<Self, ConfigError> {
        let dev = match lookup("APP_ENV").as_deref().map(str::trim) {
            None | Some("") | Some("production") => false,
            Some("development") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: "APP_ENV".into(),
                    problem: format!("is {other:?}"),
                    expected: "`development` or `production`".into(),
                });
            }
        };
        Ok(Self { lookup, dev })
    }

    pub fn is_development(&self) -> bool {
        self.dev
    }

    pub fn raw(&self, var: &str) -> Option<String> {
        (self.lookup)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn missing(var: &str, expected: &str) -> ConfigError {
        ConfigError {
            var: var.into(),
            problem: "is not set".into(),
            expected: expected.into(),
        }
    }

    /// A required value; in development only, `dev_default` stands in when it is unset.
    pub fn required(
        &self,
        var: &str,
        expected: &str,
        dev_default: Option<&str>,
    ) -> Result<String, ConfigError> {
        match (self.raw(var), dev_default) {
            (Some(v), _) => Ok(v),
            (None, Some(d)) if self.dev => Ok(d.to_owned()),
            (None, _) => Err(Self::missing(var, expected)),
        }
    }

    pub fn or(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    pub fn parsed<T: FromStr>(
        &self,
        var: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError {
                var: var.into(),
                problem: format!("is {v:?}"),
                expected: expected.into(),
            }),
        }
    }

    /// An integer inside `range`.
    pub fn int_in(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let expected = format!("an integer from {} to {}", range.start(), range.end());
        let v: u64 = self.parsed(var, default, &expected)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError {
                var: var.into(),
                problem: format!("is {v}"),
                expected,
            })
        }
    }

    pub fn secs(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.int_in(var, default, range).map(Duration::from_secs)
    }

    pub fn millis(
        &self,
        var: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.int_in(var, default, range).map(Duration::from_millis)
    }

    /// A required URL whose scheme is one of `form`'s.
    pub fn url(
        &self,
        var: &str,
        form: &UrlForm<'_>,
        dev_default: Option<&str>,
    ) -> Result<String, ConfigError> {
        let url = self.required(var, form.expected, dev_default)?;
        if form
            .schemes
            .iter()
            .chain(form.aliases)
            .any(|s| url.starts_with(s))
        {
            return Ok(url);
        }
        Err(ConfigError {
            var: var.into(),
            problem: format!("does not start with {}", form.schemes.join(" or ")),
            expected: form.expected_scheme.unwrap_or(form.expected).into(),
        })
    }

    pub fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(ConfigError {
                var: var.into(),
                problem: format!("is {v:?}"),
                expected: "`true` or `false`".into(),
            }),
        }
    }

    /// A sandbox switch (`var`): on by default in development, refused
    /// outside it; `expected` says why.
    pub fn sandbox(&self, var: &str, expected: &str) -> Result<bool, ConfigError> {
        let on = self.bool(var, self.dev)?;
        if on && !self.dev {
            return Err(ConfigError {
                var: var.into(),
                problem: "is true outside APP_ENV=development".into(),
                expected: expected.into(),
            });
        }
        Ok(on)
    }

    /// A circuit breaker's pause when it opens (`open_var`, default 30 s) and
    /// the most it doubles up to (`max_var`, default 300 s, not below the pause).
    pub fn breaker_open(
        &self,
        open_var: &str,
        max_var: &str,
    ) -> Result<(Duration, Duration), ConfigError> {
        let open = self.secs(open_var, 30, 1..=3_600)?;
        let max = self.secs(max_var, 300, 1..=86_400)?;
        if max < open {
            return Err(ConfigError {
                var: max_var.into(),
                problem: format!("is below {open_var}"),
                expected: format!("at least {open_var}"),
            });
        }
        Ok((open, max))
    }
}

/// What a URL variable must look like.
pub struct UrlForm<'a> {
    /// The form shown when the variable is missing.
    pub expected: &'a str,
    /// The schemes it may start with (`redis://`), named when it starts with another.
    pub schemes: &'a [&'a str],
    /// Schemes accepted too but not named (`postgresql://`).
    pub aliases: &'a [&'a str],
    /// The form shown for a wrong scheme, when it is not `expected`.
    pub expected_scheme: Option<&'a str>,
}
