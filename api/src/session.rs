//! The board's browser session. The login form (`POST /board/login`) sets a
//! signed cookie, `cnb_board`: `HttpOnly`, `SameSite=Strict`, `Path=/board`,
//! and `Secure` with `APP_ENV=production`. It names the admin and when the
//! session ends (`BOARD_SESSION_TTL_SECS`), under an HMAC-SHA256 whose key is
//! derived from `JWT_SECRET`, so nothing is stored server-side.
//!
//! A state-changing call made with the cookie must also send the session's
//! CSRF token in `X-CSRF-Token`; the page reads it from its own
//! `<meta name="csrf-token">`. The token is an HMAC of the cookie, so another
//! origin can neither read nor compute it (and `SameSite=Strict` keeps the
//! cookie off cross-site requests in the first place).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clicknback_core::{
    crypto::{constant_time_eq, hmac_sha256, random_bytes},
    ids::UserId,
};

pub const COOKIE: &str = "cnb_board";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A verified session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: UserId,
    pub expires_at: i64,
    /// The cookie's signed part, which the CSRF token is derived from.
    signed: String,
}

#[derive(Clone)]
pub struct Sessions {
    key: [u8; 32],
    ttl: Duration,
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl", &self.ttl).finish()
    }
}

impl Sessions {
    pub fn new(secret: &[u8], ttl: Duration, secure: bool) -> Self {
        Self {
            key: hmac_sha256(secret, b"clicknback board session v1"),
            ttl,
            secure,
        }
    }

    fn sign(&self, what: &str, data: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac_sha256(&self.key, format!("{what}\0{data}").as_bytes()))
    }

    /// A new session for `user_id`: the cookie's value.
    pub fn issue(&self, user_id: UserId, now: i64) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
        let signed = format!("{user_id}.{}.{nonce}", now + self.ttl.as_secs() as i64);
        let mac = self.sign("session", &signed);
        format!("{signed}.{mac}")
    }

    /// The session a cookie value names, if it is ours and has not ended.
    pub fn verify(&self, value: &str, now: i64) -> Option<Session> {
        let (signed, mac) = value.rsplit_once('.')?;
        if !constant_time_eq(self.sign("session", signed).as_bytes(), mac.as_bytes()) {
            return None;
        }
        let mut fields = signed.split('.');
        let user_id = fields.next()?.parse().ok()?;
        let expires_at: i64 = fields.next()?.parse().ok()?;
        (expires_at > now).then(|| Session {
            user_id,
            expires_at,
            signed: signed.to_owned(),
        })
    }

    pub fn csrf_token(&self, s: &Session) -> String {
        self.sign("csrf", &s.signed)
    }

    pub fn csrf_matches(&self, s: &Session, token: &str) -> bool {
        constant_time_eq(self.csrf_token(s).as_bytes(), token.as_bytes())
    }

    /// `Set-Cookie` for a new session.
    pub fn set_cookie(&self, value: &str) -> String {
        self.cookie(value, self.ttl.as_secs())
    }

    /// `Set-Cookie` that ends the session in the browser.
    pub fn clear_cookie(&self) -> String {
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={value}; Path=/board; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        )
    }
}

/// The value of the session cookie in a request's `Cookie` headers.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_expire_and_bind_their_csrf_token() {
        let s = Sessions::new(
            b"secret-secret-secret-secret-secret",
            Duration::from_secs(60),
            true,
        );
        let user = UserId::new();
        let value = s.issue(user, 1_000);
        let session = s.verify(&value, 1_030).expect("valid");
        assert_eq!(session.user_id, user);
        assert!(s.verify(&value, 1_060).is_none(), "ended");
        let mut forged = value.clone();
        forged.replace_range(0..1, if value.starts_with('0') { "1" } else { "0" });
        assert!(s.verify(&forged, 1_030).is_none(), "another user id");
        let other = Sessions::new(
            b"another-secret-another-secret-xx",
            Duration::from_secs(60),
            true,
        );
        assert!(other.verify(&value, 1_030).is_none(), "another key");
        let token = s.csrf_token(&session);
        assert!(s.csrf_matches(&session, &token));
        let second = s.verify(&s.issue(user, 1_000), 1_030).unwrap();
        assert!(
            !s.csrf_matches(&second, &token),
            "a token belongs to one session"
        );
        let cookie = s.set_cookie(&value);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/board",
            "Max-Age=60",
        ] {
            assert!(cookie.contains(part), "{cookie}");
        }
        let dev = Sessions::new(b"k", Duration::from_secs(60), false);
        assert!(!dev.set_cookie("x").contains("Secure"));
    }
}
