// Live updates: the server says when something the dashboard shows changed, over server-sent
// events (GET /api/v1/live), and the page re-reads the API then, instead of every 2 seconds.
// app.js hands us its `tick` (refresh the page and the relative times) and `setLive` (the
// header's indicator). Refreshes are coalesced (at most two a second, however often changes
// come); a refresh every RESYNC_MS keeps "3 min ago" current and catches what no change
// reports (a worker that stopped without a word shows as gone when its time is up). When the
// stream fails FAILURES times in a row, or the browser has no EventSource, the page polls
// every 2 seconds as before, and tries the stream again every RETRY_STREAM_MS.
// The indicator says which: live, polling, offline (the stream or the API cannot be
// reached) or paused (the tab is hidden: no stream, no requests).
"use strict";

window.stepwiseLive = (() => {
  const STREAM = "/api/v1/live";
  const GAP_MS = 500;
  const RESYNC_MS = 20000;
  const POLL_MS = 2000;
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
  let mode = "live";
  let source = null;
  let failures = 0;
  let timers = { poll: null, resync: null, reconnect: null };
  let running = false;
  let again = false;
  let pending = null;
  let last = 0;

  /** Refresh now, or once the last refresh is GAP_MS old; requests meanwhile make one. */
  function refresh() {
    if (document.visibilityState !== "visible") return;
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

  /** The indicator for `mode`, unless the last refresh failed (app.js says offline). */
  function show() {
    const live = document.getElementById("live");
    if (!live) return;
    if (document.visibilityState !== "visible") {
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

  function connect() {
    stop("reconnect");
    if (source || document.visibilityState !== "visible") return;
    if (typeof window.EventSource !== "function") { poll(); return; }
    const stream = new EventSource(STREAM);
    source = stream;
    stream.addEventListener("ready", () => {
      if (source !== stream) return;
      failures = 0;
      stop("poll");
      mode = "live";
      refresh();  // what changed while we were not listening
    });
    stream.addEventListener("change", () => { if (source === stream) refresh(); });
    // The server is stopping, or the stream broke: reconnect ourselves (backing off), and
    // poll once it failed FAILURES times in a row.
    stream.addEventListener("bye", () => lost(stream));
    stream.onerror = () => lost(stream);
  }

  function lost(stream) {
    stream.close();
    if (source !== stream) return;
    source = null;
    failures += 1;
    if (failures >= FAILURES) { poll(); return; }
    if (mode === "live") { mode = "offline"; show(); }
    timers.reconnect = setTimeout(connect, 1000 * failures);
  }

  /** The fallback: poll every 2 seconds, and try the stream again now and then. */
  function poll() {
    mode = "polling";
    show();
    if (timers.poll === null) timers.poll = setInterval(refresh, POLL_MS);
    if (typeof window.EventSource === "function" && timers.reconnect === null) {
      timers.reconnect = setTimeout(() => { failures = FAILURES - 1; connect(); },
                                    RETRY_STREAM_MS);
    }
  }

  function hidden() {
    if (source) { source.close(); source = null; }
    stop("poll"); stop("resync"); stop("reconnect");
    show();
  }

  function visible() {
    timers.resync = setInterval(refresh, RESYNC_MS);
    if (mode === "polling") { poll(); refresh(); } else connect();  // `ready` refreshes
  }

  function start(appTick, appSetLive) {
    tick = appTick;
    setLive = appSetLive;
    // app.js marks the page live after each navigation; keep saying polling or offline.
    const live = document.getElementById("live");
    if (live && window.MutationObserver) {
      new MutationObserver(() => {
        if (mode !== "live" && live.textContent === "live" &&
            document.visibilityState === "visible") show();
      }).observe(live, { childList: true });
    }
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") visible(); else hidden();
    });
    if (document.visibilityState === "visible") {
      timers.resync = setInterval(refresh, RESYNC_MS);
      connect();
    } else {
      show();
    }
  }

  return { start };
})();
