// Unit tests of the browser SDK (api/static/sdk/v1/clicknback.js) under
// Node's test runner, with no npm packages: the script is evaluated in a fresh
// VM context holding a fake fetch, localStorage, document and clock.
// Run: node --test tests/browser/sdk.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { webcrypto } from "node:crypto";
import vm from "node:vm";

const SOURCE = readFileSync(new URL("../../api/static/sdk/v1/clicknback.js", import.meta.url), "utf8");
const API = "https://api.example";
const PK = "pk_test_123";
const OFFER = "0190c7a2-5b1e-7d3c-9a4f-2e8b6c1d0f3a";
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function fakeStorage() {
  const items = new Map();
  return {
    items,
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => void items.set(k, String(v)),
    removeItem: (k) => void items.delete(k),
  };
}

const blockedStorage = {
  getItem() { throw new Error("SecurityError"); },
  setItem() { throw new Error("SecurityError"); },
  removeItem() { throw new Error("SecurityError"); },
};

function fakeDocument() {
  const jar = new Map();
  const written = [];
  return {
    written,
    get cookie() { return [...jar].map(([k, v]) => `${k}=${v}`).join("; "); },
    set cookie(line) {
      written.push(line);
      const pair = line.split(";")[0];
      const eq = pair.indexOf("=");
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1));
    },
  };
}

const json = (status, body, headers = {}) =>
  new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });

/** One page load: the SDK evaluated in a new context. `replies` are answered in
 *  order (a Response, an Error to throw, or a function of (url, options)). */
function load({ href = "https://shop.example/", storage = fakeStorage(), document = fakeDocument(),
  replies = [], crypto = webcrypto } = {}) {
  const calls = [];
  const sleeps = [];
  const warnings = [];
  const ctx = {
    location: new URL(href),
    localStorage: storage,
    document,
    crypto,
    URL,
    AbortController,
    fetch: async (url, opts) => {
      calls.push({ url, opts, body: JSON.parse(opts.body), headers: opts.headers });
      const next = replies.shift() ?? json(204);
      if (next instanceof Error) throw next;
      return typeof next === "function" ? next(url, opts) : next;
    },
    // A clock a thousand times faster than the real one: the order of timers
    // is kept and every requested delay is recorded.
    setTimeout: (fn, ms) => {
      sleeps.push(ms);
      return setTimeout(fn, ms / 1000);
    },
    clearTimeout,
    console: { warn: (...args) => warnings.push(args.join(" ")) },
  };
  ctx.window = ctx;
  vm.runInNewContext(SOURCE, ctx);
  return { sdk: ctx.ClickNBack, calls, sleeps, warnings, storage, document };
}

const opts = (extra = {}) => ({ apiUrl: API + "/", publishableKey: PK, timeoutMs: 0, ...extra });
const plain = (r) => JSON.parse(JSON.stringify(r)); // objects of the VM's realm, compared by value

test("init on a referral landing records the click with a cleaned landing URL", async () => {
  const touchpoint = { touchpoint_id: "0190c7a2-0000-7000-8000-000000000001", recorded_at: "2025-01-01T00:00:00Z" };
  const page = load({
    href: `https://shop.example/tents?cnb_offer=${OFFER.toUpperCase()}&color=red&session_token=s3cret#access_token=x`,
    replies: [json(201, touchpoint)],
  });
  const r = await page.sdk.init(opts());
  assert.deepEqual(plain(r), { ok: true, status: 201, body: touchpoint });
  assert.equal(page.calls.length, 1);
  const [c] = page.calls;
  assert.equal(c.url, `${API}/v1/track/click`);
  assert.equal(c.opts.method, "POST");
  assert.equal(c.opts.credentials, "omit");
  assert.equal(c.opts.keepalive, true);
  assert.equal(c.headers["X-Publishable-Key"], PK);
  assert.equal(c.headers["Content-Type"], "application/json");
  assert.deepEqual(c.body, {
    landing_url: "https://shop.example/tents?color=red",
    offer_id: OFFER,
    anon_id: page.sdk.anonId(),
  });
  assert.match(page.sdk.anonId(), UUID_V4);
  assert.equal(page.storage.items.get("cnb_anon"), page.sdk.anonId());
});

test("cnb=1 is a referral without an offer; other landings record nothing", async () => {
  const ref = load({ href: "https://shop.example/?cnb=1&q=tent", replies: [json(201, {})] });
  await ref.sdk.init(opts());
  assert.deepEqual(ref.calls[0].body, { landing_url: "https://shop.example/?q=tent", anon_id: ref.sdk.anonId() });

  const direct = load({ href: "https://shop.example/tents?color=red" });
  assert.deepEqual(plain(await direct.sdk.init(opts())), { ok: true, status: 0, body: null });
  assert.equal(direct.calls.length, 0);
});

test("the stored anonymous id is reused by the next page load", async () => {
  const storage = fakeStorage();
  const first = load({ storage, href: "https://shop.example/?cnb=1", replies: [json(201, {})] });
  await first.sdk.init(opts());
  const second = load({ storage, href: "https://shop.example/checkout" });
  await second.sdk.init(opts());
  await second.sdk.confirmPurchase({ orderId: "A-1", purchaseToken: "t" });
  assert.equal(second.sdk.anonId(), first.sdk.anonId());
  assert.equal(second.calls[0].body.anon_id, first.calls[0].body.anon_id);
});

test("without localStorage the id lives in a first-party cookie", async () => {
  const document = fakeDocument();
  const first = load({ storage: blockedStorage, document, href: "https://shop.example/" });
  await first.sdk.init(opts());
  const id = first.sdk.anonId();
  const line = document.written.at(-1);
  assert.match(line, new RegExp(`^cnb_anon=${id}; `));
  for (const attr of ["Max-Age=31536000", "Path=/", "SameSite=Lax", "Secure"]) assert.ok(line.includes(attr), line);
  assert.ok(!/domain=/i.test(line), "a host-only cookie");

  const second = load({ storage: blockedStorage, document });
  await second.sdk.init(opts());
  assert.equal(second.sdk.anonId(), id);

  const http = load({ storage: blockedStorage, href: "http://localhost:8080/" });
  await http.sdk.init(opts());
  assert.ok(!http.document.written.at(-1).includes("Secure"));
});

test("storage: 'memory' keeps nothing in the browser", async () => {
  const page = load();
  await page.sdk.init(opts({ storage: "memory" }));
  assert.match(page.sdk.anonId(), UUID_V4);
  assert.equal(page.storage.items.size, 0);
  assert.equal(page.document.written.length, 0);
});

test("a 503 is retried after an exponential, jittered wait, then succeeds", async () => {
  const page = load({ href: "https://shop.example/?cnb=1", replies: [json(503), json(503), json(201, { touchpoint_id: "x" })] });
  const r = await page.sdk.init(opts({ retryBaseMs: 100 }));
  assert.equal(r.status, 201);
  assert.equal(r.ok, true);
  assert.equal(page.calls.length, 3);
  assert.equal(page.sleeps.length, 2);
  assert.ok(page.sleeps[0] >= 50 && page.sleeps[0] <= 100, `first wait ${page.sleeps[0]}`);
  assert.ok(page.sleeps[1] >= 100 && page.sleeps[1] <= 200, `second wait ${page.sleeps[1]}`);
  assert.equal(page.calls[1].body.anon_id, page.calls[0].body.anon_id);
});

test("after the attempt limit it gives up quietly, without throwing", async () => {
  const failing = () => json(503, { code: "service_unavailable" });
  const page = load({ href: "https://shop.example/?cnb=1", replies: Array.from({ length: 10 }, () => failing) });
  const r = await page.sdk.init(opts({ retryBaseMs: 10 }));
  assert.deepEqual(plain(r), { ok: false, status: 503, body: { code: "service_unavailable" } });
  assert.equal(page.calls.length, 5);
  assert.equal(page.sleeps.length, 4);
  assert.deepEqual(page.warnings, [], "silent without debug");

  const offline = load({ href: "https://shop.example/?cnb=1",
    replies: Array.from({ length: 10 }, () => new TypeError("Failed to fetch")) });
  const r2 = await offline.sdk.init(opts({ retryBaseMs: 10, maxAttempts: 3, debug: true }));
  assert.deepEqual(plain(r2), { ok: false, status: 0, body: null });
  assert.equal(offline.calls.length, 3);
  assert.ok(offline.warnings.some((w) => w.includes("giving up")), offline.warnings.join("\n"));
});

test("Retry-After is respected, and a too long one ends the retries", async () => {
  const page = load({ href: "https://shop.example/?cnb=1",
    replies: [json(429, { code: "rate_limited" }, { "retry-after": "3" }), json(201, {})] });
  const r = await page.sdk.init(opts({ retryBaseMs: 10 }));
  assert.equal(r.status, 201);
  assert.deepEqual(page.sleeps, [3000]);

  const long = load({ href: "https://shop.example/?cnb=1",
    replies: [json(429, { code: "rate_limited" }, { "retry-after": "3600" }), json(201, {})] });
  const r2 = await long.sdk.init(opts({ retryBaseMs: 10 }));
  assert.equal(r2.status, 429);
  assert.equal(long.calls.length, 1);
});

test("a 4xx answer is not retried", async () => {
  const problem = { code: "validation_failed", errors: [{ field: "offer_id", message: "is not an offer of this merchant" }] };
  const page = load({ href: `https://shop.example/?cnb_offer=${OFFER}`, replies: [json(422, problem), json(201, {})] });
  const r = await page.sdk.init(opts());
  assert.deepEqual(plain(r), { ok: false, status: 422, body: problem });
  assert.equal(page.calls.length, 1);
  assert.equal(page.sleeps.length, 0);
});

test("a request that hangs is aborted after timeoutMs and retried", async () => {
  const hang = (url, o) => new Promise((_, reject) => o.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  const page = load({ href: "https://shop.example/?cnb=1", replies: [hang, json(201, {})] });
  const r = await page.sdk.init(opts({ timeoutMs: 5000, retryBaseMs: 10 }));
  assert.equal(r.status, 201);
  assert.equal(page.calls.length, 2);
  assert.ok(page.calls[0].opts.signal, "requests carry an abort signal");
});

test("identify sends the bearer token with the anonymous id", async () => {
  const page = load({ replies: [json(204)] });
  await page.sdk.init(opts());
  const r = await page.sdk.identify("eyJ.token");
  assert.deepEqual(plain(r), { ok: true, status: 204, body: null });
  const [c] = page.calls;
  assert.equal(c.url, `${API}/v1/track/identify`);
  assert.equal(c.headers.Authorization, "Bearer eyJ.token");
  assert.equal(c.headers["X-Publishable-Key"], undefined);
  assert.equal(c.opts.credentials, "omit");
  assert.deepEqual(c.body, { anon_id: page.sdk.anonId() });
});

test("identify answered 409 starts a new anonymous id and identifies it", async () => {
  const page = load({ replies: [json(409, { code: "conflict" }), json(204)] });
  await page.sdk.init(opts());
  const before = page.sdk.anonId();
  const r = await page.sdk.identify("tok");
  assert.equal(r.status, 204);
  assert.equal(page.calls.length, 2);
  assert.equal(page.calls[0].body.anon_id, before);
  assert.notEqual(page.sdk.anonId(), before);
  assert.equal(page.calls[1].body.anon_id, page.sdk.anonId());
});

test("confirmPurchase sends the order id and purchase token", async () => {
  const page = load({ replies: [json(202, { result: "pending" })] });
  await page.sdk.init(opts());
  const r = await page.sdk.confirmPurchase({ orderId: "A-1001", purchaseToken: "ptok_abc" });
  assert.deepEqual(plain(r), { ok: true, status: 202, body: { result: "pending" } });
  const [c] = page.calls;
  assert.equal(c.url, `${API}/v1/track/purchase`);
  assert.equal(c.headers["X-Publishable-Key"], PK);
  assert.deepEqual(c.body, { anon_id: page.sdk.anonId(), order_id: "A-1001", purchase_token: "ptok_abc" });
});

test("calls before init, or an init without its options, resolve without a request", async () => {
  const page = load({ href: "https://shop.example/?cnb=1" });
  assert.deepEqual(plain(await page.sdk.identify("tok")), { ok: false, status: 0, body: null });
  assert.deepEqual(plain(await page.sdk.confirmPurchase({ orderId: "A", purchaseToken: "t" })), { ok: false, status: 0, body: null });
  assert.deepEqual(plain(await page.sdk.init({ apiUrl: API })), { ok: false, status: 0, body: null });
  assert.deepEqual(plain(await page.sdk.init()), { ok: false, status: 0, body: null });
  assert.equal(page.calls.length, 0);
});

test("without crypto.randomUUID the id is a v4 UUID from getRandomValues; reset() starts a new one", async () => {
  const page = load({ crypto: { getRandomValues: (a) => webcrypto.getRandomValues(a) } });
  await page.sdk.init(opts());
  const id = page.sdk.anonId();
  assert.match(id, UUID_V4);
  const fresh = page.sdk.reset();
  assert.match(fresh, UUID_V4);
  assert.notEqual(fresh, id);
  assert.equal(page.sdk.anonId(), fresh);
});

test("a tampered stored id is replaced", async () => {
  const storage = fakeStorage();
  storage.setItem("cnb_anon", "has spaces\n");
  const page = load({ storage });
  await page.sdk.init(opts());
  assert.match(page.sdk.anonId(), UUID_V4);
});
