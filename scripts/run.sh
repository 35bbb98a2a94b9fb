#!/usr/bin/env bash
# Runs ClickNBack on this machine: PostgreSQL and Redis on loopback (the
# running ones, or its own under .local/), migrations, then the api and the
# worker together. Ctrl-C stops both.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_cargo
ensure_postgres
ensure_redis
ensure_database "${CLICKNBACK_DB:-clicknback}"
MAILDEV_PID=""
ensure_smtp_catcher

[ -f .env ] && { set -a; source .env; set +a; }
export APP_ENV="${APP_ENV:-development}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:$PG_PORT/${CLICKNBACK_DB:-clicknback}}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
export API_ADDR="${API_ADDR:-127.0.0.1:8080}"
export WORKER_ADDR="${WORKER_ADDR:-127.0.0.1:8081}"
export SMTP_URL="${SMTP_URL:-smtp://127.0.0.1:${CLICKNBACK_SMTP_PORT:-1025}}"

log "building (release)"
cargo build --release --locked -q -p clicknback-api -p clicknback-worker
BIN="$ROOT/target/release"

log "applying migrations"
"$BIN/clicknback-api" migrate

if [ -n "${ADMIN_EMAIL:-}" ] && [ -n "${ADMIN_PASSWORD:-}" ]; then
  CLICKNBACK_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$BIN/clicknback-api" create-admin --email "$ADMIN_EMAIL" >/dev/null 2>&1 \
    || log "admin $ADMIN_EMAIL already exists"
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

[ -n "$MAILDEV_PID" ] && pids+=("$MAILDEV_PID")
"$BIN/clicknback-api" serve & pids+=($!)
"$BIN/clicknback-worker" run & pids+=($!)
log "api        http://$API_ADDR   (OpenAPI UI: /docs; metrics: http://${METRICS_ADDR:-127.0.0.1:8082}/metrics)"
log "job board  http://$API_ADDR/board   (log in with an admin's email and password)"
log "worker     http://$WORKER_ADDR/metrics"
[ -n "$MAILDEV_PID" ] && log "inbox      http://127.0.0.1:${CLICKNBACK_INBOX_PORT:-1080}"
log "press Ctrl-C to stop"
wait -n "${pids[@]}" || true
