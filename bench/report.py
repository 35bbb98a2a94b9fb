"""Prints the benchmark table and writes the result as JSON and Markdown
(medians with min-max). With BENCH_BASELINE=<an earlier .json>, each median is
also shown as a ratio to the same figure of that run."""
import datetime, json, os, platform, statistics, sys

work, out, runs, requests, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sections = sys.argv[6].split() if len(sys.argv) > 6 else []

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
    "taken_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "runs": runs,
    "sections": sections,
}
table = []
# (label, path into the result of a summary) for the comparison with a baseline
compared = {}
def line(label, s, unit, fmt="{:.1f}", path=None):
    if s:
        table.append((label, f"{fmt.format(s['median'])} {unit}", f"({fmt.format(s['min'])}–{fmt.format(s['max'])})"))
        if path:
            compared[label] = path

if api and sql:
    result["webhooks"] = {
        "requests_per_run": requests, "concurrency": concurrency,
        "api": {k: summary(api, k) for k in ("per_second", "p50_ms", "p99_ms")},
        "sql": {k: summary(sql, k) for k in ("per_second", "p50_ms", "p99_ms")},
        "errors": sum(r.get("errors", 0) for r in api),
    }
    w = result["webhooks"]
    w["ratio_api_over_sql"] = w["api"]["per_second"]["median"] / w["sql"]["per_second"]["median"]
    line("webhook ingestion", w["api"]["per_second"], "purchases/s", path=("webhooks", "api", "per_second"))
    line("webhook p50", w["api"]["p50_ms"], "ms", path=("webhooks", "api", "p50_ms"))
    line("webhook p99", w["api"]["p99_ms"], "ms", path=("webhooks", "api", "p99_ms"))
    line("same SQL via pgbench", w["sql"]["per_second"], "tx/s")
    line("pgbench p50", w["sql"]["p50_ms"], "ms")
    line("pgbench p99", w["sql"]["p99_ms"], "ms")
    table.append(("api / direct SQL", f"{w['ratio_api_over_sql']:.2f} x", ""))
    table.append(("failed webhook requests", str(w["errors"]), ""))
if drain:
    d = {k: summary(drain, k) for k in ("per_second", "seconds", "peak_kib", "redis_lpush", "redis_rpop",
                                        "default_per_second", "default_peak_kib", "redis_bytes_finished",
                                        "bullmq_default_per_second", "bullmq_per_second")}
    d["jobs"] = drain[0]["jobs"]
    d["ratio_worker_over_redis_rpop"] = d["per_second"]["median"] / d["redis_rpop"]["median"]
    result["drain"] = d
    line(f"worker drain of {d['jobs']} jobs, tuned settings", d["per_second"], "jobs/s", path=("drain", "per_second"))
    line(f"worker drain of {d['jobs']} jobs, default settings", d["default_per_second"], "jobs/s", path=("drain", "default_per_second"))
    if d["default_per_second"]:
        table.append(("drain default / tuned", f"{d['default_per_second']['median'] / d['per_second']['median']:.2f} x", ""))
        line("worker peak memory, default settings", {k: v / 1024 for k, v in d["default_peak_kib"].items()}, "MiB")
    if d["bullmq_per_second"]:
        c = drain[0].get("bullmq_concurrency")
        line(f"BullMQ drain of {d['jobs']} jobs, concurrency 1 (its default)", d["bullmq_default_per_second"], "jobs/s", "{:.0f}")
        line(f"BullMQ drain of {d['jobs']} jobs, concurrency {c}", d["bullmq_per_second"], "jobs/s", "{:.0f}")
        best = max(d["bullmq_default_per_second"]["median"], d["bullmq_per_second"]["median"])
        d["ratio_default_over_best_bullmq"] = d["default_per_second"]["median"] / best
        table.append(("worker default / best BullMQ, same run", f"{d['ratio_default_over_best_bullmq']:.2f} x", ""))
    if d["redis_bytes_finished"]:
        per_million = {k: v / d["jobs"] * 1_000_000 / 2**20 for k, v in d["redis_bytes_finished"].items()}
        d["redis_mib_per_million_finished"] = per_million
        line(f"Redis per million finished jobs (from {d['jobs']:,}, extrapolated)", per_million, "MiB")
    line("worker peak memory", {k: v / 1024 for k, v in d["peak_kib"].items()}, "MiB")
    line("raw Redis LPUSH", d["redis_lpush"], "ops/s", "{:.0f}")
    line("raw Redis RPOP", d["redis_rpop"], "ops/s", "{:.0f}")
    table.append(("worker / raw RPOP", f"{d['ratio_worker_over_redis_rpop']:.3f} x", ""))
cluster_drain = rows("drain_cluster.jsonl")
if cluster_drain:
    c = {k: summary(cluster_drain, k) for k in ("per_second", "seconds", "peak_kib")}
    c["jobs"] = cluster_drain[0]["jobs"]
    result["drain_cluster"] = c
    line(f"worker drain of {c['jobs']} jobs on a 3-primary Redis Cluster, tuned", c["per_second"], "jobs/s",
         path=("drain_cluster", "per_second"))
    if drain:
        table.append(("drain cluster / single Redis",
                      f"{c['per_second']['median'] / result['drain']['per_second']['median']:.2f} x", ""))
idle = json.load(open(os.path.join(work, "idle.json"))) if os.path.exists(os.path.join(work, "idle.json")) else {}
if idle:
    result["idle"] = idle
    table.append((f"idle worker CPU over {idle['idle_seconds']} s (defaults)", f"{idle['idle_cpu_percent']:.2f} %", "of one core"))
    p = sorted(idle["pickup_ms"])
    table.append((f"lone job pickup, enqueue to finished ({len(p)} jobs)", f"{statistics.median(p):.0f} ms", f"({p[0]:.0f}–{p[-1]:.0f})"))
if backlog:
    result["backlog"] = backlog
    table.append((f"backlog {backlog['jobs']} due + {backlog['burst']} failing once",
                  f"{backlog['seconds']:.1f} s", f"{backlog['per_second']:.0f} runs/s"))
    table.append(("backlog: dead / left in outbox", f"{backlog['dead']} / {backlog['left_in_outbox']}", ""))
    table.append(("backlog worker peak memory", f"{backlog['peak_kib'] / 1024:.1f} MiB", ""))

if e2e:
    e = {k: summary(e2e, k) for k in ("per_second", "p50_ms", "p99_ms", "seconds")}
    e["purchases"] = e2e[0]["purchases"]
    e["shoppers"] = e2e[0].get("shoppers", 1)
    e["credited"] = [r["credited"] for r in e2e]
    result["e2e"] = e
    line(f"ingestion to credit, {e['purchases']} purchases of {e['shoppers']} shoppers", e["per_second"], "purchases/s", path=("e2e", "per_second"))
    line("ingestion to credit p50", e["p50_ms"], "ms", path=("e2e", "p50_ms"))
    line("ingestion to credit p99", e["p99_ms"], "ms", path=("e2e", "p99_ms"))
    missing = [r["purchases"] - r["credited"] for r in e2e]
    if any(missing):
        table.append(("ingestion to credit: not credited within 600 s", " | ".join(map(str, missing)), "per run"))
    if "webhooks" in result:
        ratio = e["per_second"]["median"] / result["webhooks"]["api"]["per_second"]["median"]
        result["ratio_e2e_over_ingestion"] = ratio
        table.append(("end to end / webhook ingestion", f"{ratio:.2f} x", ""))
    steady = [r for r in e2e if "steady_rate" in r]
    if steady:
        st = {k: summary(steady, k) for k in ("steady_rate", "steady_per_second", "steady_credited_per_second",
                                              "steady_p50_ms", "steady_p99_ms", "steady_seconds")}
        st["rate_from"] = steady[0]["steady_rate_from"]
        for k in ("steady_requests", "steady_accepted", "steady_not_accepted", "steady_credited", "steady_not_credited"):
            st[k] = [r[k] for r in steady]
        result["e2e_steady"] = st
        name = "end to end at half peak" if st["rate_from"] == "half the burst" else "end to end at a steady rate"
        line(f"{name}: target rate", st["steady_rate"], "purchases/s")
        line(f"{name}: achieved rate", st["steady_per_second"], "purchases/s", path=("e2e_steady", "steady_per_second"))
        line(f"{name}: p50", st["steady_p50_ms"], "ms", path=("e2e_steady", "steady_p50_ms"))
        line(f"{name}: p99", st["steady_p99_ms"], "ms", path=("e2e_steady", "steady_p99_ms"))
        table.append((f"{name}: not accepted / not credited",
                      " | ".join(f"{a} / {c}" for a, c in zip(st["steady_not_accepted"], st["steady_not_credited"])),
                      "of " + " | ".join(map(str, st["steady_requests"])) + " sent"))

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

memory = rows("memory.jsonl")
if memory:
    result["peak_memory_kib"] = {m["process"]: m["peak_kib"] for m in memory}
    for m in memory:
        table.append((f"peak memory: {m['process']}", f"{m['peak_kib'] / 1024:.1f} MiB", ""))

sweeper = rows("sweeper.jsonl")
if sweeper:
    result["sweeper"] = sweeper[0]["sizes"]
    for size in sweeper[0]["sizes"]:
        n = size["purchases"]
        label = f"sweeper query at {n:,} purchases"
        s = {"median": size["median_ms"], "min": size["min_ms"], "max": size["max_ms"]}
        line(label, s, "ms", "{:.2f}", path=("sweeper", n))
        table.append((f"  same query without its index", f"{size['without_index_ms']:.2f} ms",
                      "index used" if size["uses_index"] else "INDEX NOT USED"))
    sizes = sweeper[0]["sizes"]
    if len(sizes) >= 2 and sizes[0]["median_ms"] > 0:
        ratio = sizes[-1]["median_ms"] / sizes[0]["median_ms"]
        result["sweeper_ratio_largest_over_smallest"] = ratio
        table.append((f"sweeper {sizes[-1]['purchases']:,} / {sizes[0]['purchases']:,} rows", f"{ratio:.2f} x", ""))
recon = rows("reconcile.jsonl")
if recon:
    result["reconcile"] = recon[0]["sizes"]
    for size in recon[0]["sizes"]:
        n = size["transfers"]
        table.append((f"ledger of {n:,} transfers generated", f"{size['generate_s']:.1f} s", "INSERT … SELECT generate_series"))
        table.append((f"  reconciliation from scratch", f"{size['full_ms']:.1f} ms", ""))
        line(f"  reconciliation since its point (1,000 new) at {n:,}",
             {"median": size["incremental_median_ms"], "min": size["incremental_min_ms"], "max": size["incremental_max_ms"]},
             "ms", "{:.2f}")
abuse = rows("abuse.jsonl")
if abuse:
    result["abuse"] = abuse
    for a in abuse:
        name = a["scenario"]
        table.append((f"abuse, {name}: webhook p99", f"{a['p99_ms']:.1f} ms", f"(p50 {a['p50_ms']:.1f})"))
        table.append((f"abuse, {name}: webhook errors", f"{a['webhook_errors']} of {a['webhooks']}", ""))
        if a["flood_clients"]:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(a["flood_by_status"].items()))
            table.append((f"abuse, {name}: logins", f"{a['flood_per_second']:.0f} /s", f"({statuses})"))
        table.append((f"abuse, {name}: /readyz not 200", f"{a['readyz_failures']} of {a['readyz_checks']}", ""))
        table.append((f"abuse, {name}: api peak memory", f"{a['peak_kib'] / 1024:.1f} MiB", ""))


def median_at(res, path):
    v = res
    if path[0] == "sweeper":
        return next((x["median_ms"] for x in res.get("sweeper", []) if x["purchases"] == path[1]), None)
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v.get("median") if isinstance(v, dict) else None


baseline = None
if os.environ.get("BENCH_BASELINE"):
    baseline = json.load(open(os.environ["BENCH_BASELINE"]))
    result["baseline"] = os.environ["BENCH_BASELINE"]

def vs(label):
    if not baseline or label not in compared:
        return ""
    old, new = median_at(baseline, compared[label]), median_at(result, compared[label])
    return f"{new / old:.2f} x" if old and new else ""

json.dump(result, open(out + ".json", "w"), indent=2)
# Columns as wide as their longest cell, so long labels keep the table aligned.
lw = max([len("benchmark")] + [len(label) for label, _, _ in table])
vw = max([len("median")] + [len(v) for _, v, _ in table])
rw = max([len("min–max")] + [len(r) for _, _, r in table])
header = f"{'benchmark':<{lw}} {'median':>{vw}}  {'min–max':<{rw}}" + ("  vs baseline" if baseline else "")
print()
print(header)
print("-" * len(header))
for label, v, r in table:
    print(f"{label:<{lw}} {v:>{vw}}  {r:<{rw}}" + (f"  {vs(label)}" if baseline else ""))

with open(out + ".md", "w") as md:
    md.write(f"Taken {result['taken_at']} on {result['machine']['cpus']} CPUs ({result['machine']['platform']}); "
             f"{runs} runs per figure, medians with min–max.\n\n")
    md.write("| benchmark | median | min–max |" + (" vs baseline |" if baseline else "") + "\n")
    md.write("| --- | ---: | --- |" + (" ---: |" if baseline else "") + "\n")
    for label, v, r in table:
        md.write(f"| {label.strip()} | {v} | {r.strip('()')} |" + (f" {vs(label)} |" if baseline else "") + "\n")
print(f"\nwritten to {out}.json and {out}.md")
