#!/usr/bin/env bash
# Plays realistic traffic against a running ClickNBack (start it first with
# ./scripts/run.sh): a merchant with an offer, shoppers who click, buy, get
# confirmed or reversed, and ask for payouts. Watch /board, /metrics, the
# SMTP inbox and the wallets fill up. Ctrl-C stops it cleanly.
#   ./scripts/demo.sh [--shoppers N] [--purchases N]
# With --shop it walks one shopper through the demo shop in headless Chromium
# instead (installed on first use), playing the shop's server:
#   ./scripts/demo.sh --shop [--shop-screenshots DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export APP_ENV="${APP_ENV:-development}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:$PG_PORT/${CLICKNBACK_DB:-clicknback}}"
API="http://${API_ADDR:-127.0.0.1:8080}"
curl -fsS "$API/readyz" >/dev/null 2>&1 || die "ClickNBack is not answering at $API; start it with ./scripts/run.sh"

case " $* " in *" --shop "*) ensure_browser ;; esac

DEMO_ADMIN_EMAIL="${DEMO_ADMIN_EMAIL:-demo-admin@example.com}"
DEMO_ADMIN_PASSWORD="${DEMO_ADMIN_PASSWORD:-demo-admin-password}"
log "demo admin $DEMO_ADMIN_EMAIL"
CLICKNBACK_ADMIN_PASSWORD="$DEMO_ADMIN_PASSWORD" "$ROOT/target/release/clicknback-api" \
  create-admin --email "$DEMO_ADMIN_EMAIL" >/dev/null 2>&1 || true

exec python3 "$ROOT/scripts/demo.py" --api "$API" --admin-email "$DEMO_ADMIN_EMAIL" \
  --admin-password "$DEMO_ADMIN_PASSWORD" \
  --worker-metrics "http://${WORKER_ADDR:-127.0.0.1:8081}/metrics" "$@"
