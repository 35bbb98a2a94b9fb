/*! ClickNBack browser SDK 1.0.0
 *
 * Records the click of a referral link, links the browser to the shopper's
 * account after login, and confirms purchases from the checkout page. No
 * dependencies, no third-party cookies: the browser's anonymous id lives in
 * the merchant's own localStorage (or a first-party `cnb_anon` cookie).
 * Every call resolves to {ok, status, body} and never rejects or throws.
 *
 *   <script src="https://API/sdk/v1/clicknback.js"></script>
 *   <script src="/js/cashback.js"></script>
 *
 *   // cashback.js, on every page:
 *   ClickNBack.init({ apiUrl: "https://API", publishableKey: "pk_..." });
 *   // after the shopper logs in:
 *   ClickNBack.identify(accessToken);
 *   // on the checkout page:
 *   ClickNBack.confirmPurchase({ orderId: "A-1001", purchaseToken: token });
 *
 * A landing URL is a referral click when it carries `cnb_offer=<offer id>`
 * or `cnb=1`. See docs/SDK.md.
 */
(function (root) {
  "use strict";
  if (root.ClickNBack && root.ClickNBack.version) return;

  var VERSION = "1.0.0";
  var KEY = "cnb_anon"; // localStorage key and cookie name
  var ONE_YEAR_SECS = 365 * 24 * 3600;
  var MAX_RETRY_AFTER_MS = 60000; // a longer Retry-After: give up instead
  var UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  // Query parameters never sent in `landing_url`: ours (sent as fields) and
  // any that look like they carry a credential.
  var DROPPED_PARAM = /^cnb(_|$)|token|secret|password|auth|session|signature/i;

  var cfg = null;
  var store = null;
  var debug = false;

  function warn() {
    if (debug && root.console) {
      root.console.warn.apply(root.console, ["[ClickNBack]"].concat([].slice.call(arguments)));
    }
  }

  function result(ok, status, body) {
    return { ok: ok, status: status, body: body === undefined ? null : body };
  }

  // ---- the anonymous id ---------------------------------------------------

  // A Storage-like object ({getItem, setItem}) as the SDK's store.
  function wrap(s) {
    return { get: function () { return s.getItem(KEY); }, set: function (v) { s.setItem(KEY, v); } };
  }

  function localStore() {
    try {
      var ls = root.localStorage;
      ls.setItem(KEY + "_probe", "1");
      ls.removeItem(KEY + "_probe");
      return wrap(ls);
    } catch (e) {
      return null; // blocked or unavailable storage
    }
  }

  function cookieStore() {
    var doc = root.document;
    if (!doc || typeof doc.cookie !== "string") return null;
    var secure = root.location && root.location.protocol === "https:" ? "; Secure" : "";
    return {
      get: function () {
        var m = doc.cookie.match(/(?:^|;\s*)cnb_anon=([^;]*)/);
        return m ? decodeURIComponent(m[1]) : null;
      },
      set: function (v) {
        doc.cookie = KEY + "=" + encodeURIComponent(v) + "; Max-Age=" + ONE_YEAR_SECS +
          "; Path=/; SameSite=Lax" + secure;
      },
    };
  }

  function memoryStore() {
    var items = {};
    return wrap({ getItem: function (k) { return items[k] || null; }, setItem: function (k, v) { items[k] = v; } });
  }

  function pickStore(opt) {
    if (opt && typeof opt.getItem === "function" && typeof opt.setItem === "function") return wrap(opt);
    if (opt === "memory") return memoryStore();
    if (opt === "cookie") return cookieStore() || memoryStore();
    return localStore() || cookieStore() || memoryStore();
  }

  function newId() {
    var c = root.crypto;
    if (typeof c.randomUUID === "function") return c.randomUUID();
    var b = c.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function save(id) {
    try { store.set(id); } catch (e) { warn("could not store the anonymous id", e); }
    return id;
  }

  function anonId() {
    store = store || pickStore();
    var id = null;
    try { id = store.get(); } catch (e) { /* unreadable: start a new one */ }
    // What the api accepts: 1 to 128 visible characters.
    return id && /^[\x21-\x7e]{1,128}$/.test(id) ? id : save(newId());
  }

  // ---- the landing URL ------------------------------------------------------

  // {offer_id?, landing_url} for a referral landing URL, or null.
  function referral(href) {
    var url;
    try { url = new URL(href); } catch (e) { return null; }
    var offer = url.searchParams.get("cnb_offer");
    if (offer === null && !url.searchParams.has("cnb")) return null;
    url.hash = "";
    Array.from(url.searchParams.keys()).forEach(function (k) {
      if (DROPPED_PARAM.test(k)) url.searchParams.delete(k);
    });
    var landing = url.href.length <= 2048 ? url.href : (url.origin + url.pathname).slice(0, 2048);
    var out = { landing_url: landing };
    if (offer && UUID.test(offer)) out.offer_id = offer.toLowerCase();
    return out;
  }

  // ---- requests with retries ------------------------------------------------

  function retryAfterMs(value) {
    if (!value) return null;
    if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
    var at = Date.parse(value);
    return isNaN(at) ? null : Math.max(0, at - Date.now());
  }

  // The wait before attempt n + 1: exponential with jitter, never shorter than
  // the server's Retry-After; null when the server asks for too long a wait.
  function backoff(n, retryAfter) {
    var exp = Math.min(cfg.retryMaxMs, cfg.retryBaseMs * Math.pow(2, n - 1));
    var ms = exp / 2 + Math.random() * exp / 2;
    var asked = retryAfterMs(retryAfter);
    if (asked !== null && asked > MAX_RETRY_AFTER_MS) return null;
    return asked === null ? ms : Math.max(ms, asked);
  }

  function request(url, opts) {
    if (!cfg.timeoutMs || typeof AbortController !== "function") return root.fetch(url, opts);
    var ac = new AbortController();
    var timer = setTimeout(function () { ac.abort(); }, cfg.timeoutMs);
    return root.fetch(url, Object.assign({ signal: ac.signal }, opts)).finally(function () {
      clearTimeout(timer);
    });
  }

  function readBody(res) {
    return res.text().then(function (t) { return t ? JSON.parse(t) : null; })
      .catch(function () { return null; }); // not JSON: no body
  }

  // POSTs `payload` as JSON, retrying network errors, 5xx and 429.
  async function send(path, payload, headers) {
    var opts = {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      keepalive: true,
      headers: Object.assign({ "Content-Type": "application/json" }, headers),
      body: JSON.stringify(payload),
    };
    for (var n = 1; ; n++) {
      var res = null;
      try {
        res = await request(cfg.apiUrl + path, opts);
      } catch (e) {
        warn(path, "network error:", e && e.message);
      }
      if (res && res.status < 500 && res.status !== 429) {
        return result(res.ok, res.status, await readBody(res));
      }
      var wait = n < cfg.maxAttempts ? backoff(n, res && res.headers.get("Retry-After")) : null;
      if (wait === null) {
        warn(path, "giving up after", n, "attempt(s)", res ? "status " + res.status : "no response");
        return res ? result(false, res.status, await readBody(res)) : result(false, 0, null);
      }
      await new Promise(function (resolve) { setTimeout(resolve, wait); });
    }
  }

  // ---- the public API -------------------------------------------------------

  function number(v, fallback) {
    return typeof v === "number" && v >= 0 && isFinite(v) ? v : fallback;
  }

  async function init(options) {
    var o = options || {};
    debug = !!o.debug;
    if (!o.apiUrl || !o.publishableKey || typeof root.fetch !== "function") {
      cfg = null;
      warn("init needs apiUrl, publishableKey and a browser with fetch");
      return result(false, 0, null);
    }
    cfg = {
      apiUrl: String(o.apiUrl).replace(/\/+$/, ""),
      publishableKey: String(o.publishableKey),
      maxAttempts: Math.max(1, number(o.maxAttempts, 5)),
      retryBaseMs: number(o.retryBaseMs, 500),
      retryMaxMs: number(o.retryMaxMs, 30000),
      timeoutMs: number(o.timeoutMs, 10000),
    };
    store = pickStore(o.storage);
    save(anonId()); // renews the cookie's year
    var click = referral(root.location && root.location.href);
    if (!click) return result(true, 0, null); // not a referral landing: nothing to record
    click.anon_id = anonId();
    return send("/v1/track/click", click, { "X-Publishable-Key": cfg.publishableKey });
  }

  async function identify(accessToken) {
    if (!cfg || !accessToken) {
      warn("identify needs init() first and an access token");
      return result(false, 0, null);
    }
    var auth = { Authorization: "Bearer " + accessToken };
    var r = await send("/v1/track/identify", { anon_id: anonId() }, auth);
    if (r.status === 409) {
      // The id belongs to another account: this browser starts a new one.
      r = await send("/v1/track/identify", { anon_id: save(newId()) }, auth);
    }
    return r;
  }

  async function confirmPurchase(purchase) {
    var p = purchase || {};
    if (!cfg) {
      warn("confirmPurchase needs init() first");
      return result(false, 0, null);
    }
    return send("/v1/track/purchase", {
      anon_id: anonId(),
      order_id: p.orderId == null ? "" : String(p.orderId),
      purchase_token: p.purchaseToken == null ? "" : String(p.purchaseToken),
    }, { "X-Publishable-Key": cfg.publishableKey });
  }

  // Wraps a call so that it never rejects into the page.
  function safe(fn) {
    return function () {
      return fn.apply(null, arguments).catch(function (e) {
        warn("unexpected error", e);
        return result(false, 0, null);
      });
    };
  }

  function quiet(fn, fallback) {
    return function () {
      try { return fn(); } catch (e) { warn("unexpected error", e); return fallback; }
    };
  }

  root.ClickNBack = {
    version: VERSION,
    init: safe(init),
    identify: safe(identify),
    confirmPurchase: safe(confirmPurchase),
    anonId: quiet(anonId, ""),
    reset: quiet(function () { store = store || pickStore(); return save(newId()); }, ""),
  };
})(typeof window !== "undefined" ? window : this);
