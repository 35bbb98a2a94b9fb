// Drives the job board in headless Chromium: refuses anonymous access with
// the login form, signs in through it, shows real counts and a dead job's
// error and its chain of runs, re-queues it with a click (a second chain,
// whose run then succeeds), finds a purchase on the purchase page and shows
// its timeline, and refuses another origin's form that posts to the board
// with the admin's credentials.
// Env: BOARD_URL, ADMIN_EMAIL, ADMIN_PASSWORD, QUEUE, EXPECT_ERROR,
// TIMELINE_QUERY (an order id), SCREENSHOT_DIR and TIMELINE_SCREENSHOT_DIR (optional).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const url = process.env.BOARD_URL;
const queue = process.env.QUEUE || "maintenance";
const expectError = process.env.EXPECT_ERROR || "";
const shots = process.env.SCREENSHOT_DIR;
if (shots) mkdirSync(shots, { recursive: true });
const shot = async (page, name) => { if (shots) await page.screenshot({ path: join(shots, name), fullPage: true }); };
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // No credentials: refused.
  const anon = await browser.newContext();
  const res = await anon.request.get(url);
  if (res.status() !== 401) fail(`anonymous /board answered ${res.status()}`);
  const page401 = await anon.newPage();
  const refused = await page401.goto(url).then(r => r.status() === 401, () => true);
  if (!refused) fail("anonymous browser navigation was not refused");
  console.log("anonymous access refused (401)");
  await anon.close();

  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await ctx.newPage();
  const form = await page.goto(url);
  if (form.status() !== 401) fail(`/board without a session answered ${form.status()}`);
  await page.fill('input[name="email"]', process.env.ADMIN_EMAIL);
  await page.fill('input[name="password"]', process.env.ADMIN_PASSWORD);
  const [signedIn] = await Promise.all([
    page.waitForResponse(r => r.url() === url && r.request().method() === "GET"),
    page.click('button[type="submit"]'),
  ]);
  if (signedIn.status() !== 200) fail(`/board after signing in answered ${signedIn.status()}`);
  const cookie = (await ctx.cookies()).find(c => c.name === "cnb_board");
  if (!cookie || !cookie.httpOnly || cookie.sameSite !== "Strict") fail(`session cookie ${JSON.stringify(cookie)}`);
  console.log("signed in with the login form (HttpOnly, SameSite=Strict session)");
  await shot(page, "board-login.png");
  const dead = page.locator(`span[data-queue="${queue}"][data-state="dead"]`);
  await dead.waitFor();
  await page.waitForFunction((q) => document.querySelector(`span[data-queue="${q}"][data-state="dead"]`)?.textContent === "1", queue, { timeout: 15000 });
  console.log(`queues shown; ${queue} has 1 dead job`);
  await shot(page, "board-queues.png");

  await dead.click();
  const row = page.locator("#jobs tbody tr[data-task]").first();
  await row.waitFor();
  const err = await row.locator("td.err").textContent();
  if (!err.includes(expectError)) fail(`dead job error was ${JSON.stringify(err)}`);
  console.log(`dead job shown with its error: ${err}`);
  await shot(page, "board-dead-job.png");

  // The job's chains: one so far, its one run dead with the error.
  await row.locator("span.task").click();
  await page.locator("#job-chains .chain").first().waitFor();
  const chains = () => page.$$eval("#job-chains .chain", cs => cs.map(c => ({
    title: c.querySelector("h3").textContent,
    runs: [...c.querySelectorAll("tr.run")].map(r => ({
      outcome: r.querySelector("td.outcome").textContent, error: r.querySelector("td.err").textContent })),
  })));
  const before = await chains();
  if (before.length !== 1 || !before[0].title.includes("(enqueue)") || before[0].runs.length !== 1
      || before[0].runs[0].outcome !== "dead" || !before[0].runs[0].error.includes(expectError))
    fail(`the dead job's chains: ${JSON.stringify(before)}`);
  console.log(`the job's chain shown: ${JSON.stringify(before)}`);

  await row.locator("button.requeue").click();
  await page.waitForFunction((q) => document.querySelector(`span[data-queue="${q}"][data-state="dead"]`)?.textContent === "0", queue, { timeout: 15000 });
  console.log("re-queued with a click; dead count is 0");
  await shot(page, "board-after-requeue.png");
  // The re-queue started a second chain, after the first, and its run succeeded.
  await page.waitForFunction(() => {
    const cs = document.querySelectorAll("#job-chains .chain");
    return cs.length === 2 && cs[1].querySelector("h3").textContent.includes("(requeue)")
      && cs[1].querySelector("tr.run:last-child td.outcome")?.textContent === "done";
  }, null, { timeout: 20000 }).catch(async () => fail(`chains after the re-queue: ${JSON.stringify(await chains())}`));
  const after = await chains();
  if (after[0].runs[0].outcome !== "dead") fail(`the first chain changed: ${JSON.stringify(after)}`);
  console.log(`chains in order after the re-queue: ${JSON.stringify(after)}`);
  await shot(page, "board-job-chains.png");

  // The purchase page: search by order id, then the purchase's timeline.
  const order = process.env.TIMELINE_QUERY;
  if (order) {
    await page.click("#nav-purchases");
    await page.locator("#purchase-q").waitFor({ state: "visible" });
    if (await page.locator("#jobs-page").isVisible()) fail("the jobs page is still shown");
    await page.fill("#purchase-q", order);
    await page.click('#purchase-search button[type="submit"]');
    await page.locator("#timeline tbody tr").first().waitFor();
    const hits = await page.$$eval("#purchases tbody tr[data-purchase]", rs => rs.length);
    if (hits !== 1) fail(`the search for ${order} listed ${hits} purchases`);
    const kinds = await page.$$eval("#timeline tbody tr", rs => rs.map(r => r.dataset.kind));
    const first = (k) => kinds.indexOf(k);
    const want = ["sdk_confirmation", "webhook_received", "webhook_replayed", "fraud_scored", "reviewed",
                  "status_received", "payout"];
    for (const k of want) if (first(k) < 0) fail(`no ${k} on the timeline: ${kinds.join(", ")}`);
    for (let i = 1; i < want.length; i++)
      if (first(want[i - 1]) > first(want[i])) fail(`${want[i - 1]} after ${want[i]}: ${kinds.join(", ")}`);
    if (!kinds.includes("job_run") || !kinds.includes("ledger_transfer")) fail(`kinds: ${kinds.join(", ")}`);
    const title = await page.textContent("#timeline-title");
    if (!title.includes(order)) fail(`timeline title ${title}`);
    // Text, never markup: the summaries hold no elements.
    const markup = await page.$$eval("#timeline tbody td", tds => tds.some(td => td.children.length));
    if (markup) fail("a timeline cell holds elements");
    console.log(`timeline of ${order}: ${kinds.length} entries in order`);
    const dir = process.env.TIMELINE_SCREENSHOT_DIR;
    if (dir) {
      mkdirSync(dir, { recursive: true });
      await page.screenshot({ path: join(dir, "timeline.png"), fullPage: true });
    }
  }
  await ctx.close();

  // Another origin's page posting to the board with the admin's Basic
  // credentials attached by the browser: refused, and nothing is paused.
  const base = new URL(url);
  const evil = await browser.newContext({
    httpCredentials: { username: process.env.ADMIN_EMAIL, password: process.env.ADMIN_PASSWORD, send: "always" },
  });
  await evil.route("http://evil.test/**", r => r.fulfill({ contentType: "text/html", body:
    `<form id="f" method="post" action="${base.origin}/board/api/queues/${queue}/pause"><input name="x" value="1"></form>` +
    `<script>document.getElementById("f").submit()</script>` }));
  const attacker = await evil.newPage();
  const posted = attacker.waitForResponse(r => r.url().endsWith(`/queues/${queue}/pause`));
  await attacker.goto("http://evil.test/");
  const answer = await posted;
  if (answer.status() !== 403) fail(`the cross-origin form post answered ${answer.status()}`);
  const check = await evil.request.get(`${base.origin}/board/api/queues`);
  const paused = (await check.json()).find(q => q.queue === queue)?.paused;
  if (paused !== false) fail(`the queue is paused: ${paused}`);
  console.log("another origin's form post with the admin's credentials refused (403), nothing paused");
  await evil.close();
} finally {
  await browser.close();
}
console.log("board browser test passed");
