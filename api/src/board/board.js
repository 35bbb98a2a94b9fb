// The job board: polls /board/api every 3 s and runs the operator actions.
const STATES = ["outbox_backlog", "scheduled", "ready", "running", "retrying", "done", "dead"];
const STATE_OF = { outbox_backlog: "outbox" };
let selected = null; // {queue, state}

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
    el("td", {}, j.task_id),
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
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "error: " + e.message;
  }
}
refresh();
setInterval(refresh, 3000);
