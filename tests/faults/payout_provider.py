"""A payout provider for the fault suite, speaking the HTTP API of
core/src/payout_provider.rs, recording every request and switchable to fail.

    python3 payout_provider.py --port P --key K --record calls.jsonl --mode-file mode

- `POST /v1/payouts` (Bearer key, `Idempotency-Key` = the body's `reference`)
  creates the payout once per key: `201` the first time, `200` with the same
  payout afterwards. A destination containing `fail` is refused (`failed`); one
  containing `slow` stays `pending` for 3 s, then is `paid`; anything else is
  `paid` at once.
- `GET /v1/payouts/{reference}` → `200` with the payout, `404` if never received.

The mode file, read on every request, holds one word:

    ok      behave (also when the file is missing or empty)
    503     answer 503 without touching anything
    hang    do the work, then wait --hang-secs before answering (longer than
            the client's timeout: the caller cannot know what happened)

Every request is one JSON line in the record: {at, op, reference, key, mode,
status, created} where `created` is true only on the request that moved money.
"""

import argparse
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
PAYOUTS = {}  # reference -> payout dict (with private fields _amount, _pending_until)


def view(p):
    if p["status"] == "pending" and time.time() >= p["_pending_until"]:
        p["status"] = "paid"
    return {k: v for k, v in p.items() if not k.startswith("_")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def mode(self):
        try:
            with open(self.server.mode_file) as f:
                return f.read().strip() or "ok"
        except OSError:
            return "ok"

    def record(self, **fields):
        fields["at"] = time.time()
        with LOCK, open(self.server.record, "a") as f:
            f.write(json.dumps(fields) + "\n")

    def answer(self, status, body):
        raw = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except OSError:
            pass  # the client gave up (a timeout): that is the point of `hang`

    def authorised(self):
        return self.headers.get("authorization") == "Bearer " + self.server.key

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        mode = self.mode()
        key = self.headers.get("idempotency-key")
        if self.path.rstrip("/") != "/v1/payouts":
            return self.answer(404, {"error": {"message": "no such route"}})
        if not self.authorised():
            self.record(op="create", key=key, reference=None, mode=mode, status=401, created=False)
            return self.answer(401, {"error": {"message": "invalid API key"}})
        try:
            order = json.loads(raw)
            ref = order["reference"]
        except (ValueError, KeyError, TypeError):
            self.record(op="create", key=key, reference=None, mode=mode, status=400, created=False)
            return self.answer(400, {"error": {"message": "malformed body"}})
        if key != ref:
            self.record(op="create", key=key, reference=ref, mode=mode, status=400, created=False)
            return self.answer(400, {"error": {"message": "Idempotency-Key must equal the reference"}})
        if mode == "503":
            self.record(op="create", key=key, reference=ref, mode=mode, status=503, created=False)
            return self.answer(503, {"error": {"message": "provider unavailable (fault injection)"}})
        with LOCK:
            p = PAYOUTS.get(ref)
            created = p is None
            if created:
                dest = str(order.get("destination", {}).get("value", "")).lower()
                refused = "fail" in dest
                p = {
                    "id": "prv_" + uuid.uuid4().hex,
                    "reference": ref,
                    "status": "failed" if refused else ("pending" if "slow" in dest else "paid"),
                    "failure_reason": "the destination account is closed" if refused else None,
                    "_amount": order.get("amount_minor"),
                    "_currency": order.get("currency"),
                    "_pending_until": time.time() + 3,
                }
                PAYOUTS[ref] = p
            body = view(p)
        status = 201 if created else 200
        self.record(op="create", key=key, reference=ref, mode=mode, status=status, created=created,
                    amount_minor=order.get("amount_minor"), currency=order.get("currency"),
                    outcome=body["status"])
        if mode == "hang":
            time.sleep(self.server.hang_secs)
        self.answer(status, body)

    def do_GET(self):
        mode = self.mode()
        m = re.fullmatch(r"/v1/payouts/([0-9a-fA-F-]{36})", self.path)
        if not m:
            return self.answer(404, {"error": {"message": "no such route"}})
        ref = m.group(1)
        if not self.authorised():
            self.record(op="find", reference=ref, mode=mode, status=401)
            return self.answer(401, {"error": {"message": "invalid API key"}})
        if mode == "503":
            self.record(op="find", reference=ref, mode=mode, status=503)
            return self.answer(503, {"error": {"message": "provider unavailable (fault injection)"}})
        with LOCK:
            p = PAYOUTS.get(ref)
            body = view(p) if p else None
        status = 200 if body else 404
        self.record(op="find", reference=ref, mode=mode, status=status, outcome=body and body["status"])
        if mode == "hang":
            time.sleep(self.server.hang_secs)
        self.answer(status, body or {"error": {"message": "no such payout"}})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--mode-file", required=True)
    p.add_argument("--hang-secs", type=float, default=5.0)
    a = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.key, srv.record, srv.mode_file, srv.hang_secs = a.key, a.record, a.mode_file, a.hang_secs
    print(f"payout provider on 127.0.0.1:{a.port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
