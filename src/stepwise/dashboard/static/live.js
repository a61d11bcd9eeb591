// Live updates: the server says when something the dashboard shows changed, over server-sent
// events (GET /api/v1/live), and the page re-reads the API then, instead of every 2 seconds.
// app.js hands us its `tick` (refresh the page and the relative times) and `setLive` (the
// header's indicator).
//
// One stream per browser, not per tab: a browser opens at most 6 connections to a server
// over HTTP/1.1, so six tabs each holding a stream would leave a seventh unable to load. The
// tab holding the Web Lock "stepwise-live" keeps the stream and passes what it hears to the
// other tabs (BroadcastChannel); when it closes, another tab takes the lock and the stream.
// A browser without either opens one stream per tab.
//
// Refreshes are coalesced: the first change after a quiet spell refreshes at once, and while
// changes keep coming a tab refreshes at most every GAP_MS, so a busy server costs no more
// than polling did (refreshing up to twice a second instead, 20 tabs cost 2.4 times what
// polling did at one event a second: bench/live_tabs.py). One refresh every RESYNC_MS keeps
// "3 min ago" current and catches what no change reports (a worker that stopped without a
// word shows as gone when its time is up). When the stream fails FAILURES times in a row, or
// the browser has no EventSource, every tab polls every 2 seconds as before, and the stream
// is tried again every RETRY_STREAM_MS. A hidden tab makes no requests and catches up when
// shown. The indicator says which: live, polling, offline (the stream or the API cannot be
// reached) or paused (this tab is hidden).
"use strict";

window.stepwiseLive = (() => {
  const STREAM = "/api/v1/live";
  const POLL_MS = 2000;
  const GAP_MS = POLL_MS;
  const RESYNC_MS = 30000;
  const FAILURES = 3;
  const RETRY_STREAM_MS = 30000;
  const TITLES = {
    live: "Live: the server says when something changed, and the page refreshes then",
    polling: "The live stream is unavailable: the page refreshes itself every 2 seconds",
    offline: "The server cannot be reached; trying again",
    paused: "Paused while the tab is hidden",
  };

  let tick = async () => {};
  let setLive = () => {};
  let mode = "live";  // the stream's state, the same in every tab
  const channel = typeof BroadcastChannel === "function" ?
    new BroadcastChannel("stepwise-live") : null;
  const shared = channel !== null && !!(navigator.locks && navigator.locks.request);
  let leader = false;  // this tab holds the stream
  let source = null;
  let failures = 0;
  const timers = { poll: null, resync: null, reconnect: null };
  let running = false;
  let again = false;
  let pending = null;
  let last = 0;

  const visible = () => document.visibilityState === "visible";

  /** Refresh now, or once the last refresh is GAP_MS old; requests meanwhile make one. */
  function refresh() {
    if (!visible()) return;
    if (running) { again = true; return; }
    if (pending) return;
    pending = setTimeout(run, Math.max(0, last + GAP_MS - Date.now()));
  }

  async function run() {
    pending = null;
    running = true;
    last = Date.now();
    try { await tick(); } finally {
      running = false;
      show();
      if (again) { again = false; refresh(); }
    }
  }

  /** The indicator for `mode`, unless this tab's last refresh failed (app.js: offline). */
  function show() {
    const live = document.getElementById("live");
    if (!live) return;
    if (!visible()) {
      setLive("paused");
      live.title = TITLES.paused;
      return;
    }
    if (live.classList.contains("error") && mode !== "offline") return;
    if (mode === "live") setLive("live");
    else if (mode === "offline") setLive("error");
    else { live.className = "polling"; live.textContent = "polling"; }
    live.title = TITLES[mode] || "";
  }

  function stop(name) {
    if (timers[name] !== null) { clearInterval(timers[name]); clearTimeout(timers[name]); }
    timers[name] = null;
  }

  /** Every tab's own timers: polling in polling mode, the resync; none while hidden. */
  function schedule() {
    stop("poll");
    stop("resync");
    if (!visible()) return;
    timers.resync = setInterval(refresh, RESYNC_MS);
    if (mode === "polling") timers.poll = setInterval(refresh, POLL_MS);
  }

  /** A new stream state: here, and (from the tab holding the stream) in the other tabs. */
  function become(next) {
    const was = mode;
    mode = next;
    if ((was === "polling") !== (next === "polling")) schedule();
    show();
    if (leader && channel) channel.postMessage({ mode });
  }

  /** Something changed (or may have, while nobody listened): refresh every tab. */
  function changed() {
    refresh();
    if (leader && channel) channel.postMessage({ change: true });
  }

  // --- the stream, in the tab that holds it -------------------------------------------------

  function connect() {
    stop("reconnect");
    if (source) return;
    if (typeof window.EventSource !== "function") { fallBack(); return; }
    const stream = new EventSource(STREAM);
    source = stream;
    stream.addEventListener("ready", () => {
      if (source !== stream) return;
      failures = 0;
      become("live");
      changed();  // what changed while nobody was listening
    });
    stream.addEventListener("change", () => { if (source === stream) changed(); });
    // The server is stopping, or the stream broke: reconnect (backing off), and fall back to
    // polling once it failed FAILURES times in a row.
    stream.addEventListener("bye", () => lost(stream));
    stream.onerror = () => lost(stream);
  }

  function lost(stream) {
    stream.close();
    if (source !== stream) return;
    source = null;
    failures += 1;
    if (failures >= FAILURES) { fallBack(); return; }
    if (mode === "live") become("offline");
    timers.reconnect = setTimeout(connect, 1000 * failures);
  }

  function fallBack() {
    become("polling");
    if (typeof window.EventSource === "function") {
      timers.reconnect = setTimeout(() => { failures = FAILURES - 1; connect(); },
                                    RETRY_STREAM_MS);
    }
  }

  function lead() {
    leader = true;
    connect();
  }

  // --- every tab -------------------------------------------------------------------------------

  function start(appTick, appSetLive) {
    tick = appTick;
    setLive = appSetLive;
    // app.js marks the page live after each navigation; keep saying polling or offline.
    const live = document.getElementById("live");
    if (live && window.MutationObserver) {
      new MutationObserver(() => {
        if (mode !== "live" && live.textContent === "live" && visible()) show();
      }).observe(live, { childList: true });
    }
    document.addEventListener("visibilitychange", () => {
      schedule();
      show();
      if (visible()) refresh();  // catch up on what changed while hidden
    });
    schedule();
    if (!shared) { lead(); return; }
    channel.onmessage = ({ data }) => {
      if (data.hello) { if (leader) channel.postMessage({ mode }); return; }
      if (leader) return;
      if (data.mode) {
        const was = mode;
        become(data.mode);
        if (data.mode === "live" && was !== "live") refresh();
      }
      if (data.change) refresh();
    };
    // Held until this tab closes; the next tab waiting for it then takes the stream over.
    navigator.locks.request("stepwise-live", () => new Promise(() => lead()));
    channel.postMessage({ hello: true });  // the stream's state, from the tab holding it
  }

  return { start };
})();
