#!/usr/bin/env bash
# The fault suite: the release binaries under steady traffic (signed purchase
# webhooks, SDK calls, merchant confirmations and reversals, admin reviews of
# flagged purchases, payouts) while workers are SIGKILLed, Redis and
# PostgreSQL restart, the SMTP server and the payout provider fail; then an
# operator's everyday events: Redis back empty, the dead set re-queued while
# Redis is down, a queue paused for minutes, rolling deploys (SIGTERM) with
# jobs outlasting the grace. Then the checks that nothing was lost, done
# twice or left stuck, and that each wallet is what the merchant and the
# admin decided. Starts its own PostgreSQL cluster, Redis, SMTP sink and
# payout provider on free loopback ports (never touches the ones on
# 5432/6379) and removes them on exit or Ctrl-C. Takes about 8 minutes on 2
# cores (the pause lasts --pause-secs, 120 by default; each extra minute of
# pause adds one to the run); writes docs/faults/REPORT.md.
#   ./scripts/faults.sh [--rate N] [--shoppers N] [--settle-timeout S] [--pause-secs S]
#                       [--recovery-secs S] [--report PATH]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_cargo
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
PG_BIN="$(pg_bin)" || { apt_install postgresql; PG_BIN="$(pg_bin)"; } || die "PostgreSQL binaries not found"
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
ensure_aiosmtpd

log "building the release binaries"
cargo build --release --locked -q -p clicknback-api -p clicknback-worker

# Python cleans up after itself; the trap is the net under it (a second
# Ctrl-C, a crash): every process it started, its PostgreSQL, its temp dir.
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/clicknback-faults-XXXXXX")"
chmod 755 "$WORKDIR"
SUITE=""
cleanup() {
  [ -n "$SUITE" ] && kill -0 "$SUITE" 2>/dev/null && { kill -INT "$SUITE" 2>/dev/null; wait "$SUITE" 2>/dev/null || true; }
  if [ -f "$WORKDIR/pids" ]; then
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$WORKDIR/pids"
  fi
  if [ -f "$WORKDIR/pg/postmaster.pid" ]; then
    kill -9 "$(head -1 "$WORKDIR/pg/postmaster.pid")" 2>/dev/null || true
  fi
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
python3 "$ROOT/tests/faults/faults.py" --pg-bin "$PG_BIN" --workdir "$WORKDIR" "$@" &
SUITE=$!
wait "$SUITE"
