#!/usr/bin/env bash
# Benchmarks: ./scripts/bench.sh [webhooks] [drain] [backlog] (default: all).
# Each figure is the median of BENCH_RUNS runs (default 3) with its min–max;
# results are printed as one table and written as JSON under bench-results/
# so a later run can be compared.
#
#   webhooks  the signed webhook endpoint under concurrent load (purchases/s,
#             p50/p99), beside the same SQL statements run directly by pgbench.
#   drain     20,000 small jobs drained by one worker (jobs/s, peak memory),
#             beside raw Redis push/pop throughput.
#   backlog   100,000 due jobs plus 20,000 failing once, retries due together.
#   e2e       purchases ingested with ATTRIBUTION_DELAY_SECS=0 until all are
#             credited by a worker (purchases/s, p50/p99 from ingestion to credit).
#   hotpaths  the webhook endpoint with the rate limiter and caches on vs off,
#             and GET /v1/me/stats from the cache vs the stored rows vs
#             computed from 1,000 rewards on every request.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECTIONS="${*:-webhooks drain backlog e2e hotpaths}"
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
RUNS="${BENCH_RUNS:-3}"
REQUESTS="${BENCH_REQUESTS:-4000}"
CONCURRENCY="${BENCH_CONCURRENCY:-32}"
PORT="${BENCH_API_PORT:-18080}"
DB="clicknback_bench"
OUT_DIR="$ROOT/bench-results"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"

ensure_cargo
ensure_postgres
ensure_redis

api_pid=""
cleanup() {
  [ -n "$api_pid" ] && kill -TERM "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log "building release binaries"
cargo build --release --locked -q -p clicknback-api -p clicknback-worker
cargo build --release --locked -q -p clicknback-tests --bin loadgen
BIN="$ROOT/target/release"

log "fresh benchmark database $DB"
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null
DB_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB"

export APP_ENV=development DATABASE_URL="$DB_URL" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
  REDIS_NAMESPACE="bench$$" API_ADDR="127.0.0.1:$PORT" RUST_LOG=warn DATABASE_POOL_SIZE=32 \
  WEBHOOK_RATE_LIMIT_PER_MINUTE=10000000   # counted on every request, never reached
"$BIN/clicknback-api" migrate >/dev/null
CLICKNBACK_ADMIN_PASSWORD=bench-password "$BIN/clicknback-api" create-admin --email bench@example.com >/dev/null

source "$ROOT/bench/drain.sh"
touch "$WORK/api.jsonl" "$WORK/sql.jsonl" "$WORK/drain.jsonl" "$WORK/e2e.jsonl" \
  "$WORK/hot_on.jsonl" "$WORK/hot_off.jsonl" "$WORK/stats_cache.jsonl" "$WORK/stats_table.jsonl" \
  "$WORK/stats_computed.jsonl"
echo '{}' >"$WORK/backlog.json"
want drain && bench_drain
want backlog && bench_backlog

if want webhooks; then
"$BIN/clicknback-api" serve >"$WORK/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

for i in $(seq 1 "$RUNS"); do
  log "webhooks via the api: run $i/$RUNS ($REQUESTS requests, concurrency $CONCURRENCY)"
  "$BIN/loadgen" webhooks --api "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
    --admin-email bench@example.com --admin-password bench-password >>"$WORK/api.jsonl"
done

MID="$(psql "$DB_URL" -tAc 'SELECT id FROM merchants LIMIT 1')"
PER_CLIENT=$(( REQUESTS / CONCURRENCY ))
for i in $(seq 1 "$RUNS"); do
  log "same statements via pgbench: run $i/$RUNS"
  rm -f "$WORK"/lat.*
  start=$(date +%s.%N)
  pgbench -n -f bench/ingest.sql -D mid="'$MID'" -c "$CONCURRENCY" -j 2 -t "$PER_CLIENT" \
    -l --log-prefix="$WORK/lat" "$DB_URL" >"$WORK/pgbench.out" 2>&1
  end=$(date +%s.%N)
  cat "$WORK"/lat.* | python3 -c '
import sys, json
lat = sorted(int(l.split()[2]) / 1000.0 for l in sys.stdin if l.strip())
n = len(lat); secs = float(sys.argv[2]) - float(sys.argv[1])
pick = lambda p: lat[round((n - 1) * p)] if n else 0
print(json.dumps({"accepted": n, "seconds": secs, "per_second": n / secs, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}))
' "$start" "$end" >>"$WORK/sql.jsonl"
done
fi

if want e2e; then
  E2E_PORT=$(( PORT + 1 ))
  ATTRIBUTION_DELAY_SECS=0 API_ADDR="127.0.0.1:$E2E_PORT" "$BIN/clicknback-api" serve >"$WORK/api-e2e.log" 2>&1 &
  e2e_api=$!
  WORKER_ADDR="127.0.0.1:0" RUST_LOG=error SMTP_URL="smtp://127.0.0.1:9" QUEUE_CONCURRENCY_ATTRIBUTION=16 \
    "$BIN/clicknback-worker" run >"$WORK/worker-e2e.log" 2>&1 &
  e2e_worker=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$E2E_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  for i in $(seq 1 "$RUNS"); do
    log "end to end: run $i/$RUNS (${E2E_PURCHASES:-1000} purchases, attribution delay 0)"
    "$BIN/loadgen" e2e --api "http://127.0.0.1:$E2E_PORT" --requests "${E2E_PURCHASES:-1000}" --concurrency 16 \
      --database-url "$DB_URL" --admin-email bench@example.com --admin-password bench-password >>"$WORK/e2e.jsonl"
  done
  kill -TERM "$e2e_api" "$e2e_worker" 2>/dev/null; wait "$e2e_api" "$e2e_worker" 2>/dev/null || true
fi

if want hotpaths; then
  ON_PORT=$(( PORT + 2 )); OFF_PORT=$(( PORT + 3 ))
  API_ADDR="127.0.0.1:$ON_PORT" "$BIN/clicknback-api" serve >"$WORK/api-on.log" 2>&1 &
  on_api=$!
  RATE_LIMITS_ENABLED=false CACHE_ENABLED=false API_ADDR="127.0.0.1:$OFF_PORT" \
    "$BIN/clicknback-api" serve >"$WORK/api-off.log" 2>&1 &
  off_api=$!
  for p in "$ON_PORT" "$OFF_PORT"; do
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  ADMIN=(--admin-email bench@example.com --admin-password bench-password)
  for i in $(seq 1 "$RUNS"); do
    log "hot paths: webhooks with limiter and caches on, run $i/$RUNS"
    "$BIN/loadgen" webhooks --api "http://127.0.0.1:$ON_PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY" "${ADMIN[@]}" >>"$WORK/hot_on.jsonl"
    log "hot paths: webhooks with limiter and caches off, run $i/$RUNS"
    "$BIN/loadgen" webhooks --api "http://127.0.0.1:$OFF_PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY" "${ADMIN[@]}" >>"$WORK/hot_off.jsonl"
    log "hot paths: /v1/me/stats from the cache, from the stored rows, computed; run $i/$RUNS"
    STATS=(--requests "$REQUESTS" --concurrency "$CONCURRENCY" --rewards 1000 --database-url "$DB_URL" "${ADMIN[@]}")
    "$BIN/loadgen" stats --api "http://127.0.0.1:$ON_PORT" "${STATS[@]}" >>"$WORK/stats_cache.jsonl"
    "$BIN/loadgen" stats --api "http://127.0.0.1:$OFF_PORT" "${STATS[@]}" >>"$WORK/stats_table.jsonl"
    "$BIN/loadgen" stats --api "http://127.0.0.1:$OFF_PORT" "${STATS[@]}" --computed >>"$WORK/stats_computed.jsonl"
  done
  kill -TERM "$on_api" "$off_api" 2>/dev/null; wait "$on_api" "$off_api" 2>/dev/null || true
fi

python3 "$ROOT/bench/report.py" "$WORK" "$OUT_DIR/bench-$STAMP.json" "$RUNS" "$REQUESTS" "$CONCURRENCY"
