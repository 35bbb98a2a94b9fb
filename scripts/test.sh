#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (warnings are errors) and the
# whole test suite against real PostgreSQL and Redis on loopback.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_cargo
ensure_postgres
ensure_redis
export TEST_DATABASE_URL="$PG_ADMIN_URL"
export TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

# A real SMTP server for the email tests.
ensure_aiosmtpd

# Headless Chromium and playwright-core for the board's browser test.
if [ -z "${CLICKNBACK_SKIP_BROWSER:-}" ]; then
  ensure_browser
  export CLICKNBACK_BROWSER_TESTS=1
fi

# A compose tool for the `docker compose config` check (Debian's
# docker-compose; the check skips, saying so, when none can be installed).
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  (apt_install docker-compose) || log "no compose tool: the docker compose config check will skip"
fi

rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -q -- -D warnings
log "building the binaries the end-to-end tests start"
cargo build --locked --workspace --bins -q
log "tests"
status=0
cargo test --locked --workspace --no-fail-fast "$@" || status=$?

# The job, relay, rate-limit and cache tests once more, on a real Redis
# Cluster (tests/tests/cluster.rs, in the run above, starts clusters of its
# own for failover and slot checks).
if [ -z "${CLICKNBACK_SKIP_CLUSTER:-}" ] && [ "$#" -eq 0 ]; then
  log "tests on a Redis Cluster"
  start_redis_cluster "${CLICKNBACK_CLUSTER_PORT:-7300}"
  trap stop_redis_cluster EXIT
  TEST_REDIS_URL="$REDIS_CLUSTER_URL" cargo test --locked -p clicknback-tests --no-fail-fast \
    --test worker --test relay --test durability --test hot_paths --test stats_burst || status=$?
fi
exit "$status"
