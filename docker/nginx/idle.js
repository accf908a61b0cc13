// The idle warning inside JupyterLab's tab (docs/console.md, "Idle warning in JupyterLab").
//
// The entry point adds this script to JupyterLab's HTML pages (nginx sub_filter) and serves it from its own
// authorizer (/_nbl/idle.js). It asks the same origin's /_nbl/status (authorized by the origin's cookie like
// every request) how long the session has before it is stopped for idleness, shows a banner inside the warning
// window with a "Keep running" button (POST /_nbl/keepalive), and says so when the session has stopped.
// Server data is only ever written with textContent; the only URL used from it (the console's) must be http(s).
(function () {
  "use strict";
  if (window.__nblIdle) return;
  window.__nblIdle = true;

  var STATUS = "/_nbl/status";
  var KEEP = "/_nbl/keepalive";
  var MAX_WAIT = 30000; // poll at least this often
  var MIN_WAIT = 1000;
  var AFTER_KEEP = 2000; // ask again soon after a keep-alive

  var bar = null;
  var message = null;
  var keep = null;
  var link = null;
  var timer = null;
  var ticker = null;
  var deadline = null; // when the session stops if nothing happens (local clock, ms)
  var finished = false; // stopped or signed out: nothing more to ask

  function build() {
    if (bar) return;
    bar = document.createElement("div");
    bar.id = "nbl-idle-banner";
    bar.setAttribute("role", "alert");
    var s = bar.style;
    s.position = "fixed"; // above JupyterLab's status bar: the menus and tabs stay visible
    s.bottom = "2rem";
    s.left = "50%";
    s.transform = "translateX(-50%)";
    s.zIndex = "2147483000";
    s.maxWidth = "48rem";
    s.padding = "0.5rem 0.9rem";
    s.background = "#fff4ce";
    s.color = "#3b2f00";
    s.border = "1px solid #d6b656";
    s.borderRadius = "6px";
    s.boxShadow = "0 2px 8px rgba(0,0,0,0.2)";
    s.font = "14px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif";
    s.display = "none";
    s.alignItems = "center";
    s.gap = "0.8rem";
    message = document.createElement("span");
    keep = document.createElement("button");
    keep.type = "button";
    keep.textContent = "Keep running";
    keep.style.font = "inherit";
    keep.style.fontWeight = "600";
    keep.style.padding = "0.2rem 0.7rem";
    keep.style.cursor = "pointer";
    keep.addEventListener("click", keepRunning);
    link = document.createElement("a");
    link.textContent = "Back to the console";
    link.style.fontWeight = "600";
    link.style.color = "#0b57d0";
    link.rel = "noreferrer";
    bar.appendChild(message);
    bar.appendChild(keep);
    bar.appendChild(link);
    document.body.appendChild(bar);
  }

  function show(text, withKeep, consoleUrl) {
    build();
    message.textContent = text;
    keep.style.display = withKeep ? "" : "none";
    var safe = typeof consoleUrl === "string" && /^https?:\/\/[^\s]+$/i.test(consoleUrl);
    link.style.display = safe && !withKeep ? "" : "none";
    if (safe) link.href = consoleUrl;
    bar.style.display = "flex";
  }

  function hide() {
    if (bar) bar.style.display = "none";
  }

  function minutesLeft() {
    var left = Math.max(0, (deadline - Date.now()) / 1000);
    return Math.max(1, Math.ceil(left / 60));
  }

  function showWarning() {
    show("This notebook stops in " + minutesLeft() + " min because it has been idle.", true, null);
  }

  function schedule(ms) {
    if (timer) clearTimeout(timer);
    timer = finished ? null : setTimeout(poll, Math.max(MIN_WAIT, Math.min(MAX_WAIT, ms)));
  }

  function stopTicker() {
    if (ticker) clearInterval(ticker);
    ticker = null;
  }

  // Apply one answer of /_nbl/status or /_nbl/keepalive; returns the wait before the next poll (ms).
  function apply(code, data) {
    var consoleUrl = data && typeof data.console === "string" ? data.console : null;
    var status = data && typeof data.status === "string" ? data.status : "";
    if (code === 200 && status === "running") {
      var left = typeof data.idle_left_s === "number" ? data.idle_left_s : null;
      var before = typeof data.warn_before_s === "number" ? data.warn_before_s : 0;
      if (left === null) { // a busy kernel: not idle
        deadline = null;
        stopTicker();
        hide();
        return MAX_WAIT;
      }
      deadline = Date.now() + left * 1000;
      if (data.warn === true) {
        showWarning();
        if (!ticker) ticker = setInterval(showWarning, 10000);
        return Math.min(MAX_WAIT, left * 1000 + MIN_WAIT);
      }
      stopTicker();
      hide();
      return (left - before) * 1000 + MIN_WAIT; // the next look is when the warning would start
    }
    if ((code === 200 || code === 403) && (status === "not_running" || status === "stopping" || status === "stopped")) {
      finished = true;
      stopTicker();
      show("This notebook has stopped. Files saved in your workspace are kept; start it again from the console.",
           false, consoleUrl);
      return MAX_WAIT;
    }
    if (code === 401 || (code === 403 && status === "logged_out")) {
      finished = true;
      stopTicker();
      show("You are signed out of this notebook. Sign in to the console and open it again.", false, consoleUrl);
      return MAX_WAIT;
    }
    return MAX_WAIT; // the launcher did not answer as expected: look again later, change nothing
  }

  function ask(url, options) {
    return fetch(url, options).then(function (r) {
      return r.json().then(function (d) { return [r.status, d]; }, function () { return [r.status, null]; });
    });
  }

  function poll() {
    timer = null;
    ask(STATUS, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) { schedule(apply(answer[0], answer[1])); })
      .catch(function () { schedule(MAX_WAIT); });
  }

  function keepRunning() {
    keep.disabled = true;
    ask(KEEP, {method: "POST", credentials: "same-origin", cache: "no-store"})
      .then(function (answer) {
        keep.disabled = false;
        if (answer[0] !== 200) {
          if (apply(answer[0], answer[1]) && !finished) message.textContent = "Could not keep it running; try again.";
          return;
        }
        apply(answer[0], answer[1]);
        schedule(AFTER_KEEP);
      })
      .catch(function () {
        keep.disabled = false;
        message.textContent = "The launcher did not answer; try again.";
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && !finished) schedule(0);
  });
  poll();
})();
