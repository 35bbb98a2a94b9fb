// The demo shop's pages: a product page reached through a referral link, a
// login that links the browser to the shopper, a checkout that confirms the
// purchase through the ClickNBack SDK, and the shopper's cashback wallet.
// A file rather than inline script, so the pages' `script-src 'self'` holds.
// The api is this page's own origin; the publishable key comes from `?pk=`
// (then kept in localStorage), the shopper's token lives in sessionStorage.
(function () {
  "use strict";
  var PK_KEY = "demo_shop_pk";
  var TOKEN_KEY = "demo_shop_token";
  var EMAIL_KEY = "demo_shop_email";

  function $(id) { return document.getElementById(id); }

  function show(id, text, state) {
    var el = $(id);
    el.textContent = text;
    if (state) el.setAttribute("data-state", state);
    el.hidden = false;
  }

  function problem(r) {
    return r.body && r.body.detail ? r.body.detail + " (" + r.status + ")" : "no answer (status " + r.status + ")";
  }

  function session(key, value) {
    try {
      if (value === undefined) return sessionStorage.getItem(key);
      if (value === null) sessionStorage.removeItem(key); else sessionStorage.setItem(key, value);
    } catch (e) { /* storage blocked: the demo works for this page only */ }
    return null;
  }

  // `?pk=` wins and is kept; it is then taken out of the address bar so that
  // it does not travel in the landing URL or in bookmarks.
  function publishableKey() {
    var url = new URL(location.href);
    var pk = url.searchParams.get("pk");
    try {
      if (pk) localStorage.setItem(PK_KEY, pk); else pk = localStorage.getItem(PK_KEY);
    } catch (e) { /* keep the one in the URL, if any */ }
    if (url.searchParams.has("pk")) {
      url.searchParams.delete("pk");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    return pk;
  }

  function randomHex(bytes) {
    return Array.prototype.map.call(crypto.getRandomValues(new Uint8Array(bytes)), function (b) {
      return (b + 0x100).toString(16).slice(1);
    }).join("");
  }

  function money(minor, currency) {
    try {
      var f = new Intl.NumberFormat("en", { style: "currency", currency: currency });
      return f.format(minor / Math.pow(10, f.resolvedOptions().maximumFractionDigits));
    } catch (e) {
      return minor + " " + currency + " (minor units)";
    }
  }

  async function api(method, path, token, body) {
    var headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    if (body) headers["Content-Type"] = "application/json";
    try {
      var res = await fetch(path, { method: method, headers: headers, body: body && JSON.stringify(body) });
      var text = await res.text();
      return { ok: res.ok, status: res.status, body: text ? JSON.parse(text) : null };
    } catch (e) {
      return { ok: false, status: 0, body: null };
    }
  }

  // The header, the missing-key notice and the footer, the same on every page.
  function chrome() {
    document.body.insertAdjacentHTML("afterbegin",
      '<header><a class="brand" href="/demo-shop/">Trailhead Outfitters</a><nav>' +
      '<a href="/demo-shop/" id="nav-shop">Shop</a>' +
      '<a href="/demo-shop/checkout.html" id="nav-checkout">Checkout</a>' +
      '<a href="/demo-shop/wallet.html" id="nav-wallet">Cashback wallet</a>' +
      '<a href="/demo-shop/login.html" id="nav-login">Log in</a>' +
      '<button type="button" id="nav-logout" hidden>Log out <span id="nav-user"></span></button>' +
      "</nav></header>");
    document.querySelector("main").insertAdjacentHTML("afterbegin",
      '<p class="status" id="setup" data-state="missing-key" hidden>This page has no publishable key: ' +
      "open the shop once through a referral link carrying <code>?pk=&lt;publishable key&gt;</code>; " +
      "the key is then kept in this browser.</p>");
    document.body.insertAdjacentHTML("beforeend",
      "<footer>A demo shop for the ClickNBack SDK. No shop server here: the page only talks to " +
      'ClickNBack\'s api. Browser id: <code id="anon-id"></code></footer>');
  }

  function navigation() {
    var email = session(EMAIL_KEY);
    var loggedIn = !!session(TOKEN_KEY);
    $("nav-login").hidden = loggedIn;
    $("nav-logout").hidden = !loggedIn;
    $("nav-user").textContent = email ? "(" + email + ")" : "";
  }

  function logoutButton() {
    $("nav-logout").addEventListener("click", function () {
      session(TOKEN_KEY, null);
      session(EMAIL_KEY, null);
      ClickNBack.reset(); // a shared device: the next shopper gets a new browser id
      location.href = "/demo-shop/";
    });
  }

  // ---- the pages ------------------------------------------------------------

  function product(ready) {
    ready.then(function (r) {
      if (r.ok && r.status === 0) {
        show("referral", "You came here directly: no referral click to record.", "direct");
      } else if (r.ok) {
        $("referral").setAttribute("data-touchpoint-id", r.body.touchpoint_id);
        show("referral", "Referral click recorded for this browser (touchpoint " + r.body.touchpoint_id + ").", "recorded");
      } else {
        show("referral", "The referral click could not be recorded: " + problem(r), "failed");
      }
    });
  }

  function login(ready) {
    var form = $("login-form");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      $("login-submit").disabled = true;
      var email = $("email").value.trim();
      var r = await api("POST", "/v1/auth/login", null, { email: email, password: $("password").value });
      $("login-submit").disabled = false;
      if (!r.ok) {
        show("login-status", "Login failed: " + problem(r), "failed");
        return;
      }
      session(TOKEN_KEY, r.body.access_token);
      session(EMAIL_KEY, email);
      navigation();
      await ready;
      var linked = await ClickNBack.identify(r.body.access_token);
      if (linked.ok) {
        show("login-status", "Logged in as " + email + "; this browser is linked to your account.", "identified");
      } else {
        show("login-status", "Logged in as " + email + ", but linking this browser failed: " + problem(linked), "unlinked");
      }
      $("login-next").hidden = false;
    });
  }

  function checkout(ready) {
    var email = session(EMAIL_KEY);
    if (email) $("checkout-user").textContent = email;
    $("place-order").addEventListener("click", async function () {
      $("place-order").disabled = true;
      var order = $("order");
      var orderId = "A-" + Date.now().toString(36).toUpperCase() + "-" + randomHex(2).toUpperCase();
      var purchaseToken = "ptok_" + randomHex(16);
      var purchasedAt = new Date().toISOString().replace(/\.\d+Z$/, "Z");
      order.setAttribute("data-order-id", orderId);
      order.setAttribute("data-purchase-token", purchaseToken);
      order.setAttribute("data-purchased-at", purchasedAt);
      $("order-id").textContent = orderId;
      $("purchase-token").textContent = purchaseToken;
      $("purchased-at").textContent = purchasedAt;
      $("webhook-body").textContent = JSON.stringify({
        order_id: orderId,
        amount_minor: Number(order.getAttribute("data-amount-minor")),
        currency: order.getAttribute("data-currency"),
        purchased_at: purchasedAt,
        purchase_token: purchaseToken,
      }, null, 2);
      order.hidden = false;
      await ready;
      var r = await ClickNBack.confirmPurchase({ orderId: orderId, purchaseToken: purchaseToken });
      var outcome = r.ok && r.body ? r.body.result : "failed";
      order.setAttribute("data-result", outcome);
      order.setAttribute("data-state", r.ok ? "confirmed" : "failed");
      show("confirmation", r.ok
        ? "ClickNBack has the purchase confirmation (" + outcome + ")."
        : "The purchase confirmation failed: " + problem(r), r.ok ? "confirmed" : "failed");
    });
  }

  function cell(text, id, minor) {
    var td = document.createElement("td");
    td.textContent = text;
    if (id) {
      td.id = id;
      td.className = "amount";
      td.setAttribute("data-minor", String(minor));
    }
    return td;
  }

  function wallet() {
    async function load() {
      var token = session(TOKEN_KEY);
      if (!token) {
        show("wallet-status", "Log in to see your cashback wallet.", "logged-out");
        return;
      }
      var r = await api("GET", "/v1/me/wallet", token);
      if (r.status === 401) {
        session(TOKEN_KEY, null);
        show("wallet-status", "Your session has ended: log in again.", "logged-out");
        return;
      }
      if (!r.ok) {
        show("wallet-status", "The wallet could not be read: " + problem(r), "failed");
        return;
      }
      var rows = $("wallet-rows");
      rows.textContent = "";
      r.body.data.forEach(function (b) {
        var tr = document.createElement("tr");
        var c = b.currency;
        tr.id = "wallet-" + c;
        tr.setAttribute("data-currency", c);
        tr.appendChild(cell(c));
        tr.appendChild(cell(money(b.pending_minor, c), "wallet-" + c + "-pending", b.pending_minor));
        tr.appendChild(cell(money(b.available_minor, c), "wallet-" + c + "-available", b.available_minor));
        tr.appendChild(cell(money(b.reserved_minor, c), "wallet-" + c + "-reserved", b.reserved_minor));
        tr.appendChild(cell(money(b.paid_out_minor, c), "wallet-" + c + "-paid-out", b.paid_out_minor));
        rows.appendChild(tr);
      });
      $("wallet").hidden = r.body.data.length === 0;
      $("wallet-status").setAttribute("data-updated-at", new Date().toISOString());
      show("wallet-status", r.body.data.length ? "Your cashback, per currency." : "No cashback yet.",
        r.body.data.length ? "loaded" : "empty");
    }
    $("refresh-wallet").addEventListener("click", load);
    load();
    setInterval(function () { if (!document.hidden) load(); }, 3000);
  }

  chrome();
  var pk = publishableKey();
  if (!pk) $("setup").hidden = false;
  var ready = ClickNBack.init({ apiUrl: location.origin, publishableKey: pk || "", debug: true });
  $("anon-id").textContent = ClickNBack.anonId();
  $("anon-id").setAttribute("data-anon-id", ClickNBack.anonId());
  navigation();
  logoutButton();
  var pages = { product: product, login: login, checkout: checkout, wallet: wallet };
  pages[document.body.getAttribute("data-page")](ready);
})();
