//! The browser SDK's files and the demo shop, served from the binary: content
//! types, caching, ETags, and the demo shop in development only.

use axum::http::{Method, StatusCode};
use clicknback_tests::TestApp;

const SDK_JS: &str = include_str!("../../api/static/sdk/v1/clicknback.js");
const SDK_DTS: &str = include_str!("../../api/static/sdk/v1/clicknback.d.ts");

#[tokio::test]
async fn the_sdk_is_served_immutable_with_an_etag() {
    let app = TestApp::new().await;
    for (path, body, content_type) in [
        ("/sdk/v1/clicknback.js", SDK_JS, "text/javascript"),
        ("/sdk/v1/clicknback.d.ts", SDK_DTS, "application/typescript"),
    ] {
        let r = app.request(Method::GET, path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert_eq!(r.text, body, "{path} is the file in api/static");
        assert!(
            r.header("content-type").unwrap().starts_with(content_type),
            "{path}: {:?}",
            r.header("content-type")
        );
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let etag = r.header("etag").expect("an ETag").to_owned();
        assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");

        let again = app
            .request(Method::GET, path, &[("if-none-match", &etag)], None)
            .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.text.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let changed = app
            .request(Method::GET, path, &[("if-none-match", "\"old\"")], None)
            .await;
        assert_eq!(changed.status, StatusCode::OK);
    }
    let other = app
        .request(Method::GET, "/sdk/v1/other.js", &[], None)
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.body["code"], "not_found");
}

#[tokio::test]
async fn the_demo_shop_is_served_in_development() {
    let app = TestApp::new().await;
    let index = app.request(Method::GET, "/demo-shop/", &[], None).await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.text.contains("data-page=\"product\""));
    assert!(
        index
            .header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    for (file, content_type) in [
        ("index.html", "text/html"),
        ("login.html", "text/html"),
        ("checkout.html", "text/html"),
        ("wallet.html", "text/html"),
        ("shop.js", "text/javascript"),
        ("shop.css", "text/css"),
    ] {
        let r = app
            .request(Method::GET, &format!("/demo-shop/{file}"), &[], None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{file}");
        assert!(
            r.header("content-type").unwrap().starts_with(content_type),
            "{file}"
        );
        assert!(r.header("etag").is_some(), "{file}");
    }
    let missing = app
        .request(Method::GET, "/demo-shop/secret.txt", &[], None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn production_has_no_demo_shop_but_serves_the_sdk() {
    let app = TestApp::with(&[
        ("APP_ENV", "production"),
        ("SMTP_URL", "smtp://127.0.0.1:9"),
        ("PAYOUT_PROVIDER_URL", "http://127.0.0.1:9"),
        ("PAYOUT_PROVIDER_KEY", "provider-key"),
    ])
    .await;
    for path in ["/demo-shop/", "/demo-shop/index.html", "/demo-shop/shop.js"] {
        let r = app.request(Method::GET, path, &[], None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.body["code"], "not_found", "{path}");
    }
    let sdk = app
        .request(Method::GET, "/sdk/v1/clicknback.js", &[], None)
        .await;
    assert_eq!(sdk.status, StatusCode::OK);
}
