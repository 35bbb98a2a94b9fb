// Renders /docs in headless Chromium with every request to another origin
// aborted: Swagger UI must draw the API's operations from the api's own
// files, and no request may leave the origin.
// Env: DOCS_URL.
import { chromium } from "playwright-core";

const url = process.env.DOCS_URL;
const origin = new URL(url).origin;
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const own = [], elsewhere = [];
  await ctx.route("**/*", (route) => {
    const u = route.request().url();
    if (u.startsWith(origin + "/") || u === origin) { own.push(u); return route.continue(); }
    if (u.startsWith("data:") || u.startsWith("blob:")) return route.continue();
    elsewhere.push(u);
    return route.abort("blockedbyclient");
  });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const res = await page.goto(url);
  if (res.status() !== 200) fail(`/docs answered ${res.status()}`);
  await page.locator(".opblock").first().waitFor({ state: "visible", timeout: 20000 });
  const ops = await page.locator(".opblock").count();
  if (ops < 20) fail(`only ${ops} operations shown`);
  const title = await page.textContent(".info .title");
  if (!title.includes("ClickNBack API")) fail(`title ${JSON.stringify(title)}`);
  if (!await page.locator('.opblock-summary-path[data-path="/v1/admin/purchases/{id}/timeline"]').first().isVisible())
    fail("the timeline operation is not listed");
  await page.waitForLoadState("networkidle");
  if (elsewhere.length) fail(`requests left the origin: ${elsewhere.join(", ")}`);
  if (errors.length) fail(`page errors: ${errors.join("; ")}`);
  if (!own.some((u) => u.endsWith("/openapi.json"))) fail(`the description was not fetched: ${own.join(", ")}`);
  console.log(`/docs rendered ${ops} operations from ${own.length} requests to ${origin}; none elsewhere`);
} finally {
  await browser.close();
}
console.log("docs browser test passed");
