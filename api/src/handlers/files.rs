//! Files the api serves from inside the binary: the browser SDK under
//! `/sdk/v1/` (for every environment, cached for a year: the path changes
//! with an incompatible version) and the demo shop under `/demo-shop/` (in
//! development only; a 404 in production, as for a path that does not exist).
//!
//! None of these files holds data or needs credentials. Each answer carries a
//! strong `ETag` (the SHA-256 of the file), and an `If-None-Match` naming it
//! answers 304.

use std::sync::LazyLock;

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use crate::{
    error::{ApiError, Path},
    state::AppState,
};

/// A file inside the binary.
struct File {
    name: &'static str,
    body: &'static str,
    content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

static SDK: [File; 2] = [
    File {
        name: "clicknback.js",
        body: include_str!("../../static/sdk/v1/clicknback.js"),
        content_type: JS,
    },
    File {
        name: "clicknback.d.ts",
        body: include_str!("../../static/sdk/v1/clicknback.d.ts"),
        content_type: "application/typescript; charset=utf-8",
    },
];

static DEMO_SHOP: [File; 6] = [
    File {
        name: "index.html",
        body: include_str!("../../static/demo-shop/index.html"),
        content_type: HTML,
    },
    File {
        name: "login.html",
        body: include_str!("../../static/demo-shop/login.html"),
        content_type: HTML,
    },
    File {
        name: "checkout.html",
        body: include_str!("../../static/demo-shop/checkout.html"),
        content_type: HTML,
    },
    File {
        name: "wallet.html",
        body: include_str!("../../static/demo-shop/wallet.html"),
        content_type: HTML,
    },
    File {
        name: "shop.js",
        body: include_str!("../../static/demo-shop/shop.js"),
        content_type: JS,
    },
    File {
        name: "shop.css",
        body: include_str!("../../static/demo-shop/shop.css"),
        content_type: "text/css; charset=utf-8",
    },
];

/// The year-long, never-revalidated caching of a versioned path.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The quoted SHA-256 (hex) of a file.
fn etag_for(body: &str) -> String {
    let hex: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// The files with their ETags, computed once.
type Tagged = Vec<(&'static File, String)>;

fn tagged(files: &'static [File]) -> Tagged {
    files.iter().map(|f| (f, etag_for(f.body))).collect()
}

static SDK_FILES: LazyLock<Tagged> = LazyLock::new(|| tagged(&SDK));
static DEMO_SHOP_FILES: LazyLock<Tagged> = LazyLock::new(|| tagged(&DEMO_SHOP));

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare equal.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn serve(files: &Tagged, name: &str, headers: &HeaderMap, cache_control: &'static str) -> Response {
    let Some((file, etag)) = files.iter().find(|(f, _)| f.name == name) else {
        return ApiError::not_found("file").into_response();
    };
    let mut res = if not_modified(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, file.content_type)], file.body).into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    res
}

/// A file of the browser SDK: `clicknback.js` (the script a merchant's pages
/// load) or `clicknback.d.ts` (its TypeScript declaration). Cached for a year
/// and `immutable`; any origin may read it (`Access-Control-Allow-Origin: *`,
/// for `<script crossorigin integrity=...>`).
#[utoipa::path(get, path = "/sdk/v1/{file}", tag = "sdk",
    params(("file" = String, Path, description = "`clicknback.js` or `clicknback.d.ts`")), responses(
    (status = 200, description = "the file", headers(("ETag"))),
    (status = 304, description = "`If-None-Match` names the current ETag"),
    (status = 404, description = "no such file (`not_found`)", body = crate::error::Problem),
))]
pub async fn sdk(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let mut res = serve(&SDK_FILES, &file, &headers, IMMUTABLE);
    if res.status() != StatusCode::NOT_FOUND {
        res.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    res
}

/// The demo shop's product page (the referral landing), in development only.
#[utoipa::path(get, path = "/demo-shop/", tag = "sdk", responses(
    (status = 200, description = "the page (development only)", content_type = "text/html"),
    (status = 404, description = "in production (`not_found`)", body = crate::error::Problem),
))]
pub async fn demo_shop_index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    demo_shop_file(&state, "index.html", &headers)
}

/// A page, the script or the style sheet of the demo shop, in development
/// only: `index.html`, `login.html`, `checkout.html`, `wallet.html`,
/// `shop.js`, `shop.css`.
#[utoipa::path(get, path = "/demo-shop/{file}", tag = "sdk",
    params(("file" = String, Path, description = "e.g. `checkout.html`")), responses(
    (status = 200, description = "the file (development only)"),
    (status = 404, description = "no such file, or in production (`not_found`)", body = crate::error::Problem),
))]
pub async fn demo_shop(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    demo_shop_file(&state, &file, &headers)
}

fn demo_shop_file(state: &AppState, name: &str, headers: &HeaderMap) -> Response {
    if !state.config.is_development() {
        return ApiError::not_found("route").into_response();
    }
    // Edited while the api runs in development: revalidated on every use.
    serve(&DEMO_SHOP_FILES, name, headers, "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let tag = SDK_FILES[0].1.as_str();
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, tag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{tag}")).unwrap(),
        );
        assert!(not_modified(&h, tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!not_modified(&h, tag));
        assert_ne!(SDK_FILES[0].1, SDK_FILES[1].1);
        assert_eq!(SDK_FILES[0].1.len(), 66, "64 hex digits in quotes");
    }
}
