// Drives the demo shop in headless Chromium, from a referral link to the
// cashback wallet: the landing records the click, the login links the
// browser to the shopper, the checkout confirms the purchase through the SDK,
// and the wallet shows the cashback pending, then available.
//
// The shop has no server: whoever runs this script plays it (the browser test
// tests/tests/shop_browser.rs, or `./scripts/demo.sh --shop`). Over
// stdin/stdout this script prints `ORDER {json}` (the order id, purchase
// token, amount and time the page produced) and waits for a `SENT` line (the
// signed purchase webhook was accepted); then prints `PENDING {json}` once the
// wallet shows the cashback pending and waits for `CONFIRMED` (the signed
// status webhook was accepted).
// Env: SHOP_URL (the referral link), SHOPPER_EMAIL, SHOPPER_PASSWORD, CURRENCY,
// SCREENSHOT_DIR (optional), WALLET_WAIT_SECS (how long the wallet page may
// take to show the cashback; 30 by default).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

const shopUrl = process.env.SHOP_URL;
const currency = process.env.CURRENCY || "EUR";
const shots = process.env.SCREENSHOT_DIR;
const walletWait = 1000 * Number(process.env.WALLET_WAIT_SECS || 30);
if (shots) mkdirSync(shots, { recursive: true });
const shot = async (page, name) => { if (shots) await page.screenshot({ path: join(shots, name), fullPage: true }); };
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(word) {
  const { value, done } = await lines.next();
  if (done || value.trim() !== word) fail(`expected ${word} from the test, got ${JSON.stringify(value)}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const origin = new URL(shopUrl).origin;
  const foreign = [];
  await ctx.route(u => new URL(u).origin !== origin, r => { foreign.push(r.request().url()); return r.abort(); });
  const page = await ctx.newPage();
  const problems = [];
  page.on("console", m => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", e => problems.push(String(e)));

  // The referral landing records the click.
  await page.goto(shopUrl);
  await page.waitForSelector("#referral:not([data-state=pending])");
  const referral = await page.getAttribute("#referral", "data-state");
  if (referral !== "recorded") fail(`referral ${referral}: ${await page.textContent("#referral")}`);
  const touchpoint = await page.getAttribute("#referral", "data-touchpoint-id");
  if (new URL(page.url()).searchParams.has("pk")) fail("the publishable key stayed in the address bar");
  const anonId = await page.getAttribute("#anon-id", "data-anon-id");
  console.log(`referral click recorded (touchpoint ${touchpoint}) for browser ${anonId}`);

  // Log in: the SDK links the browser to the shopper.
  await page.click("#nav-login");
  await page.waitForSelector("#login-form");
  await page.fill("#email", process.env.SHOPPER_EMAIL);
  await page.fill("#password", process.env.SHOPPER_PASSWORD);
  await page.click("#login-submit");
  await page.waitForSelector("#login-status:not([hidden])");
  const login = await page.getAttribute("#login-status", "data-state");
  if (login !== "identified") fail(`login ${login}: ${await page.textContent("#login-status")}`);
  if (await page.getAttribute("#anon-id", "data-anon-id") !== anonId) fail("the browser id changed across pages");
  console.log("logged in; the browser is linked to the shopper");

  // Check out: the SDK confirms the purchase; the webhook is not there yet.
  await page.click("#login-next a");
  await page.waitForSelector("body[data-page=checkout]");
  await page.click("#place-order");
  await page.waitForSelector("#order:not([data-state=none])");
  const order = await page.$eval("#order", el => ({
    order_id: el.dataset.orderId,
    purchase_token: el.dataset.purchaseToken,
    amount_minor: Number(el.dataset.amountMinor),
    currency: el.dataset.currency,
    purchased_at: el.dataset.purchasedAt,
    state: el.dataset.state,
    result: el.dataset.result,
  }));
  if (order.state !== "confirmed" || order.result !== "pending") fail(`checkout ${JSON.stringify(order)}`);
  const shown = JSON.parse(await page.textContent("#webhook-body"));
  if (shown.order_id !== order.order_id || shown.purchase_token !== order.purchase_token) fail("the webhook body shown is not the order's");
  console.log(`order ${order.order_id} placed; the SDK confirmation answered ${order.result}`);
  await shot(page, "checkout.png");
  console.log("ORDER " + JSON.stringify(order));
  await expectLine("SENT");

  // The wallet: pending, then available once the shop confirms the order.
  await page.click("#nav-wallet");
  await page.waitForSelector("body[data-page=wallet]");
  const pending = `#wallet-${currency}-pending`, available = `#wallet-${currency}-available`;
  await page.waitForFunction((s) => Number(document.querySelector(s)?.dataset.minor) > 0, pending, { timeout: walletWait });
  const pendingMinor = Number(await page.getAttribute(pending, "data-minor"));
  const availableBefore = Number(await page.getAttribute(available, "data-minor"));
  if (availableBefore !== 0) fail(`available before the confirmation: ${availableBefore}`);
  console.log(`wallet shows ${pendingMinor} pending (${await page.textContent(pending)})`);
  await shot(page, "wallet-pending.png");
  console.log("PENDING " + JSON.stringify({ pending_minor: pendingMinor }));
  await expectLine("CONFIRMED");
  await page.waitForFunction((a) => Number(document.querySelector(a)?.dataset.minor) > 0, available, { timeout: walletWait });
  const availableMinor = Number(await page.getAttribute(available, "data-minor"));
  const pendingAfter = Number(await page.getAttribute(pending, "data-minor"));
  if (availableMinor !== pendingMinor || pendingAfter !== 0) fail(`after confirmation: ${pendingAfter} pending, ${availableMinor} available`);
  console.log(`wallet shows ${availableMinor} available (${await page.textContent(available)}), 0 pending`);
  await shot(page, "wallet.png");
  if (problems.length) fail(`the pages reported errors: ${problems.join(" | ")}`);
  if (foreign.length) fail(`the shop asked another origin: ${foreign.join(", ")}`);
  await ctx.close();
} finally {
  await browser.close();
}
console.log("shop browser test passed");
process.exit(0);
