"""Prints the benchmark table and writes the JSON result (medians, min-max)."""
import json, os, platform, statistics, sys

work, out, runs, requests, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def rows(name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]

def summary(rs, key):
    v = [r[key] for r in rs if key in r]
    return {"median": statistics.median(v), "min": min(v), "max": max(v)} if v else None

api, sql, drain, e2e = rows("api.jsonl"), rows("sql.jsonl"), rows("drain.jsonl"), rows("e2e.jsonl")
backlog = json.load(open(os.path.join(work, "backlog.json")))
result = {
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "runs": runs,
}
table = []
def line(label, s, unit, fmt="{:.1f}"):
    if s:
        table.append((label, f"{fmt.format(s['median'])} {unit}", f"({fmt.format(s['min'])}–{fmt.format(s['max'])})"))

if api and sql:
    result["webhooks"] = {
        "requests_per_run": requests, "concurrency": concurrency,
        "api": {k: summary(api, k) for k in ("per_second", "p50_ms", "p99_ms")},
        "sql": {k: summary(sql, k) for k in ("per_second", "p50_ms", "p99_ms")},
        "errors": sum(r.get("errors", 0) for r in api),
    }
    w = result["webhooks"]
    w["ratio_api_over_sql"] = w["api"]["per_second"]["median"] / w["sql"]["per_second"]["median"]
    line("webhook ingestion", w["api"]["per_second"], "purchases/s")
    line("webhook p50", w["api"]["p50_ms"], "ms")
    line("webhook p99", w["api"]["p99_ms"], "ms")
    line("same SQL via pgbench", w["sql"]["per_second"], "tx/s")
    line("pgbench p50", w["sql"]["p50_ms"], "ms")
    line("pgbench p99", w["sql"]["p99_ms"], "ms")
    table.append(("api / direct SQL", f"{w['ratio_api_over_sql']:.2f} x", ""))
    table.append(("failed webhook requests", str(w["errors"]), ""))
if drain:
    d = {k: summary(drain, k) for k in ("per_second", "seconds", "peak_kib", "redis_lpush", "redis_rpop")}
    d["jobs"] = drain[0]["jobs"]
    d["ratio_worker_over_redis_rpop"] = d["per_second"]["median"] / d["redis_rpop"]["median"]
    result["drain"] = d
    line(f"worker drain of {d['jobs']} jobs", d["per_second"], "jobs/s")
    line("worker peak memory", {k: v / 1024 for k, v in d["peak_kib"].items()}, "MiB")
    line("raw Redis LPUSH", d["redis_lpush"], "ops/s", "{:.0f}")
    line("raw Redis RPOP", d["redis_rpop"], "ops/s", "{:.0f}")
    table.append(("worker / raw RPOP", f"{d['ratio_worker_over_redis_rpop']:.3f} x", ""))
if backlog:
    result["backlog"] = backlog
    table.append((f"backlog {backlog['jobs']} due + {backlog['burst']} failing once",
                  f"{backlog['seconds']:.1f} s", f"{backlog['per_second']:.0f} runs/s"))
    table.append(("backlog: dead / left in outbox", f"{backlog['dead']} / {backlog['left_in_outbox']}", ""))
    table.append(("backlog worker peak memory", f"{backlog['peak_kib'] / 1024:.1f} MiB", ""))

if e2e:
    e = {k: summary(e2e, k) for k in ("per_second", "p50_ms", "p99_ms", "seconds")}
    e["purchases"] = e2e[0]["purchases"]
    e["credited"] = [r["credited"] for r in e2e]
    result["e2e"] = e
    line(f"ingestion to credit, {e['purchases']} purchases", e["per_second"], "purchases/s")
    line("ingestion to credit p50", e["p50_ms"], "ms")
    line("ingestion to credit p99", e["p99_ms"], "ms")

hot_on, hot_off = rows("hot_on.jsonl"), rows("hot_off.jsonl")
if hot_on and hot_off:
    h = {"on": {k: summary(hot_on, k) for k in ("per_second", "p50_ms", "p99_ms")},
         "off": {k: summary(hot_off, k) for k in ("per_second", "p50_ms", "p99_ms")},
         "errors": sum(r.get("errors", 0) for r in hot_on + hot_off)}
    h["ratio_on_over_off"] = h["on"]["per_second"]["median"] / h["off"]["per_second"]["median"]
    result["webhooks_limiter_and_caches"] = h
    line("webhooks, limiter + caches on", h["on"]["per_second"], "purchases/s")
    line("webhooks, limiter + caches off", h["off"]["per_second"], "purchases/s")
    line("  p50 on", h["on"]["p50_ms"], "ms")
    line("  p50 off", h["off"]["p50_ms"], "ms")
    table.append(("webhooks on / off", f"{h['ratio_on_over_off']:.2f} x", ""))
stats_rows = {name: rows(f"stats_{name}.jsonl") for name in ("cache", "table", "computed")}
if all(stats_rows.values()):
    st = {name: {k: summary(rs, k) for k in ("per_second", "p50_ms", "p99_ms")} for name, rs in stats_rows.items()}
    st["ratio_cache_over_computed"] = st["cache"]["per_second"]["median"] / st["computed"]["per_second"]["median"]
    st["ratio_cache_over_table"] = st["cache"]["per_second"]["median"] / st["table"]["per_second"]["median"]
    result["stats"] = st
    line("GET /v1/me/stats from the cache", st["cache"]["per_second"], "req/s")
    line("GET /v1/me/stats from stored rows", st["table"]["per_second"], "req/s")
    line("stats computed from 1,000 rewards (SQL)", st["computed"]["per_second"], "queries/s")
    line("  p50 cache", st["cache"]["p50_ms"], "ms")
    line("  p50 computed", st["computed"]["p50_ms"], "ms")
    table.append(("stats cache / computed", f"{st['ratio_cache_over_computed']:.2f} x", ""))
    table.append(("stats cache / stored rows", f"{st['ratio_cache_over_table']:.2f} x", ""))

json.dump(result, open(out, "w"), indent=2)
print()
print(f"{'benchmark':<44} {'median':>20}  min–max")
print("-" * 84)
for label, v, r in table:
    print(f"{label:<44} {v:>20}  {r}")
print(f"\nwritten to {out}")
