//! Bearer-token extractors. `AuthUser` accepts any valid access token;
//! `AdminUser` also requires `role: admin`.

use axum::{extract::FromRequestParts, http::request::Parts};
use clicknback_core::{
    ids::UserId,
    models::user::Role,
    services::{Actor, auth::TokenError},
};

use crate::{error::ApiError, middleware::current_request_id, state::AppState};

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl AdminUser {
    pub fn actor(&self) -> Actor {
        Actor {
            user_id: self.0.id,
            request_id: Some(current_request_id()),
        }
    }
}

pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)
            .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
        let claims = state.tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => ApiError::unauthorized("the token has expired"),
            TokenError::Invalid => ApiError::unauthorized("the token is invalid"),
        })?;
        Ok(AuthUser {
            id: claims.sub,
            role: claims.role,
        })
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::forbidden("this endpoint requires an admin token"));
        }
        Ok(AdminUser(user))
    }
}

/// The client's address: the peer as the listener saw it, or, when the peer
/// is one of `TRUSTED_PROXIES`, the nearest address in `X-Forwarded-For` that
/// is not a trusted proxy (`unknown` in-process).
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

/// The client behind `peer`, given the `X-Forwarded-For` chain. Addresses
/// are compared in canonical form: an IPv4 peer seen by a dual-stack
/// listener as `::ffff:a.b.c.d` is `a.b.c.d` (`trusted` is canonical too).
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let mut client = peer?.to_canonical();
    if !trusted.contains(&client) {
        return Some(client);
    }
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        match hop
            .trim()
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_canonical())
        {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Ok(ClientIp(
            client_ip(peer, forwarded, &state.config.trusted_proxies)
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ))
    }
}

/// An admin for the job board: an admin bearer token, the board's session
/// cookie (see [`crate::session`]; a state-changing call must also carry its
/// CSRF token), or admin email and password as HTTP Basic credentials (for
/// scripts). Basic credentials count as sign-in attempts
/// ([`crate::limits::sign_in_attempt`]) except when they are the ones verified
/// in the last minute, which are remembered to spare argon2.
#[derive(Debug, Clone)]
pub struct BoardAdmin(pub UserId);

type BasicCache =
    std::sync::Mutex<std::collections::HashMap<[u8; 32], (UserId, std::time::Instant)>>;

fn basic_cache() -> &'static BasicCache {
    static CACHE: std::sync::OnceLock<BasicCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn basic_refused(detail: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// The board's session named by the request's cookie, if valid.
pub fn board_session(
    headers: &axum::http::HeaderMap,
    state: &AppState,
) -> Option<crate::session::Session> {
    crate::session::cookie_value(headers)
        .and_then(|v| state.sessions.verify(v, chrono::Utc::now().timestamp()))
}

impl FromRequestParts<AppState> for BoardAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer_token(parts).is_some() {
            return AdminUser::from_request_parts(parts, state)
                .await
                .map(|a| BoardAdmin(a.0.id));
        }
        let basic = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            });
        let Some(raw) = basic else {
            let session = board_session(&parts.headers, state)
                .ok_or_else(|| basic_refused("sign in on /board, or send admin credentials"))?;
            let changes = !matches!(
                parts.method,
                axum::http::Method::GET | axum::http::Method::HEAD
            );
            let token = parts
                .headers
                .get(crate::session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok());
            if changes && !token.is_some_and(|t| state.sessions.csrf_matches(&session, t)) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "csrf_token_invalid",
                    "send the page's CSRF token in X-CSRF-Token",
                ));
            }
            return Ok(BoardAdmin(session.user_id));
        };
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| basic_refused("malformed credentials"))?;
        let (email, password) = decoded
            .split_once(':')
            .ok_or_else(|| basic_refused("malformed credentials"))?;
        let fingerprint = clicknback_core::crypto::sha256(decoded.as_bytes());
        if let Some((id, at)) = basic_cache()
            .lock()
            .ok()
            .and_then(|c| c.get(&fingerprint).copied())
            && at.elapsed() < std::time::Duration::from_secs(60)
        {
            return Ok(BoardAdmin(id));
        }
        let Ok(ClientIp(ip)) = ClientIp::from_request_parts(parts, state).await;
        let (user, _) = crate::handlers::auth::sign_in(state, &ip, email, password)
            .await
            .map_err(|e| {
                if e.code == "invalid_credentials" {
                    basic_refused("wrong email or password")
                } else {
                    e
                }
            })?;
        if user.role != Role::Admin {
            return Err(ApiError::forbidden("the board requires an admin account"));
        }
        if let Ok(mut c) = basic_cache().lock() {
            c.retain(|_, (_, at)| at.elapsed() < std::time::Duration::from_secs(60));
            c.insert(fingerprint, (user.id, std::time::Instant::now()));
        }
        Ok(BoardAdmin(user.id))
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let lb: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let edge: std::net::IpAddr = "10.0.0.3".parse().unwrap();
        let trusted = [lb, edge];
        let xff = Some("1.2.3.4, 203.0.113.9, 10.0.0.3");
        assert_eq!(
            client_ip(Some(lb), xff, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let direct: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_ip(Some(direct), xff, &trusted),
            Some(direct),
            "spoofed header ignored"
        );
        assert_eq!(client_ip(Some(lb), None, &trusted), Some(lb));
        assert_eq!(client_ip(Some(lb), Some("garbage"), &trusted), Some(lb));
        assert_eq!(client_ip(None, xff, &trusted), None);
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies() {
        let trusted: [std::net::IpAddr; 1] = ["10.0.0.2".parse().unwrap()];
        let mapped: std::net::IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(Some(mapped), Some("203.0.113.9"), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let mapped_client: std::net::IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(
            client_ip(Some(mapped_client), None, &trusted),
            Some("198.51.100.7".parse().unwrap()),
            "one limit key per client, however the listener saw it"
        );
    }
}
