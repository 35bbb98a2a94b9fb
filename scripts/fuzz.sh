#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API against its own OpenAPI description,
# with schemathesis: ./scripts/fuzz.sh [--record]   (or: make fuzz)
#
# Builds the release api, starts it on a free loopback port against a fresh
# database (clicknback_fuzz) and its own Redis key namespace, creates an admin,
# a shopper and two merchants, then lets schemathesis generate valid and
# invalid requests for every operation for FUZZ_SECONDS (default 240) and check
# every response: no 5xx, status codes, content types, headers and bodies as
# documented, invalid input refused, authentication not ignored, methods not
# described answered with 405. A hook signs webhook requests with the merchant's
# secret (when schemathesis sends a signature at all) and often points ids at
# real merchants, offers and orders, so the fuzzer gets past 401 and 404 into
# the validation and business rules.
#
# It prints a summary (requests by status from the api's own /metrics, 5xx,
# failures by check) and writes it with the schemathesis reports under
# .local/fuzz-results/<time>/; --record also copies it to docs/fuzz/SUMMARY.md.
# Exit status 1 when a 5xx or a check failure was seen.
#
# Environment: FUZZ_SECONDS, FUZZ_WORKERS (default 2), FUZZ_SEED, FUZZ_PORT
# (default: a free port), FUZZ_BIN (a prebuilt clicknback-api; skips the build),
# FUZZ_ARGS (more schemathesis arguments, e.g. --include-path-regex ^/v1/webhooks),
# FUZZ_HOOK_DEBUG (a file the hook appends every signed request and path to),
# SCHEMATHESIS_VERSION (default 4.32.5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RECORD=""
for arg in "$@"; do
  case "$arg" in
    --record) RECORD=1 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

SECONDS_BUDGET="${FUZZ_SECONDS:-240}"
WORKERS="${FUZZ_WORKERS:-2}"
SEED="${FUZZ_SEED:-$RANDOM$RANDOM}"
ST_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
DB="clicknback_fuzz"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$LOCAL/fuzz-results/$STAMP"
VENV="$LOCAL/fuzz-venv"
mkdir -p "$OUT"

ensure_cargo
ensure_postgres
ensure_redis
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv

# A Python >= 3.12 when one is installed: 3.11's parser is not thread-safe,
# which schemathesis' parallel workers trip over now and then.
PYTHON=python3
for candidate in python3.13 python3.12 \
  "$(command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)"/versions/3.1[2-9]*/bin/python3 2>/dev/null | tail -1)"; do
  if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
    PYTHON="$candidate"; break
  fi
done
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $ST_VERSION\$" \
  || [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$PY_VERSION" ]; then
  log "installing schemathesis $ST_VERSION under $VENV (Python $PY_VERSION)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; "$PYTHON" -m venv "$VENV"; }
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
ST_REPORTED="$("$VENV/bin/schemathesis" --version) on Python $PY_VERSION"

if [ -n "${FUZZ_BIN:-}" ]; then
  BIN="$FUZZ_BIN"
else
  log "building the release api"
  cargo build --release --locked -q -p clicknback-api
  BIN="$ROOT/target/release/clicknback-api"
fi

PORT="${FUZZ_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
METRICS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
NAMESPACE="fuzz$$"

log "fresh database $DB"
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null

api_pid=""
cleanup() {
  if [ -n "$api_pid" ]; then kill -TERM "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true; fi
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern "$NAMESPACE:*" 2>/dev/null \
    | xargs -r -n 500 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" del >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'log "interrupted; stopping"; exit 130' INT TERM

# Limits far above what a few minutes of fuzzing sends: the run is about
# input handling, and the limits have their own tests.
export APP_ENV=development RUST_LOG="${RUST_LOG:-warn}" \
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
  REDIS_NAMESPACE="$NAMESPACE" API_ADDR="127.0.0.1:$PORT" METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
  WEBHOOK_RATE_LIMIT_PER_MINUTE=1000000 TRACK_RATE_LIMIT_PER_MINUTE=1000000 LOGIN_MAX_FAILURES=1000 \
  LOGIN_PER_IP_PER_MINUTE=1000000 REGISTER_PER_IP_PER_HOUR=1000000 HTTP_MAX_IN_FLIGHT=100000
"$BIN" migrate >/dev/null
export FUZZ_ADMIN_EMAIL="fuzz-admin@example.com" FUZZ_ADMIN_PASSWORD="fuzz-admin-password"
CLICKNBACK_ADMIN_PASSWORD="$FUZZ_ADMIN_PASSWORD" "$BIN" create-admin --email "$FUZZ_ADMIN_EMAIL" >/dev/null

log "starting the api on $BASE (log: $OUT/api.log)"
"$BIN" serve >"$OUT/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do curl -fsS "$BASE/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$BASE/readyz" >/dev/null || die "the api did not become ready; see $OUT/api.log"

# Accounts, merchants, an offer and a reported order for the fuzzer to use.
log "creating an admin, a shopper, two merchants, an offer and an order"
"$VENV/bin/python" - "$BASE" >"$OUT/fixtures.env" <<'PY'
import base64, hashlib, hmac, json, sys, time, uuid
import requests

base = sys.argv[1]
s = requests.Session()

def ok(r, *codes):
    if r.status_code not in codes:
        sys.exit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
    return r.json() if r.content else None

def login(email, password):
    return ok(s.post(f"{base}/v1/auth/login", json={"email": email, "password": password}), 200)["access_token"]

import os
admin = login(os.environ["FUZZ_ADMIN_EMAIL"], os.environ["FUZZ_ADMIN_PASSWORD"])
auth = {"Authorization": f"Bearer {admin}"}
ok(s.post(f"{base}/v1/auth/register", json={"email": "fuzz-shopper@example.com", "password": "fuzz-shopper-password"}), 201)
shopper = login("fuzz-shopper@example.com", "fuzz-shopper-password")
hooked = ok(s.post(f"{base}/v1/admin/merchants", json={"name": "Fuzz webhooks"}, headers=auth), 201)
managed = ok(s.post(f"{base}/v1/admin/merchants", json={"name": "Fuzz admin"}, headers=auth), 201)
offer = ok(s.post(f"{base}/v1/admin/merchants/{managed['id']}/offers",
                  json={"name": "Fuzz offer", "rate_bps": 500}, headers=auth), 201)
body = json.dumps({"order_id": "fuzz-order-1", "amount_minor": 1999, "currency": "EUR",
                   "purchased_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "customer_ref": "fuzz-customer"}).encode()
mid, ts = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
key = base64.b64decode(hooked["webhook_secret"].removeprefix("whsec_"))
sig = base64.b64encode(hmac.new(key, f"{mid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
ok(s.post(f"{base}/v1/webhooks/{hooked['id']}/purchases", data=body,
          headers={"content-type": "application/json", "webhook-id": mid, "webhook-timestamp": ts,
                   "webhook-signature": f"v1,{sig}"}), 202)
for k, v in {"FUZZ_ADMIN_TOKEN": admin, "FUZZ_USER_TOKEN": shopper,
             "FUZZ_MERCHANT_ID": hooked["id"], "FUZZ_WEBHOOK_SECRET": hooked["webhook_secret"],
             "FUZZ_PUBLISHABLE_KEY": hooked["publishable_key"], "FUZZ_ORDER_ID": "fuzz-order-1",
             "FUZZ_ADMIN_MERCHANT_ID": managed["id"], "FUZZ_OFFER_ID": offer["id"]}.items():
    print(f"export {k}='{v}'")
PY
# shellcheck disable=SC1091
source "$OUT/fixtures.env"

cat >"$OUT/fuzz_hooks.py" <<'PY'
"""Plays the merchant and the operator for schemathesis: signs webhooks and
often points path ids at real merchants, offers and orders."""
import base64, hashlib, hmac, os, time, uuid

import schemathesis
from requests.compat import json as requests_json

SECRET = base64.b64decode(os.environ["FUZZ_WEBHOOK_SECRET"].removeprefix("whsec_"))
REAL = {
    "/v1/webhooks/": {"merchant_id": os.environ["FUZZ_MERCHANT_ID"], "order_id": os.environ["FUZZ_ORDER_ID"]},
    "/v1/admin/merchants/{id}": {"id": os.environ["FUZZ_ADMIN_MERCHANT_ID"]},
    "/v1/admin/offers/{id}": {"id": os.environ["FUZZ_OFFER_ID"]},
}


def hash_tenth(v):
    return hashlib.sha256(v.encode("utf-8", "surrogatepass")).digest()[0] % 10


def _is_uuid(v):
    try:
        uuid.UUID(str(v))
        return True
    except ValueError:
        return False


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    path = context.operation.path
    for prefix, values in REAL.items():
        if not path.startswith(prefix):
            continue
        for name, value in values.items():
            generated = str(path_parameters.get(name, ""))
            # Seven times in ten, decided by the generated value (hypothesis
            # replays must see the same case), and only for a value that was
            # valid already, so that negative cases stay negative.
            if name in path_parameters and hash_tenth(generated) < 7 and (name == "order_id" or _is_uuid(generated)):
                path_parameters[name] = value
    if os.environ.get("FUZZ_HOOK_DEBUG"):
        with open(os.environ["FUZZ_HOOK_DEBUG"], "a") as f:
            f.write(f"PATH {path} {path_parameters}\n")
    return path_parameters


@schemathesis.hook
def before_call(context, case, kwargs):
    if not case.operation.path.startswith("/v1/webhooks/") or not case.headers:
        return
    headers = case.headers
    names = {k.lower(): k for k in headers}
    # No signature sent means the check is probing authentication: leave it.
    if "webhook-signature" not in names or "webhook-id" not in names:
        return
    ts_name = names.get("webhook-timestamp")
    if ts_name is None:
        return
    try:
        int(str(headers[ts_name]))
        headers[ts_name] = str(int(time.time()))
    except ValueError:
        pass
    body = case.body
    if isinstance(body, (dict, list, str, int, float, bool)) or body is None:
        raw = b"null" if body is None else requests_json.dumps(body, allow_nan=False).encode("utf-8")
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = b""
    signed = f"{headers[names['webhook-id']]}.{headers[ts_name]}.".encode() + raw
    sig = base64.b64encode(hmac.new(SECRET, signed, hashlib.sha256).digest()).decode()
    headers[names["webhook-signature"]] = f"v1,{sig}"
    if os.environ.get("FUZZ_HOOK_DEBUG"):
        with open(os.environ["FUZZ_HOOK_DEBUG"], "a") as f:
            f.write(f"{case.operation.path} {dict(headers)} {raw[:200]!r}\n")
PY

cat >"$OUT/schemathesis.toml" <<'TOML'
[auth.openapi.bearer]
bearer = "${FUZZ_USER_TOKEN}"

[auth.openapi.board_basic]
username = "${FUZZ_ADMIN_EMAIL}"
password = "${FUZZ_ADMIN_PASSWORD}"

[auth.openapi.publishable_key]
api_key = "${FUZZ_PUBLISHABLE_KEY}"

[auth.openapi.webhook_signature]
api_key = "v1,signed-by-the-hook"

# A missing If-Match is a 428 Precondition Required (RFC 6585), as documented.
[checks.missing_required_header]
expected-statuses = [400, 401, 403, 406, 415, 422, 428]

[[operations]]
include-path-regex = "^/(v1/admin|board)"
headers = { Authorization = "Bearer ${FUZZ_ADMIN_TOKEN}" }
TOML

CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,allow_header_conformance,ignored_auth,use_after_free,ensure_resource_availability"
ST_CMD=(schemathesis --config-file "$OUT/schemathesis.toml" run "$BASE/openapi.json"
  --checks "$CHECKS" --max-time "$SECONDS_BUDGET" --workers "$WORKERS" --seed "$SEED"
  --generation-allow-x00 true --request-timeout 10 --continue-on-failure
  --report junit,ndjson --report-dir "$OUT")
# shellcheck disable=SC2206
[ -n "${FUZZ_ARGS:-}" ] && ST_CMD+=(${FUZZ_ARGS})
BUILT_FROM="the release build of commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- api core 2>/dev/null || BUILT_FROM="$BUILT_FROM with local changes in api/ or core/"
if [ -n "${FUZZ_BIN:-}" ]; then BUILT_FROM="$FUZZ_BIN"; fi
log "fuzzing for ${SECONDS_BUDGET}s with $ST_REPORTED (seed $SEED)"
set +e
# From .local/fuzz-results, so that schemathesis keeps the failures it found
# (.schemathesis/) there and replays them first on the next run.
(cd "$LOCAL/fuzz-results" && PYTHONPATH="$OUT" SCHEMATHESIS_HOOKS=fuzz_hooks \
  "$VENV/bin/${ST_CMD[0]}" "${ST_CMD[@]:1}" --no-color >"$OUT/schemathesis.log" 2>&1)
st_status=$?
set -e
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/metrics.txt"

status=0
"$VENV/bin/python" - "$OUT" "$st_status" "$ST_REPORTED" "$SEED" "$SECONDS_BUDGET" "$WORKERS" "${ST_CMD[*]}" "$BUILT_FROM" <<'PY' || status=$?
import collections, pathlib, re, sys, time

out, st_status, version, seed, budget, workers, cmd, built_from = sys.argv[1:]
out = pathlib.Path(out)
by_status, by_route_5xx = collections.Counter(), collections.Counter()
for line in (out / "metrics.txt").read_text().splitlines():
    m = re.match(r'http_requests_total\{(.*)\} (\d+)', line)
    if not m:
        continue
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    n = int(m.group(2))
    by_status[labels["status"]] += n
    if labels["status"].startswith("5"):
        by_route_5xx[f'{labels["method"]} {labels["route"]}'] += n
requests_total = sum(by_status.values())
server_errors = sum(n for s, n in by_status.items() if s.startswith("5"))

log = (out / "schemathesis.log").read_text()
generated = re.search(r"(\d+) generated", log)
failures = re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", log)
phases = re.findall(r"([✅❌⏭🚫]) +(Examples|Coverage|Fuzzing|Stateful)$", log, re.M)
warnings = re.findall(r"⚠️ +([^\n]+)", log)
rel = lambda v: v.replace(str(out), ".local/fuzz-results/<run>")
command = rel(cmd).replace(cmd.split(" run ", 1)[1].split(" ", 1)[0], "<api>/openapi.json", 1)

lines = [
    "# Fuzzing the API: latest run",
    "",
    f"Command: `./scripts/fuzz.sh --record` — it runs `{command}` with the",
    "hook that signs webhooks (see the script).",
    "",
    f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; api: {built_from}",
    f"- tool: {version}; seed {seed}; a {budget} s budget; {workers} workers",
    f"- test cases generated by schemathesis: {generated.group(1) if generated else 'unknown'}",
    f"- requests answered by the api (its own `http_requests_total`, the few set-up requests included): {requests_total}",
    "- by status: " + ", ".join(f"{s} × {n}" for s, n in sorted(by_status.items())),
    f"- 5xx responses: **{server_errors}**" + (" — " + ", ".join(f"{r} ({n})" for r, n in by_route_5xx.items()) if server_errors else ""),
    "- check failures: " + (", ".join(f"{name} × {n}" for name, n in failures) if failures else "**none**"),
    "- phases: " + ", ".join(f"{name} {mark}" for mark, name in phases),
    f"- schemathesis exit status: {st_status} (0 when every check passed)",
]
if warnings:
    lines += ["- schemathesis warnings (coverage hints, not failures): " + "; ".join(w.strip() for w in warnings)]
text = "\n".join(lines) + "\n"
(out / "SUMMARY.md").write_text(text)
print(text)
sys.exit(0 if server_errors == 0 and st_status == "0" else 1)
PY
if [ -n "$RECORD" ]; then
  mkdir -p "$ROOT/docs/fuzz"
  cp "$OUT/SUMMARY.md" "$ROOT/docs/fuzz/SUMMARY.md"
  log "summary recorded in docs/fuzz/SUMMARY.md"
fi
exit "$status"
