//! Load generator for the benchmarks: drives the running api over HTTP with
//! signed webhooks and reports throughput and latency percentiles as JSON.
//!
//! `loadgen webhooks --api URL --admin-email E --admin-password P --requests N --concurrency C`

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clicknback_core::signature::WebhookSecret;
use serde_json::json;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "webhooks" => webhooks().await,
        "e2e" => e2e().await,
        other => anyhow::bail!("unknown mode {other:?}; expected `webhooks` or `e2e`"),
    }
}

async fn webhooks() -> anyhow::Result<()> {
    let api = arg("--api", "http://127.0.0.1:8080");
    let requests: usize = arg("--requests", "5000").parse()?;
    let concurrency: usize = arg("--concurrency", "32").parse()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    let login: serde_json::Value = client
        .post(format!("{api}/v1/auth/login"))
        .json(&json!({"email": arg("--admin-email", "bench@example.com"), "password": arg("--admin-password", "bench-password")}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let merchant: serde_json::Value = client
        .post(format!("{api}/v1/admin/merchants"))
        .bearer_auth(&token)
        .json(&json!({"name": format!("bench-{}", uuid::Uuid::new_v4().simple())}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mid = merchant["id"].as_str().unwrap_or_default().to_owned();
    let secret = WebhookSecret::parse(merchant["webhook_secret"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("no webhook secret"))?;
    let url = Arc::new(format!("{api}/v1/webhooks/{mid}/purchases"));
    let run = uuid::Uuid::new_v4().simple().to_string();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, secret, next, run) = (
            client.clone(),
            url.clone(),
            secret.clone(),
            next.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let body = serde_json::to_vec(&json!({
                    "order_id": format!("{run}-{i}"),
                    "amount_minor": 1_000 + (i as i64 % 9_000),
                    "currency": "EUR",
                    "purchased_at": chrono::Utc::now().to_rfc3339(),
                }))
                .expect("json");
                let id = format!("msg_{run}_{i}");
                let ts = chrono::Utc::now().timestamp();
                let sig = secret.sign(&id, ts, &body);
                let t = Instant::now();
                let res = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await;
                let ok = matches!(&res, Ok(r) if r.status().as_u16() == 202);
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1_000.0);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::with_capacity(requests);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let out = json!({
        "requests": requests,
        "accepted": lat.len(),
        "errors": errors,
        "concurrency": concurrency,
        "seconds": elapsed,
        "per_second": lat.len() as f64 / elapsed,
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
    });
    println!("{out}");
    Ok(())
}

async fn post_json(
    client: &reqwest::Client,
    url: String,
    headers: &[(&str, String)],
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut req = client.post(url).json(&body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.send().await?;
    let status = res.status();
    let v: serde_json::Value = res.json().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{status}: {v}");
    Ok(v)
}

fn signed(secret: &WebhookSecret, body: &serde_json::Value) -> (Vec<u8>, String, i64, String) {
    let raw = serde_json::to_vec(body).expect("json");
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let ts = chrono::Utc::now().timestamp();
    let sig = secret.sign(&id, ts, &raw);
    (raw, id, ts, sig)
}

/// N purchases of one linked shopper, ingested concurrently; time until all
/// are credited (read from the database), with ATTRIBUTION_DELAY_SECS=0 on the api.
async fn e2e() -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let api = arg("--api", "http://127.0.0.1:8080");
    let n: usize = arg("--requests", "2000").parse()?;
    let concurrency: usize = arg("--concurrency", "16").parse()?;
    let database = arg("--database-url", "");
    let client = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let login = post_json(&client, format!("{api}/v1/auth/login"), &[],
        json!({"email": arg("--admin-email", "bench@example.com"), "password": arg("--admin-password", "bench-password")})).await?;
    let auth = format!(
        "Bearer {}",
        login["access_token"].as_str().unwrap_or_default()
    );
    let m = post_json(
        &client,
        format!("{api}/v1/admin/merchants"),
        &[("authorization", auth.clone())],
        json!({"name": format!("e2e-{run}")}),
    )
    .await?;
    let mid = m["id"].as_str().unwrap_or_default().to_owned();
    let pk = m["publishable_key"].as_str().unwrap_or_default().to_owned();
    let secret = WebhookSecret::parse(m["webhook_secret"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("secret"))?;
    post_json(
        &client,
        format!("{api}/v1/admin/merchants/{mid}/offers"),
        &[("authorization", auth)],
        json!({"name": "5%", "rate_bps": 500, "active": true}),
    )
    .await?;
    // One shopper: a click, an account, the browser linked to it.
    let email = format!("shopper-{run}@example.com");
    post_json(
        &client,
        format!("{api}/v1/auth/register"),
        &[],
        json!({"email": email, "password": "password-123"}),
    )
    .await?;
    let t = post_json(
        &client,
        format!("{api}/v1/auth/login"),
        &[],
        json!({"email": email, "password": "password-123"}),
    )
    .await?;
    let user_auth = format!("Bearer {}", t["access_token"].as_str().unwrap_or_default());
    let anon = format!("anon-{run}");
    post_json(
        &client,
        format!("{api}/v1/track/click"),
        &[("x-publishable-key", pk.clone())],
        json!({"anon_id": anon}),
    )
    .await?;
    let res = client
        .post(format!("{api}/v1/track/identify"))
        .header("authorization", &user_auth)
        .json(&json!({"anon_id": anon}))
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "identify: {}", res.status());
    // The merchant's customer id gets linked to the browser by a first purchase.
    let customer = format!("cust-{run}");
    let first = json!({"order_id": format!("{run}-first"), "amount_minor": 5_000, "currency": "EUR",
        "purchased_at": chrono::Utc::now().to_rfc3339(), "customer_ref": customer, "purchase_token": "tok"});
    let (raw, id, ts, sig) = signed(&secret, &first);
    client
        .post(format!("{api}/v1/webhooks/{mid}/purchases"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(raw)
        .send()
        .await?;
    post_json(
        &client,
        format!("{api}/v1/track/purchase"),
        &[("x-publishable-key", pk)],
        json!({"anon_id": anon, "order_id": format!("{run}-first"), "purchase_token": "tok"}),
    )
    .await?;

    let url = Arc::new(format!("{api}/v1/webhooks/{mid}/purchases"));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, secret, next, run, customer) = (
            client.clone(),
            url.clone(),
            secret.clone(),
            next.clone(),
            run.clone(),
            customer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = json!({"order_id": format!("{run}-{i}"), "amount_minor": 2_000 + (i as i64 % 50),
                    "currency": "EUR", "purchased_at": chrono::Utc::now().to_rfc3339(), "customer_ref": customer});
                let (raw, id, ts, sig) = signed(&secret, &body);
                if let Ok(r) = client.post(url.as_str()).header("content-type", "application/json")
                    .header("webhook-id", id).header("webhook-timestamp", ts.to_string()).header("webhook-signature", sig)
                    .body(raw).send().await
                    && r.status().as_u16() == 202
                    && let Ok(v) = r.json::<serde_json::Value>().await
                {
                    ids.push(v["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await?);
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let mut conn = diesel_async::AsyncPgConnection::establish(&database).await?;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: N = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM rewards WHERE purchase_id IN ({list})"
        ))
        .get_result(&mut conn)
        .await?;
        if done.n as usize >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    #[derive(diesel::QueryableByName)]
    struct L {
        #[diesel(sql_type = diesel::sql_types::Double)]
        secs: f64,
    }
    let lat: Vec<L> = diesel::sql_query(format!(
        "SELECT extract(epoch FROM r.created_at - p.created_at)::float8 AS secs
           FROM purchases p JOIN rewards r ON r.purchase_id = p.id WHERE p.id IN ({list}) ORDER BY 1"))
        .load(&mut conn).await?;
    let span: L = diesel::sql_query(format!(
        "SELECT extract(epoch FROM max(r.created_at) - min(p.created_at))::float8 AS secs
           FROM purchases p JOIN rewards r ON r.purchase_id = p.id WHERE p.id IN ({list})"
    ))
    .get_result(&mut conn)
    .await?;
    let ms: Vec<f64> = lat.iter().map(|l| l.secs * 1000.0).collect();
    println!(
        "{}",
        json!({
            "purchases": ids.len(), "credited": ms.len(), "ingest_seconds": ingest_secs,
            "seconds": span.secs, "per_second": ms.len() as f64 / span.secs,
            "p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99),
        })
    );
    Ok(())
}
