// The job board: polls /board/api every 3 s and runs the operator actions;
// a job's chains of runs; the purchase page (search, a purchase's timeline).
// Everything from the API is shown as text, never as HTML.
const STATES = ["outbox_backlog", "scheduled", "ready", "running", "retrying", "done", "dead"];
const STATE_OF = { outbox_backlog: "outbox" };
let selected = null; // {queue, state}
let detail = null; // {queue, task_id}: the job whose chains are shown

const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return e;
};

// The session's CSRF token, sent with every call that changes something
// (empty when the page was opened with Basic credentials or a token).
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(path, opts = {}) {
  const headers = { "accept": "application/json" };
  if (opts.method && opts.method !== "GET") headers["x-csrf-token"] = CSRF;
  const res = await fetch("/board/api" + path, { credentials: "same-origin", ...opts, headers });
  if (res.status === 401) { location.reload(); return null; } // the session ended: the login form
  if (res.status === 204) return null;
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || res.statusText);
  return body;
}

function toast(msg) {
  const t = document.getElementById("toast");
  t.textContent = msg; t.style.display = "block";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.style.display = "none", 2500);
}

async function act(path, method, msg) {
  try { await api(path, { method }); toast(msg); await refresh(); }
  catch (e) { toast("failed: " + e.message); }
}

// The pause or resume button of a queue.
const queueToggle = (queue, verb) => el("button", {
  onclick: () => act(`/queues/${queue}/${verb}`, "POST", `${queue} ${verb === "pause" ? "paused" : "resumed"}`) }, verb);

// A table body's one row saying there is nothing (or what to do).
const emptyRow = (cols, text) => el("tr", {}, el("td", { colspan: cols }, text));

function renderQueues(queues) {
  const body = document.querySelector("#queues tbody");
  body.replaceChildren(...queues.map(q => {
    const cells = STATES.map(s => {
      const n = q[s];
      const state = STATE_OF[s] || s;
      const cls = "count" + (n ? "" : " zero") + (s === "dead" && n ? " dead" : "");
      return el("td", { class: "num" }, el("span", { class: cls, "data-queue": q.queue, "data-state": state,
        onclick: () => { if (n) { selected = { queue: q.queue, state }; refresh(); } } }, String(n)));
    });
    cells.splice(1, 0, el("td", { class: "num" }, String(q.outbox_oldest_age_secs)));
    const tr = el("tr", { "data-queue": q.queue, class: selected && selected.queue === q.queue ? "sel" : "" },
      el("td", {}, q.queue), ...cells,
      el("td", {}, el("span", { class: "pill" + (q.paused ? " paused" : "") }, q.paused ? "paused" : "running")),
      el("td", {}, queueToggle(q.queue, q.paused ? "resume" : "pause")));
    return tr;
  }));
}

function renderJobs(jobs) {
  const title = document.getElementById("jobs-title");
  const actions = document.getElementById("jobs-actions");
  const body = document.querySelector("#jobs tbody");
  if (!selected) return;
  title.textContent = `Jobs · ${selected.queue} · ${selected.state} (${jobs.length})`;
  actions.replaceChildren(selected.state === "dead" && jobs.length
    ? el("button", { class: "primary", id: "requeue-all",
        onclick: () => act(`/queues/${selected.queue}/dead/requeue`, "POST", "dead jobs re-queued") }, "Re-queue all dead jobs")
    : "");
  if (!jobs.length) { body.replaceChildren(emptyRow(7, "none")); return; }
  body.replaceChildren(...jobs.map(j => el("tr", { "data-task": j.task_id },
    el("td", {}, el("span", { class: "link task", onclick: () => showJob(j.queue, j.task_id) }, j.task_id)),
    el("td", {}, j.job || ""),
    el("td", { class: "num" }, j.attempt == null ? "" : String(j.attempt)),
    el("td", { class: "err" }, j.last_error || ""),
    el("td", {}, j.finished_at || j.run_at || ""),
    el("td", {}, el("pre", {}, j.payload == null ? "" : JSON.stringify(j.payload))),
    el("td", {},
      j.dead_id != null ? el("button", { class: "primary requeue",
        onclick: () => act(`/dead-jobs/${j.dead_id}/requeue`, "POST", "job re-queued") }, "re-queue") : "",
      " ",
      selected.state !== "running" ? el("button", { class: "danger",
        onclick: () => { if (confirm(`Delete ${j.task_id}?`)) act(`/queues/${j.queue}/jobs/${encodeURIComponent(j.task_id)}`, "DELETE", "job deleted"); } }, "delete") : ""))));
}

// A job's chains, oldest first, each with its runs in order.
function renderJob(job) {
  document.getElementById("job-detail").hidden = false;
  document.getElementById("job-detail-title").textContent = `Job ${job.task_id} · ${job.queue} · ${job.state}`;
  const chains = job.chains || [];
  document.getElementById("job-chains").replaceChildren(...(chains.length ? chains.map((c, i) => el("div", { class: "chain", "data-chain": c.chain },
    el("h3", {}, `chain ${i + 1}: ${c.chain} (${c.cause})`),
    el("table", {},
      el("thead", {}, el("tr", {}, ...["attempt", "task id", "run at", "sent", "finished", "outcome", "recovered", "error"].map(h => el("th", {}, h)))),
      el("tbody", {}, ...c.runs.map(r => el("tr", { class: "run", "data-task": r.task_id },
        el("td", { class: "num" }, String(r.attempt)), el("td", {}, r.task_id), el("td", {}, r.run_at),
        el("td", {}, r.sent_at || ""), el("td", {}, r.finished_at || ""), el("td", { class: "outcome" }, r.outcome || "open"),
        el("td", { class: "num" }, String(r.recovered)),
        el("td", { class: "err" }, (r.last_error || "") + (r.dead_id != null ? ` (dead record ${r.dead_id})` : ""))))))))
    : [el("p", {}, "The outbox holds no run of this job any more.")]));
}

async function showJob(queue, taskId) {
  detail = { queue, task_id: taskId };
  try { renderJob(await api(`/queues/${queue}/jobs/${encodeURIComponent(taskId)}`)); }
  catch (e) { toast("failed: " + e.message); }
}

function renderWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren(...(workers.length ? workers.map(w => el("tr", {},
    el("td", {}, w.queue), el("td", {}, w.name), el("td", {}, w.last_heartbeat), el("td", { class: "num" }, String(w.in_flight))))
    : [emptyRow(4, "no worker is alive")]));
}

async function refresh() {
  try {
    const [queues, workers] = await Promise.all([api("/queues"), api("/workers")]);
    renderQueues(queues);
    renderWorkers(workers);
    if (selected) renderJobs(await api(`/queues/${selected.queue}/jobs?state=${selected.state}&limit=100`));
    if (detail) renderJob(await api(`/queues/${detail.queue}/jobs/${encodeURIComponent(detail.task_id)}`));
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "error: " + e.message;
  }
}
// The purchase page: matches of a search, and the selected one's timeline.
function renderMatches(matches) {
  const body = document.querySelector("#purchases tbody");
  body.replaceChildren(...(matches.length ? matches.map(m => el("tr", { "data-purchase": m.purchase_id },
    el("td", {}, el("span", { class: "link", onclick: () => showTimeline(m.purchase_id) }, m.order_id)),
    el("td", {}, m.purchase_id), el("td", {}, m.user_email || ""),
    el("td", { class: "num" }, `${m.amount_minor} ${m.currency}`), el("td", {}, m.status), el("td", {}, m.created_at)))
    : [emptyRow(6, "no purchase matches")]));
}

async function showTimeline(id) {
  try {
    const t = await api(`/purchases/${encodeURIComponent(id)}/timeline`);
    document.getElementById("timeline").hidden = false;
    const p = t.purchase;
    document.getElementById("timeline-title").textContent =
      `Timeline · order ${p.order_id} · ${p.amount_minor} ${p.currency} · ${p.status}` + (t.user_email ? ` · ${t.user_email}` : "");
    document.querySelector("#timeline tbody").replaceChildren(...t.entries.map(e => el("tr", { "data-kind": e.kind },
      el("td", { class: "when" }, e.at), el("td", { class: "kind" }, e.kind), el("td", {}, e.summary))));
  } catch (e) { toast("failed: " + e.message); }
}

document.getElementById("purchase-search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = document.getElementById("purchase-q").value.trim();
  try {
    const matches = await api(`/purchases/search?q=${encodeURIComponent(q)}`);
    renderMatches(matches);
    if (matches.length === 1) await showTimeline(matches[0].purchase_id);
  } catch (e) { toast("failed: " + e.message); }
});

// Two pages, chosen by the address's fragment.
function showPage() {
  const purchases = location.hash === "#purchases-page";
  document.getElementById("jobs-page").hidden = purchases;
  document.getElementById("purchases-page").hidden = !purchases;
  document.getElementById("nav-jobs").classList.toggle("current", !purchases);
  document.getElementById("nav-purchases").classList.toggle("current", purchases);
}
window.addEventListener("hashchange", showPage);
showPage();

refresh();
setInterval(refresh, 3000);
