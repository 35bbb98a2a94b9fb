//! Load generator for the benchmarks: drives the running api over HTTP with
//! signed webhooks and reports throughput and latency percentiles as JSON.
//!
//! `loadgen webhooks --api URL --admin-email E --admin-password P --requests N --concurrency C`
//! `loadgen e2e --api URL --database-url DB [--steady-secs S --steady-rate R] ...`
//! (ingestion to credited reward: a burst, then optionally a steady rate, by
//! default half the burst's end-to-end rate)
//! `loadgen stats --api URL --database-url DB --rewards R ...` (`GET /v1/me/stats`
//! for a shopper with R rewards; with `--computed`, the figures computed from
//! the rewards on every request instead, straight from PostgreSQL)
//! `loadgen abuse --api URL --seconds S --rate R [--flood C]` (signed webhooks
//! at a steady R per second for S seconds, and with `--flood`, C clients
//! sending logins of random emails at full speed meanwhile; `/readyz` is
//! polled all along)
//! `loadgen sweeper --database-url DB --sizes 10000,1000000 --runs R` (the
//! sweeper's due-attribution query, timed at each table size; grows the table
//! of a migrated database in place)
//! `loadgen reconcile --database-url DB --sizes 100000,10000000 --runs R` (the
//! ledger reconciliation timed at each ledger size, from scratch and since
//! its last verified point with 1,000 transfers written since; grows the
//! ledger of a migrated database in place, one `INSERT … SELECT
//! generate_series` per million transfers)

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
        "stats" => stats().await,
        "sweeper" => sweeper().await,
        "abuse" => abuse().await,
        "reconcile" => reconcile().await,
        other => anyhow::bail!(
            "unknown mode {other:?}; expected `webhooks`, `e2e`, `stats`, `abuse`, `sweeper` or `reconcile`"
        ),
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
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (merchant, _) = merchant_with_offer(&client, &api, &format!("bench-{run}"), false).await?;
    let mid = merchant["id"].as_str().unwrap_or_default().to_owned();
    let secret = WebhookSecret::parse(merchant["webhook_secret"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("no webhook secret"))?;
    let url = Arc::new(format!("{api}/v1/webhooks/{mid}/purchases"));
    let order = Arc::new(AtomicUsize::new(0));
    drive(requests, concurrency, move || {
        let (client, url, secret, run) = (client.clone(), url.clone(), secret.clone(), run.clone());
        let i = order.fetch_add(1, Ordering::Relaxed);
        async move {
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
            let res = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body)
                .send()
                .await;
            matches!(&res, Ok(r) if r.status().as_u16() == 202)
        }
    })
    .await
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

/// An admin-created merchant with a 5 % offer: (merchant, offer) as the api returned them.
async fn merchant_with_offer(
    client: &reqwest::Client,
    api: &str,
    name: &str,
    active: bool,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let login = post_json(client, format!("{api}/v1/auth/login"), &[],
        json!({"email": arg("--admin-email", "bench@example.com"), "password": arg("--admin-password", "bench-password")})).await?;
    let auth = format!(
        "Bearer {}",
        login["access_token"].as_str().unwrap_or_default()
    );
    let m = post_json(
        client,
        format!("{api}/v1/admin/merchants"),
        &[("authorization", auth.clone())],
        json!({"name": name}),
    )
    .await?;
    let mid = m["id"].as_str().unwrap_or_default().to_owned();
    let offer = post_json(
        client,
        format!("{api}/v1/admin/merchants/{mid}/offers"),
        &[("authorization", auth)],
        json!({"name": "5%", "rate_bps": 500, "active": active}),
    )
    .await?;
    Ok((m, offer))
}

/// A registered shopper: (the user as returned, `Bearer <token>`).
async fn shopper(
    client: &reqwest::Client,
    api: &str,
    email: &str,
) -> anyhow::Result<(serde_json::Value, String)> {
    let user = post_json(
        client,
        format!("{api}/v1/auth/register"),
        &[],
        json!({"email": email, "password": "password-123"}),
    )
    .await?;
    let t = post_json(
        client,
        format!("{api}/v1/auth/login"),
        &[],
        json!({"email": email, "password": "password-123"}),
    )
    .await?;
    Ok((
        user,
        format!("Bearer {}", t["access_token"].as_str().unwrap_or_default()),
    ))
}

/// N purchases of `--shoppers` linked shoppers, ingested concurrently; time
/// until all are credited (read from the database), with
/// ATTRIBUTION_DELAY_SECS=0 on the api. With `--steady-secs S`, purchases are
/// then sent at a steady `--steady-rate` per second (0: half the burst's
/// measured end-to-end rate) for S seconds against the same api and worker,
/// and measured the same way once all are credited (at most `--steady-wait`
/// seconds after the last one is sent).
async fn e2e() -> anyhow::Result<()> {
    use diesel_async::AsyncConnection;
    let api = arg("--api", "http://127.0.0.1:8080");
    let n: usize = arg("--requests", "2000").parse()?;
    let concurrency: usize = arg("--concurrency", "16").parse()?;
    let database = arg("--database-url", "");
    let steady_secs: f64 = arg("--steady-secs", "0").parse()?;
    let steady_rate: f64 = arg("--steady-rate", "0").parse()?;
    let steady_wait: f64 = arg("--steady-wait", "120").parse()?;
    let client = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (m, _) = merchant_with_offer(&client, &api, &format!("e2e-{run}"), true).await?;
    let mid = m["id"].as_str().unwrap_or_default().to_owned();
    let pk = m["publishable_key"].as_str().unwrap_or_default().to_owned();
    let secret = WebhookSecret::parse(m["webhook_secret"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("secret"))?;
    // Each shopper: a click, an account, the browser linked to it, and the
    // merchant's customer id linked to the browser by a first purchase.
    let shoppers: usize = arg("--shoppers", "1").parse::<usize>()?.max(1);
    let mut customers = Vec::with_capacity(shoppers);
    for s in 0..shoppers {
        let (_, user_auth) =
            shopper(&client, &api, &format!("shopper-{run}-{s}@example.com")).await?;
        let anon = format!("anon-{run}-{s}");
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
        let customer = format!("cust-{run}-{s}");
        let order = format!("{run}-first-{s}");
        let first = json!({"order_id": order, "amount_minor": 5_000, "currency": "EUR",
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
            &[("x-publishable-key", pk.clone())],
            json!({"anon_id": anon, "order_id": order, "purchase_token": "tok"}),
        )
        .await?;
        customers.push(customer);
    }
    let customers = Arc::new(customers);
    eprintln!("    e2e: {shoppers} shopper(s) linked; ingesting {n} purchases");
    // Purchase `order` of shopper `i % shoppers`, posted; its id when accepted.
    let purchase = {
        let (client, secret, run, customers) = (
            client.clone(),
            secret.clone(),
            run.clone(),
            customers.clone(),
        );
        let url = Arc::new(format!("{api}/v1/webhooks/{mid}/purchases"));
        move |order: String, i: usize| {
            let (client, url, secret, customer) = (
                client.clone(),
                url.clone(),
                secret.clone(),
                customers[i % customers.len()].clone(),
            );
            let body = json!({"order_id": format!("{run}-{order}"), "amount_minor": 2_000 + (i as i64 % 50),
                "currency": "EUR", "purchased_at": chrono::Utc::now().to_rfc3339(), "customer_ref": customer});
            async move {
                let (raw, id, ts, sig) = signed(&secret, &body);
                let r = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(raw)
                    .send()
                    .await
                    .ok()?;
                if r.status().as_u16() != 202 {
                    return None;
                }
                let v = r.json::<serde_json::Value>().await.ok()?;
                Some(v["id"].as_str().unwrap_or_default().to_owned())
            }
        }
    };

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, purchase) = (next.clone(), purchase.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Some(id) = purchase(i.to_string(), i).await {
                    ids.push(id);
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
    let burst = credited(&mut conn, &ids, Duration::from_secs(600), "e2e").await?;
    let per_second = burst.per_second();
    let mut out = json!({
        "purchases": ids.len(), "shoppers": shoppers, "credited": burst.ms.len(), "ingest_seconds": ingest_secs,
        "seconds": burst.span_secs, "per_second": per_second,
        "p50_ms": percentile(&burst.ms, 0.5), "p99_ms": percentile(&burst.ms, 0.99),
    });

    if steady_secs > 0.0 {
        let (rate, rate_from) = if steady_rate > 0.0 {
            (steady_rate, "given")
        } else {
            (per_second * 0.5, "half the burst")
        };
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "no steady rate: the burst measured {per_second} purchases/s"
        );
        eprintln!("    e2e: steady phase, {rate:.1} purchases/s ({rate_from}) for {steady_secs} s");
        let started = Instant::now();
        let sent = paced(rate, started + Duration::from_secs_f64(steady_secs), |i| {
            purchase(format!("steady-{i}"), i)
        })
        .await;
        let window = started.elapsed().as_secs_f64();
        let requests = sent.len();
        let mut ids = Vec::with_capacity(requests);
        for t in sent {
            ids.extend(t.await?);
        }
        let steady = credited(
            &mut conn,
            &ids,
            Duration::from_secs_f64(steady_wait),
            "e2e steady",
        )
        .await?;
        let o = out.as_object_mut().expect("object");
        for (k, v) in [
            ("steady_rate", json!(rate)),
            ("steady_rate_from", json!(rate_from)),
            ("steady_seconds", json!(window)),
            ("steady_requests", json!(requests)),
            ("steady_accepted", json!(ids.len())),
            ("steady_not_accepted", json!(requests - ids.len())),
            ("steady_credited", json!(steady.ms.len())),
            ("steady_not_credited", json!(ids.len() - steady.ms.len())),
            ("steady_per_second", json!(ids.len() as f64 / window)),
            ("steady_credited_per_second", json!(steady.per_second())),
            ("steady_p50_ms", json!(percentile(&steady.ms, 0.5))),
            ("steady_p99_ms", json!(percentile(&steady.ms, 0.99))),
        ] {
            o.insert(k.to_owned(), v);
        }
    }
    println!("{out}");
    Ok(())
}

/// Credited purchases: each one's latency from its row's creation to its
/// reward's (ms, sorted), and the span from the first purchase to the last reward.
struct Credited {
    ms: Vec<f64>,
    span_secs: f64,
}

impl Credited {
    fn per_second(&self) -> f64 {
        if self.span_secs > 0.0 {
            self.ms.len() as f64 / self.span_secs
        } else {
            0.0
        }
    }
}

/// Waits until every purchase of `ids` has its reward, or `wait` has passed,
/// then reads their latencies from the database (purchases without a reward
/// by then are left out: the caller reports how many).
async fn credited(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[String],
    wait: Duration,
    label: &str,
) -> anyhow::Result<Credited> {
    use diesel_async::RunQueryDsl;
    if ids.is_empty() {
        return Ok(Credited {
            ms: Vec::new(),
            span_secs: 0.0,
        });
    }
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
    let deadline = Instant::now() + wait;
    loop {
        let done: N = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM rewards WHERE purchase_id IN ({list})"
        ))
        .get_result(conn)
        .await?;
        if done.n as usize >= ids.len() {
            break;
        }
        if Instant::now() > deadline {
            eprint!(
                "\n    {label}: {} of {} purchases not credited after {:.0} s",
                ids.len() - done.n as usize,
                ids.len(),
                wait.as_secs_f64()
            );
            break;
        }
        eprint!("\r    {label}: {}/{} credited", done.n, ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!();
    #[derive(diesel::QueryableByName)]
    struct L {
        #[diesel(sql_type = diesel::sql_types::Double)]
        secs: f64,
    }
    let lat: Vec<L> = diesel::sql_query(format!(
        "SELECT extract(epoch FROM r.created_at - p.created_at)::float8 AS secs
           FROM purchases p JOIN rewards r ON r.purchase_id = p.id WHERE p.id IN ({list}) ORDER BY 1"))
        .load(conn).await?;
    let span: L = diesel::sql_query(format!(
        "SELECT coalesce(extract(epoch FROM max(r.created_at) - min(p.created_at))::float8, 0) AS secs
           FROM purchases p JOIN rewards r ON r.purchase_id = p.id WHERE p.id IN ({list})"
    ))
    .get_result(conn)
    .await?;
    Ok(Credited {
        ms: lat.iter().map(|l| l.secs * 1000.0).collect(),
        span_secs: span.secs,
    })
}

/// Starts `call(i)` for i = 1, 2, … at a steady `rate` per second until
/// `deadline`, each on its own task (open loop: a slow answer does not slow
/// the sending); returns the tasks in the order they were started.
async fn paced<F, Fut>(
    rate: f64,
    deadline: Instant,
    call: F,
) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut sent = Vec::new();
    let mut i = 0usize;
    while Instant::now() < deadline {
        tick.tick().await;
        i += 1;
        sent.push(tokio::spawn(call(i)));
    }
    sent
}

/// Runs `call` `requests` times from `concurrency` tasks; prints the figures.
async fn drive<F, Fut>(requests: usize, concurrency: usize, call: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = tokio::spawn({
        let next = next.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let sent = next.load(Ordering::Relaxed).min(requests);
                eprint!("\r    {sent}/{requests} requests");
            }
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, call) = (next.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                if call().await {
                    lat.push(t.elapsed().as_secs_f64() * 1_000.0);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::with_capacity(requests), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    eprintln!("\r    {requests}/{requests} requests");
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    println!(
        "{}",
        json!({
            "requests": requests, "accepted": lat.len(), "errors": errors, "seconds": elapsed,
            "per_second": lat.len() as f64 / elapsed,
            "p50_ms": percentile(&lat, 0.50), "p99_ms": percentile(&lat, 0.99),
        })
    );
    Ok(())
}

/// Steady signed webhooks, optionally under a login flood, and `/readyz`
/// polled every 200 ms; prints the webhooks' latency and errors, the flood's
/// answers by status, and how often `/readyz` was not 200.
async fn abuse() -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let api = arg("--api", "http://127.0.0.1:8080");
    let seconds: f64 = arg("--seconds", "20").parse()?;
    let rate: f64 = arg("--rate", "50").parse()?;
    let flood: usize = arg("--flood", "0").parse()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (merchant, _) = merchant_with_offer(&client, &api, &format!("abuse-{run}"), false).await?;
    let mid = merchant["id"].as_str().unwrap_or_default().to_owned();
    let secret = WebhookSecret::parse(merchant["webhook_secret"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("no webhook secret"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);

    // The flood: its own connections, as many clients as asked, full speed.
    let mut flooders = Vec::new();
    for _ in 0..flood {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!("{api}/v1/auth/login");
        flooders.push(tokio::spawn(async move {
            let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                let email = format!("{}@flood.example", uuid::Uuid::new_v4().simple());
                let status = match client
                    .post(&url)
                    .json(&json!({"email": email, "password": "password-123"}))
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "transport".to_owned(),
                };
                *by_status.entry(status).or_default() += 1;
            }
            by_status
        }));
    }
    let readyz = tokio::spawn({
        let (client, url) = (client.clone(), format!("{api}/readyz"));
        async move {
            let (mut checks, mut failures) = (0u64, 0u64);
            while Instant::now() < deadline {
                checks += 1;
                let ok = matches!(client.get(&url).timeout(Duration::from_secs(5)).send().await,
                    Ok(r) if r.status().as_u16() == 200);
                if !ok {
                    failures += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (checks, failures)
        }
    });
    // Webhooks at a steady rate, each on its own task (open loop: a slow
    // answer does not slow the sending).
    let url = Arc::new(format!("{api}/v1/webhooks/{mid}/purchases"));
    let sent = paced(rate, deadline, |i| {
        let (client, url, secret, run) = (client.clone(), url.clone(), secret.clone(), run.clone());
        async move {
            let body = serde_json::to_vec(&json!({
                "order_id": format!("{run}-{i}"), "amount_minor": 1_000, "currency": "EUR",
                "purchased_at": chrono::Utc::now().to_rfc3339(),
            }))
            .expect("json");
            let id = format!("msg_{run}_{i}");
            let ts = chrono::Utc::now().timestamp();
            let sig = secret.sign(&id, ts, &body);
            let t = Instant::now();
            let ok = matches!(client.post(url.as_str()).header("content-type", "application/json")
                .header("webhook-id", &id).header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig).body(body).send().await,
                Ok(r) if r.status().as_u16() == 202);
            (ok, t.elapsed().as_secs_f64() * 1_000.0)
        }
    })
    .await;
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    for t in sent {
        let (ok, ms) = t.await?;
        if ok {
            lat.push(ms);
        } else {
            errors += 1;
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let mut flood_by_status: BTreeMap<String, u64> = BTreeMap::new();
    for f in flooders {
        for (k, v) in f.await? {
            *flood_by_status.entry(k).or_default() += v;
        }
    }
    let flood_requests: u64 = flood_by_status.values().sum();
    let (readyz_checks, readyz_failures) = readyz.await?;
    println!(
        "{}",
        json!({
            "flood_clients": flood, "seconds": seconds, "webhook_rate": rate,
            "webhooks": lat.len() as u64 + errors, "webhook_errors": errors,
            "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
            "flood_requests": flood_requests, "flood_per_second": flood_requests as f64 / seconds,
            "flood_by_status": flood_by_status,
            "readyz_checks": readyz_checks, "readyz_failures": readyz_failures,
        })
    );
    Ok(())
}

/// A shopper with `--rewards` rewards (seeded in SQL), whose statistics are
/// then read `--requests` times.
async fn stats() -> anyhow::Result<()> {
    use diesel_async::{
        AsyncConnection, AsyncPgConnection, RunQueryDsl,
        pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool},
    };
    let api = arg("--api", "http://127.0.0.1:8080");
    let requests: usize = arg("--requests", "4000").parse()?;
    let concurrency: usize = arg("--concurrency", "32").parse()?;
    let rewards: i64 = arg("--rewards", "1000").parse()?;
    let database = arg("--database-url", "");
    let computed = std::env::args().any(|a| a == "--computed");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (m, offer) = merchant_with_offer(&client, &api, &format!("stats-{run}"), false).await?;
    let (mid, oid) = (
        m["id"].as_str().unwrap_or_default(),
        offer["id"].as_str().unwrap_or_default(),
    );
    let (user, auth) = shopper(&client, &api, &format!("stats-{run}@example.com")).await?;
    let uid = user["id"].as_str().unwrap_or_default().to_owned();

    let mut conn = AsyncPgConnection::establish(&database).await?;
    diesel::sql_query(format!(
        "INSERT INTO purchases (id, merchant_id, order_id, amount_minor, currency, status, purchased_at,
                                user_id, attribute_after, rewards_processed_at)
         SELECT gen_random_uuid(), '{mid}', '{run}-' || g, 10000 + g, 'EUR', 'attributed',
                now() - (g % 90) * interval '1 day', '{uid}', now(), now()
           FROM generate_series(1, {rewards}) g"
    ))
    .execute(&mut conn)
    .await?;
    diesel::sql_query(format!(
        "INSERT INTO rewards (id, purchase_id, attribution_seq, user_id, offer_id, amount_minor, currency, status, hold_until)
         SELECT gen_random_uuid(), id, 1, user_id, '{oid}', amount_minor / 20, 'EUR', 'pending',
                now() + interval '30 days'
           FROM purchases WHERE user_id = '{uid}'"
    ))
    .execute(&mut conn)
    .await?;
    let user_id: clicknback_core::ids::UserId = uid.parse()?;
    let cache = clicknback_core::cache::Cache::off();
    clicknback_core::services::stats::recompute(&mut conn, &cache, user_id).await?;

    if computed {
        let pool: Pool<AsyncPgConnection> =
            Pool::builder(AsyncDieselConnectionManager::new(database))
                .max_size(concurrency)
                .build()?;
        return drive(requests, concurrency, move || {
            let pool = pool.clone();
            async move {
                match pool.get().await {
                    Ok(mut c) => clicknback_core::services::stats::compute(&mut c, user_id)
                        .await
                        .is_ok_and(|s| s.data.iter().any(|e| e.count > 0)),
                    Err(_) => false,
                }
            }
        })
        .await;
    }
    let url = Arc::new(format!("{api}/v1/me/stats"));
    let auth = Arc::new(auth);
    drive(requests, concurrency, move || {
        let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
        async move {
            matches!(client.get(url.as_str()).header("authorization", auth.as_str()).send().await,
                Ok(r) if r.status().is_success())
        }
    })
    .await
}

/// The sweeper's query (`Purchase::due_for_attribution`, batch 100) timed at
/// each table size. The table is filled the way production fills it: almost
/// every purchase processed long ago, a thousand still waiting (half of them
/// due). At each size the same query also runs once with its partial index
/// dropped inside a rolled-back transaction, to show what the index buys.
async fn sweeper() -> anyhow::Result<()> {
    use clicknback_core::{models::purchase::Purchase, schema::purchases};
    use diesel::{QueryDsl, pg::Pg};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let database = arg("--database-url", "");
    let runs: usize = arg("--runs", "25").parse::<usize>()?.max(1);
    let sizes: Vec<i64> = arg("--sizes", "10000,1000000")
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let mut conn = AsyncPgConnection::establish(&database).await?;
    let merchant = uuid::Uuid::new_v4();
    diesel::sql_query(format!(
        "INSERT INTO merchants (id, name, status, publishable_key, webhook_secret_encrypted)
         VALUES ('{merchant}', 'sweeper bench', 'active', 'pk_bench_{}', '\\x00')",
        merchant.simple()
    ))
    .execute(&mut conn)
    .await?;
    // A thousand purchases waiting for attribution, half of them due.
    diesel::sql_query(format!(
        "INSERT INTO purchases (id, merchant_id, order_id, amount_minor, currency, status, purchased_at, attribute_after)
         SELECT gen_random_uuid(), '{merchant}', 'waiting-' || g, 1000, 'EUR', 'received', now(),
                now() + (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END) * (g * interval '1 second')
           FROM generate_series(1, 1000) g"
    ))
    .execute(&mut conn)
    .await?;
    let query = || {
        Purchase::due_for_attribution(chrono::Utc::now() - chrono::Duration::seconds(30))
            .select(purchases::id)
            .limit(100)
    };
    let mut filled: i64 = 1000;
    let mut out = Vec::new();
    for size in sizes {
        let mut left = size - filled;
        while left > 0 {
            let chunk = left.min(100_000);
            diesel::sql_query(format!(
                "INSERT INTO purchases (id, merchant_id, order_id, amount_minor, currency, status, purchased_at,
                                        attribute_after, rewards_processed_at, created_at)
                 SELECT gen_random_uuid(), '{merchant}', 'done-{filled}-' || g, 1000 + g % 5000, 'EUR',
                        CASE WHEN g % 10 = 0 THEN 'unattributed' ELSE 'confirmed' END,
                        now() - interval '40 days', now() - interval '40 days',
                        now() - interval '40 days', now() - interval '40 days'
                   FROM generate_series(1, {chunk}) g"
            ))
            .execute(&mut conn)
            .await?;
            filled += chunk;
            left -= chunk;
            eprintln!("    sweeper: {filled}/{size} purchases in the table");
        }
        diesel::sql_query("ANALYZE purchases")
            .execute(&mut conn)
            .await?;
        let sql = diesel::debug_query::<Pg, _>(&query()).to_string();
        #[derive(diesel::QueryableByName)]
        struct Plan {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let plan: Vec<Plan> = diesel::sql_query(format!("EXPLAIN {}", inline_binds(&sql)))
            .load(&mut conn)
            .await?;
        let uses_index = plan
            .iter()
            .any(|p| p.line.contains("purchases_due_attribution_idx"));
        let mut ms = Vec::with_capacity(runs);
        let mut found = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let ids: Vec<uuid::Uuid> = query().load(&mut conn).await?;
            ms.push(t.elapsed().as_secs_f64() * 1_000.0);
            found = ids.len();
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        // The same query with the index gone, rolled back afterwards.
        diesel::sql_query("BEGIN").execute(&mut conn).await?;
        diesel::sql_query("DROP INDEX purchases_due_attribution_idx")
            .execute(&mut conn)
            .await?;
        let mut bare = Vec::new();
        for _ in 0..runs.min(5) {
            let t = Instant::now();
            let _: Vec<uuid::Uuid> = query().load(&mut conn).await?;
            bare.push(t.elapsed().as_secs_f64() * 1_000.0);
        }
        bare.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let without_index = percentile(&bare, 0.5);
        diesel::sql_query("ROLLBACK").execute(&mut conn).await?;
        out.push(json!({
            "purchases": size, "batch": found, "runs": runs, "uses_index": uses_index,
            "median_ms": percentile(&ms, 0.5), "min_ms": ms[0], "max_ms": ms[ms.len() - 1],
            "without_index_ms": without_index,
        }));
    }
    println!("{}", json!({ "sizes": out }));
    Ok(())
}

/// The ledger reconciliation timed at growing ledger sizes (see the module doc).
async fn reconcile() -> anyhow::Result<()> {
    use clicknback_core::{
        models::user::Role,
        money::{Currency, Money},
        services::{
            ledger::{self, AccountKind, AccountRef, Transfer},
            users,
        },
    };
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let database = arg("--database-url", "");
    let runs: usize = arg("--runs", "5").parse::<usize>()?.max(1);
    let sizes: Vec<i64> = arg("--sizes", "100000,10000000")
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let mut conn = AsyncPgConnection::establish(&database).await?;
    let eur = Currency::parse("EUR")?;
    let user = users::create(
        &mut conn,
        "ledger-bench@example.com",
        "password-123",
        Role::User,
    )
    .await?
    .id;
    // One credit through the ledger creates both accounts.
    ledger::post(
        &mut conn,
        &Transfer {
            id: "bench:first".into(),
            from: AccountRef::platform(AccountKind::CashbackExpense),
            to: AccountRef::user(user, AccountKind::Pending),
            amount: Money::new(1, eur)?,
            kind: "bench",
            user_id: Some(user),
            purchase_id: None,
            reward_id: None,
            payout_id: None,
        },
    )
    .await?;
    // Transfers between the two accounts the first credit used, their
    // balances moved in the same statement's transaction.
    let grow = |from: i64, n: i64| {
        format!(
            "WITH d AS (SELECT debit_account_id AS debit, credit_account_id AS credit
                          FROM ledger_transfers WHERE id = 'bench:first'),
                  ins AS (INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount_minor, currency, kind, user_id)
                          SELECT 'bench:' || ({from} + g), d.debit, d.credit, 1 + g % 7, 'EUR', 'bench', '{user}'
                            FROM d, generate_series(1, {n}) g
                          RETURNING debit_account_id, credit_account_id, amount_minor),
                  s AS (SELECT debit_account_id AS debit, credit_account_id AS credit, sum(amount_minor) AS total
                          FROM ins GROUP BY 1, 2)
             UPDATE ledger_accounts a SET balance_minor = a.balance_minor
                    + CASE WHEN a.id = s.credit THEN s.total ELSE -s.total END
               FROM s WHERE a.id IN (s.debit, s.credit)"
        )
    };
    let mut filled: i64 = 1;
    let mut out = Vec::new();
    for size in sizes {
        let started = Instant::now();
        while filled < size {
            let chunk = (size - filled).min(1_000_000);
            diesel::sql_query(grow(filled, chunk))
                .execute(&mut conn)
                .await?;
            filled += chunk;
            eprintln!("    reconcile: {filled}/{size} transfers in the ledger");
        }
        let generate_s = started.elapsed().as_secs_f64();
        diesel::sql_query("VACUUM ANALYZE ledger_transfers")
            .execute(&mut conn)
            .await?;
        let t = Instant::now();
        let full = ledger::reconcile_all(&mut conn).await?;
        let full_ms = t.elapsed().as_secs_f64() * 1_000.0;
        anyhow::ensure!(full.is_empty(), "the bench ledger is broken: {full:?}");
        // Verifies everything once and takes the point.
        let t = Instant::now();
        ledger::reconcile(&mut conn).await?;
        let first_ms = t.elapsed().as_secs_f64() * 1_000.0;
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            diesel::sql_query(grow(filled, 1_000))
                .execute(&mut conn)
                .await?;
            filled += 1_000;
            let t = Instant::now();
            let breaches = ledger::reconcile(&mut conn).await?;
            ms.push(t.elapsed().as_secs_f64() * 1_000.0);
            anyhow::ensure!(breaches.is_empty(), "breaches: {breaches:?}");
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        out.push(json!({
            "transfers": size, "generate_s": generate_s, "full_ms": full_ms,
            "first_incremental_ms": first_ms, "runs": runs,
            "incremental_median_ms": percentile(&ms, 0.5), "incremental_min_ms": ms[0],
            "incremental_max_ms": ms[ms.len() - 1],
        }));
    }
    println!("{}", json!({ "sizes": out }));
    Ok(())
}

/// `debug_query` prints binds after the statement (`-- binds: [..]`); EXPLAIN
/// needs them in place.
fn inline_binds(debug: &str) -> String {
    let (sql, binds) = debug.split_once(" -- binds: ").unwrap_or((debug, "[]"));
    let binds = binds.trim().trim_start_matches('[').trim_end_matches(']');
    let values: Vec<String> = binds
        .split(", ")
        .filter(|b| !b.is_empty())
        .map(|b| {
            let b = b.trim_matches('"');
            if b.parse::<i64>().is_ok() {
                b.to_owned()
            } else {
                format!("'{b}'")
            }
        })
        .collect();
    let mut out = sql.to_owned();
    for (i, v) in values.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), v);
    }
    out
}
