#!/usr/bin/env bash
# Shared set-up for the run, test and bench commands: make sure PostgreSQL and
# Redis answer on loopback. A running server is used as it is; otherwise one is
# started from the installed binaries under .local/ (installing the Debian
# packages first when they are missing and apt-get is available).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
PG_PORT="${CLICKNBACK_PG_PORT:-5432}"
REDIS_PORT="${CLICKNBACK_REDIS_PORT:-6379}"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "need $* but apt-get is not available; install it and retry"
  [ "$(id -u)" = 0 ] || die "need $* installed (run as root to let this script install it)"
  log "installing $*"
  if [ -z "${CLICKNBACK_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    export CLICKNBACK_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# aiosmtpd, the real SMTP server the tests and the benchmark's worker send to.
ensure_aiosmtpd() {
  python3 -c 'import aiosmtpd' 2>/dev/null && return 0
  log "installing aiosmtpd (SMTP server for the tests and benchmarks)"
  python3 -m pip install -q --disable-pip-version-check aiosmtpd 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages aiosmtpd
}

# Node.js and npm, from Debian when missing (the browser tests, MailDev and
# the benchmark's peers run on them).
ensure_node() {
  { command -v node && command -v npm; } >/dev/null 2>&1 || apt_install nodejs npm
}

# Headless Chromium, node and playwright-core (tests/browser), which drive the
# board's and the demo shop's pages.
ensure_browser() {
  command -v chromium >/dev/null 2>&1 || apt_install chromium
  ensure_node
  if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
    log "installing playwright-core (browser driver)"
    (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --silent)
  fi
}

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 && return
  [ -x "$HOME/.cargo/bin/cargo" ] && { export PATH="$HOME/.cargo/bin:$PATH"; return; }
  die "cargo is not installed: install Rust with rustup (https://rustup.rs) and retry"
}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

ensure_postgres() {
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  if pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
    log "PostgreSQL is running on 127.0.0.1:$PG_PORT"
  else
    local bin
    bin="$(pg_bin)" || { apt_install postgresql; bin="$(pg_bin)"; } || die "PostgreSQL binaries not found"
    local data="$LOCAL/pg" owner=postgres
    id "$owner" >/dev/null 2>&1 || owner="$(id -un)"
    mkdir -p "$LOCAL"
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initialising a PostgreSQL cluster in $data"
      mkdir -p "$data" && chown "$owner" "$data" 2>/dev/null || true
      as_user "$owner" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (data in $data)"
    as_user "$owner" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k /tmp" start >/dev/null
  fi
  export PG_ADMIN_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

as_user() {
  local user="$1"; shift
  if [ "$(id -un)" = "$user" ]; then "$@"
  elif command -v runuser >/dev/null 2>&1; then runuser -u "$user" -- "$@"
  else su "$user" -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
}

ensure_database() {
  local db="$1"
  if ! psql "$PG_ADMIN_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    log "creating database $db"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
  fi
}

ensure_redis() {
  command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    log "Redis is running on 127.0.0.1:$REDIS_PORT"
  else
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    mkdir -p "$LOCAL/redis"
    log "starting Redis on 127.0.0.1:$REDIS_PORT (data in $LOCAL/redis)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$LOCAL/redis" \
      --daemonize yes --logfile "$LOCAL/redis/redis.log" --save "" --appendonly yes >/dev/null
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
      sleep 0.1
    done
    die "Redis did not start; see $LOCAL/redis/redis.log"
  fi
}

# A throwaway Redis Cluster on loopback: three primaries with a replica each,
# on free ports from $1 (default 7300), data under a temp dir. Prints its
# REDIS_URL (redis+cluster://…); stop_redis_cluster removes it.
start_redis_cluster() {
  local base="${1:-7300}" dir ports=() p
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
  dir="$(mktemp -d "${TMPDIR:-/tmp}/clicknback-cluster-XXXXXX")"
  for i in 0 1 2 3 4 5; do
    p=$((base + i))
    mkdir -p "$dir/$p"
    redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes --cluster-node-timeout 2000 \
      --cluster-config-file "$dir/$p/nodes.conf" --dir "$dir/$p" --appendonly yes --save "" \
      --daemonize yes --pidfile "$dir/$p.pid" --logfile "$dir/$p/redis.log" >/dev/null
    ports+=("127.0.0.1:$p")
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p "${p#*:}" ping 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${ports[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; die "redis-cli --cluster create failed"; }
  for _ in $(seq 1 100); do
    redis-cli -p "$base" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.2
  done
  CLUSTER_DIR="$dir"
  local IFS=,
  REDIS_CLUSTER_URL="redis+cluster://${ports[*]}"
}

stop_redis_cluster() {
  [ -n "${CLUSTER_DIR:-}" ] || return 0
  for f in "$CLUSTER_DIR"/*.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$CLUSTER_DIR"
  CLUSTER_DIR=""
}

# An SMTP catcher with a web inbox for development (MailDev): uses whatever
# already listens on the SMTP port, else installs MailDev under .local/.
ensure_smtp_catcher() {
  local smtp_port="${CLICKNBACK_SMTP_PORT:-1025}" web_port="${CLICKNBACK_INBOX_PORT:-1080}"
  if (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null; then
    log "an SMTP server is listening on 127.0.0.1:$smtp_port"
    return 0
  fi
  ensure_node
  if [ ! -x "$LOCAL/maildev/node_modules/.bin/maildev" ]; then
    log "installing MailDev (SMTP catcher with a web inbox) under $LOCAL/maildev"
    mkdir -p "$LOCAL/maildev"
    npm install --prefix "$LOCAL/maildev" --no-audit --no-fund --silent maildev@2 >/dev/null
  fi
  log "starting MailDev: SMTP 127.0.0.1:$smtp_port, inbox http://127.0.0.1:$web_port"
  "$LOCAL/maildev/node_modules/.bin/maildev" --ip 127.0.0.1 --smtp "$smtp_port" --web "$web_port" \
    >"$LOCAL/maildev/maildev.log" 2>&1 &
  MAILDEV_PID=$!
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && return 0
    sleep 0.1
  done
  die "MailDev did not start; see $LOCAL/maildev/maildev.log"
}
