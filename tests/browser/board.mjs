// Drives the job board in headless Chromium: refuses anonymous access with
// the login form, signs in through it, shows real counts and a dead job's
// error, re-queues it with a click, and refuses another origin's form that
// posts to the board with the admin's credentials.
// Env: BOARD_URL, ADMIN_EMAIL, ADMIN_PASSWORD, QUEUE, EXPECT_ERROR, SCREENSHOT_DIR (optional).
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

  await row.locator("button.requeue").click();
  await page.waitForFunction((q) => document.querySelector(`span[data-queue="${q}"][data-state="dead"]`)?.textContent === "0", queue, { timeout: 15000 });
  console.log("re-queued with a click; dead count is 0");
  await shot(page, "board-after-requeue.png");
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
