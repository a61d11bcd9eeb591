// The stepwise dashboard: plain JavaScript over the JSON API (/api/v1), no build step.
// Each page has its own URL; `render` picks the page for location.pathname. A page draws
// its frame once and returns a `refresh` function, called every 2 seconds while the tab is
// visible, so lists and runs update without reloading and forms keep what was typed.
"use strict";

// --- helpers -------------------------------------------------------------------------------

/** Marks HTML that `html` must insert as is (already escaped). */
class Raw { constructor(text) { this.text = text; } toString() { return this.text; } }
const raw = text => new Raw(text);
const escape = value => String(value ?? "").replace(/[&<>"']/g, c => ({
  "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
/** A template tag: interpolated values are escaped, arrays joined, Raw kept. */
function html(strings, ...values) {
  let out = strings[0];
  values.forEach((value, i) => {
    const items = Array.isArray(value) ? value : [value];
    out += items.map(v => v instanceof Raw ? v.text : escape(v)).join("") + strings[i + 1];
  });
  return raw(out);
}
const $ = (selector, root = document) => root.querySelector(selector);

class ApiError extends Error {}
/** Call the API; a non-2xx answer throws its `error` message. */
// Every registered function: /api/v1/functions answers a page at a time.
async function allFunctions() {
  const functions = [];
  let next = "/api/v1/functions?limit=1000";
  while (next) {
    const page = await api(next);
    functions.push(...page.functions);
    next = page.next;
  }
  return { functions };
}

/** The signed-in session's CSRF token (a cookie this script may read), sent with changes. */
const csrfToken = () => (document.cookie.split("; ").find(c => c.startsWith("stepwise_csrf=")) ||
  "").slice("stepwise_csrf=".length);

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: {} };
  if (method !== "GET" && csrfToken()) init.headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    throw new ApiError((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

const TERMINAL = new Set(["completed", "failed", "cancelled", "skipped"]);
const REPLAYABLE = new Set(["failed", "cancelled", "skipped"]);
const STATUSES = ["queued", "running", "sleeping", "waiting", "completed", "failed",
                  "cancelled", "skipped"];

const badge = status => html`<span class="badge s-${status}">${status}</span>`;
/** A run's status; "waiting to retry" for a run queued to retry a failed attempt. */
const runBadge = run => run.waiting_to_retry ? html`<span class="badge s-retrying"
  title="Status queued: waiting out a retry's wait">waiting to retry</span>` : badge(run.status);
const ms = iso => iso ? Date.parse(iso) : null;

// Times: lists say how long ago ("3 min ago"), with the exact date, time and zone on hover;
// the facts of one run or event show the exact time, with how long ago on hover. Exact
// times are the browser's local time with its UTC offset ("2026-12-03 06:34:34 UTC+01:00"),
// so a time read at 3 a.m. is never ambiguous about its day or zone.
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
const pad = (n, width = 2) => String(n).padStart(width, "0");
function offset(date) {
  const minutes = -date.getTimezoneOffset();
  if (!minutes) return "UTC";
  const a = Math.abs(minutes);
  return `UTC${minutes > 0 ? "+" : "-"}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
}
/** "2026-12-03 06:34:34 UTC+01:00" (with `millis`, "06:34:34.120"). */
function exact(iso, { millis = false } = {}) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` +
    `${millis ? "." + pad(d.getMilliseconds(), 3) : ""} ${offset(d)}`;
}
/** "just now", "3 min ago", "2 days ago", "in 5 min"; past a year, the date. */
function relative(iso) {
  const d = Date.now() - ms(iso);
  const s = Math.abs(d) / 1000;
  if (s < 5) return "just now";
  const units = [[60, 1, "s"], [3600, 60, "min"], [86400, 3600, "h"],
                 [86400 * 365, 86400, "day"]];
  const found = units.find(([below]) => s < below);
  if (!found) return exact(iso).slice(0, 10);
  const n = Math.floor(s / found[1]);
  const unit = found[2] === "day" && n !== 1 ? "days" : found[2];
  return d < 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`;
}
const hover = iso => `${exact(iso, { millis: true })}${ZONE ? ` (${ZONE})` : ""}`;
/** A time in a list: how long ago, the exact time on hover (kept current by `tick`). */
function when(iso) {
  if (!iso) return html`<span class="muted">–</span>`;
  return html`<time class="rel" datetime="${iso}" title="${hover(iso)}">${relative(iso)}</time>`;
}
/** A time in a run's or event's facts, or a log line's: exact, how long ago on hover. */
function at(iso, { millis = false } = {}) {
  if (!iso) return html`<span class="muted">–</span>`;
  return html`<time class="exact" datetime="${iso}"
    title="${relative(iso)} · ${hover(iso)}">${exact(iso, { millis })}</time>`;
}
function duration(milliseconds) {
  if (milliseconds === null || milliseconds === undefined || isNaN(milliseconds)) return "–";
  if (milliseconds < 1000) return `${Math.round(milliseconds)} ms`;
  const s = milliseconds / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const two = (big, bigUnit, small, smallUnit) =>
    `${big} ${bigUnit}` + (small ? ` ${small} ${smallUnit}` : "");
  if (s < 3600) return two(Math.floor(s / 60), "min", Math.round(s % 60), "s");
  if (s < 86400) return two(Math.floor(s / 3600), "h", Math.round((s % 3600) / 60), "min");
  return two(Math.floor(s / 86400), "d", Math.round((s % 86400) / 3600), "h");
}
const ago = iso => iso ? relative(iso) : "–";
const json = value => JSON.stringify(value, null, 2);
const short = id => id && id.length > 12 ? id.slice(0, 6) + "…" + id.slice(-4) : id;
const runLink = id => html`<a href="/runs/${encodeURIComponent(id)}" class="mono"
  title="${id}">${id}</a>`;
const eventLink = id => html`<a href="/events/${encodeURIComponent(id)}" class="mono"
  title="${id}">${short(id)}</a>`;

/** An error (as stored on runs and steps) with its stack trace as lines. */
function errorBlock(error) {
  if (!error) return "";
  if (typeof error !== "object") return html`<pre class="stack">${String(error)}</pre>`;
  const title = `${error.name || "Error"}: ${error.message || ""}`;
  return html`<div class="error-title">${title}</div>
    ${error.stack ? html`<pre class="stack">${error.stack.trimEnd()}</pre>` : ""}`;
}

/** Ask before a change; resolves true when confirmed. */
function confirmAction(text, yes) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise(resolve => dialog.addEventListener(
    "close", () => resolve(dialog.returnValue === "yes"), { once: true }));
}

function notice(root, text, bad = false) {
  const box = $(".notices", root);
  if (box) box.innerHTML = html`<div class="notice ${bad ? "bad" : ""}">${text}</div>`;
}

// --- routing and live updates --------------------------------------------------------------

const ROUTES = [
  [/^\/(?:runs)?$/, "runs", () => pageRuns({ failedOnly: false })],
  [/^\/failed$/, "failed", () => pageRuns({ failedOnly: true })],
  [/^\/runs\/([^/]+)$/, "runs", id => pageRun(id)],
  [/^\/events$/, "events", () => pageEvents()],
  [/^\/events\/([^/]+)$/, "events", id => pageEvent(id)],
  [/^\/functions$/, "functions", () => pageFunctions()],
  [/^\/apps$/, "apps", () => pageApps()],
  [/^\/workers$/, "workers", () => pageWorkers()],
  [/^\/audit$/, "audit", () => pageAudit()],
];
let current = { refresh: null, generation: 0 };

function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  render();
}

async function render() {
  const generation = ++current.generation;
  current.refresh = null;
  const path = location.pathname;
  const page = $("#page");
  for (const [pattern, section, make] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    document.querySelectorAll("header nav a").forEach(a =>
      a.classList.toggle("active", a.dataset.section === section));
    const arg = match[1] ? decodeURIComponent(match[1]) : undefined;
    try {
      const refresh = await make(arg);
      if (generation !== current.generation) return;
      current.refresh = refresh || null;
      if (refresh) await refresh();
      setLive("live");
    } catch (error) {
      if (generation !== current.generation) return;
      page.innerHTML = html`<div class="notice bad">${error.message}</div>`;
    }
    return;
  }
  document.querySelectorAll("header nav a").forEach(a => a.classList.remove("active"));
  page.innerHTML = html`<div id="not-found"><h1>Page not found</h1>
    <p>Nothing lives at <code>${path}</code> in this dashboard.</p>
    <p><a href="/runs" id="back-to-runs">← Back to Runs</a></p></div>`;
  setLive("live");
}

function setLive(state) {
  const live = $("#live");
  live.className = state === "live" ? "" : state;
  live.textContent = state === "live" ? "live" : state === "paused" ? "paused" : "offline";
}

async function tick() {
  if (document.visibilityState !== "visible") { setLive("paused"); return; }
  document.querySelectorAll("time.rel").forEach(t => { t.textContent = relative(t.dateTime); });
  const refresh = current.refresh;
  const generation = current.generation;
  if (refresh) {
    try { await refresh(); if (generation === current.generation) setLive("live"); }
    catch { setLive("error"); }
  }
  await warnUnserved();
}

/** The banner over every page: due runs that no live worker serves. */
async function warnUnserved() {
  const box = $("#warning");
  try {
    const { unserved } = await api("/api/v1/workers");
    if (!unserved.length) { box.hidden = true; return; }
    box.hidden = false;
    box.innerHTML = html`<b>Runs are waiting for a worker.</b>
      ${unserved.map(u => html` ${u.queued} queued run${u.queued === 1 ? "" : "s"} of
        <a href="/runs?function=${encodeURIComponent(u.function_id)}&status=queued"
           class="mono">${u.function_id}</a> (app ${u.app_id}, oldest ${ago(u.oldest_at)});`)}
      no live worker serves ${unserved.length === 1 ? "this function" : "these functions"}.
      Start one (<code>stepwise worker MODULE:APP</code>) or see <a href="/workers">workers</a>.`;
  } catch { box.hidden = true; }
}

document.addEventListener("click", event => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey ||
      event.ctrlKey || event.shiftKey || link.target) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") ||
      url.pathname.startsWith("/docs") || url.pathname === "/metrics") return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);
// Live updates: `live.js` (when loaded) calls `tick` when the server says something changed,
// and falls back to polling; without it, the page polls every 2 seconds.
if (window.stepwiseLive) window.stepwiseLive.start(tick, setLive); else setInterval(tick, 2000);

/** Name each table cell after its column (`data-label`): on a narrow screen, rows are drawn
 *  as stacked cards (app.css), each value under its column's name. */
function labelCells() {
  for (const table of document.querySelectorAll("#page table")) {
    const names = [...table.querySelectorAll("thead th")].map(th => th.textContent.trim());
    if (!names.length) continue;
    for (const row of table.querySelectorAll("tbody tr")) {
      [...row.children].forEach((cell, i) => {
        if (names[i] && cell.colSpan === 1 && cell.dataset.label !== names[i]) {
          cell.dataset.label = names[i];
        }
      });
    }
  }
}
new MutationObserver(labelCells).observe($("#page"), { childList: true, subtree: true });

// --- runs and failed runs --------------------------------------------------------------------

const RUN_FILTERS = ["q", "status", "function", "event_name", "event_data", "since", "until"];
/** What the search box takes (`GET /api/v1/runs?q=`, docs/operations.md). */
const SEARCH_HINT = "Words all of which match: an error's words (smtp timeout), a field of " +
  "the event's data (user.id=42, quote a value with spaces), a function's id, an event " +
  "name, the start of a run id; function:, event:, error:, id: say which.";

/** `datetime-local` values are local time; the API takes ISO 8601 with a zone. */
const toIso = local => local ? new Date(local).toISOString() : "";
const toLocal = iso => {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return "";
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
};

async function pageRuns({ failedOnly }) {
  const query = new URLSearchParams(location.search);
  if (failedOnly) query.set("status", "failed");
  const { functions } = await allFunctions();
  const ids = [...new Set(functions.map(f => f.id))].sort();
  const value = name => query.get(name) || "";
  const page = $("#page");
  page.innerHTML = html`
    <h1>${failedOnly ? "Failed runs" : "Runs"}
      ${failedOnly ? html`<span class="muted" style="font-size:.85rem;font-weight:400">the
        dead-letter list: runs whose retries ran out, until replayed</span>` : ""}</h1>
    <form class="filters" id="filters">
      <label class="search">Search<input type="search" name="q" id="search"
        value="${value("q")}" title="${SEARCH_HINT}" autocomplete="off"
        placeholder="error words, user.id=42, a run id, a function, an event name"></label>
      ${failedOnly ? "" : html`<label>Status<select name="status"><option value="">any</option>
        ${STATUSES.map(s => html`<option ${s === value("status") ? "selected" : ""}>${s}</option>`)}
        </select></label>`}
      <label>Function<select name="function"><option value="">any</option>
        ${ids.map(id => html`<option ${id === value("function") ? "selected" : ""}>${id}</option>`)}
        </select></label>
      <label>Event name<input name="event_name" value="${value("event_name")}"
        placeholder="user.signup"></label>
      <label>Event data<input name="event_data" value="${value("event_data")}"
        placeholder="user_id=42" size="14"></label>
      <label>Created after<input type="datetime-local" name="since"
        value="${toLocal(value("since"))}"></label>
      <label>Created before<input type="datetime-local" name="until"
        value="${toLocal(value("until"))}"></label>
      <button>Search</button>
      <a href="${failedOnly ? "/failed" : "/runs"}">clear</a>
    </form>
    <div class="actions">
      <button type="button" id="bulk-replay" class="secondary">Replay all matching…</button>
      ${failedOnly ? "" : html`<button type="button" id="bulk-cancel" class="danger">Cancel all
        matching…</button>`}
    </div>
    <div class="notices"></div>
    <div id="list"><p class="muted">Loading…</p></div>`;

  $("#filters").addEventListener("submit", event => {
    event.preventDefault();
    const form = new FormData(event.target);
    const next = new URLSearchParams();
    for (const name of RUN_FILTERS) {
      let v = (form.get(name) || "").trim();
      if (name === "since" || name === "until") v = toIso(v);
      if (v) next.set(name, v);
    }
    if (failedOnly) next.delete("status");
    navigate(location.pathname + (next.toString() ? "?" + next : ""));
  });

  const filter = {};
  for (const name of RUN_FILTERS) if (query.get(name)) filter[name] = query.get(name);
  const bulk = async (action, verb) => {
    const { matched } = await api(`/api/v1/runs/${action}`, { method: "POST",
                                  body: { ...filter, dry_run: true } });
    if (!matched) { notice(page, `No run matching this filter can be ${verb}.`); return; }
    const what = action === "replay" ? "failed, cancelled or skipped" : "unfinished";
    if (!await confirmAction(`${action === "replay" ? "Replay" : "Cancel"} ${matched} ${what} ` +
        `run${matched === 1 ? "" : "s"} matching this filter?`,
        `${action === "replay" ? "Replay" : "Cancel"} ${matched}`)) return;
    let changed = 0, more = true;
    while (more) {
      const result = await api(`/api/v1/runs/${action}`, { method: "POST", body: filter });
      changed += result.changed;
      more = result.more && result.changed > 0;
      notice(page, `${verb[0].toUpperCase() + verb.slice(1)} ${changed} of ${matched}…`);
    }
    notice(page, `${verb[0].toUpperCase() + verb.slice(1)} ${changed} run` +
      `${changed === 1 ? "" : "s"}.`);
    if (current.refresh) await current.refresh();
  };
  const guard = f => async () => { try { await f(); } catch (e) { notice(page, e.message, true); } };
  $("#bulk-replay").addEventListener("click", guard(() => bulk("replay", "replayed")));
  const cancel = $("#bulk-cancel");
  if (cancel) cancel.addEventListener("click", guard(() => bulk("cancel", "cancelled")));

  return async () => {
    const params = new URLSearchParams(filter);
    if (query.get("before")) params.set("before", query.get("before"));
    params.set("limit", "50");
    let answer;
    try { answer = await api("/api/v1/runs?" + params); } catch (error) {
      if (!(error instanceof ApiError)) throw error;  // a search it refuses: say why
      const why = error.message.startsWith("query.q:") ?  // its pattern: the words' limit
        "A search takes at most 16 words, separated by spaces." : error.message;
      $("#list").innerHTML = html`<div class="notice bad" id="search-error">${why}</div>`;
      return;
    }
    const { runs, next, total, total_exact } = answer;
    // `at`: the position of this page's first run (dashboard only), carried by "older".
    const at = Math.max(1, parseInt(query.get("at") || "1", 10) || 1);
    const older = new URLSearchParams(query);
    if (failedOnly) older.delete("status");
    if (next) { older.set("before", next); older.set("at", String(at + runs.length)); }
    const newest = new URLSearchParams(query);
    newest.delete("before");
    newest.delete("at");
    if (failedOnly) newest.delete("status");
    $("#list").innerHTML = html`<p class="count" id="count">${matchCount(total, total_exact,
      runs.length ? [at, at + runs.length - 1] : null)}</p>` + (runs.length ? html`
      <table id="runs"><thead><tr><th>Run</th><th>Function</th><th>Status</th>
        <th class="num">Failed attempts</th><th>Created</th><th class="num">Duration</th>
        <th>Error</th></tr></thead>
      <tbody>${runs.map(run => html`<tr data-id="${run.id}">
        <td>${runLink(run.id)}</td><td class="mono">${run.function_id}</td>
        <td>${runBadge(run)}</td>
        <td class="num">${run.failed_attempts || ""}</td>
        <td>${when(run.created_at)}</td>
        <td class="num">${run.ended_at ? duration(ms(run.ended_at) - ms(run.created_at)) :
                          run.started_at ? "running" : ""}</td>
        <td class="error-cell">${listedError(run)}</td>
      </tr>`)}</tbody></table>
      <div class="pager">
        ${query.get("before") ? html`<a href="${location.pathname}?${newest}">← newest</a>` : ""}
        ${next ? html`<a href="${location.pathname}?${older}" id="older">older →</a>` : ""}
        <span class="muted">${runs.length} shown${query.get("before") ? "" :
          " · updates live"}</span>
      </div>` : html`<p class="muted">No runs match.</p>`);
  };
}

/** "1,234 runs match · 51–100 shown, newest first", or "More than 1,000 runs match ...":
 *  the API counts matches up to a bound (`total_exact` false past it). */
function matchCount(total, exact, shown) {
  if (total == null) return "";
  const n = total.toLocaleString("en-US");
  const what = !exact ? `More than ${n} runs match` :
    total === 1 ? "1 run matches" : `${n} runs match`;
  if (!shown || (exact && shown[0] === 1 && shown[1] === total)) return what;  // all shown
  return `${what} · ${shown[0].toLocaleString("en-US")}–` +
    `${shown[1].toLocaleString("en-US")} shown, newest first`;
}

/** A listed run's error, one line: an error over 1 KiB is left out of lists, so its first
 *  line (`error_title`, from the server) stands for it. */
function listedError(run) {
  const clip = text => text.length > 90 ? text.slice(0, 89) + "…" : text;
  if (run.error) {
    const text = typeof run.error === "object" ?
      `${run.error.name || "Error"}: ${String(run.error.message || "").split("\n")[0]}` :
      String(run.error).split("\n")[0];
    return html`<span class="muted">${clip(text)}</span>`;
  }
  if (!run.error_truncated) return "";
  return html`<span class="muted" title="The whole error is on the run's page">${
    clip(run.error_title || "(an error too long to list: open the run)")}</span>`;
}

// --- one run --------------------------------------------------------------------------------

async function pageRun(id) {
  const page = $("#page");
  page.innerHTML = html`<div id="run"><p class="muted">Loading…</p></div>`;
  let last = "";
  const act = async (what, label) => {
    try {
      const run = await api(`/api/v1/runs/${encodeURIComponent(id)}/${what}`,
                            { method: "POST" });
      if (what === "rerun") { navigate(`/runs/${encodeURIComponent(run.id)}`); return; }
      notice(page, `${label}.`);
      last = "";
      await refresh();
    } catch (e) { notice(page, e.message, true); }
  };
  const refresh = async () => {
    const run = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
    const text = JSON.stringify(run);
    if (text === last) return;  // unchanged: keep the page (and any text selection) as is
    last = text;
    const notices = $(".notices", page);
    const kept = notices ? notices.innerHTML : "";
    $("#run").innerHTML = runView(run);
    $(".notices", page).innerHTML = kept;
    const on = (sel, f) => { const b = $(sel, page); if (b) b.addEventListener("click", f); };
    on("#replay", () => act("replay", "Replaying: a new attempt started"));
    on("#rerun", () => act("rerun", "Re-run started"));
    on("#wake", () => act("wake", run.waiting_to_retry ? "Retrying now" :
                                  "Woken: the run goes on"));
    on("#cancel", async () => {
      if (await confirmAction(`Cancel run ${id}? It stops at its next step.`, "Cancel run")) {
        await act("cancel", "Cancelled");
      }
    });
  };
  return refresh;
}

function runView(run) {
  const created = ms(run.created_at), ended = ms(run.ended_at);
  const links = [];
  if (run.parent_run_id) links.push(html`<div><span>Invoked by</span>${runLink(run.parent_run_id)}</div>`);
  if (run.origin_run_id) links.push(html`<div><span>Handles the failure of</span>
    ${runLink(run.origin_run_id)}</div>`);
  if (run.rerun_of) links.push(html`<div><span>Re-run of</span>${runLink(run.rerun_of)}</div>`);
  if (run.worker) links.push(html`<div><span>Worker</span><span class="mono">${run.worker}</span></div>`);
  // Queued to retry a failed attempt: a wait, not work to be picked up (`queued` alone).
  const retrying = run.waiting_to_retry;
  const dues = run.steps.filter(s => s.status === "retrying" && s.ended_at).map(s => s.ended_at)
    .sort((a, b) => ms(a) - ms(b));
  if (retrying) {
    links.unshift(html`<div id="retry-due"><span>Next attempt due</span>${dues.length ?
      at(dues[0]) : "after the function's retry backoff"}</div>`);
  }
  return html`
    <h1><span class="title-id">${run.function_id}</span> ${runBadge(run)}
      <span class="actions">
        ${REPLAYABLE.has(run.status) ? html`<button id="replay">Replay</button>` : ""}
        ${run.status === "sleeping" || run.status === "waiting" ? html`<button id="wake"
          class="secondary" title="End its sleeps and waits now, as if their time had come (a
          wait gets no event)">Wake now</button>` : ""}
        ${retrying ? html`<button id="wake" class="secondary" title="Start the next attempt
          now instead of when it is due">Retry now</button>` : ""}
        ${TERMINAL.has(run.status) ? html`<button id="rerun" class="secondary"
          title="A new run with the same event">Re-run</button>` : ""}
        ${TERMINAL.has(run.status) ? "" : html`<button id="cancel" class="danger">Cancel</button>`}
      </span></h1>
    <div class="notices"></div>
    <div class="card facts">
      <div><span>Run</span><span class="mono" style="color:inherit">${run.id}</span></div>
      <div><span>App</span>${run.app_id}</div>
      <div><span>Event</span>${run.event ? html`${eventLink(run.event.id)}
        <span class="mono" style="display:inline;color:inherit">${run.event.name}</span>` : "–"}</div>
      <div><span>Created</span>${at(run.created_at)}</div>
      <div><span>Started</span>${at(run.started_at)}</div>
      <div><span>Ended</span>${at(run.ended_at)}</div>
      <div><span>Duration</span>${duration((ended || Date.now()) - created)}${ended ? "" : " so far"}</div>
      <div><span>Attempts (replays + 1)</span>${run.attempts}</div>
      <div><span>Failed attempts</span>${run.failed_attempts ?? 0}</div>
      ${links}
    </div>
    ${run.status === "failed" || run.error ? html`<h2>Error</h2><div class="card" id="run-error">
      ${errorBlock(run.error)}</div>` : ""}
    <h2>Timeline</h2>${timeline(run)}
    <h2>Steps and their attempts</h2>${stepsList(run)}
    ${run.status === "completed" ? html`<h2>Output</h2><pre id="output">${json(run.output)}</pre>`
      : ""}
    <h2>Log</h2>${run.logs.length ? html`<table id="logs"><thead><tr><th>Time</th><th>Level</th>
      <th>Step</th><th>Message</th></tr></thead><tbody>${run.logs.map(line => html`<tr>
      <td>${at(line.at, { millis: true })}</td><td>${line.level}</td>
      <td class="mono">${line.step_id ?? ""}</td>
      <td><pre style="max-height:10rem">${line.message}</pre></td></tr>`)}</tbody></table>`
      : html`<p class="muted">No <code>ctx.logger</code> lines.</p>`}
    ${run.event ? html`<h2>Event <span class="mono muted">${run.event.name}</span></h2>
      <pre id="event-data">${json(run.event.data)}</pre>` : ""}
    ${run.children.length ? html`<h2>Related runs</h2><table><thead><tr><th>Run</th>
      <th>Function</th><th>Relation</th><th>Status</th><th>Created</th></tr></thead><tbody>
      ${run.children.map(child => html`<tr><td>${runLink(child.id)}</td>
        <td class="mono">${child.function_id}</td>
        <td>${child.parent_run_id === run.id ? "invoked by this run" :
              child.origin_run_id === run.id ? "on_failure handler" : "re-run of this run"}</td>
        <td>${runBadge(child)}</td><td>${when(child.created_at)}</td></tr>`)}
      </tbody></table>` : ""}`;
}

// --- one run's steps: attempts, and the waits between them ---------------------------------

const PENDING_STEP = new Set(["retrying", "sleeping", "waiting", "invoking"]);
const BODY = "(function body)";

/** Each step's history, oldest first, as the run page lists and draws it: its code's
 *  attempts (the failed ones from `run.failures`, the last one from the step's own row) with
 *  the retry waits between them, or for a sleep, wait or invoke the time it was pending. The
 *  function body's failed attempts have a history of their own (BODY).
 *
 *  What is stored: each failed attempt's start and end (a body's, its end only); a step's
 *  first start and its last end, which while it is `retrying` is when the next attempt is due.
 *  So the start of an attempt that succeeded after a retry is not known: it ran after the
 *  wait, and the page says so rather than counting the wait as work. A replay starts a step's
 *  attempt numbers afresh: a number that does not grow begins a new round.
 *
 *  Each history: { key, step (its row, or null), label, shown (the status to show), items }
 *  where an item is an attempt { type, n, status, from, to, error, output }, a wait
 *  { type, from, to, next, pending, merged (with the next attempt, whose start is unknown),
 *  cut, due }, a period { type, kind, status, from, to, due (while pending), cut (the status
 *  it is shown with when its run ended first), wasDue, output, error } or a replay { type }.
 *  Times are ISO strings (or null). */
function histories(run) {
  const finished = TERMINAL.has(run.status);
  const stopped = run.status === "cancelled" ? "cancelled" : "unfinished";
  const list = new Map();
  const history = (key, step) => {
    if (!list.has(key)) {
      list.set(key, { key, step, label: step ? step.name ?? step.id : key, items: [],
                      shown: step ? step.status : null });
    }
    return list.get(key);
  };
  for (const step of run.steps) history(step.id, step);
  const failures = new Map();
  for (const failure of run.failures) {
    const key = failure.step_id ?? BODY;
    history(key, null);
    if (!failures.has(key)) failures.set(key, []);
    failures.get(key).push(failure);
  }
  for (const h of list.values()) {
    const step = h.step;
    if (step && finished && PENDING_STEP.has(step.status)) h.shown = stopped;
    if (step && !isCode(step)) {
      const pending = PENDING_STEP.has(step.status);
      h.items.push({ type: "period", kind: step.kind ?? step.status, status: h.shown,
        from: step.started_at, due: pending && !finished ? step.ended_at : null,
        to: pending && finished ? run.ended_at : step.ended_at,
        cut: pending && finished ? stopped : null, wasDue: step.ended_at,
        output: step.output, error: step.error });
      continue;
    }
    const attempts = (failures.get(h.key) || []).map(f => ({ type: "attempt", n: f.attempt,
      status: "failed", from: f.started_at, to: f.ended_at, error: f.error }));
    const last = attempts.at(-1);
    // The step's own row: the attempt that completed, or a failed one not among failures
    // (stored before failures were), or a retry to come.
    if (step && (step.status === "completed" ||
                 (step.status === "failed" && !(last && last.n === step.attempts)))) {
      attempts.push({ type: "attempt", n: step.attempts, status: step.status,
        from: step.attempt_started_at ?? null, to: step.ended_at,
        error: step.error, output: step.output });
    }
    attempts.forEach((attempt, i) => {
      const before = attempts[i - 1];
      if (before && attempt.n <= before.n) {
        h.items.push({ type: "replay" });
      } else if (before && h.key !== BODY) {  // a body's failures have no start: no waits
        h.items.push({ type: "wait", from: before.to, to: attempt.from ?? attempt.to,
                       next: attempt.n, merged: !attempt.from });
      }
      h.items.push(attempt);
    });
    if (step && step.status === "retrying") {
      const from = attempts.at(-1)?.to ?? step.started_at;
      h.items.push({ type: "wait", from, due: step.ended_at, next: step.attempts + 1,
        pending: !finished, cut: finished ? stopped : null,
        to: finished && ms(run.ended_at) < ms(step.ended_at) ? run.ended_at : step.ended_at });
    }
  }
  return [...list.values()];
}

/** A step of code (attempts), not a sleep, wait or invoke (a period). */
const isCode = step => step.kind ? step.kind === "run" :
  !["sleeping", "waiting", "invoking"].includes(step.status);

/** The time a history's attempts took (waits left out), and whether some attempt's own
 *  time is unknown (it started after a retry wait, or is a body's). */
function took(h) {
  const periods = h.items.filter(i => i.type === "period");
  if (periods.length) {
    const p = periods[0];  // still pending: not over yet
    return { ms: p.from && p.to && !p.due ? ms(p.to) - ms(p.from) : null, unknown: false };
  }
  const attempts = h.items.filter(i => i.type === "attempt");
  const known = attempts.filter(a => a.from && a.to);
  return { ms: known.length ? known.reduce((sum, a) => sum + ms(a.to) - ms(a.from), 0) : null,
           unknown: known.length < attempts.length };
}

/** What a history took, for its summary and its timeline row; a pending sleep, wait or
 *  invoke says when it is due instead (kept current, like every `when`). */
function tookText(h, prefix = "") {
  const due = h.items.find(i => i.type === "period" && i.due)?.due;
  if (due) return html`due ${when(due)}`;
  const t = took(h);
  if (t.ms === null) return t.unknown ? `${prefix}?` : "–";
  return prefix + duration(t.ms) + (t.unknown ? " + ?" : "");
}

const UNKNOWN_TOOK = "The start of an attempt is not known (a function body's, or a step " +
  "retried before this release stored its last attempt's start), so its own time is not counted";

/** The run's steps over its time span: each attempt a bar (red failed, green completed), the
 *  retry waits between them hatched grey, sleeps, waits and invokes hatched violet; steps a
 *  cancelled run left pending end with it. A line marks now when the span reaches past it. */
function timeline(run) {
  const list = histories(run);
  if (!list.length) return html`<p class="muted">No steps yet.</p>`;
  const now = Date.now();
  const start = ms(run.created_at);
  const times = list.flatMap(h => h.items.flatMap(i => [ms(i.from), ms(i.to)]))
    .filter(t => t !== null && !isNaN(t));
  const end = Math.max(ms(run.ended_at) ?? now, ...times);
  const span = Math.max(1, end - start);
  const pos = t => Math.max(0, Math.min(100, ((t - start) / span) * 100));
  const place = (from, to) => `left:${pos(from).toFixed(2)}%;width:${Math.max(0,
    pos(to) - pos(from)).toFixed(2)}%`;
  const segments = h => h.items.map(item => {
    if (item.type === "attempt") {
      const to = ms(item.to) ?? now;
      const from = ms(item.from);
      const title = `${h.label}: attempt ${item.n} ${item.status}` + (item.error ?
        ` (${item.error.name ?? "Error"}: ${item.error.message ?? ""})` : "") +
        (from === null ? ", its start not recorded" : `, took ${duration(to - from)}`);
      return html`<div class="tl-bar ${item.status}${from === null ? " tick" : ""}"
        title="${title}" style="${place(from ?? to, to)}"></div>`;
    }
    if (item.type === "wait") {
      const from = ms(item.from), to = ms(item.to) ?? now;
      const title = item.pending ? `retry wait: attempt ${item.next} due ${exact(item.due)}` :
        item.cut ? `retry wait, ${item.cut} with the run (attempt ${item.next} was due ` +
          `${exact(item.due)})` :
        item.merged ? `retry wait, then attempt ${item.next} (its start is not recorded): ` +
          duration(to - from) : `retry wait before attempt ${item.next}: ${duration(to - from)}`;
      return html`<div class="tl-wait${item.pending ? " pending" : ""}${item.merged ?
        " merged" : ""}" title="${title}" style="${place(from, to)}"><span>retry wait</span></div>`;
    }
    if (item.type === "period") {
      const from = ms(item.from) ?? ms(item.to) ?? now;
      const to = ms(item.to) ?? now;
      const title = `${h.label}: ${item.kind} ${item.status}` +
        (item.due ? `, due ${exact(item.due)}` : "");
      // A sleep, wait or invoke is time passing, not work: hatched, whatever its end, unless
      // it failed (an invoke) or its run ended first.
      const kind = ["failed", "cancelled", "unfinished"].includes(item.status) ? item.status :
        `period ${item.status}`;
      return html`<div class="tl-bar ${kind}" title="${title}"
        style="${place(from, to)}"></div>`;
    }
    return "";
  });
  const failed = h => h.items.filter(i => i.type === "attempt" && i.status === "failed").length;
  return html`<div class="timeline" id="timeline">
    ${list.map(h => html`<div class="tl-row" data-step="${h.key}">
      <div class="tl-name" title="${h.key}">${h.label}</div>
      <div class="tl-track">${segments(h)}${end > now ? html`<div class="tl-now"
        title="now" style="left:${pos(now).toFixed(2)}%"></div>` : ""}</div>
      <div class="tl-dur" title="${took(h).unknown ? UNKNOWN_TOOK : "The attempts' time, " +
        "waits left out"}">${failed(h) ? `${failed(h)} failed · ` : ""}${tookText(h)}</div>
    </div>`)}
    <div class="tl-axis"><span>${at(run.created_at)}</span><span>+${duration(span)}</span></div>
    <div class="legend"><span><i style="background:#37b26c"></i>completed attempt</span>
      <span><i style="background:#e5484d"></i>failed attempt</span>
      <span><i class="wait"></i>retry wait</span>
      <span><i style="background:#b9a6f5"></i>sleeping / waiting / invoking</span>
      <span><i style="background:#98a2b3"></i>cancelled</span>
      ${end > now ? html`<span><i class="now"></i>now</span>` : ""}</div>
  </div>`;
}

/** Each step with its attempts as a table: number, result, start, end and time taken; under
 *  a failed attempt its error's title and stack trace as lines, under the one that completed
 *  its output; the retry waits between attempts as rows of their own. */
function stepsList(run) {
  const list = histories(run);
  if (!list.length) return html`<p class="muted">No steps recorded.</p>`;
  const row = item => {
    if (item.type === "replay") {
      return html`<tr class="replayed"><td colspan="5">The run was replayed: attempts count
        afresh.</td></tr>`;
    }
    if (item.type === "wait") return html`<tr class="wait${item.pending ? " pending" : ""}">
      <td colspan="5">${waitText(item)}</td></tr>`;
    const first = item.type === "period" ? item.kind : item.n;
    const result = item.error ? errorBlock(item.error) : item.output !== null &&
      item.output !== undefined ? html`<pre class="output">${json(item.output)}</pre>` :
      item.cut ? html`<span class="muted">${item.cut === "cancelled" ? "Cancelled with the run"
        : "Left pending when the run ended"}; it was due ${item.wasDue ? at(item.wasDue) :
        "with no time limit"}.</span>` : "";
    return html`<tr class="${item.type}" ${item.type === "attempt" ?
      raw(`data-attempt="${escape(item.n)}"`) : ""}>
      <td>${first}</td><td>${badge(item.status)}</td>
      <td>${item.from ? at(item.from) : html`<span class="muted"
        title="${UNKNOWN_TOOK}">after the wait (not recorded)</span>`}</td>
      <td>${item.due ? html`due ${at(item.due)}` : at(item.to)}</td>
      <td class="num took">${item.from && item.to && !item.due ?
        duration(ms(item.to) - ms(item.from)) : "–"}</td></tr>
      ${result ? html`<tr class="detail" ${item.type === "attempt" ?
        raw(`data-attempt-detail="${escape(item.n)}"`) : ""}><td colspan="5">${result}</td>
      </tr>` : ""}`;
  };
  const summary = h => {
    const attempts = h.items.filter(i => i.type === "attempt").length;
    const parts = [];
    if (attempts) parts.push(`${attempts} attempt${attempts === 1 ? "" : "s"}`);
    parts.push(tookText(h, "took "));
    const pending = h.items.find(i => i.type === "wait" && i.pending);
    return html`${parts.map((part, i) => html`${i ? " · " : ""}${part}`)}${pending ?
      html` · attempt ${pending.next} ${when(pending.due)}` : ""}`;
  };
  return html`<div id="steps">${list.map(h => html`
    <section class="step" data-step="${h.key}">
      <div class="step-head"><span class="mono step-name" title="${h.key}">${h.label}</span>
        ${h.shown ? badge(h.shown) : ""}<span class="muted">${summary(h)}</span></div>
      <table class="attempts"><thead><tr><th>Attempt</th><th>Result</th><th>Started</th>
        <th>Ended</th><th class="num">Took</th></tr></thead>
        <tbody>${h.items.map(row)}</tbody></table>
    </section>`)}</div>`;
}

function waitText(wait) {
  const lasted = duration(ms(wait.to) - ms(wait.from));
  if (wait.pending) {
    return html`Waiting to retry: attempt ${wait.next} due ${at(wait.due)}
      (${when(wait.due)}).`;
  }
  if (wait.cut) {
    return html`Retry wait, ${wait.cut} with the run after ${lasted}: attempt ${wait.next}
      was due ${at(wait.due)}.`;
  }
  if (wait.merged) {
    return html`Retry wait, then attempt ${wait.next}: ${lasted} together (the attempt's own
      start is not recorded).`;
  }
  return html`Retry wait: ${lasted} before attempt ${wait.next}.`;
}

// --- events --------------------------------------------------------------------------------

async function pageEvents() {
  const query = new URLSearchParams(location.search);
  const page = $("#page");
  page.innerHTML = html`
    <h1>Events</h1>
    <div class="grid2">
      <div>
        <form class="filters" id="filters">
          <label>Name<input name="name" value="${query.get("name") || ""}"
            placeholder="user.signup"></label>
          <button>Search</button> <a href="/events">clear</a>
        </form>
        <div id="list"><p class="muted">Loading…</p></div>
      </div>
      <div class="card">
        <h2 style="margin-top:0">Send a test event</h2>
        <form id="send">
          <label class="muted" style="font-size:.8rem">Name<br>
            <input name="name" required placeholder="user.signup" style="width:100%"></label>
          <label class="muted" style="font-size:.8rem">Data (JSON object)<br>
            <textarea name="data" rows="8">{}</textarea></label>
          <div class="actions"><button>Send</button></div>
          <div class="notices"></div>
        </form>
      </div>
    </div>`;
  $("#filters").addEventListener("submit", event => {
    event.preventDefault();
    const name = new FormData(event.target).get("name").trim();
    navigate("/events" + (name ? "?name=" + encodeURIComponent(name) : ""));
  });
  $("#send").addEventListener("submit", async event => {
    event.preventDefault();
    const form = new FormData(event.target);
    let data;
    try { data = JSON.parse(form.get("data") || "{}"); }
    catch (e) { notice($("#send"), `Data is not JSON: ${e.message}`, true); return; }
    try {
      const { ids } = await api("/api/v1/events", { method: "POST",
        body: { name: form.get("name").trim(), data } });
      navigate(`/events/${encodeURIComponent(ids[0])}`);
    } catch (e) { notice($("#send"), e.message, true); }
  });
  return async () => {
    const params = new URLSearchParams({ limit: "50" });
    for (const k of ["name", "before"]) if (query.get(k)) params.set(k, query.get(k));
    const { events, next } = await api("/api/v1/events?" + params);
    const older = new URLSearchParams(query);
    if (next) older.set("before", next);
    $("#list").innerHTML = events.length ? html`<table id="events"><thead><tr><th>Event</th>
      <th>Name</th><th>Received</th><th>Data</th></tr></thead><tbody>
      ${events.map(e => html`<tr><td>${eventLink(e.id)}</td><td class="mono">${e.name}</td>
        <td>${when(e.received_at)}</td><td><code>${e.data_truncated ? "(over 1 KiB)" :
        JSON.stringify(e.data).slice(0, 80)}</code></td></tr>`)}</tbody></table>
      <div class="pager">${query.get("before") ? html`<a href="/events${query.get("name") ?
        "?name=" + encodeURIComponent(query.get("name")) : ""}">← newest</a>` : ""}
        ${next ? html`<a href="/events?${older}">older →</a>` : ""}</div>`
      : html`<p class="muted">No events yet. Send one with the form, or
        <code>stepwise send NAME JSON</code>.</p>`;
  };
}

async function pageEvent(id) {
  const page = $("#page");
  page.innerHTML = html`<div id="event"><p class="muted">Loading…</p></div>`;
  let last = "";
  return async () => {
    const event = await api(`/api/v1/events/${encodeURIComponent(id)}`);
    const text = JSON.stringify(event);
    if (text === last) return;
    last = text;
    $("#event").innerHTML = html`
      <h1><span class="title-id">${event.name}</span>
        <span class="actions"><button id="again" class="secondary"
          title="Send a new event with the same name and data">Send again</button></span></h1>
      <div class="notices"></div>
      <div class="card facts">
        <div><span>Event</span><span class="mono" style="color:inherit">${event.id}</span></div>
        <div><span>Timestamp (ts)</span>${at(new Date(event.ts).toISOString())}</div>
        <div><span>Received</span>${at(event.received_at)}</div>
        <div><span>Runs started</span>${event.runs.length}</div>
      </div>
      <h2>Data</h2><pre id="event-data">${json(event.data)}</pre>
      <h2>Runs it started</h2>
      ${event.runs.length ? html`<table id="event-runs"><thead><tr><th>Run</th><th>Function</th>
        <th>Status</th><th>Created</th><th class="num">Duration</th></tr></thead><tbody>
        ${event.runs.map(run => html`<tr><td>${runLink(run.id)}</td>
          <td class="mono">${run.function_id}</td><td>${runBadge(run)}</td>
          <td>${when(run.created_at)}</td><td class="num">${run.ended_at ?
          duration(ms(run.ended_at) - ms(run.created_at)) : ""}</td></tr>`)}</tbody></table>`
        : html`<p class="muted">None: no function listens to <code>${event.name}</code>
          (or the event was delivered to a waiting run).</p>`}`;
    $("#again").addEventListener("click", async () => {
      try {
        const { ids } = await api("/api/v1/events", { method: "POST",
          body: { name: event.name, data: event.data } });
        navigate(`/events/${encodeURIComponent(ids[0])}`);
      } catch (e) { notice(page, e.message, true); }
    });
  };
}

// --- functions -----------------------------------------------------------------------------

function flowSummary(fn) {
  const flow = fn.flow || {};
  const parts = [];
  for (const c of flow.concurrency || []) {
    parts.push(`concurrency ${c.limit}${c.key ? ` per ${c.key}` : ""}${c.scope === "app" ?
      " (app)" : ""}`);
  }
  const named = { throttle: "throttle", rate_limit: "rate limit", debounce: "debounce",
                  batch: "batch", priority: "priority", timeouts: "timeouts" };
  for (const [key, label] of Object.entries(named)) {
    if (flow[key]) parts.push(`${label} ${JSON.stringify(flow[key])}`);
  }
  if (flow.idempotency) parts.push(`idempotency ${flow.idempotency}`);
  for (const c of flow.cancel_on || []) parts.push(`cancel on ${c.event}`);
  return parts;
}

async function pageFunctions() {
  const page = $("#page");
  const hours = Number(new URLSearchParams(location.search).get("hours")) || 24;
  page.innerHTML = html`<h1>Functions
    <span class="actions" style="font-size:.85rem;font-weight:400">over the last
    ${[1, 24, 24 * 7].map(h => html`<a href="/functions?hours=${h}" ${h === hours ?
      raw('style="font-weight:700"') : ""}>${h === 1 ? "hour" : h === 24 ? "day" : "week"}</a>`)}
    </span></h1><p class="muted" id="retention"></p>
    <div id="functions"><p class="muted">Loading…</p></div>`;
  const charts = new Map();
  return async () => {
    const [{ functions }, stats, retention] = await Promise.all([
      allFunctions(), api(`/api/v1/stats/functions?hours=${hours}&buckets=24`),
      api("/api/v1/retention")]);
    $("#retention").textContent = `Finished runs are kept ${keptFor(retention.completed)} ` +
      `after they end, failed runs ${keptFor(retention.failed)}` +
      (retention.functions.length === 1 ? "; 1 function has its own (shown on it)." :
       retention.functions.length ? `; ${retention.functions.length} functions have their ` +
       "own (shown on them)." : ".");
    const own = new Map(retention.functions.map(f => [`${f.app_id}/${f.function_id}`, f]));
    const box = $("#functions");
    const key = fn => `${fn.app_id}/${fn.id}`;
    if (!box.dataset.drawn || box.dataset.drawn !== functions.map(key).join()) {
      box.dataset.drawn = functions.map(key).join();
      charts.clear();
      box.innerHTML = functions.length ? html`<div class="fn-grid">${functions.map(fn => html`
        <div class="card fn" data-function="${fn.id}">
          <h3>${fn.id}</h3>
          <div class="muted" style="font-size:.8rem">app ${fn.app_id} ·
            ${fn.triggers.length ? fn.triggers.map(t => t.event ? `event ${t.event}` :
              `cron ${t.cron} (${t.tz})`).join(", ") : fn.handles_failure_of ?
              `on_failure of ${fn.handles_failure_of}` : "invoked only"}</div>
          <div class="settings">retries ${fn.retries} · attempt timeout
            ${duration(fn.attempt_timeout_ms)}${fn.on_failure ? ` · on_failure ${fn.on_failure}`
            : ""}${flowSummary(fn).map(p => ` · ${p}`).join("")}${own.has(key(fn)) ?
            ` · kept ${keptFor(own.get(key(fn)).completed)} (failed ${
              keptFor(own.get(key(fn)).failed)})` : ""}</div>
          <div class="counts"></div>
          <div class="chart-title">runs finished per ${duration(stats.bucket_ms)}:
            <i class="key" style="background:#1a7f4b"></i>completed
            <i class="key" style="background:#c0262d"></i>failed</div>
          <div class="chart-counts"></div>
          <div class="chart-title">run duration (creation to end):
            <i class="key" style="background:#3b5bdb"></i>p50
            <i class="key" style="background:#a15c07"></i>p95</div>
          <div class="chart-durations"></div>
          <div><a href="/runs?function=${encodeURIComponent(fn.id)}">runs</a> ·
            <a href="/failed?function=${encodeURIComponent(fn.id)}">failed</a></div>
        </div>`)}</div>` : html`<p class="muted">No functions registered yet: start a worker
          (<code>stepwise worker MODULE:APP</code>) or <code>stepwise dev MODULE:APP</code>.</p>`;
    }
    const since = ms(stats.since);
    const xs = Array.from({ length: stats.buckets }, (_, i) =>
      (since + (i + 0.5) * stats.bucket_ms) / 1000);  // bucket centres
    for (const fn of functions) {
      const card = box.querySelector(`[data-function="${CSS.escape(fn.id)}"]`);
      if (!card) continue;
      const s = stats.functions[fn.id] || { completed: xs.map(() => 0),
        failed: xs.map(() => 0), p50_ms: xs.map(() => null), p95_ms: xs.map(() => null) };
      const sum = a => a.reduce((x, y) => x + y, 0);
      const done = sum(s.completed), failed = sum(s.failed);
      const p = list => { const v = list.filter(x => x !== null); return v.length ?
        Math.max(...v) : null; };
      $(".counts", card).innerHTML = html`
        <div><b style="color:var(--ok)">${done}</b><span class="muted">completed</span></div>
        <div><b style="color:var(--bad)">${failed}</b><span class="muted">failed</span></div>
        <div><b>${done + failed ? Math.round((100 * failed) / (done + failed)) + "%" : "–"}</b>
          <span class="muted">failure rate</span></div>
        <div><b>${duration(p(s.p95_ms))}</b><span class="muted">worst p95</span></div>`;
      drawChart(charts, `${key(fn)}:counts`, $(".chart-counts", card), [xs, s.completed, s.failed],
        [{ label: "completed", stroke: "#1a7f4b", fill: "rgba(26,127,75,.55)", points: NO_POINTS,
           paths: bars && bars({ size: [0.45, 16], align: -1 }) },
         { label: "failed", stroke: "#c0262d", fill: "rgba(192,38,45,.6)", points: NO_POINTS,
           paths: bars && bars({ size: [0.45, 16], align: 1 }) }], v => Math.round(v),
        { step: stats.bucket_ms / 1000, integers: true });
      drawChart(charts, `${key(fn)}:durations`, $(".chart-durations", card),
        [xs, s.p50_ms, s.p95_ms],
        [{ label: "p50", stroke: "#3b5bdb", points: { size: 4 } },
         { label: "p95", stroke: "#a15c07", dash: [4, 3], points: { size: 4 } }],
        v => v === null ? "–" : duration(v), { step: stats.bucket_ms / 1000 });
    }
  };
}

/** A retention as the API writes it (`30d`, `forever`) in words. */
function keptFor(window) {
  if (window === "forever") return "forever";
  const units = { w: "week", d: "day", h: "hour", m: "minute", s: "second" };
  const found = /^(\d+)(w|d|h|m|s)$/.exec(window);
  if (!found) return window;
  const n = Number(found[1]);
  return `${n} ${units[found[2]]}${n === 1 ? "" : "s"}`;
}

const NO_POINTS = { show: false };
const bars = typeof uPlot === "undefined" ? null : uPlot.paths.bars;

/** A y axis as wide as its longest label ("1 min 20 s" too), measured in the chart's font. */
function labelRoom(u, values, axisIndex, cycle) {
  const axis = u.axes[axisIndex];
  if (cycle > 1) return axis._size;  // uPlot asks again until the sizes settle
  const longest = (values || []).reduce((a, v) => String(v).length > a.length ? String(v) : a,
                                        "");
  u.ctx.font = axis.font[0];
  return Math.ceil(axis.ticks.size + axis.gap + 4 +
                   u.ctx.measureText(longest).width / devicePixelRatio);
}

/** A small uPlot chart, created once and then fed new data. */
function drawChart(charts, key, element, data, series, format, { step, integers = false }) {
  if (typeof uPlot === "undefined") { element.textContent = "(charts unavailable)"; return; }
  const existing = charts.get(key);
  if (existing) { existing.setData(data); return; }
  const width = Math.max(280, element.clientWidth || 380);
  const chart = new uPlot({
    width, height: 110, legend: { show: false }, cursor: { y: false },
    // Half a bucket of room on each side, so the first and last bars are whole.
    scales: { x: { time: true, range: (u, min, max) => [min - step / 2, max + step / 2] } },
    axes: [{ size: 26, font: "11px system-ui" },
           { size: labelRoom, font: "11px system-ui", values: (u, values) => values.map(format),
             ...(integers ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                      10000, 50000, 100000] } : {}) }],
    series: [{}, ...series.map(s => ({ width: 1.5, spanGaps: false, ...s,
      value: (u, v) => v === null || v === undefined ? "–" : format(v) }))],
  }, data, element);
  charts.set(key, chart);
}

// --- apps ----------------------------------------------------------------------------------

async function pageApps() {
  $("#page").innerHTML = html`<h1>Apps</h1><div id="apps"><p class="muted">Loading…</p></div>`;
  return async () => {
    const [{ apps }, { functions }] = await Promise.all([api("/api/v1/apps"),
                                                        allFunctions()]);
    // A function synced with options this server cannot honour: its runs fail naming them.
    const problems = Object.fromEntries(functions.filter(f => f.problems?.length)
      .map(f => [f.id, f.problems]));
    $("#apps").innerHTML = apps.length ? html`<table id="app-list"><thead><tr><th>App</th>
      <th>SDK</th><th>Served at</th><th>Last sync</th><th>Functions changed</th>
      <th>Functions</th></tr></thead><tbody>
      ${apps.map(a => html`<tr data-app="${a.id}"><td class="mono">${a.id}</td>
        <td>${a.sdk}${a.framework ? html` <span class="muted">(${a.framework})</span>` : ""}</td>
        <td class="mono" style="font-size:12px">${a.url ?? html`<span class="muted">Python
          workers</span>`}</td>
        <td>${when(a.synced_at)}</td><td>${when(a.changed_at)}</td>
        <td class="mono" style="font-size:12px">${a.functions.map((f, i) => html`${i ? ", " : ""}<a
          href="/runs?function=${encodeURIComponent(f)}">${f}</a>${problems[f] ? html` <span
          class="badge s-failed" title="${problems[f].join("; ")}">cannot run</span>` : ""}`)}
        </td></tr>
        ${a.warnings.length || a.functions.some(f => problems[f]) ? html`<tr
          class="app-notes" data-notes="${a.id}"><td colspan="6"><div class="notice bad">
          ${a.functions.filter(f => problems[f]).map(f => html`<div class="fn-problem">
            <b class="mono">${f}</b> cannot run on this server as synced; its runs fail:
            ${problems[f].join("; ")}</div>`)}
          ${a.warnings.map(w => html`<div class="sync-warning">Sync warning: ${w}</div>`)}
          </div></td></tr>` : ""}`)}
      </tbody></table>
      <p class="muted">SDK apps sync with <code>stepwise dev -u URL</code> (re-synced every few
        seconds) or by a <code>PUT</code> to their serve URL; a Python app registers when its
        worker starts.</p>`
      : html`<p class="muted">No app has registered yet.</p>`;
  };
}

// --- workers -------------------------------------------------------------------------------

async function pageWorkers() {
  $("#page").innerHTML = html`<h1>Workers</h1><div id="workers"><p class="muted">Loading…</p>
    </div>`;
  return async () => {
    const { workers, unserved } = await api("/api/v1/workers");
    $("#workers").innerHTML = html`
      ${unserved.length ? html`<div class="notice bad" id="unserved">${unserved.map(u => html`
        <div><b>${u.queued}</b> due run${u.queued === 1 ? "" : "s"} of <code>${u.function_id}</code>
        (app ${u.app_id}) waiting since ${when(u.oldest_at)}: no live worker serves it.</div>`)}
        </div>` : ""}
      ${workers.length ? html`<table id="worker-list"><thead><tr><th>Worker</th><th>App</th>
        <th>State</th><th>Slots in use</th><th>Last heartbeat</th><th>Started</th>
        <th>Functions it serves</th></tr></thead><tbody>
        ${workers.map(w => html`<tr class="${w.live ? "" : "muted"}">
          <td class="mono">${w.id}</td><td>${w.app_id}</td>
          <td>${w.live ? html`<span class="badge s-completed">live</span>` :
                html`<span class="badge s-cancelled">gone</span>`}</td>
          <td><span class="bar-slots"><i style="width:${Math.round(100 * w.in_use /
            Math.max(1, w.slots))}%"></i></span>${w.in_use} / ${w.slots}</td>
          <td>${when(w.heartbeat_at)}</td><td>${when(w.started_at)}</td>
          <td class="mono" style="font-size:12px">${w.functions.join(", ")}</td></tr>`)}
        </tbody></table>
        <p class="muted">A worker is live while it heart-beats (every third of its lease);
          one that stops is shown as gone for a day.</p>`
        : html`<p class="muted">No worker has reported. Start one with
          <code>stepwise worker MODULE:APP</code>.</p>`}`;
  };
}

// --- audit log -----------------------------------------------------------------------------

async function pageAudit() {
  $("#page").innerHTML = html`<h1>Audit log</h1>
    <p class="muted">Every management action (replays, cancels, bulk operations, retention,
      pruning, erasure) and every sign-in: who, as what role, what, and how it was answered.
      Refusals are listed too.</p><div id="audit"><p class="muted">Loading…</p></div>
    <p><button id="audit-more" class="secondary" hidden>Older entries</button></p>`;
  const shown = [];
  let next = null;
  const draw = () => {
    $("#audit").innerHTML = shown.length ? html`<table id="audit-list"><thead><tr><th>When</th>
      <th>Who</th><th>Role</th><th>Action</th><th>Target</th><th>Answer</th><th>Detail</th>
      </tr></thead><tbody>${shown.map(e => html`<tr>
        <td>${when(e.at)}</td><td>${e.actor}</td><td>${e.role}</td>
        <td class="mono">${e.action}</td>
        <td>${e.target ? (e.action.includes("{run_id}") ? runLink(e.target) :
          html`<span class="mono">${e.target}</span>`) : "–"}</td>
        <td><span class="badge ${e.status < 400 ? "s-completed" : "s-failed"}">${e.status}
          </span></td>
        <td class="mono wrap" style="font-size:12px">${Object.keys(e.detail || {}).length ?
          JSON.stringify(e.detail) : ""}</td></tr>`)}</tbody></table>`
      : html`<p class="muted">Nothing has been recorded yet.</p>`;
    labelCells();
    $("#audit-more").hidden = !next;
  };
  $("#audit-more").addEventListener("click", async () => {
    const page = await api(`/api/v1/audit?limit=100&before=${encodeURIComponent(next)}`);
    shown.push(...page.entries);
    next = page.next;
    draw();
  });
  return async () => {
    const page = await api("/api/v1/audit?limit=100");
    // Newest first: keep the older pages already loaded below the refreshed first page.
    const known = new Set(page.entries.map(e => e.id));
    const older = shown.filter(e => !known.has(e.id) && page.entries.length &&
      e.id < page.entries[page.entries.length - 1].id);
    if (!older.length) next = page.next;
    shown.splice(0, shown.length, ...page.entries, ...older);
    draw();
  };
}

// --- who is signed in ------------------------------------------------------------------------

async function showSignedIn() {
  const box = $("#who");
  try {
    const me = await api("/api/v1/me");
    if (!me.signed_in) return;
    box.hidden = false;
    box.innerHTML = html`<span title="${me.actor} · ${me.role}">${me.actor}
      <span class="badge">${me.role}</span></span>
      <button id="signout" class="secondary">Sign out</button>`;
    $("#signout").addEventListener("click", async () => {
      const answer = await fetch("/signout", { method: "POST",
                                               headers: { "X-CSRF-Token": csrfToken() } });
      await answer.text();
      location.href = "/signin";
    });
  } catch { /* not signed in through a session */ }
}

render().then(warnUnserved);
showSignedIn();
