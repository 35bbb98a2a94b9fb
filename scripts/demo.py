"""Realistic traffic for ClickNBack (called by scripts/demo.sh).

Seeds a merchant with an offer and a few shoppers, then plays a day of their
lives: clicks on referral links, sign-ins that link the browser, purchases
reported by the merchant's signed webhooks and confirmed from the checkout
page, merchant confirmations and some reversals, and payouts of what became
available (one to a destination the sandbox refuses). One line per step with
counts; Ctrl-C stops cleanly with a summary.

With --shop it instead walks one shopper through the demo shop in a headless
Chromium (tests/browser/shop.mjs drives the pages): the referral link records
the click, the login identifies the browser, the checkout confirms the order
through the SDK; the demo plays the shop's server (it signs and sends the
purchase webhook with the order the page made, then the merchant's
confirmation) and the wallet page shows the cashback pending, then available.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid

import clicknback_client
from clicknback_client import signed

p = argparse.ArgumentParser()
p.add_argument("--api", default="http://127.0.0.1:8080")
p.add_argument("--admin-email", required=True)
p.add_argument("--admin-password", required=True)
p.add_argument("--shoppers", type=int, default=5)
p.add_argument("--purchases", type=int, default=30)
p.add_argument("--worker-metrics", default="http://127.0.0.1:8081/metrics")
p.add_argument("--shop", action="store_true", help="walk one shopper through the demo shop in headless Chromium")
p.add_argument("--shop-screenshots", default="", help="with --shop: save the pages' screenshots here")
p.add_argument("--shop-wait", type=int, default=180,
               help="with --shop: seconds the wallet page may take to show the cashback (ATTRIBUTION_DELAY_SECS and more)")
args = p.parse_args()
API = args.api
counts = {"clicks": 0, "purchases": 0, "confirmed": 0, "reversed": 0, "payouts": 0, "errors": 0}


def call(method, path, body=None, token=None, headers=None):
    status, answer = clicknback_client.call(API, method, path, body, token, headers)
    counts["errors"] += status >= 500
    return status, answer


def step(text):
    print(f"==> {text}", flush=True)


def progress(label, done, total):
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    print(f"\r    {label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, flush=True)


def wait_for(what, check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(1)
    print(f"    (gave up waiting for {what})")
    return None


def explainer_tokens():
    """The worker's fraud_explainer_tokens_total counters: the provider's own usage figures."""
    try:
        text = urllib.request.urlopen(args.worker_metrics, timeout=5).read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith("fraud_explainer_tokens_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def explain_flagged(admin):
    def flagged():
        _, page = call("GET", "/v1/admin/purchases?status=flagged&limit=100", token=admin)
        return page.get("data", []) if isinstance(page, dict) else []

    items = flagged()
    if not items:
        print("    none flagged this time")
        return
    # Explanations are written off the attribution path: wait until none is pending.
    wait_for("explanations", lambda: all(i.get("fraud_explanation_status") != "pending" for i in flagged()),
             timeout=60)
    items = flagged()
    for i in items[:3]:
        print(f"    {i['order_id']} {i['amount_minor'] / 100:.2f} {i['currency']}, score {i['fraud_score']:.2f}: "
              f"{i.get('fraud_explanation_status')}")
        if i.get("fraud_explanation"):
            print(f"      {i['fraud_explanation']}")
    tokens = explainer_tokens()
    done = sum(1 for i in items if i.get("fraud_explanation_status") == "done")
    if tokens and done:
        print(f"    explainer usage: {tokens.get('prompt', 0) / done:.0f} prompt + "
              f"{tokens.get('completion', 0) / done:.0f} completion tokens per flagged purchase "
              f"(the sandbox estimates four characters a token)")


def main():
    rnd = random.Random(7)
    run = uuid.uuid4().hex[:6]
    step("admin login")
    s, body = call("POST", "/v1/auth/login", {"email": args.admin_email, "password": args.admin_password})
    if s != 200:
        sys.exit(f"admin login failed: {s} {body}")
    admin = body["access_token"]

    step("merchant and offer")
    _, m = call("POST", "/v1/admin/merchants", {"name": f"Demo Outdoor Store {run}"}, admin)
    mid, secret, pk = m["id"], m["webhook_secret"], m["publishable_key"]
    status, offer = call("POST", f"/v1/admin/merchants/{mid}/offers",
                         {"name": "8% back", "rate_bps": 800, "max_cashback_minor": 4000,
                          "currency": "EUR", "active": True}, admin)
    if status != 201:
        sys.exit(f"creating the offer failed: {status} {offer}")
    print(f"    merchant {mid} with an 8% offer (at most 40.00 EUR a purchase)")
    time.sleep(1.1)  # purchases are stamped to the second; start after the offer
    if args.shop:
        shop(run, mid, secret, pk, offer["id"], admin)
        return

    step(f"{args.shoppers} shoppers register, click a referral link and sign in")
    shoppers = []
    for i in range(args.shoppers):
        email = f"demo-{run}-{i}@example.com"
        call("POST", "/v1/auth/register", {"email": email, "password": "password-123"})
        _, t = call("POST", "/v1/auth/login", {"email": email, "password": "password-123"})
        anon = "anon-" + uuid.uuid4().hex
        call("POST", "/v1/track/click", {"anon_id": anon, "landing_url": "https://shop.example/tents"},
             headers={"x-publishable-key": pk})
        counts["clicks"] += 1
        call("POST", "/v1/track/identify", {"anon_id": anon}, t["access_token"])
        shoppers.append({"email": email, "token": t["access_token"], "anon": anon})
        progress("shoppers", i + 1, args.shoppers)

    step(f"{args.purchases} purchases: webhook from the merchant, confirmation from the checkout page")
    orders = []
    for i in range(args.purchases):
        sh = rnd.choice(shoppers)
        order = f"demo-{run}-{i:04d}"
        token = uuid.uuid4().hex
        amount = rnd.choice([1999, 4500, 8900, 12900, 24900, 59900])
        raw, h = signed(secret, {"order_id": order, "amount_minor": amount, "currency": "EUR",
                                 "purchased_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "purchase_token": token})
        s, _ = call("POST", f"/v1/webhooks/{mid}/purchases", raw, headers=h)
        if s == 202:
            counts["purchases"] += 1
            call("POST", "/v1/track/purchase", {"anon_id": sh["anon"], "order_id": order, "purchase_token": token},
                 headers={"x-publishable-key": pk})
            orders.append(order)
        if rnd.random() < 0.3:
            call("POST", "/v1/track/click", {"anon_id": sh["anon"]}, headers={"x-publishable-key": pk})
            counts["clicks"] += 1
        progress("purchases", i + 1, args.purchases)

    step("attribution in the worker (ATTRIBUTION_DELAY_SECS after each purchase)")

    def credited():
        total = 0
        for sh in shoppers:
            _, w = call("GET", "/v1/me/wallet", token=sh["token"])
            total += sum(e["pending_minor"] + e["available_minor"] for e in w.get("data", []))
        return total

    wait_for("attribution", lambda: credited() > 0, timeout=180)
    print(f"    {credited() / 100:.2f} EUR of cashback credited so far")

    step("flagged purchases and what the fraud explainer says about them")
    explain_flagged(admin)

    step("the merchant confirms most orders and reverses a few")
    for n, order in enumerate(orders):
        status = "reversed" if rnd.random() < 0.15 else "confirmed"
        raw, h = signed(secret, {"status": status})
        s, _ = call("POST", f"/v1/webhooks/{mid}/purchases/{order}/status", raw, headers=h)
        if s == 202:
            counts[status] += 1
        progress("status updates", n + 1, len(orders))

    step("shoppers pay out what became available")

    def available(sh):
        _, w = call("GET", "/v1/me/wallet", token=sh["token"])
        return sum(e["available_minor"] for e in w.get("data", []))

    wait_for("confirmations", lambda: any(available(sh) >= 1000 for sh in shoppers), timeout=120)
    for n, sh in enumerate(shoppers):
        amount = available(sh)
        if amount < 1000:
            continue
        refused = n == 0  # the sandbox refuses destinations that contain "fail"
        dest = ({"type": "paypal", "value": f"payout-fail-{run}@example.com"} if refused
                else {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"})
        s, body = call("POST", "/v1/payouts", {"amount_minor": amount, "currency": "EUR", "destination": dest},
                       sh["token"], {"idempotency-key": f"demo-{run}-{n}"})
        if s == 202:
            counts["payouts"] += 1
            print(f"    {sh['email']}: payout of {amount / 100:.2f} EUR to {body['destination']['masked']}")
    step("payouts and statistics in the worker")
    time.sleep(8)  # statistics are recomputed at the end of a STATS_COALESCE_SECS bucket

    step("where everyone stands")
    for sh in shoppers:
        _, w = call("GET", "/v1/me/wallet", token=sh["token"])
        _, st = call("GET", "/v1/me/stats", token=sh["token"])
        e = (w.get("data") or [{}])[0]
        earned = sum(x["total_minor"] for x in st.get("data", []))
        print(f"    {sh['email']:<34} available {e.get('available_minor', 0) / 100:>8.2f}  "
              f"paid out {e.get('paid_out_minor', 0) / 100:>8.2f}  earned {earned / 100:>8.2f} EUR")


def shop(run, mid, secret, pk, offer_id, admin):
    """One shopper through the demo shop's pages in headless Chromium; the
    demo is the shop's server."""
    email, password = f"shopper-{run}@example.com", "password-123"
    step(f"shopper {email} registers")
    s, body = call("POST", "/v1/auth/register", {"email": email, "password": password})
    if s != 201:
        sys.exit(f"registering failed: {s} {body}")
    link = f"{API}/demo-shop/?cnb_offer={offer_id}&pk={pk}"
    step("the shopper follows the referral link in headless Chromium")
    print(f"    {link}")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "browser", "shop.mjs")
    env = dict(os.environ, SHOP_URL=link, SHOPPER_EMAIL=email, SHOPPER_PASSWORD=password, CURRENCY="EUR",
               WALLET_WAIT_SECS=str(args.shop_wait))
    if args.shop_screenshots:
        env["SCREENSHOT_DIR"] = os.path.abspath(args.shop_screenshots)
    browser = subprocess.Popen(["node", script], cwd=os.path.dirname(script), env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    order = None
    try:
        for line in browser.stdout:
            line = line.rstrip("\n")
            if line.startswith("ORDER "):
                order = json.loads(line[len("ORDER "):])
                step(f"the shop's server reports order {order['order_id']} "
                     f"({order['amount_minor'] / 100:.2f} {order['currency']}) by signed webhook")
                raw, h = signed(secret, {k: order[k] for k in
                                         ("order_id", "amount_minor", "currency", "purchased_at", "purchase_token")})
                s, body = call("POST", f"/v1/webhooks/{mid}/purchases", raw, headers=h)
                if s != 202:
                    sys.exit(f"the purchase webhook was refused: {s} {body}")
                counts["purchases"] += 1
                print(f"    accepted: purchase {body.get('id')}; the wallet page shows the cashback once the "
                      "worker attributes it (ATTRIBUTION_DELAY_SECS after the purchase)", flush=True)
                browser.stdin.write("SENT\n")
                browser.stdin.flush()
            elif line.startswith("PENDING "):
                step("the merchant confirms the order by signed status webhook")
                raw, h = signed(secret, {"status": "confirmed"})
                s, body = call("POST", f"/v1/webhooks/{mid}/purchases/{order['order_id']}/status", raw, headers=h)
                if s not in (200, 202):
                    sys.exit(f"the status webhook was refused: {s} {body}")
                counts["confirmed"] += 1
                browser.stdin.write("CONFIRMED\n")
                browser.stdin.flush()
            else:
                counts["clicks"] += line.startswith("referral click recorded")
                print(f"    browser: {line}", flush=True)
    finally:
        code = browser.wait()
    if code != 0:
        sys.exit(f"the shop walk failed (exit {code}); the wallet page waits --shop-wait "
                 f"({args.shop_wait} s) for the cashback: is the api's ATTRIBUTION_DELAY_SECS shorter?")
    if order:
        _, timeline = call("GET", f"/v1/admin/merchants/{mid}/orders/{order['order_id']}/timeline", token=admin)
        step(f"the order's timeline ({API}/board, Purchases, search {order['order_id']})")
        for e in (timeline or {}).get("entries", []):
            print(f"    {e['at'][11:19]}  {e['kind']:<22} {e['summary']}")
    if args.shop_screenshots:
        print(f"    screenshots in {args.shop_screenshots}: checkout.png, wallet-pending.png, wallet.png")


try:
    main()
except KeyboardInterrupt:
    print("\ninterrupted")
    print("done so far: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    sys.exit(130)
print("done: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
print(f"watch: {API}/board  http://127.0.0.1:8082/metrics  the SMTP inbox (http://127.0.0.1:1080 with ./scripts/run.sh)")
