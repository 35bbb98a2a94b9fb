"""Small HTTP helpers shared by the demo (scripts/demo.py) and the fault suite
(tests/faults/): JSON calls against the api and Standard Webhooks signing.
Standard library only."""

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid


def call(api, method, path, body=None, token=None, headers=None, timeout=30):
    """One JSON request: (status, decoded body). HTTP errors are answers, not
    exceptions; a connection failure raises OSError (urllib.error.URLError)."""
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = "Bearer " + token
    h.update(headers or {})
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(api + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, _decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read())


def _decode(raw):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"raw": raw.decode(errors="replace")}


def signature(secret, msg_id, timestamp, raw):
    """`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}` with a `whsec_` secret."""
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed(secret, body, msg_id=None):
    """The raw body and the Standard Webhooks headers for it. Pass the same
    `msg_id` to resend a delivery (the api replays it idempotently)."""
    raw = json.dumps(body).encode()
    msg = msg_id or "msg_" + uuid.uuid4().hex
    ts = str(int(time.time()))
    return raw, {"webhook-id": msg, "webhook-timestamp": ts, "webhook-signature": signature(secret, msg, ts, raw)}
