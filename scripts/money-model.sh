#!/usr/bin/env bash
# The model-based test of the money path, long: ./scripts/money-model.sh [CASES]
# Against the release binaries:                 ./scripts/money-model.sh --binaries [CASES]
#
# Generates CASES sequences (default 2000; MONEY_MODEL_CASES works too) of
# clicks, identifies, checkout confirmations, webhooks, merchant decisions,
# reviews, ended holds, payouts and provider answers, with faults of the job
# system, drives them through the api in-process and the jobs as the worker
# runs them on real PostgreSQL and Redis, and compares every wallet and
# purchase status with the reference model (docs/MONEY-MODEL.md). Release
# build, so more sequences fit in the time.
#
# With --binaries (default 200 sequences) the api and the worker are the
# release clicknback-api and clicknback-worker as child processes, events go
# over HTTP, and the faults are real: the worker SIGKILLed or SIGTERMed at a
# random moment after a step's jobs are enqueued and a new one started, jobs
# deleted from Redis after the relay sent them, the queues' keys deleted.
#
# Environment: MONEY_MODEL_EXTRA_STEPS (default 16 here: events besides the
# orders' own per sequence), PROPTEST_MAX_SHRINK_ITERS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_cargo
ensure_postgres
ensure_redis
export TEST_DATABASE_URL="$PG_ADMIN_URL"
export TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
ensure_aiosmtpd

binaries=""
if [ "${1:-}" = "--binaries" ]; then binaries=1; shift; fi
export MONEY_MODEL_CASES="${1:-${MONEY_MODEL_CASES:-${binaries:+200}}}"
export MONEY_MODEL_CASES="${MONEY_MODEL_CASES:-2000}"
export MONEY_MODEL_EXTRA_STEPS="${MONEY_MODEL_EXTRA_STEPS:-16}"
if [ -n "$binaries" ]; then
  log "building the release binaries"
  cargo build --release -p clicknback-api -p clicknback-worker
  log "money model against the binaries: $MONEY_MODEL_CASES sequences, up to $MONEY_MODEL_EXTRA_STEPS extra steps each"
  exec cargo test --release -p clicknback-tests --test money_model money_converges_against_the_binaries \
    -- --ignored --exact --nocapture
fi
log "money model: $MONEY_MODEL_CASES sequences, up to $MONEY_MODEL_EXTRA_STEPS extra steps each"
cargo test --release -p clicknback-tests --test money_model money_converges_to -- --nocapture
