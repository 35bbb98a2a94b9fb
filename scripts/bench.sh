#!/usr/bin/env bash
# Benchmarks: ./scripts/bench.sh [webhooks] [drain] [cluster] [idle] [backlog] [e2e]
# [hotpaths] [sweeper] [reconcile] [abuse] (default: all).
# Each figure is the median of BENCH_RUNS runs (default 3) with its min–max;
# results are printed as one table and written as JSON under bench-results/
# so a later run can be compared.
#
#   webhooks  the signed webhook endpoint under concurrent load (purchases/s,
#             p50/p99), beside the same SQL statements run directly by pgbench.
#   drain     20,000 small jobs drained by one worker (jobs/s, peak memory),
#             tuned and with its defaults, beside BullMQ's drain of as many
#             (bench/peers, installed with npm) and raw Redis push/pop
#             throughput.
#   cluster   the tuned drain on a real 3-primary Redis Cluster (ports from
#             BENCH_CLUSTER_PORT, 7350), beside the single-Redis drain.
#   backlog   100,000 due jobs plus 20,000 failing once, retries due together.
#   e2e       E2E_PURCHASES (1000) purchases of E2E_SHOPPERS (10) shoppers
#             ingested at once with ATTRIBUTION_DELAY_SECS=0 until all are
#             credited by a worker sending its emails to a real SMTP sink
#             (purchases/s, p50/p99 from ingestion to credit); then, against the same api and worker, purchases at a
#             steady E2E_STEADY_RATE per second (default: half the burst's
#             measured rate) for E2E_STEADY_SECS (20; 0 skips it), measured
#             the same way once all are credited (at most E2E_STEADY_WAIT,
#             120 s, after the last one; those still missing are reported).
#   hotpaths  the webhook endpoint with the rate limiter and caches on vs off,
#             and GET /v1/me/stats from the cache vs the stored rows vs
#             computed from 1,000 rewards on every request.
#   sweeper   the sweeper's due-attribution query at 10 thousand and at 1
#             million purchases (and without its index, for comparison).
#   reconcile the hourly ledger reconciliation at ${RECONCILE_SIZES:-100000,10000000}
#             transfers: from scratch, and since its last verified point
#             with 1,000 transfers written since.
#   abuse     signed webhooks at a steady ABUSE_RATE per second (50) for
#             ABUSE_SECONDS (20), alone, then while ABUSE_FLOOD (200) clients
#             send logins of random emails from one address at full speed,
#             then the same flood with the per-address sign-in limit lifted
#             (every login reaches the hash queue): webhook p99 and errors,
#             the flood's answers, /readyz, and the api's peak memory, each on
#             an api process of its own.
# The peak memory (VmHWM) of every api and worker process is recorded.
# Ctrl-C stops every process it started and prints nothing further.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECTIONS="${*:-webhooks drain cluster idle backlog e2e hotpaths sweeper reconcile abuse}"
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

# Every process started here, stopped on exit or interruption.
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted; stopping"; exit 130' INT TERM

# Starts a release binary in the background: start NAME LOG ARGS...; sets $started.
start() {
  local name="$1" logfile="$2"; shift 2
  "$BIN/$name" "$@" >"$logfile" 2>&1 &
  started=$!
  PIDS+=("$started")
}
wait_ready() { # port
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "the api on port $1 did not become ready"
}
# Records a process's peak resident memory, then stops it: stop_recording PID LABEL.
stop_recording() {
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
  echo "{\"process\": \"$2\", \"peak_kib\": ${hwm:-0}}" >>"$WORK/memory.jsonl"
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

log "building release binaries"
cargo build --release --locked -q -p clicknback-api -p clicknback-worker
# The load generator, for the sections that drive the api or the sweeper query
# and the ledger (drain, cluster, idle and backlog need only the worker).
if want webhooks || want e2e || want hotpaths || want sweeper || want reconcile || want abuse; then
  cargo build --release --locked -q -p clicknback-tests --bin loadgen
fi
BIN="$ROOT/target/release"

export APP_ENV=development REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
  REDIS_NAMESPACE="bench$$" API_ADDR="127.0.0.1:$PORT" RUST_LOG=warn DATABASE_POOL_SIZE=32 METRICS_ADDR=off \
  WEBHOOK_RATE_LIMIT_PER_MINUTE=10000000 \
  REGISTER_PER_IP_PER_HOUR=1000000   # both counted on every request, never reached: every
                                     # e2e run registers its shoppers from one address

# A new, migrated database with the benchmark's admin: fresh_db NAME; prints its URL.
fresh_db() {
  log "fresh benchmark database $1"
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
  psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $1" >/dev/null
  local url="postgres://postgres@127.0.0.1:$PG_PORT/$1"
  DATABASE_URL="$url" "$BIN/clicknback-api" migrate >/dev/null
  DATABASE_URL="$url" CLICKNBACK_ADMIN_PASSWORD=bench-password \
    "$BIN/clicknback-api" create-admin --email bench@example.com >/dev/null
  echo "$url"
}
DB_URL="$(fresh_db "$DB")"
export DATABASE_URL="$DB_URL"

source "$ROOT/bench/drain.sh"
touch "$WORK/api.jsonl" "$WORK/sql.jsonl" "$WORK/drain.jsonl" "$WORK/e2e.jsonl" \
  "$WORK/hot_on.jsonl" "$WORK/hot_off.jsonl" "$WORK/stats_cache.jsonl" "$WORK/stats_table.jsonl" \
  "$WORK/stats_computed.jsonl" "$WORK/memory.jsonl" "$WORK/sweeper.jsonl" "$WORK/abuse.jsonl" "$WORK/reconcile.jsonl"
echo '{}' >"$WORK/backlog.json"
echo '{}' >"$WORK/idle.json"
want drain && bench_drain
want cluster && bench_drain_cluster
want idle && bench_idle
want backlog && bench_backlog

if want webhooks; then
start clicknback-api "$WORK/api.log" serve
api_pid=$started
wait_ready "$PORT"

for i in $(seq 1 "$RUNS"); do
  log "webhooks via the api: run $i/$RUNS ($REQUESTS requests, concurrency $CONCURRENCY)"
  "$BIN/loadgen" webhooks --api "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
    --admin-email bench@example.com --admin-password bench-password >>"$WORK/api.jsonl"
done
stop_recording "$api_pid" "api, webhook ingestion"

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
  # Its own database: the purchases of the webhook runs would otherwise wait
  # for attribution in front of the ones measured here.
  E2E_URL="$(fresh_db "${DB}_e2e")"
  E2E_PORT=$(( PORT + 1 ))
  DATABASE_URL="$E2E_URL" ATTRIBUTION_DELAY_SECS=0 API_ADDR="127.0.0.1:$E2E_PORT" \
    start clicknback-api "$WORK/api-e2e.log" serve
  e2e_api=$started
  # A real SMTP server that accepts and discards every message, so each
  # reward email is sent once, as with a working mail server.
  ensure_aiosmtpd
  E2E_SMTP_PORT=$(( PORT + 9 ))
  python3 -m aiosmtpd -n -l "127.0.0.1:$E2E_SMTP_PORT" -c aiosmtpd.handlers.Sink >"$WORK/smtp-e2e.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$E2E_SMTP_PORT") 2>/dev/null && break; sleep 0.1; done
  DATABASE_URL="$E2E_URL" WORKER_ADDR="127.0.0.1:0" RUST_LOG=error SMTP_URL="smtp://127.0.0.1:$E2E_SMTP_PORT" \
    QUEUE_CONCURRENCY_ATTRIBUTION=16 start clicknback-worker "$WORK/worker-e2e.log" run
  e2e_worker=$started
  wait_ready "$E2E_PORT"
  for i in $(seq 1 "$RUNS"); do
    log "end to end: run $i/$RUNS (${E2E_PURCHASES:-1000} purchases of ${E2E_SHOPPERS:-10} shoppers, attribution delay 0, then ${E2E_STEADY_SECS:-20} s at ${E2E_STEADY_RATE:-half its} purchases/s)"
    "$BIN/loadgen" e2e --api "http://127.0.0.1:$E2E_PORT" --requests "${E2E_PURCHASES:-1000}" --concurrency 16 \
      --shoppers "${E2E_SHOPPERS:-10}" --database-url "$E2E_URL" \
      --steady-secs "${E2E_STEADY_SECS:-20}" --steady-rate "${E2E_STEADY_RATE:-0}" --steady-wait "${E2E_STEADY_WAIT:-120}" \
      --admin-email bench@example.com --admin-password bench-password >>"$WORK/e2e.jsonl"
  done
  stop_recording "$e2e_api" "api, end to end"
  stop_recording "$e2e_worker" "worker, end to end"
fi

if want hotpaths; then
  ON_PORT=$(( PORT + 2 )); OFF_PORT=$(( PORT + 3 ))
  API_ADDR="127.0.0.1:$ON_PORT" start clicknback-api "$WORK/api-on.log" serve
  on_api=$started
  RATE_LIMITS_ENABLED=false CACHE_ENABLED=false API_ADDR="127.0.0.1:$OFF_PORT" \
    start clicknback-api "$WORK/api-off.log" serve
  off_api=$started
  wait_ready "$ON_PORT"; wait_ready "$OFF_PORT"
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
  stop_recording "$on_api" "api, limiter and caches on"
  stop_recording "$off_api" "api, limiter and caches off"
fi

if want sweeper; then
  SWEEP_DB="${DB}_sweeper"
  log "sweeper query: a database grown to ${SWEEPER_SIZES:-10000,1000000} purchases"
  SWEEP_URL="$(fresh_db "$SWEEP_DB")"
  "$BIN/loadgen" sweeper --database-url "$SWEEP_URL" --sizes "${SWEEPER_SIZES:-10000,1000000}" \
    --runs "${SWEEPER_RUNS:-25}" >>"$WORK/sweeper.jsonl"
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $SWEEP_DB WITH (FORCE)" >/dev/null
fi

if want reconcile; then
  RECON_DB="${DB}_reconcile"
  log "reconciliation: a ledger grown to ${RECONCILE_SIZES:-100000,10000000} transfers"
  RECON_URL="$(fresh_db "$RECON_DB")"
  "$BIN/loadgen" reconcile --database-url "$RECON_URL" --sizes "${RECONCILE_SIZES:-100000,10000000}" \
    --runs "${RECONCILE_RUNS:-5}" >>"$WORK/reconcile.jsonl"
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $RECON_DB WITH (FORCE)" >/dev/null
fi

if want abuse; then
  ABUSE_PORT=$(( PORT + 4 ))
  # abuse_run LABEL FLOOD_CLIENTS [VAR=VALUE...]: a fresh api, the load, its peak memory.
  abuse_run() {
    local label="$1" flood="$2"; shift 2
    # A namespace of its own: the limits one scenario's flood reached stay in Redis.
    ABUSE_RUN=$(( ${ABUSE_RUN:-0} + 1 ))
    (export "$@" API_ADDR="127.0.0.1:$ABUSE_PORT" REDIS_NAMESPACE="bench$$-abuse$ABUSE_RUN"
     exec "$BIN/clicknback-api" serve) >"$WORK/api-abuse.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "$ABUSE_PORT" || { cat "$WORK/api-abuse.log" >&2; exit 1; }
    log "abuse: $label (webhooks at ${ABUSE_RATE:-50}/s for ${ABUSE_SECONDS:-20} s, $flood flooding clients)"
    "$BIN/loadgen" abuse --api "http://127.0.0.1:$ABUSE_PORT" --seconds "${ABUSE_SECONDS:-20}" \
      --rate "${ABUSE_RATE:-50}" --flood "$flood" \
      --admin-email bench@example.com --admin-password bench-password >"$WORK/abuse-one.json"
    local hwm
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["scenario"] = sys.argv[2]; r["peak_kib"] = int(sys.argv[3] or 0); print(json.dumps(r))' \
      "$WORK/abuse-one.json" "$label" "$hwm" >>"$WORK/abuse.jsonl"
  }
  abuse_run "webhooks alone" 0
  abuse_run "under a login flood" "${ABUSE_FLOOD:-200}"
  abuse_run "under a login flood, per-address limit lifted" "${ABUSE_FLOOD:-200}" \
    LOGIN_PER_IP_PER_MINUTE=1000000 LOGIN_MAX_FAILURES=1000
fi

python3 "$ROOT/bench/report.py" "$WORK" "$OUT_DIR/bench-$STAMP" "$RUNS" "$REQUESTS" "$CONCURRENCY" "$SECTIONS"
