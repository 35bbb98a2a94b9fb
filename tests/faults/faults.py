"""The fault suite: the real release binaries under steady traffic while
workers are SIGKILLed, Redis and PostgreSQL restart, and the SMTP server and
the payout provider fail; then the operator's everyday events (Redis back
empty, the dead set re-queued during that outage, a queue paused for minutes,
rolling deploys with jobs outlasting the grace); then, with everything healthy
again, the checks that nothing was lost, done twice or stuck, and that each
wallet is what the merchant and the admin decided. Run by scripts/faults.sh
(`make faults`).

Everything runs on loopback with its own PostgreSQL cluster, Redis, SMTP sink
(smtp_sink.py) and payout provider (payout_provider.py), all started here and
stopped on exit. The report is printed and written as Markdown.
"""

import argparse
import collections
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import clicknback_client  # noqa: E402

RATE_BPS = 800
AMOUNTS = [1999, 2500, 4500, 6900, 8900]
# More than five times any shopper's average: with the brand-new merchant it
# scores 0.55, at FRAUD_THRESHOLD, so the reward is flagged for review.
BIG_AMOUNT = 60000
GRACE_SECS = 5
CANARY_SLEEP_MS = 8000  # outlasts SHUTDOWN_GRACE_SECS: cut at the grace and handed back
DEPLOY_CANARIES = 5  # per SIGTERM: more than the 2 × 2 maintenance slots, so some wait in a buffer
PROVIDER_KEY = "faults-provider-key-0123456789"
ADMIN_EMAIL, ADMIN_PASSWORD = "faults-admin@example.com", "faults-admin-password"

T0 = time.time()
LOG_LINES = []
LOG_LOCK = threading.Lock()


def log(msg):
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    with LOG_LOCK:
        LOG_LINES.append(line)
        print(line, flush=True)


def utc(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, proc=None, what="process"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"{what} exited with {proc.returncode} before listening on {port}")
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


# ---------------------------------------------------------------- processes


class Stack:
    """Every process of the run, and how to break and mend each."""

    def __init__(self, args):
        self.args = args
        self.tmp = args.workdir or tempfile.mkdtemp(prefix="clicknback-faults-")
        os.chmod(self.tmp, 0o755)
        self.logs = args.logs
        os.makedirs(self.logs, exist_ok=True)
        self.procs = {}
        self.pg_port, self.redis_port = free_port(), free_port()
        self.smtp_port, self.provider_port = free_port(), free_port()
        self.api_port = free_port()
        self.worker_ports = {"A": free_port(), "B": free_port()}
        self.pg_bin = args.pg_bin
        self.pg_data = os.path.join(self.tmp, "pg")
        self.pg_sock = os.path.join(self.tmp, "pgsock")
        self.db_url = f"postgres://postgres@127.0.0.1:{self.pg_port}/clicknback"
        self.mail_record = os.path.join(self.tmp, "mail.jsonl")
        self.smtp_mode = os.path.join(self.tmp, "smtp.mode")
        self.provider_record = os.path.join(self.tmp, "provider.jsonl")
        self.provider_mode = os.path.join(self.tmp, "provider.mode")
        self.faults = []  # (epoch, what)
        self.pg_owner = "postgres" if os.geteuid() == 0 else None

    # PostgreSQL, as the `postgres` user when running as root (initdb refuses root).
    def as_pg(self, *cmd):
        cmd = list(cmd)
        if self.pg_owner:
            cmd = ["runuser", "-u", self.pg_owner, "--"] + cmd
        return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def start_postgres(self):
        for d in (self.pg_data, self.pg_sock):
            os.makedirs(d, exist_ok=True)
            if self.pg_owner:
                shutil.chown(d, self.pg_owner)
        self.as_pg(f"{self.pg_bin}/initdb", "-D", self.pg_data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.pg_ctl("start")
        subprocess.run(["psql", f"postgres://postgres@127.0.0.1:{self.pg_port}/postgres", "-qc",
                        "CREATE DATABASE clicknback"], check=True, stdout=subprocess.DEVNULL)

    def pg_ctl(self, action, *extra):
        self.as_pg(f"{self.pg_bin}/pg_ctl", "-D", self.pg_data, "-l", os.path.join(self.pg_data, "server.log"),
                   "-w", "-t", "60", *extra,
                   "-o", f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.pg_sock} -c max_connections=200",
                   action)

    def start_redis(self):
        d = os.path.join(self.tmp, "redis")
        os.makedirs(d, exist_ok=True)
        self.spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir", d,
                             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
        deadline = time.time() + 20
        while time.time() < deadline:
            r = subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"], capture_output=True, text=True)
            if "PONG" in r.stdout:
                return
            time.sleep(0.1)
        raise SystemExit("redis did not start")

    def spawn(self, name, cmd, env=None, log_name=None):
        f = open(os.path.join(self.logs, (log_name or name) + ".log"), "a")
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name] = p
        with open(os.path.join(self.tmp, "pids"), "a") as pids:  # for scripts/faults.sh's exit trap
            pids.write(f"{p.pid}\n")
        return p

    def start_smtp(self):
        p = self.spawn("smtp", [sys.executable, os.path.join(HERE, "smtp_sink.py"), "--port", str(self.smtp_port),
                                "--record", self.mail_record, "--mode-file", self.smtp_mode])
        wait_port(self.smtp_port, proc=p, what="SMTP sink")

    def start_provider(self):
        p = self.spawn("provider", [sys.executable, os.path.join(HERE, "payout_provider.py"),
                                    "--port", str(self.provider_port), "--key", PROVIDER_KEY,
                                    "--record", self.provider_record, "--mode-file", self.provider_mode,
                                    "--hang-secs", "5"])
        wait_port(self.provider_port, proc=p, what="payout provider")

    def env(self):
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "APP_ENV": "development",
            "RUST_LOG": "info",
            "DATABASE_URL": self.db_url,
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "REDIS_NAMESPACE": "faults",
            "JWT_SECRET": "faults-jwt-secret-faults-jwt-secret-0123",
            "DATA_ENCRYPTION_KEY": "ZmF1bHRzLWtleS1mYXVsdHMta2V5LWZhdWx0cy1rZXk=",
            "SMTP_URL": f"smtp://127.0.0.1:{self.smtp_port}",
            "API_ADDR": f"127.0.0.1:{self.api_port}",
            "METRICS_ADDR": "off",
            # Shoppers register all run long from this one address.
            "REGISTER_PER_IP_PER_HOUR": "100000",
            "LOGIN_PER_IP_PER_MINUTE": "100000",
            "RUN_MIGRATIONS_ON_START": "false",
            "ACCESS_TOKEN_TTL_SECS": "3600",
            "ATTRIBUTION_DELAY_SECS": "2",
            "RATE_LIMITS_ENABLED": "false",
            "FRAUD_THRESHOLD": "0.55",
            "STATS_COALESCE_SECS": "2",
            "PAYOUT_SANDBOX": "false",
            "PAYOUT_PROVIDER_URL": f"http://127.0.0.1:{self.provider_port}",
            "PAYOUT_PROVIDER_KEY": PROVIDER_KEY,
            "PAYOUT_PROVIDER_TIMEOUT_MS": "1500",
            "PAYOUT_BREAKER_FAILURES": "3",
            "PAYOUT_BREAKER_OPEN_SECS": "2",
            "PAYOUT_BREAKER_OPEN_MAX_SECS": "8",
            "PAYOUT_RECONCILE_AFTER_SECS": "5",
            "PAYOUT_MIN_AMOUNT_MINOR": "500",
            "OUTBOX_POLL_INTERVAL_MS": "100",
            "OUTBOX_MAX_BACKOFF_SECS": "3",
            "JOB_POLL_INTERVAL_MS": "100",
            "JOB_HEARTBEAT_SECS": "1",
            "JOB_MISSED_HEARTBEATS": "3",
            "SHUTDOWN_GRACE_SECS": str(GRACE_SECS),
            "JOB_RECOVERY_AFTER_SECS": str(self.args.recovery_secs),
            "SCHEDULE_SWEEP_ATTRIBUTIONS": "*/5 * * * * *",
            "SCHEDULE_RESOLVE_PAYOUTS": "*/5 * * * * *",
            "SCHEDULE_RECONCILE_LEDGER": "*/10 * * * * *",
            "JOB_RETRY_ATTRIBUTE_PURCHASE": "attempts=12,base=500ms,cap=5s,jitter=0.2",
            "JOB_RETRY_APPLY_REWARD_TRANSITION": "attempts=12,base=500ms,cap=5s,jitter=0.2",
            "JOB_RETRY_SEND_EMAIL": "attempts=15,base=1s,cap=8s,jitter=0.2",
            "JOB_RETRY_PROCESS_PAYOUT": "attempts=15,base=1s,cap=8s,jitter=0.2",
            "JOB_RETRY_RECOMPUTE_USER_STATS": "attempts=10,base=500ms,cap=5s,jitter=0.2",
            "JOB_RETRY_RUN_SCHEDULE": "attempts=5,base=500ms,cap=3s,jitter=0.2",
        }
        return e

    def bin(self, name):
        return os.path.join(self.args.bin, name)

    def migrate_and_admin(self):
        e = self.env()
        subprocess.run([self.bin("clicknback-api"), "migrate"], env=e, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        e["CLICKNBACK_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        subprocess.run([self.bin("clicknback-api"), "create-admin", "--email", ADMIN_EMAIL], env=e, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start_api(self):
        p = self.spawn("api", [self.bin("clicknback-api"), "serve"], env=self.env())
        wait_port(self.api_port, proc=p, what="clicknback-api")

    def start_worker(self, name):
        e = self.env()
        e["WORKER_ADDR"] = f"127.0.0.1:{self.worker_ports[name]}"
        self.spawn("worker-" + name, [self.bin("clicknback-worker"), "run"], env=e, log_name="worker-" + name)

    def worker_cli(self, *args):
        """One `clicknback-worker` command (canary, requeue-dead, ...): (exit code, output)."""
        r = subprocess.run([self.bin("clicknback-worker"), *args], env=self.env(), capture_output=True,
                           text=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).strip()

    def worker_log_size(self, name):
        try:
            return os.path.getsize(os.path.join(self.logs, f"worker-{name}.log"))
        except OSError:
            return 0

    def worker_log_since(self, name, offset):
        with open(os.path.join(self.logs, f"worker-{name}.log"), errors="replace") as f:
            f.seek(offset)
            return [ANSI.sub("", line) for line in f]

    def sigterm_worker(self, name):
        """A graceful stop, as a deploy does it: SIGTERM, then wait for the
        exit (SIGKILL after the grace plus 30 s). (exit code, seconds, log offset)."""
        p = self.procs.get("worker-" + name)
        offset = self.worker_log_size(name)
        if not p or p.poll() is not None:
            return None, 0.0, offset
        start = time.time()
        os.kill(p.pid, signal.SIGTERM)
        try:
            code = p.wait(GRACE_SECS + 30)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            code = "SIGKILLed: did not exit within the grace + 30 s"
        return code, time.time() - start, offset

    def kill9_worker(self, name):
        p = self.procs.get("worker-" + name)
        if p and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()

    def fault(self, what):
        self.faults.append((time.time(), what))
        log("FAULT " + what)

    def write_mode(self, path, mode):
        with open(path + ".tmp", "w") as f:
            f.write(mode)
        os.replace(path + ".tmp", path)

    def stop_smtp(self):
        p = self.procs.get("smtp")
        if p and p.poll() is None:
            p.terminate()
            p.wait(10)

    def restart_redis(self, down_secs):
        subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown"], capture_output=True)
        self.procs["redis"].wait(20)
        time.sleep(down_secs)
        self.start_redis()

    def empty_redis(self, down_secs, while_down=None):
        """Redis stopped without saving and its data directory (append-only
        file included) removed: it comes back empty. `while_down` runs in the gap."""
        subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown", "nosave"], capture_output=True)
        self.procs["redis"].wait(20)
        shutil.rmtree(os.path.join(self.tmp, "redis"), ignore_errors=True)
        start = time.time()
        if while_down:
            while_down()
        time.sleep(max(0.0, down_secs - (time.time() - start)))
        self.start_redis()
        keys = subprocess.run(["redis-cli", "-p", str(self.redis_port), "dbsize"], capture_output=True, text=True)
        return keys.stdout.strip()

    def cleanup(self):
        for name, p in list(self.procs.items()):
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(5)
                except Exception:
                    pass
        if os.path.exists(os.path.join(self.pg_data, "postmaster.pid")):
            try:
                self.pg_ctl("stop", "-m", "immediate")
            except Exception:
                pass
        try:
            shutil.copy(os.path.join(self.pg_data, "server.log"), os.path.join(self.logs, "postgres.log"))
        except OSError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sql(self, query):
        """Rows of a query as dicts (None when PostgreSQL does not answer)."""
        q = f"SELECT coalesce(json_agg(t), '[]'::json) FROM ({query}) t"
        r = subprocess.run(["psql", self.db_url, "-XtAqc", q], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def execute(self, statement):
        """One statement (an UPDATE, ...); True when PostgreSQL took it."""
        r = subprocess.run(["psql", self.db_url, "-XqAtc", statement], capture_output=True, text=True, timeout=60)
        return r.returncode == 0

    def scalar(self, query):
        rows = self.sql(query)
        if not rows:
            return None
        return next(iter(rows[0].values()))


# ---------------------------------------------------------------- traffic


class Traffic:
    """The merchant, the shoppers' browsers and the shoppers, as threads."""

    def __init__(self, stack, seed):
        self.s = stack
        self.api = f"http://127.0.0.1:{stack.api_port}"
        self.rnd = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.answers = collections.Counter()  # failed answers by status, every kind of call
        self.shoppers = []
        self.orders = {}  # order_id -> dict
        self.payouts = {}  # payout id -> dict
        self.pending_status = collections.deque()
        self.threads = []

    def call(self, method, path, body=None, token=None, headers=None, timeout=10):
        try:
            return clicknback_client.call(self.api, method, path, body, token, headers, timeout)
        except (OSError, http.client.HTTPException) as e:
            return 0, {"error": str(e)}

    def retrying(self, what, fn, ok, give_up=90):
        """Calls fn() until its status is in `ok`; retries connection errors,
        5xx, 409 in-progress and 429, as a real client would. (status, body)."""
        deadline, wait, tries = time.time() + give_up, 0.3, 0
        while True:
            status, body = fn()
            tries += 1
            if status in ok:
                if tries > 1:
                    self.bump(what + "_retried")
                return status, body
            self.bump(what + "_failed_attempts")
            with self.lock:
                self.answers[f"{status}" if status else "no answer"] += 1
            transient = status == 0 or status >= 500 or status == 429 or (
                status == 409 and isinstance(body, dict) and body.get("code") == "idempotency_request_in_progress")
            if not transient or time.time() > deadline:
                self.bump(what + "_gave_up")
                if not transient:
                    log(f"  {what}: answer {status} {json.dumps(body)[:200]}")
                return status, body
            time.sleep(wait)
            wait = min(wait * 2, 3)

    def bump(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def setup(self, shoppers):
        st, body = self.call("POST", "/v1/auth/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        if st != 200:
            raise SystemExit(f"admin login failed: {st} {body}")
        self.admin = body["access_token"]
        st, m = self.call("POST", "/v1/admin/merchants", {"name": "Faults Outdoor Store"}, self.admin)
        if st != 201:
            raise SystemExit(f"merchant: {st} {m}")
        self.mid, self.secret, self.pk = m["id"], m["webhook_secret"], m["publishable_key"]
        st, o = self.call("POST", f"/v1/admin/merchants/{self.mid}/offers",
                          {"name": "8% back", "rate_bps": RATE_BPS, "max_cashback_minor": 100000, "currency": "EUR",
                           "active": True},
                          self.admin)
        if st != 201:
            raise SystemExit(f"offer: {st} {o}")
        time.sleep(1.1)  # purchases are stamped to the second; start after the offer
        for _ in range(shoppers):
            self.new_shopper()

    def account(self, label):
        """A registered, signed-in user: (email, token, user id) or None."""
        email = f"{label}-{uuid.uuid4().hex[:6]}@example.com"
        cred = {"email": email, "password": "password-123"}
        st, _ = self.retrying("register", lambda: self.call("POST", "/v1/auth/register", cred), {201, 409})
        if st not in (201, 409):
            return None
        st, t = self.retrying("login", lambda: self.call("POST", "/v1/auth/login", cred), {200})
        if st != 200:
            return None
        st, me = self.retrying("me", lambda: self.call("GET", "/v1/me", token=t["access_token"]), {200})
        if st != 200:
            return None
        return email, t["access_token"], me["id"]

    def click(self, anon):
        st, _ = self.retrying("click", lambda: self.call("POST", "/v1/track/click",
                                                         {"anon_id": anon, "landing_url": "https://shop.example/tents"},
                                                         headers={"x-publishable-key": self.pk}), {200, 201, 202, 204})
        ok = 200 <= st < 300
        if ok:
            self.bump("click")
        return ok

    def identify(self, token, anon):
        st, _ = self.retrying("identify", lambda: self.call("POST", "/v1/track/identify", {"anon_id": anon}, token),
                              {200, 201, 202, 204})
        ok = 200 <= st < 300
        if ok:
            self.bump("identify")
        return ok

    def new_shopper(self, label="shopper", pool=True, anon=None):
        with self.lock:
            i = self.c["shopper_seq"]
            self.c["shopper_seq"] += 1
        acct = self.account(f"{label}-{i}")
        if not acct:
            return None
        email, token, user_id = acct
        anon = anon or "anon-" + uuid.uuid4().hex
        if not self.click(anon) or not self.identify(token, anon):
            return None
        kind = i % 5
        dest = ({"type": "paypal", "value": f"fail-{i}@example.com"} if kind == 0 else
                {"type": "paypal", "value": f"slow-{i}@example.com"} if kind == 1 else
                {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"})
        sh = {"i": i, "email": email, "token": token, "user_id": user_id, "anon": anon, "dest": dest, "pool": pool}
        with self.lock:
            self.shoppers.append(sh)
        self.bump("shoppers")
        return sh

    # One purchase: the merchant's webhook (retried with the same webhook-id
    # until accepted), then the checkout page's SDK confirmation.
    def new_order(self, sh, amount):
        with self.lock:
            n = self.c["purchase_attempted"]
            self.c["purchase_attempted"] += 1
        order = f"F-{n:05d}"
        rec = {"order": order, "amount": amount, "shopper": sh["i"], "accepted": False, "id": None,
               "linked": False, "decision": None, "decisions": [], "review": None, "review_tries": [],
               "at": time.time(), "token": uuid.uuid4().hex, "anon": sh["anon"]}
        with self.lock:
            self.orders[order] = rec
        return rec

    def webhook(self, rec):
        body = {"order_id": rec["order"], "amount_minor": rec["amount"], "currency": "EUR",
                "purchased_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "purchase_token": rec["token"]}
        msg = "msg_" + uuid.uuid4().hex

        def send():
            raw, h = clicknback_client.signed(self.secret, body, msg)
            return self.call("POST", f"/v1/webhooks/{self.mid}/purchases", raw, headers=h)

        st, resp = self.retrying("purchase", send, {202})
        rec["accepted"] = st == 202
        rec["id"] = resp.get("id") if st == 202 and isinstance(resp, dict) else None
        if st == 202:
            self.bump("purchase_accepted")
        return st == 202

    def sdk_confirm(self, rec):
        st, _ = self.retrying("sdk_purchase", lambda: self.call(
            "POST", "/v1/track/purchase", {"anon_id": rec["anon"], "order_id": rec["order"],
                                           "purchase_token": rec["token"]},
            headers={"x-publishable-key": self.pk}), {200, 201, 202, 204})
        ok = 200 <= st < 300
        if ok:
            self.bump("sdk_purchase")
        return ok

    # One purchase: the merchant's webhook (retried with the same webhook-id
    # until accepted), then the checkout page's SDK confirmation. Some are
    # big enough to be flagged for review; some the merchant reverses at once,
    # before attribution runs.
    def purchase(self):
        with self.lock:
            sh = self.rnd.choice([s for s in self.shoppers if s["pool"]])
            big = self.rnd.random() < 0.05
            amount = BIG_AMOUNT if big else self.rnd.choice(AMOUNTS)
            extra_click = self.rnd.random() < 0.3
            early_reversal = self.rnd.random() < (0.3 if big else 0.03)
        if extra_click:
            self.click(sh["anon"])
        rec = self.new_order(sh, amount)
        if not self.webhook(rec):
            return
        if early_reversal:
            self.status_update(rec["order"], "reversed")
            rec["early_reversal"] = True
        if self.sdk_confirm(rec):
            rec["linked"] = True
            if not early_reversal:
                with self.lock:
                    self.pending_status.append((time.time() + self.rnd.uniform(3, 10), rec["order"], None))

    def status_update(self, order, decision=None):
        rec = self.orders[order]
        if decision is None:
            decision = "reversed" if self.rnd.random() < 0.1 else "confirmed"
        body = {"status": decision, "reason": "fault suite"}
        msg = "msg_" + uuid.uuid4().hex

        def send():
            raw, h = clicknback_client.signed(self.secret, body, msg)
            return self.call("POST", f"/v1/webhooks/{self.mid}/purchases/{order}/status", raw, headers=h)

        st, _ = self.retrying("status", send, {202})
        if st == 202:
            rec["decision"] = decision
            rec["decisions"].append(decision)
            self.bump("status_" + decision)
            # A confirmed order the merchant takes back later (a return),
            # racing the shopper's payouts: more often for the shoppers whose
            # payouts the provider refuses, so that a failed payout meets an
            # open receivable.
            late = 0.3 if self.shopper_of(rec)["dest"]["value"].startswith("fail-") else 0.06
            if decision == "confirmed" and len(rec["decisions"]) == 1 and self.rnd.random() < late:
                with self.lock:
                    self.pending_status.append((time.time() + self.rnd.uniform(1, 6), order, "reversed"))
                self.bump("late_reversals_planned")

    def shopper_of(self, rec):
        return next(s for s in self.shoppers if s["i"] == rec["shopper"])

    # The admin reviewing flagged purchases: approves most, rejects some; and
    # approves the big orders the merchant reversed at once (the reversal must win).
    def review_pass(self):
        st, page = self.call("GET", "/v1/admin/purchases?status=flagged&limit=100", token=self.admin)
        if st != 200:
            return
        todo = []
        for item in page.get("data", []):
            rec = self.orders.get(item["order_id"])
            if rec is not None and rec["review"] is None:
                with self.lock:
                    verdict = "approve" if self.rnd.random() < 0.65 else "reject"
                todo.append((rec, item["purchase_id"], verdict))
        with self.lock:
            reversed_big = [r for r in self.orders.values() if r.get("early_reversal") and r["amount"] == BIG_AMOUNT
                            and r["id"] and not r["review_tries"] and time.time() - r["at"] > 4]
        todo += [(r, r["id"], "approve") for r in reversed_big]
        for rec, pid, verdict in todo:
            st, body = self.call("POST", f"/v1/admin/purchases/{pid}/{verdict}", token=self.admin)
            rec["review_tries"].append((verdict, st))
            if st == 200:
                rec["review"] = "approved" if verdict == "approve" else "rejected"
                self.bump("review_" + rec["review"])
            elif st == 409:
                self.bump("review_refused_not_flagged")
            else:
                self.bump("review_failed_attempts")

    # Scenario: the merchant's webhook and the checkout page's confirmation
    # of one order sent at the same moment, for one identified shopper.
    def together(self, n):
        sh = self.new_shopper("together", pool=False)
        if not sh:
            return None
        recs = []
        for _ in range(n):
            rec = self.new_order(sh, self.rnd.choice(AMOUNTS))
            results = {}
            ts = [threading.Thread(target=lambda: results.__setitem__("w", self.webhook(rec))),
                  threading.Thread(target=lambda: results.__setitem__("s", self.sdk_confirm(rec)))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            rec["linked"] = bool(results.get("w") and results.get("s"))
            rec["together"] = True
            recs.append(rec)
            if rec["linked"]:
                with self.lock:
                    self.pending_status.append((time.time() + self.rnd.uniform(3, 10), rec["order"], None))
        return sh, recs

    # Scenario: a shared computer: one user signs in on a browser, then
    # another on the same one (same anon id). The anon id moves to the latest
    # user; the two never share a group. The latest then buys after a click.
    def two_users(self):
        first = self.new_shopper("shared-first", pool=False)
        if not first:
            return None
        acct = self.account("shared-latest")
        if not acct:
            return None
        email, token, user_id = acct
        if not self.identify(token, first["anon"]):
            return None
        latest = {"i": None, "email": email, "token": token, "user_id": user_id, "anon": first["anon"],
                  "dest": {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"}, "pool": False}
        with self.lock:
            latest["i"] = self.c["shopper_seq"]
            self.c["shopper_seq"] += 1
            self.shoppers.append(latest)
        self.click(first["anon"])
        rec = self.new_order(latest, 4500)
        rec["shared_device"] = True
        if self.webhook(rec) and self.sdk_confirm(rec):
            rec["linked"] = True
            with self.lock:
                self.pending_status.append((time.time() + 3, rec["order"], "confirmed"))
        return first, latest, rec

    def payout(self, sh):
        st, w = self.call("GET", "/v1/me/wallet", token=sh["token"])
        if st != 200:
            return
        available = sum(e["available_minor"] for e in w.get("data", []) if e["currency"] == "EUR")
        if available < 500:
            return
        key = "faults-payout-" + uuid.uuid4().hex
        body = {"amount_minor": available, "currency": "EUR", "destination": sh["dest"]}
        st, p = self.retrying("payout", lambda: self.call("POST", "/v1/payouts", body, sh["token"],
                                                          {"idempotency-key": key}), {202})
        if st == 202:
            with self.lock:
                self.payouts[p["id"]] = {"id": p["id"], "amount": available, "shopper": sh["i"],
                                         "dest": sh["dest"]["value"]}
            self.bump("payout_requested")
        elif st == 422:
            self.bump("payout_insufficient")

    # The threads.
    def loop(self, period, fn):
        def run():
            nxt = time.time()
            while not self.stop.is_set():
                try:
                    fn()
                except Exception as e:  # a bug in the generator must not stop the run silently
                    log(f"  traffic error in {fn.__name__}: {e!r}")
                    self.bump("generator_errors")
                nxt += period
                self.stop.wait(max(0.0, nxt - time.time()))
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def statuses(self):
        while True:
            with self.lock:
                due = [x for x in self.pending_status if x[0] <= time.time()]
                if not due:
                    return
                self.pending_status.remove(due[0])
            _, order, decision = due[0]
            self.status_update(order, decision)

    def payouts_tick(self):
        with self.lock:
            if not self.shoppers:
                return
            sh = self.shoppers[self.c["payout_cursor"] % len(self.shoppers)]
            self.c["payout_cursor"] += 1
        self.payout(sh)

    def start(self, purchases_per_sec):
        per_thread = 2
        for _ in range(per_thread):
            self.loop(per_thread / purchases_per_sec, self.purchase)
        self.loop(0.2, self.statuses)
        self.loop(0.2, self.statuses)
        self.loop(1.0, self.payouts_tick)
        self.loop(15.0, self.new_shopper)
        self.loop(1.0, self.review_pass)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(120)
        # The statuses still queued are sent now (the merchant does not stop
        # confirming), late reversals included.
        while self.pending_status:
            with self.lock:
                _, order, decision = self.pending_status.popleft()
            self.status_update(order, decision)


# ---------------------------------------------------------------- reading state


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except OSError:
        pass
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")
IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RETRY = re.compile(r" job=(\w+) .*job failed; will retry error=(.*?) next_attempt=")


def worker_logs(logs):
    """What the workers logged going through the faults: retries by job and
    error, and the other events worth counting."""
    retries, events = collections.Counter(), collections.Counter()
    marks = {
        "job is dead": "jobs dead",
        "circuit breaker opened": "payout breaker opened",
        "outbox relay pass failed": "outbox relay passes failed",
        "worker stopped with an error; restarting it": "queue pollers restarted after a Redis error",
        "maintenance round failed": "maintenance rounds failed",
        "its outcome could not be recorded in PostgreSQL": "failed runs handed back to Redis (PostgreSQL unreachable)",
        "cron tick could not be claimed": "cron ticks not claimed (PostgreSQL unreachable)",
        "email sent but not yet recorded as sent": "sent-log writes retried after the SMTP server accepted "
                                                   "(PostgreSQL unreachable)",
        "is being sent by another run": "email runs deferred because another run held the message",
    }
    for name in sorted(os.listdir(logs)):
        if not name.startswith("worker-"):
            continue
        with open(os.path.join(logs, name), errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line)
                m = RETRY.search(line)
                if m:
                    retries[(m.group(1), IDS.sub("…", m.group(2))[:110])] += 1
                    continue
                for text, label in marks.items():
                    if text in line:
                        events[label] += 1
    return retries, events


def progress(stack, traffic):
    mails = len(read_jsonl(stack.mail_record))
    creates = sum(1 for r in read_jsonl(stack.provider_record) if r["op"] == "create")
    c = traffic.c
    backlog = stack.scalar("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL AND run_at <= now()")
    log(f"traffic: purchases {c['purchase_accepted']} accepted ({c['purchase_retried']} after retries), "
        f"sdk {c['click'] + c['identify'] + c['sdk_purchase']}, statuses {c['status_confirmed'] + c['status_reversed']}, "
        f"payouts {c['payout_requested']}, shoppers {c['shoppers']} | mails received {mails}, "
        f"provider creates {creates}, outbox backlog {backlog if backlog is not None else '?'}")


def queues(stack, traffic):
    st, body = traffic.call("GET", "/v1/admin/queues", token=traffic.admin)
    if st != 200:
        return None
    return body.get("data", body) if isinstance(body, dict) else body


# ---------------------------------------------------------------- the run


class Lifecycle:
    """What the operator's everyday events did: graceful stops, the empty
    Redis, the re-queue during an outage, the long pause."""

    def __init__(self):
        self.deploys = []  # dicts: worker, round, at, exit, secs, handed_back, cut, canaries
        self.redis = None  # dict: at, back_at, snapshot, recovered_before, done_at, ...
        self.requeue = None  # dict: at, status, body, tries
        self.pause = None  # dict: queue, at, resumed_at
        self.dead_canaries = {"fixed": [], "broken": []}
        self.scenarios = {}


def canary_rows(stack, keys):
    if not keys:
        return {}
    ks = ",".join("'" + k.replace("'", "''") + "'" for k in keys)
    rows = stack.sql(f"""SELECT key, runs, effects, extract(epoch FROM completed_at) AS done, fixed, worker
                          FROM canary_runs WHERE key IN ({ks})""") or []
    return {r["key"]: r for r in rows}


def parse_handback(lines):
    """Jobs a stopping worker handed back: (all of them, the runs it cut at
    the grace). A cut run logs one line; the jobs left in its in-flight sets
    (fetched into the buffer and not started) one count per queue."""
    buffered, cut = 0, 0
    for line in lines:
        if "jobs handed back to the queue" in line:
            m = re.search(r"\bjobs=(\d+)", line)
            buffered += int(m.group(1)) if m else 0
        elif "shutting down: the job is handed back to the queue" in line:
            cut += 1
    return buffered + cut, cut


def rolling_deploy(stack, life, rnd_round):
    """Each worker in turn: canaries that sleep past the grace, more than the
    maintenance queue's concurrency (2 per worker), so that the stopped worker
    holds runs it must cut and jobs it fetched and has not started; SIGTERM
    once they run; the replacement started as soon as the old process exits
    (the same name, so the same log)."""
    for name in ("A", "B"):
        keys = [f"deploy-r{rnd_round}-{name}-{k}-{uuid.uuid4().hex[:6]}" for k in range(DEPLOY_CANARIES)]
        for k in keys:
            stack.worker_cli("canary", "--key", k, "--sleep-ms", str(CANARY_SLEEP_MS))
        # Until both have started somewhere (or 5 s): a canary running on the
        # other worker just finishes.
        deadline = time.time() + 5
        while time.time() < deadline and len(canary_rows(stack, keys)) < 2:
            time.sleep(0.2)
        at = time.time()
        stack.fault(f"rolling deploy, round {rnd_round}: SIGTERM worker {name} (grace {GRACE_SECS} s; "
                    f"canaries sleeping {CANARY_SLEEP_MS / 1000:g} s running)")
        old_pid = stack.procs["worker-" + name].pid
        # The canaries the process is running as it is told to stop (its
        # instance name carries its pid): they outlast the grace, so they are
        # cut and handed back; the other worker may take them before this
        # one has even exited.
        held = {k: r["runs"] for k, r in canary_rows(stack, keys).items()
                if r["done"] is None and f"-{old_pid}-" in (r["worker"] or "")}
        code, secs, offset = stack.sigterm_worker(name)
        exited = time.time()
        stack.start_worker(name)
        restarted = None
        deadline = time.time() + 60
        while held and time.time() < deadline:
            rows = canary_rows(stack, list(held))
            if all(rows[k]["runs"] > n or rows[k]["done"] is not None for k, n in held.items()):
                restarted = max(0.0, time.time() - exited)
                break
            time.sleep(0.1)
        handed, cut = parse_handback(stack.worker_log_since(name, offset))
        log(f"worker {name} exited {code} after {secs:.1f} s ({handed} job(s) handed back, {cut} of them runs cut "
            f"at the grace); its replacement started"
            + (f"; the {len(held)} canaries it was running started again within {restarted:.1f} s of the exit"
               if restarted is not None else f"; of the {len(held)} canaries it was running, not all started again"
               if held else ""))
        life.deploys.append(dict(worker=name, round=rnd_round, at=at, exit=code, secs=secs, handed_back=handed,
                                 cut=cut, canaries=keys, offset=offset, held=len(held), restarted=restarted))


def open_sent_rows(stack):
    return [r["id"] for r in stack.sql("SELECT id FROM outbox WHERE sent_at IS NOT NULL AND finished_at IS NULL")
            or []]


def watch_recovery(stack, life, timeout=240):
    """After the empty Redis: until every job that was open and in Redis at
    the wipe has its outcome recorded."""
    r = life.redis
    ids = r["snapshot"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = stack.scalar(f"""SELECT count(*) AS n FROM outbox WHERE finished_at IS NULL
                                  AND id = ANY('{{{",".join(map(str, ids)) or "0"}}}'::bigint[])""")
        if left == 0:
            r["done_at"] = time.time()
            r["recovered_rows"] = stack.scalar(
                f"""SELECT count(*) AS n FROM outbox WHERE recovered > 0
                      AND id = ANY('{{{",".join(map(str, ids)) or "0"}}}'::bigint[])""")
            log(f"every job open in Redis at the wipe has finished, {r['done_at'] - r['back_at']:.1f} s after "
                f"Redis came back ({r['recovered_rows']} of {len(ids)} relayed again)")
            return
        time.sleep(1)
    log("the jobs open at the wipe did not all finish within the watch")


def requeue_during_outage(stack, traffic, life):
    """While Redis is down: the operator, having fixed the cause, re-queues
    the maintenance dead set through the admin API (retrying as a person at
    a console would)."""
    fixed = life.dead_canaries["fixed"]
    if fixed:
        ks = ",".join(f"'{k}'" for k in fixed)
        if not stack.execute(f"UPDATE canary_runs SET fixed = true WHERE key IN ({ks})"):
            log("  could not mark the fixed canaries fixed")
    at = time.time()
    tries, st, body = 0, 0, None
    while time.time() - at < 30:
        tries += 1
        st, body = traffic.call("POST", "/v1/admin/queues/maintenance/dead/requeue", token=traffic.admin)
        if st == 200:
            break
        time.sleep(1)
    life.requeue = dict(at=at, status=st, body=body, tries=tries)
    log(f"re-queue of the maintenance dead set while Redis is down: {st} {json.dumps(body)[:120]} "
        f"after {tries} call(s)")


def schedule(stack, traffic, scale, life, pause_secs):
    """The faults, at fixed offsets (seconds) from the start of the traffic."""
    t0 = time.time()

    def at(offset):
        target = t0 + offset * scale
        while time.time() < target:
            time.sleep(min(1.0, target - time.time()))

    def progress_thread():
        while not traffic.stop.is_set():
            traffic.stop.wait(10)
            try:
                progress(stack, traffic)
            except Exception as e:
                log(f"  progress: {e!r}")
    threading.Thread(target=progress_thread, daemon=True).start()

    # A dead set: canaries that fail until fixed go dead after their 3
    # attempts; the fixed ones must run once re-queued, the broken ones die
    # again as a new chain.
    for kind, n in (("fixed", 3), ("broken", 2)):
        for k in range(n):
            key = f"dead-{kind}-{k}-{uuid.uuid4().hex[:6]}"
            stack.worker_cli("canary", "--key", key, "--fail-until-fixed")
            life.dead_canaries[kind].append(key)

    at(8)
    got = traffic.together(40)
    if got:
        life.scenarios["together"] = got
    shared = traffic.two_users()
    if shared:
        life.scenarios["two_users"] = shared

    at(12)
    stack.fault("SIGKILL worker A")
    stack.kill9_worker("A")
    at(14)
    stack.start_worker("A")
    log("worker A restarted")

    at(24)
    stack.fault("SMTP answers 451 (4xx) to every message for 10 s")
    stack.write_mode(stack.smtp_mode, "4xx")
    at(34)
    stack.fault("SMTP answers 554 (5xx) to every message for 5 s")
    stack.write_mode(stack.smtp_mode, "5xx")
    at(39)
    stack.fault("SMTP server stopped: connections refused for 8 s")
    stack.write_mode(stack.smtp_mode, "ok")
    stack.stop_smtp()
    at(47)
    stack.start_smtp()
    log("SMTP server healthy again")

    at(52)
    stack.fault("SIGKILL worker B")
    stack.kill9_worker("B")
    at(54)
    stack.start_worker("B")
    log("worker B restarted")

    at(62)
    stack.fault("Redis restart (SHUTDOWN, down 5 s, started again from its append-only file)")
    stack.restart_redis(5)
    log("Redis answering again")

    at(80)
    stack.fault("payout provider answers 503 to every call for 20 s")
    stack.write_mode(stack.provider_mode, "503")
    at(84)
    # Each shopper whose payouts the provider refuses asks for everything
    # available; the 503s hold the payouts, the money reserved. The merchant
    # then takes back a confirmed order of each: the reversal finds nothing
    # available and books the shortfall on the receivable. When the provider
    # answers again it refuses the payouts, and their release must settle
    # the receivable first.
    refused = [x for x in traffic.shoppers if x["dest"]["value"].startswith("fail-")]
    for sh in refused:
        traffic.payout(sh)
    n = 0
    for sh in refused:
        recs = [r for r in traffic.orders.values() if r["shopper"] == sh["i"] and r["decisions"] == ["confirmed"]]
        if recs:
            traffic.status_update(recs[0]["order"], "reversed")
            n += 1
    time.sleep(4)
    opened = 0
    for sh in refused:
        st, w = traffic.call("GET", "/v1/me/wallet", token=sh["token"])
        if st == 200 and any(e["receivable_minor"] > 0 for e in w.get("data", [])):
            opened += 1
    life.scenarios["receivable_opened"] = opened
    log(f"merchant reversed a confirmed order of {n} shoppers with refused payout destinations; "
        f"{opened} now owe on their receivable")
    at(100)
    stack.write_mode(stack.provider_mode, "ok")
    log("payout provider healthy again")

    at(106)
    stack.fault("SIGKILL both workers")
    stack.kill9_worker("A")
    stack.kill9_worker("B")
    at(109)
    stack.start_worker("A")
    stack.start_worker("B")
    log("workers A and B restarted")

    at(120)
    stack.fault("payout provider hangs 5 s on every call (past PAYOUT_PROVIDER_TIMEOUT_MS=1500) for 20 s; "
                "creates are carried out before the hang")
    stack.write_mode(stack.provider_mode, "hang")
    at(130)
    stack.fault("SIGKILL worker A while payouts are in flight")
    stack.kill9_worker("A")
    at(132)
    stack.start_worker("A")
    log("worker A restarted")
    at(140)
    stack.write_mode(stack.provider_mode, "ok")
    log("payout provider healthy again")

    at(147)
    stack.fault("SMTP server slow (0.8 s per message) around the PostgreSQL restart, so that messages it "
                "accepts land while PostgreSQL is down")
    stack.write_mode(stack.smtp_mode, "slow")
    at(148)
    stack.fault("PostgreSQL restart (pg_ctl stop -m fast: every connection dropped; down 4 s; started again)")
    stack.pg_ctl("stop", "-m", "fast")
    time.sleep(4)
    stack.pg_ctl("start")
    stack.write_mode(stack.smtp_mode, "ok")
    log("PostgreSQL answering again; SMTP server at full speed")

    at(165)
    stack.fault("SIGKILL worker B")
    stack.kill9_worker("B")
    at(167)
    stack.start_worker("B")
    log("worker B restarted")

    at(178)
    snapshot = open_sent_rows(stack)
    before = stack.scalar("SELECT coalesce(sum(recovered), 0) AS n FROM outbox")
    wipe_at = time.time()
    stack.fault(f"Redis comes back EMPTY (SHUTDOWN NOSAVE, data directory and append-only file removed, down 6 s; "
                f"{len(snapshot)} jobs open in PostgreSQL and sent to Redis); the maintenance dead set is "
                f"re-queued while it is down")
    dbsize = stack.empty_redis(6, while_down=lambda: requeue_during_outage(stack, traffic, life))
    life.redis = dict(at=wipe_at, back_at=time.time(), snapshot=snapshot, recovered_before=int(before or 0),
                      dbsize=dbsize)
    log(f"Redis answering again, with no data ({dbsize} keys written by the time it was first asked)")
    watcher = threading.Thread(target=watch_recovery, args=(stack, life), daemon=True)
    watcher.start()

    at(205)
    stack.fault(f"emails queue paused for {pause_secs} s (workers put its jobs back every 5 s), "
                f"through the rolling deploys")
    st, _ = traffic.call("POST", "/v1/admin/queues/emails/pause", token=traffic.admin)
    life.pause = dict(queue="emails", at=time.time(), status=st)
    for rnd_round in (1, 2, 3):
        at(210 + (rnd_round - 1) * 25)
        rolling_deploy(stack, life, rnd_round)
    # The pause lasts pause_secs whatever the scale: it is the point of the fault.
    target = life.pause["at"] + pause_secs
    while time.time() < target:
        time.sleep(min(1.0, target - time.time()))
    st, _ = traffic.retrying("resume", lambda: traffic.call("POST", "/v1/admin/queues/emails/resume",
                                                            token=traffic.admin), {200, 204})
    life.pause["resumed_at"] = time.time()
    life.pause["resume_status"] = st
    log(f"emails queue resumed ({st}) after {life.pause['resumed_at'] - life.pause['at']:.0f} s")
    time.sleep(10)
    watcher.join(1)


def settle(stack, traffic, life, timeout):
    """Waits until there is nothing left to do (bounded); returns the seconds
    waited. The admin keeps reviewing what is flagged meanwhile."""
    start = time.time()
    last = None
    canaries = [k for d in life.deploys for k in d["canaries"]] + life.dead_canaries["fixed"]
    ks = ",".join(f"'{k}'" for k in canaries) or "''"
    while time.time() - start < timeout:
        traffic.review_pass()
        q = stack.sql(f"""
          SELECT
            (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS outbox,
            (SELECT count(*) FROM outbox WHERE finished_at IS NULL AND queue <> 'maintenance') AS open_jobs,
            (SELECT count(*) FROM purchases WHERE rewards_processed_at IS NULL) AS unprocessed,
            (SELECT count(*) FROM purchases p WHERE merchant_decision IS NOT NULL
                AND status <> merchant_decision AND NOT EXISTS (
                  SELECT 1 FROM rewards r WHERE r.purchase_id = p.id AND r.review = 'rejected')) AS undecided,
            (SELECT count(*) FROM purchases WHERE status = 'flagged') AS flagged,
            (SELECT count(*) FROM payouts WHERE status NOT IN ('paid', 'failed')) AS payouts,
            (SELECT count(*) FROM email_log WHERE status <> 'sent') AS emails,
            ({len(canaries)} - (SELECT count(*) FROM canary_runs WHERE key IN ({ks})
                                  AND completed_at IS NOT NULL)) AS canaries""")
        busy = None
        qs = queues(stack, traffic)
        if qs is not None:
            busy = sum(x["ready"] + x["running"] + x["scheduled"] + x["retrying"]
                       for x in qs if x["queue"] != "maintenance")
        if q:
            state = dict(q[0], redis_busy=busy)
            unlinked = sum(1 for o in traffic.orders.values() if o["accepted"] and not o["linked"])
            if state != last:
                log("settling: " + ", ".join(f"{k} {v}" for k, v in state.items()))
                last = state
            if (state["outbox"] == 0 and state["open_jobs"] == 0 and state["unprocessed"] <= unlinked
                    and state["undecided"] == 0 and state["flagged"] == 0 and state["payouts"] == 0
                    and state["emails"] == 0 and state["canaries"] == 0 and busy == 0):
                return time.time() - start
        time.sleep(2)
    log(f"settling: gave up after {timeout}s")
    return time.time() - start


class Checks:
    def __init__(self):
        self.rows = []  # (name, status, detail)

    def add(self, name, ok, detail, known=False):
        status = "PASS" if ok else ("KNOWN" if known else "FAIL")
        self.rows.append((name, status, detail))
        print(f"  {status:<5} {name}: {detail}", flush=True)

    @property
    def failed(self):
        return [r for r in self.rows if r[1] == "FAIL"]


def expected_money(o, flagged):
    """What the merchant and the admin decided for one linked order: the
    cashback the shopper keeps (0 when reversed or rejected) and the
    purchase's final status. The merchant's reversal wins over everything,
    an admin's rejection over a confirmation; a flagged reward moves money
    only once approved."""
    want = o["amount"] * RATE_BPS // 10000
    if o["decision"] == "reversed" or o["review"] == "rejected":
        return 0, "reversed"
    if flagged and o["review"] != "approved":
        return 0, "flagged"
    return want, o["decision"] or "attributed"


def check(stack, traffic, life, settle_started):
    ck = Checks()
    log("checks")
    accepted = {o["order"]: o for o in traffic.orders.values() if o["accepted"]}
    linked = {k: o for k, o in accepted.items() if o["linked"]}

    # 1. Every accepted purchase is in the database.
    db = {r["order_id"]: r for r in stack.sql(f"""
        SELECT p.id, p.order_id, p.amount_minor, p.status, p.merchant_decision,
               p.rewards_processed_at IS NOT NULL AS processed
          FROM purchases p WHERE p.merchant_id = '{traffic.mid}'""")}
    missing = sorted(set(accepted) - set(db))
    wrong_amount = [k for k in accepted if k in db and db[k]["amount_minor"] != accepted[k]["amount"]]
    unknown = sorted(set(db) - set(accepted))
    ck.add("accepted purchases are stored", not missing and not wrong_amount,
           f"{len(accepted)} accepted with 202 ({traffic.c['purchase_retried']} after retries through the faults, "
           f"{traffic.c['purchase_gave_up']} given up), {len(db)} in the database, {len(missing)} missing, "
           f"{len(wrong_amount)} with another amount, {len(unknown)} stored that the client never saw accepted"
           + (f"; missing: {missing[:10]}" if missing else ""))

    # 2. Every due reward credited exactly once, with the right amount.
    per = {r["purchase_id"]: r for r in stack.sql("""
        SELECT p.id AS purchase_id, p.order_id,
               (SELECT count(*) FROM rewards r WHERE r.purchase_id = p.id) AS rewards,
               (SELECT count(*) FROM rewards r WHERE r.purchase_id = p.id AND r.status <> 'voided') AS live_rewards,
               (SELECT max(r.status) FROM rewards r WHERE r.purchase_id = p.id AND r.status <> 'voided') AS reward_status,
               (SELECT max(r.amount_minor) FROM rewards r WHERE r.purchase_id = p.id AND r.status <> 'voided') AS reward_amount,
               (SELECT count(*) FROM ledger_transfers t WHERE t.purchase_id = p.id AND t.kind = 'reward_credit') AS credits,
               (SELECT count(*) FROM ledger_transfers t WHERE t.purchase_id = p.id AND t.kind = 'reward_confirm') AS confirms,
               (SELECT count(*) FROM ledger_transfers t WHERE t.purchase_id = p.id
                   AND t.kind = 'receivable_settlement') AS settlements,
               (SELECT bool_or(r.flagged) FROM rewards r WHERE r.purchase_id = p.id AND r.status <> 'voided') AS flagged,
               (SELECT max(r.review) FROM rewards r WHERE r.purchase_id = p.id AND r.status <> 'voided') AS review,
               (SELECT max(r.user_id::text) FROM rewards r WHERE r.purchase_id = p.id AND r.status <> 'voided') AS user_id,
               (SELECT coalesce(sum(CASE WHEN ca.user_id IS NOT NULL AND da.user_id IS NULL THEN t.amount_minor
                                         WHEN da.user_id IS NOT NULL AND ca.user_id IS NULL THEN -t.amount_minor
                                         ELSE 0 END), 0)
                  FROM ledger_transfers t
                  JOIN ledger_accounts ca ON ca.id = t.credit_account_id
                  JOIN ledger_accounts da ON da.id = t.debit_account_id
                 WHERE t.purchase_id = p.id) AS net_to_user
          FROM purchases p""")}
    unprocessed, twice, wrong, bad_status, wrong_user, never_credited = [], [], [], [], [], []
    expected_total = 0
    expected_by_shopper = collections.Counter()
    user_of = {sh["i"]: sh["user_id"] for sh in traffic.shoppers}
    reversed_first, reversed_first_available = [], []
    for order, o in linked.items():
        d = db.get(order)
        if not d:
            continue
        r = per[d["id"]]
        want = o["amount"] * RATE_BPS // 10000
        if not d["processed"] or r["rewards"] == 0:
            unprocessed.append(order)
            continue
        want_net, want_status = expected_money(o, bool(r["flagged"]))
        expected_total += want_net
        expected_by_shopper[o["shopper"]] += want_net
        if r["credits"] > 1 or r["live_rewards"] != 1 or r["rewards"] != 1 or r["confirms"] > 1 or r["settlements"] > 1:
            twice.append((order, r["rewards"], r["credits"], r["confirms"], r["settlements"]))
        if not r["flagged"] and r["credits"] != 1 and o["decisions"][:1] != ["reversed"]:
            never_credited.append(order)
        if r["reward_amount"] != want or int(r["net_to_user"]) != want_net:
            wrong.append((order, r["reward_amount"], want, r["net_to_user"], want_net))
        if r["user_id"] != user_of.get(o["shopper"]):
            wrong_user.append(order)
        confirmed_money = r["confirms"] + r["settlements"]
        # A confirmation may be split: what settles an open receivable, then the rest.
        if d["status"] != want_status or (want_status == "confirmed" and not confirmed_money):
            bad_status.append((order, d["status"], want_status))
        if o["decisions"][:1] == ["reversed"]:
            reversed_first.append(order)
            if confirmed_money:
                reversed_first_available.append(order)
    processed_db = sum(1 for d in db.values() if d["processed"])
    rewards_db = stack.scalar("SELECT count(*) FROM rewards WHERE status <> 'voided'")
    credits_db = stack.scalar("SELECT count(*) FROM ledger_transfers WHERE kind = 'reward_credit'")
    ck.add("every due reward is credited exactly once", not unprocessed and not twice and not never_credited,
           f"{len(linked)} purchases linked to a shopper, {processed_db} processed, {rewards_db} live rewards, "
           f"{credits_db} reward_credit transfers (a flagged reward moves money only once approved); "
           f"{len(unprocessed)} unprocessed, {len(twice)} credited or confirmed more than once, "
           f"{len(never_credited)} unflagged and never credited"
           + (f"; unprocessed: {unprocessed[:10]}" if unprocessed else "")
           + (f"; twice (order, rewards, credits, confirms, settlements): {twice[:10]}" if twice else ""))
    ck.add("attributed counts match", len(linked) == processed_db == rewards_db and credits_db <= rewards_db,
           f"linked {len(linked)} = processed {processed_db} = rewards {rewards_db} ≥ credit transfers {credits_db}"
           + (f" (accepted but never linked by the SDK: {len(accepted) - len(linked)})"
              if len(accepted) != len(linked) else ""))
    flagged_n = sum(1 for k, o in linked.items() if k in db and per[db[k]["id"]]["flagged"])
    c = traffic.c
    ck.add("reward amounts, merchant decisions and admin reviews applied",
           not wrong and not bad_status and not wrong_user,
           f"{c['status_confirmed']} confirmed, {c['status_reversed']} reversed by the merchant "
           f"({sum(1 for o in linked.values() if o.get('early_reversal'))} at once, before attribution; "
           f"{sum(1 for o in linked.values() if o['decisions'][:2] == ['confirmed', 'reversed'])} after a "
           f"confirmation, racing payouts); {flagged_n} flagged for review: {c['review_approved']} approved, "
           f"{c['review_rejected']} rejected, {c['review_refused_not_flagged']} reviews refused as no longer flagged; "
           f"{len(wrong)} with a wrong amount or net credit, {len(bad_status)} in the wrong state, "
           f"{len(wrong_user)} credited to another user"
           + (f"; wrong: {wrong[:5]}" if wrong else "") + (f"; state: {bad_status[:5]}" if bad_status else "")
           + (f"; user: {wrong_user[:5]}" if wrong_user else ""))
    ck.add("no order the merchant reversed first ever reached available", not reversed_first_available,
           f"{len(reversed_first)} orders reversed by their first decision "
           f"({sum(1 for k in reversed_first if per[db[k]['id']]['flagged'])} of them flagged, "
           f"{sum(1 for k in reversed_first if linked[k]['review'] == 'approved')} approved by the admin after the "
           f"reversal): {len(reversed_first_available)} with a confirmation or receivable settlement"
           + (f": {reversed_first_available[:5]}" if reversed_first_available else ""))

    # 3. The ledger reconciles: the worker's own reconciliation, run after the
    # system settled, and the money accounted from outside.
    deadline = time.time() + 40
    run = None
    while time.time() < deadline:
        rows = stack.sql(f"""SELECT tick, outcome FROM cron_runs WHERE schedule = 'reconcile_ledger'
                               AND finished_at IS NOT NULL AND started_at > to_timestamp({settle_started})
                             ORDER BY started_at DESC LIMIT 1""")
        if rows:
            run = rows[0]
            break
        time.sleep(2)
    ck.add("ledger::reconcile (the worker's reconcile_ledger schedule, after settling)",
           run is not None and run["outcome"] == "0 breach(es)",
           f"run of tick {run['tick']}: {run['outcome']}" if run else "no run finished within 40 s")
    bal = {r["kind"]: int(r["sum"]) for r in stack.sql(
        "SELECT kind, sum(balance_minor) FROM ledger_accounts GROUP BY kind")}
    users_total = sum(v for k, v in bal.items() if k in ("pending", "available", "reserved", "paid_out", "receivable"))
    total_all = sum(bal.values())
    ck.add("money accounted from outside", total_all == 0 and users_total == expected_total
           and -bal.get("cashback_expense", 0) == expected_total and bal.get("reserved", 0) == 0,
           f"sum of every account {total_all}; shoppers hold {users_total} (expected from the purchases the suite "
           f"sent: {expected_total}); cashback_expense {bal.get('cashback_expense', 0)}; reserved {bal.get('reserved', 0)}; "
           f"paid_out {bal.get('paid_out', 0)}")

    # 4. Payouts: sent at most once, all finished, the ledger agreeing with the provider.
    calls = read_jsonl(stack.provider_record)
    creates = [c for c in calls if c["op"] == "create"]
    moved = collections.Counter(c["reference"] for c in creates if c.get("created"))
    per_key = collections.Counter(c["key"] for c in creates)
    provider = {}
    for c in creates:
        if c.get("created"):
            provider[c["reference"]] = c
    finds = [c for c in calls if c["op"] == "find"]
    db_p = {r["id"]: r for r in stack.sql("""
        SELECT p.id, p.status, p.amount_minor, p.provider_attempts,
               (SELECT count(*) FROM ledger_transfers t WHERE t.payout_id = p.id AND t.kind = 'payout_paid') AS paid_t,
               (SELECT count(*) FROM ledger_transfers t WHERE t.payout_id = p.id AND t.kind = 'payout_released') AS rel_t,
               (SELECT count(*) FROM ledger_transfers t WHERE t.payout_id = p.id
                   AND t.kind = 'receivable_settlement') AS set_t,
               (SELECT coalesce(sum(t.amount_minor), 0) FROM ledger_transfers t WHERE t.payout_id = p.id
                   AND t.kind IN ('payout_released', 'receivable_settlement')) AS rel_amount,
               (SELECT count(*) FROM ledger_transfers t WHERE t.payout_id = p.id AND t.kind = 'payout_reserve') AS res_t
          FROM payouts p""")}
    missing_p = sorted(set(traffic.payouts) - set(db_p))
    # Money the provider moved for a reference we hold no payout for.
    unknown_refs = sorted(set(provider) - set(db_p))
    stuck = [p for p in db_p.values() if p["status"] not in ("paid", "failed")]
    disagree, ledger_bad = [], []
    for pid, p in db_p.items():
        prv = provider.get(pid)
        if p["status"] == "paid" and (not prv or prv["outcome"] == "failed" or prv["amount_minor"] != p["amount_minor"]):
            disagree.append((pid, p["status"], prv and prv["outcome"]))
        if p["status"] == "failed" and prv and prv["outcome"] != "failed":
            disagree.append((pid, p["status"], prv["outcome"]))  # money released while it went out
        # A failed payout's release settles what the shopper owes first
        # (receivable_settlement), the rest goes back to available.
        if p["res_t"] != 1 or (p["status"] == "paid" and (p["paid_t"], p["rel_t"], p["set_t"]) != (1, 0, 0)) or (
                p["status"] == "failed" and (p["paid_t"] != 0 or p["rel_t"] > 1 or p["set_t"] > 1
                                             or int(p["rel_amount"]) != p["amount_minor"])):
            ledger_bad.append((pid, p["status"], p["res_t"], p["paid_t"], p["rel_t"], p["set_t"]))
    hang_creates = sum(1 for c in creates if c["mode"] == "hang" and c["status"] in (200, 201))
    unavailable = sum(1 for c in calls if c["status"] == 503)
    resent = sum(1 for k, n in per_key.items() if n > 1)
    by_status = collections.Counter(p["status"] for p in db_p.values())
    ck.add("no payout sent twice", max(moved.values(), default=0) <= 1 and not disagree and not ledger_bad
           and not unknown_refs,
           f"{len(creates)} create requests for {len(per_key)} idempotency keys ({resent} keys sent more than once, "
           f"at most {max(per_key.values(), default=0)} times); money moved at most {max(moved.values(), default=0)} "
           f"time(s) per payout; {len(finds)} look-ups; {unavailable} calls answered 503; {hang_creates} creates carried "
           f"out while the caller timed out (outcome unknown); {len(disagree)} payouts where we and the provider "
           f"disagree; {len(ledger_bad)} with the wrong ledger transfers; {len(unknown_refs)} provider payouts "
           f"for no payout of ours"
           + (f"; disagree: {disagree[:5]}" if disagree else "") + (f"; ledger: {ledger_bad[:5]}" if ledger_bad else ""))
    ck.add("every payout finished", not stuck and not missing_p,
           f"{len(traffic.payouts)} requested with 202, {len(db_p)} in the database: "
           + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
           + f"; {len(missing_p)} missing; {sum(1 for p in db_p.values() if p['provider_attempts'] > 1)} needed more "
           f"than one provider attempt; {sum(1 for p in db_p.values() if p['set_t'])} failed payouts whose "
           f"release settled an open receivable first")

    # 4b. Each shopper's wallet against what the merchant and the admin
    # decided: the cashback kept is what was paid out plus what is
    # available, less what is still owed; nothing pending or reserved once
    # everything is decided; the api's wallet is the ledger's.
    paid_by_user = collections.Counter()
    for p in stack.sql("SELECT user_id::text AS user_id, amount_minor FROM payouts WHERE status = 'paid'"):
        paid_by_user[p["user_id"]] += p["amount_minor"]
    ledger = collections.defaultdict(dict)
    for a in stack.sql("""SELECT user_id::text AS user_id, kind, balance_minor FROM ledger_accounts
                           WHERE user_id IS NOT NULL AND currency = 'EUR'"""):
        ledger[a["user_id"]][a["kind"]] = int(a["balance_minor"])
    wallet_bad, api_bad, owed_and_free, owing = [], [], [], 0
    for sh in traffic.shoppers:
        st, w = traffic.retrying("wallet", lambda: traffic.call("GET", "/v1/me/wallet", token=sh["token"]), {200})
        e = next((x for x in (w.get("data", []) if st == 200 else []) if x["currency"] == "EUR"),
                 {"pending_minor": 0, "available_minor": 0, "reserved_minor": 0, "paid_out_minor": 0,
                  "receivable_minor": 0})
        want = expected_by_shopper.get(sh["i"], 0)
        paid = paid_by_user.get(sh["user_id"], 0)
        kept = e["available_minor"] + e["paid_out_minor"] - e["receivable_minor"]
        if (st != 200 or kept != want or e["pending_minor"] != 0 or e["reserved_minor"] != 0
                or e["paid_out_minor"] != paid):
            wallet_bad.append((sh["i"], want, paid, e))
        led = ledger.get(sh["user_id"], {})
        if (led.get("pending", 0), led.get("available", 0), led.get("reserved", 0), led.get("paid_out", 0),
                -led.get("receivable", 0)) != (e["pending_minor"], e["available_minor"], e["reserved_minor"],
                                               e["paid_out_minor"], e["receivable_minor"]):
            api_bad.append((sh["i"], led, e))
        if e["receivable_minor"] > 0:
            owing += 1
            if e["available_minor"] > 0:
                owed_and_free.append((sh["i"], e))
    ck.add("each wallet is what the merchant and the admin decided", not wallet_bad and not api_bad
           and not owed_and_free,
           f"{len(traffic.shoppers)} shoppers: /v1/me/wallet against the expectation computed here from every "
           f"decision (cashback of the orders neither reversed nor rejected = available + paid out − receivable, "
           f"paid out = the provider's paid payouts, nothing pending or reserved) and against the ledger: "
           f"{len(wallet_bad)} differ from the decisions, {len(api_bad)} differ from the ledger; {owing} still owe "
           f"on their receivable, {len(owed_and_free)} of them with money available"
           + (f"; differ: {wallet_bad[:3]}" if wallet_bad else "") + (f"; ledger: {api_bad[:3]}" if api_bad else ""))

    # 5. Emails: none twice, every sent one received.
    mails = read_jsonl(stack.mail_record)
    received = collections.defaultdict(list)
    for m in mails:
        received[m["message_id"]].append(m["at"])
    logrows = stack.sql("SELECT dedupe_key, kind, message_id, status, attempts FROM email_log")
    sent_ids = {r["message_id"] for r in logrows if r["status"] == "sent"}
    not_sent = [r for r in logrows if r["status"] != "sent"]
    lost = sorted(sent_ids - set(received))
    strangers = sorted(set(received) - {r["message_id"] for r in logrows})
    dups = {mid: ts for mid, ts in received.items() if len(ts) > 1}
    kills = [t for t, what in stack.faults if what.startswith("SIGKILL")]
    restarts = [(t, what) for t, what in stack.faults if "PostgreSQL" in what]
    explained, unexplained = [], []
    for mid, ts in dups.items():
        first = min(ts)
        # A kill between the SMTP accept and the sent-log write: the write
        # follows the accept within milliseconds when the database is up.
        k = [t for t in kills if first - 0.5 <= t <= first + 0.5]
        if k:
            explained.append((mid, k[0] - first))
        else:
            near = [what for t, what in restarts if first - 1 <= t <= first + 15]
            unexplained.append((mid, len(ts), near))
    kinds = collections.Counter(r["kind"] for r in logrows if r["status"] == "sent")
    ck.add("every email the sent-log records was received", not lost and not not_sent and not strangers,
           f"{len(logrows)} in email_log ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
           f"{len(not_sent)} not marked sent, {len(mails)} messages received for {len(received)} Message-IDs, "
           f"{len(lost)} sent but never received, {len(strangers)} received but unknown to the log; "
           f"welcome emails {kinds.get('welcome', 0)} for {traffic.c['shoppers'] + traffic.c['register_gave_up']} "
           f"registrations")
    if not dups:
        ck.add("no email delivered twice", True, f"{len(received)} Message-IDs, each received once")
    else:
        ck.add("no email delivered twice (outside the documented crash window)", not unexplained,
               f"{len(dups)} Message-IDs received more than once: {len(explained)} inside the window docs/OPERATIONS.md "
               f"admits (a worker SIGKILLed between the SMTP server's accept and the sent-log write"
               + (f": the kill came {', '.join(f'{d:+.3f} s' for _, d in explained[:5])} from the moment the sink "
                  f"recorded the first copy" if explained else "")
               + f"), {len(unexplained)} not explained by it (each with the faults of the 15 s after its first copy)"
               + (f": {unexplained[:5]}" if unexplained else ""))
        if explained:
            ck.add("emails sent twice inside the documented crash window", False,
                   f"{len(explained)} (same Message-ID, so mail clients fold them); a known limit, not a failure",
                   known=True)

    # 6. No job stuck.
    # The cron schedules keep enqueueing maintenance jobs every few seconds:
    # those of the last 30 s are on their way.
    outbox = stack.sql("""SELECT queue, count(*) AS n, min(run_at) AS oldest FROM outbox
                           WHERE sent_at IS NULL
                             AND (queue <> 'maintenance' OR created_at < now() - interval '30 seconds')
                           GROUP BY queue""")
    qs = queues(stack, traffic) or []
    busy = {x["queue"]: {k: x[k] for k in ("scheduled", "ready", "running", "retrying")} for x in qs}
    busy_bad = {q: v for q, v in busy.items() if q != "maintenance" and any(v.values())}
    maint = busy.get("maintenance", {})
    stale_cron = stack.sql("""SELECT schedule, tick, started_at FROM cron_runs
                               WHERE finished_at IS NULL AND started_at < now() - interval '30 seconds'""")
    broken = life.dead_canaries["broken"]
    dead_all = stack.sql("SELECT id, queue, task_id, job_key, attempts, last_error, requeued_at IS NOT NULL AS requeued "
                         "FROM dead_jobs ORDER BY id")
    dead = [d for d in dead_all if not d["requeued"] and d["job_key"] not in {f"canary:{k}" for k in broken}]
    open_rows = stack.sql("""SELECT queue, count(*) AS n FROM outbox WHERE finished_at IS NULL
                              AND (queue <> 'maintenance' OR created_at < now() - interval '30 seconds')
                            GROUP BY queue""")
    ck.add("no job stuck", not outbox and not open_rows and not busy_bad and not stale_cron and qs != [],
           f"outbox rows not relayed (maintenance: older than 30 s): {sum(r['n'] for r in outbox)}; jobs open in PostgreSQL (no outcome "
           f"recorded; maintenance: older than 30 s): {sum(r['n'] for r in open_rows)}"
           + (f" {open_rows}" if open_rows else "") + "; Redis, per queue other than maintenance, "
           f"scheduled+ready+running+retrying: {sum(sum(v.values()) for q, v in busy.items() if q != 'maintenance')}"
           f"; maintenance (cron runs every 5 s): {maint}; cron runs unfinished after 30 s: {len(stale_cron)}"
           + (f"; busy: {busy_bad}" if busy_bad else "") + (f"; outbox: {outbox}" if outbox else ""))
    ck.add("dead jobs", not dead,
           ("none" if not dead else f"{len(dead)}: " + "; ".join(
               f"#{d['id']} {d['queue']} {d['task_id']} after {d['attempts']} attempt(s): {d['last_error'][:160]}"
               for d in dead)) + f" (besides the {len(broken)} canaries kept broken on purpose, checked below)")
    lifecycle_checks(stack, traffic, life, ck, dead_all)
    info = dict(accepted=len(accepted), linked=len(linked), mails=len(mails), creates=len(creates),
                payouts=len(db_p), dead=dead,
                reversed_first_approved=sum(1 for k in reversed_first if linked[k]["review"] == "approved"),
                reversed_first_available=len(reversed_first_available),
                settled_releases=sum(1 for p in db_p.values() if p["set_t"]), owed_and_free=len(owed_and_free))
    info["scenarios"] = scenario_lines(stack, traffic, life, info)
    for line in info["scenarios"]:
        if len(line) == 3:
            ck.add("scenario: " + line[0], line[2], line[1])
    return ck, info


def lifecycle_checks(stack, traffic, life, ck, dead_all):
    """Rolling deploys, the empty Redis, the re-queue during the outage, the
    long pause: what they did, and that nothing was lost or done twice."""
    # Rolling deploys.
    keys = [k for d in life.deploys for k in d["canaries"]]
    rows = canary_rows(stack, keys)
    lost = [k for k in keys if not rows.get(k) or rows[k]["done"] is None]
    twice = [k for k in keys if rows.get(k) and rows[k]["effects"] != 1]
    bad_exit = [(d["worker"], d["round"], d["exit"]) for d in life.deploys if d["exit"] != 0]
    not_restarted = [(d["worker"], d["round"]) for d in life.deploys if d["held"] and d["restarted"] is None]
    restarts = [d["restarted"] for d in life.deploys if d["restarted"] is not None]
    rerun = [k for k in keys if rows.get(k) and rows[k]["runs"] > 1]
    for d in life.deploys:
        done = [rows[k]["done"] for k in d["canaries"] if rows.get(k) and rows[k]["done"] is not None]
        d["canaries_done_after"] = (max(done) - d["at"]) if done else None
        d["canaries_rerun"] = sum(1 for k in d["canaries"] if rows.get(k) and rows[k]["runs"] > 1)
    ck.add("rolling deploys: every worker stopped with SIGTERM exits 0 and hands its jobs back",
           bool(life.deploys) and not bad_exit and not lost and not twice and not not_restarted,
           f"{len(life.deploys)} SIGTERMs ({len({d['round'] for d in life.deploys})} rounds over workers A and B, under "
           f"traffic, with the emails queue paused): exits {collections.Counter(str(d['exit']) for d in life.deploys)}"
           f", {min((d['secs'] for d in life.deploys), default=0):.1f}–"
           f"{max((d['secs'] for d in life.deploys), default=0):.1f} s from SIGTERM to exit; "
           f"{sum(d['handed_back'] for d in life.deploys)} jobs handed back at shutdown in all "
           f"({sum(d['cut'] for d in life.deploys)} of them runs cut at the grace, the others fetched and not started); "
           f"the canaries a stopped worker was running ({sum(d['held'] for d in life.deploys)} in all) started again "
           f"within {max(restarts, default=0):.1f} s of its exit (each deploy: "
           f"{', '.join(f'{x:.1f} s' for x in restarts)})"
           + (f" (NOT within 60 s: {not_restarted})" if not_restarted else "")
           + f"; {len(keys)} canaries sleeping "
           f"{CANARY_SLEEP_MS / 1000:g} s: {len(keys) - len(lost)} done, {len(rerun)} cut and run again, "
           f"{len(twice)} with their effect other than once, {len(lost)} lost"
           + (f"; bad exits: {bad_exit}" if bad_exit else "") + (f"; lost: {lost}" if lost else ""))

    # The empty Redis.
    r = life.redis
    if r:
        after = stack.scalar("SELECT coalesce(sum(recovered), 0) AS n FROM outbox")
        r["recovered_total"] = int(after or 0) - r["recovered_before"]
        r["recovered_logged"] = 0
        for name in sorted(os.listdir(stack.logs)):
            if name.startswith("worker-"):
                with open(os.path.join(stack.logs, name), errors="replace") as f:
                    for line in f:
                        if "missing from Redis; relayed again" in line:
                            m = re.search(r"\bjobs=(\d+)", ANSI.sub("", line))
                            r["recovered_logged"] += int(m.group(1)) if m else 0
        took = r.get("done_at") and r["done_at"] - r["back_at"]
        bound = 2 * stack.args.recovery_secs + 5
        ck.add("empty Redis: every job it held runs again from PostgreSQL",
               took is not None and r["recovered_total"] > 0,
               f"{len(r['snapshot'])} jobs were open in PostgreSQL and sent to Redis at the wipe (Redis came back "
               f"with no data); all of them had their outcome recorded "
               + (f"{took:.1f} s after Redis answered again" if took is not None else "NEVER (within the watch)")
               + f" (JOB_RECOVERY_AFTER_SECS={stack.args.recovery_secs}: the documented bound is about "
               f"2 × {stack.args.recovery_secs} s plus the relay's poll, {bound} s here); "
               f"{r.get('recovered_rows', '?')} of them relayed again by the reconciler; jobs_recovered_total over "
               f"the run: {r['recovered_total']} (the outbox's `recovered` counts; the workers logged "
               f"{r['recovered_logged']})")

    # The dead set re-queued during the outage.
    q = life.requeue
    if q:
        fixed, broken = life.dead_canaries["fixed"], life.dead_canaries["broken"]
        rows = canary_rows(stack, fixed + broken)
        fixed_done = [k for k in fixed if rows.get(k) and rows[k]["done"] is not None]
        by_key = collections.defaultdict(list)
        for d in dead_all:
            by_key[d["job_key"]].append(d)
        broken_ok = [k for k in broken if len(by_key[f"canary:{k}"]) == 2
                     and [d["requeued"] for d in by_key[f"canary:{k}"]] == [True, False]
                     and rows.get(k) and rows[k]["runs"] >= 6 and rows[k]["done"] is None]
        ck.add("a dead set re-queued while Redis was down", q["status"] == 200 and len(fixed_done) == len(fixed)
               and len(broken_ok) == len(broken),
               f"POST /v1/admin/queues/maintenance/dead/requeue answered {q['status']} "
               f"{json.dumps(q['body'])} ({q['tries']} call(s)) with Redis down; of the {len(fixed)} canaries fixed "
               f"before the re-queue, {len(fixed_done)} ran to their effect once Redis was back; of the "
               f"{len(broken)} still broken, {len(broken_ok)} retried by their policy (3 more runs) and died again "
               f"as a new dead record (their first one marked re-queued)")

    # The paused queue.
    p = life.pause
    if p:
        held = stack.scalar(f"""SELECT count(*) AS n FROM outbox WHERE queue = 'emails' AND task_id ~ '#p[0-9]+$'
                                  AND created_at >= to_timestamp({p['at']})""")
        ck.add("a paused queue resumed after minutes", p["status"] in (200, 204) and p.get("resume_status") in (200, 204),
               f"emails paused ({p['status']}) for {p.get('resumed_at', p['at']) - p['at']:.0f} s through the "
               f"rolling deploys, then resumed ({p.get('resume_status')}); {held} put-backs recorded meanwhile "
               f"(each a new run superseding the last, no attempt spent); every email checked above")


def lifecycle_rows(stack, life):
    rows = []
    for d in life.deploys:
        after = d.get("canaries_done_after")
        rows.append(f"| rolling deploy round {d['round']}: SIGTERM worker {d['worker']} at {utc(d['at'])} | exit "
                    f"{d['exit']} after {d['secs']:.1f} s; {d['handed_back']} jobs handed back at shutdown "
                    f"({d['cut']} of them runs cut at the grace); "
                    + (f"the {d['held']} canaries it was running started again "
                       + (f"within {d['restarted']:.1f} s of its exit; " if d["restarted"] is not None else "NEVER; ")
                       if d["held"] else "")
                    + f"its {len(d['canaries'])} canaries all done "
                    + (f"{after:.1f} s after the SIGTERM" if after is not None else "NEVER")
                    + f", {d.get('canaries_rerun', 0)} of them run again |")
    r = life.redis
    if r:
        took = r.get("done_at") and r["done_at"] - r["back_at"]
        rows.append(f"| Redis back empty at {utc(r['back_at'])} | {len(r['snapshot'])} jobs open and sent at the "
                    f"wipe; all finished " + (f"{took:.1f} s" if took is not None else "NEVER")
                    + f" after Redis answered; {r.get('recovered_rows', '?')} of them relayed again; "
                    f"jobs_recovered_total {r.get('recovered_total', '?')} |")
    q = life.requeue
    if q:
        rows.append(f"| dead set re-queued at {utc(q['at'])}, Redis down | {q['status']} {json.dumps(q['body'])} |")
    p = life.pause
    if p and p.get("resumed_at"):
        rows.append(f"| emails paused at {utc(p['at'])}, resumed at {utc(p['resumed_at'])} | "
                    f"{p['resumed_at'] - p['at']:.0f} s paused |")
    return rows


def scenario_lines(stack, traffic, life, info):
    """One line per money scenario: what ran here, or the test that covers it."""
    lines = []
    c = traffic.c
    lines.append(("a reversed-then-approved order never becomes available",
                  f"run here: {info['reversed_first_approved']} orders the merchant reversed before attribution and "
                  f"the admin then approved; {info['reversed_first_available']} reached available. Also "
                  "`a_reversal_before_attribution_wins_over_an_admin_approval` in tests/tests/money_scenarios.rs"))
    r = life.redis or {}
    lines.append(("a lost reversal job is re-driven",
                  f"run here: the empty Redis lost every job it held, reversals among them "
                  f"({r.get('recovered_rows', '?')} jobs relayed again, every decision applied above). The exact "
                  "reproduction (the reversal's outbox row marked sent, no job in Redis, the hold elapsing): "
                  "`a_lost_reversal_job_is_re_driven_by_the_settle_sweep` in tests/tests/money_scenarios.rs"))
    lines.append(("a failed payout with an open receivable does not free reversed money",
                  f"run here: {life.scenarios.get('receivable_opened', 0)} shoppers owed on their receivable after a "
                  f"reversal met their reserved payout; {info['settled_releases']} refused payouts settled a "
                  f"receivable before releasing the rest; {info['owed_and_free']} wallets owe with money available. "
                  "Also `a_failed_payout_release_settles_the_open_receivable_first` in tests/tests/money_scenarios.rs"))
    tg = life.scenarios.get("together")
    if tg:
        sh, recs = tg
        linked = [x for x in recs if x["linked"]]
        rows = stack.sql(f"""SELECT p.order_id FROM purchases p JOIN rewards r ON r.purchase_id = p.id
                               AND r.status <> 'voided' WHERE r.user_id = '{sh['user_id']}'""")
        got = {x["order_id"] for x in rows}
        ok = len(linked) == len(recs) and all(x["order"] in got for x in recs)
        lines.append(("webhook + SDK confirmation together always link",
                      f"run here: {len(recs)} orders of one identified shopper, the signed webhook and "
                      f"/v1/track/purchase sent at the same moment: {len(linked)} accepted by both, "
                      f"{sum(1 for x in recs if x['order'] in got)} rewarded to the shopper"
                      + ("" if ok else " — FAIL"), ok))
    tu = life.scenarios.get("two_users")
    if tu:
        first, latest, rec = tu
        shared = stack.scalar("""SELECT count(*) AS n FROM (SELECT group_id FROM identity_nodes WHERE kind = 'user'
                                   GROUP BY group_id HAVING count(*) > 1) g""")
        owner = stack.scalar(f"""SELECT r.user_id::text AS u FROM rewards r JOIN purchases p ON p.id = r.purchase_id
                                   WHERE p.order_id = '{rec['order']}' AND r.status <> 'voided'""")
        ok = shared == 0 and owner == latest["user_id"]
        lines.append(("two users on one anon id never merge",
                      f"run here: two users identified the same anon id in turn; identity groups holding more than "
                      f"one user: {shared}; the order bought after it went to "
                      + ("the latest user, as documented" if owner == latest["user_id"] else
                         "the first user" if owner == first["user_id"] else f"{owner}")
                      + ("" if ok else " — FAIL"), ok))
    return lines


def report(path, stack, traffic, life, ck, info, settled_in, started, ended):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    c = traffic.c
    lines = [
        "# Fault suite report",
        "",
        f"Run on {utc(started)[:8]}–{utc(ended)[:8]} UTC, {datetime.datetime.fromtimestamp(started, datetime.timezone.utc).date()},"
        f" at commit `{commit}`, on {os.cpu_count()} cores, with `scripts/faults.sh"
        f"{' --pause-secs ' + str(stack.args.pause_secs) if stack.args.pause_secs != 120 else ''}`. "
        "Release binaries (`clicknback-api`, two `clicknback-worker` replicas A and B) against the suite's own "
        "PostgreSQL cluster, Redis (append-only file on), SMTP sink and payout provider, all on loopback.",
        "",
        "Settings that make the run settle in minutes: `ATTRIBUTION_DELAY_SECS=2`, sweeps and payout resolution "
        "every 5 s, ledger reconciliation every 10 s, `PAYOUT_PROVIDER_TIMEOUT_MS=1500`, breaker after 3 failures "
        "(open 2–8 s), `PAYOUT_RECONCILE_AFTER_SECS=5`, heartbeats every 1 s (orphans re-queued after 3 s), "
        "retry bases of 0.5–1 s capped at 5–8 s, `FRAUD_THRESHOLD=0.55` (the big orders, over five times a "
        "shopper's average at a brand-new merchant, are held for review), "
        f"`SHUTDOWN_GRACE_SECS={GRACE_SECS}`, `JOB_RECOVERY_AFTER_SECS={stack.args.recovery_secs}` "
        "(default 30), the emails queue paused for "
        f"{stack.args.pause_secs} s (`--pause-secs`).",
        "",
        "## Money scenarios",
        "",
        "| scenario | how it was shown |",
        "| --- | --- |",
        *[f"| {x[0]} | {x[1].replace('|', '/')}" + (f" (**{'PASS' if x[2] else 'FAIL'}**)" if len(x) == 3 else "")
          + " |" for x in info["scenarios"]],
        "",
        "## Operator events",
        "",
        "| event | numbers |",
        "| --- | --- |",
        *lifecycle_rows(stack, life),
        "",
        "## Traffic",
        "",
        f"- purchases: {c['purchase_accepted']} accepted by signed webhooks ({c['purchase_retried']} only after "
        f"retries with the same `webhook-id`, {c['purchase_gave_up']} given up), each confirmed from the checkout page "
        f"(`/v1/track/purchase`: {c['sdk_purchase']}, {c['sdk_purchase_retried']} after retries)",
        f"- SDK: {c['click']} clicks, {c['identify']} identifies; {c['shoppers']} shoppers registered during the run",
        f"- merchant decisions: {c['status_confirmed']} confirmed, {c['status_reversed']} reversed (some at once, "
        f"before attribution; some after a confirmation, racing the shopper's payouts)",
        f"- admin reviews of flagged purchases: {c['review_approved']} approved, {c['review_rejected']} rejected, "
        f"{c['review_refused_not_flagged']} refused (no longer flagged)",
        f"- payouts: {c['payout_requested']} requested (destinations the provider refuses, ones it keeps pending "
        f"for 3 s, and plain IBANs)",
        "",
        "## Injected faults",
        "",
        "| at (UTC) | s since start | fault |",
        "| --- | ---: | --- |",
    ]
    for t, what in stack.faults:
        lines.append(f"| {utc(t)} | {t - T0:.1f} | {what} |")
    retries, events = worker_logs(stack.logs)
    lines += [
        "",
        "What the clients saw: "
        + (", ".join(f"{n} × {a}" for a, n in traffic.answers.most_common()) or "no failed answer")
        + " (each retried as a real client would: the merchant with the same `webhook-id`, the shopper with the "
        "same `Idempotency-Key`). Failed attempts by call: "
        + (", ".join(f"{k[:-len('_failed_attempts')]} {n}" for k, n in sorted(c.items())
                     if k.endswith("_failed_attempts")) or "none") + ".",
        "",
        "What the workers went through (from their logs): "
        + (", ".join(f"{n} {label}" for label, n in sorted(events.items())) or "no errors logged") + ".",
        "",
        "| job | retried after | times |",
        "| --- | --- | ---: |",
    ]
    for (job, err), n in retries.most_common(15):
        lines.append(f"| {job} | {err.replace('|', '/')} | {n} |")
    lines += [
        "",
        f"Traffic stopped, then the system settled in {settled_in:.0f} s.",
        "",
        "## Checks",
        "",
        "| check | result | numbers |",
        "| --- | --- | --- |",
    ]
    for name, status, detail in ck.rows:
        lines.append(f"| {name} | **{status}** | {detail.replace('|', '/')} |")
    lines += [
        "",
        f"Result: **{'FAIL' if ck.failed else 'PASS'}** ({len(ck.failed)} failed check(s)). "
        "KNOWN marks a documented limit that is reported but does not fail the run.",
        "",
        "## Log",
        "",
        "```",
        *LOG_LINES,
        "```",
        "",
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    p.add_argument("--pg-bin", required=True, help="directory of initdb and pg_ctl")
    p.add_argument("--logs", default=os.path.join(ROOT, "target", "faults"))
    p.add_argument("--report", default=os.path.join(ROOT, "docs", "faults", "REPORT.md"))
    p.add_argument("--rate", type=float, default=4.0, help="purchases per second")
    p.add_argument("--shoppers", type=int, default=12)
    p.add_argument("--settle-timeout", type=int, default=300)
    p.add_argument("--pause-secs", type=int, default=120,
                   help="how long the emails queue stays paused (through the rolling deploys)")
    p.add_argument("--recovery-secs", type=int, default=10, help="JOB_RECOVERY_AFTER_SECS of the run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", help="an empty directory for the clusters and records (default: a new temp dir)")
    args = p.parse_args()
    for f in os.listdir(args.logs) if os.path.isdir(args.logs) else []:
        if f.endswith(".log"):
            os.remove(os.path.join(args.logs, f))

    def on_signal(signum, frame):
        # Once: a second Ctrl-C (or scripts/faults.sh's trap) must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started in the background with SIGINT ignored

    stack = Stack(args)
    traffic = None
    try:
        log(f"starting PostgreSQL on 127.0.0.1:{stack.pg_port}, Redis on {stack.redis_port}, SMTP sink on "
            f"{stack.smtp_port}, payout provider on {stack.provider_port} (logs in {args.logs})")
        stack.start_postgres()
        stack.start_redis()
        stack.start_smtp()
        stack.start_provider()
        stack.migrate_and_admin()
        stack.start_api()
        stack.start_worker("A")
        stack.start_worker("B")
        log(f"api on 127.0.0.1:{stack.api_port}, workers A and B started")
        traffic = Traffic(stack, args.seed)
        traffic.setup(args.shoppers)
        log(f"merchant {traffic.mid}, {len(traffic.shoppers)} shoppers; traffic starts "
            f"({args.rate:g} purchases/s, statuses, payouts, new shoppers)")
        started = time.time()
        traffic.start(args.rate)
        life = Lifecycle()
        schedule(stack, traffic, 1.0, life, args.pause_secs)
        log("traffic stops; the merchant sends the decisions still due")
        traffic.finish()
        progress(stack, traffic)
        settle_started = time.time()
        settled_in = settle(stack, traffic, life, args.settle_timeout)
        ck, info = check(stack, traffic, life, settle_started)
        ended = time.time()
        report(args.report, stack, traffic, life, ck, info, settled_in, started, ended)
        print(f"report written to {os.path.relpath(args.report, ROOT)}")
        if ck.failed:
            print(f"FAIL: {len(ck.failed)} check(s) failed: " + ", ".join(r[0] for r in ck.failed))
            return 1
        print("PASS: every check passed")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", flush=True)
        return 130
    finally:
        if traffic:
            traffic.stop.set()
        stack.cleanup()


if __name__ == "__main__":
    sys.exit(main())
