// greenflow console: live parts of server-rendered pages. No build step, no libraries.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // The element #live[data-live=ms] is reloaded as a fragment while the page is open.
  var live = document.getElementById("live");
  var busy = false, timer = null;

  function refresh() {
    if (!live || busy) { return; }
    busy = true;
    fetch(location.href, {headers: {"X-Console-Fragment": "live"}, credentials: "same-origin"})
      .then(function (r) {
        if (r.status === 401) { location.reload(); throw new Error("logged out"); }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          var open = {};
          live.querySelectorAll("details").forEach(function (d, i) { open[i] = d.open; });
          live.innerHTML = html;
          live.querySelectorAll("details").forEach(function (d, i) { if (i in open) { d.open = open[i]; } });
          document.dispatchEvent(new CustomEvent("console:refreshed"));
        }
      })
      .catch(function () {})
      .finally(function () { busy = false; });
  }

  function schedule() {
    if (!live || !live.dataset.live) { return; }
    var ms = parseInt(live.dataset.live, 10) || 3000;
    timer = setInterval(function () { if (!document.hidden) { refresh(); } }, ms);
  }

  // One flow: its progress steps arrive as server-sent events and are shown at once.
  function markStep(step) {
    var tree = document.getElementById("progress-tree");
    if (!tree || !step) { return; }
    var top = step.split(" / ")[0], seen = false, found = false;
    tree.querySelectorAll(":scope > li.step").forEach(function (li) {
      if (li.dataset.step === top) { found = true; }
    });
    if (!found) { refresh(); return; }
    tree.querySelectorAll(":scope > li.step").forEach(function (li) {
      li.classList.remove("done", "current", "todo");
      if (li.dataset.step === top) { li.classList.add("current"); seen = true; }
      else { li.classList.add(seen ? "todo" : "done"); }
      var sub = li.querySelector("ul");
      if (sub) { sub.remove(); }
      if (li.dataset.step === top && step.indexOf(" / ") > 0) {
        var ul = document.createElement("ul"); ul.className = "tree";
        var child = document.createElement("li"); child.className = "step current";
        child.dataset.step = step.slice(top.length + 3);
        var mark = document.createElement("span"); mark.className = "mark";
        child.appendChild(mark); child.appendChild(document.createTextNode(child.dataset.step));
        ul.appendChild(child); li.appendChild(ul);
      }
    });
  }

  function watchEvents() {
    if (!live || !live.dataset.events || !window.EventSource) { return; }
    var es = new EventSource(live.dataset.events);
    es.addEventListener("progress", function (ev) {
      try {
        var step = JSON.parse(ev.data).step;
        live.dataset.lastEvent = step;  // the step the stream said last (shown at once)
        markStep(step);
      } catch (e) { /* ignore */ }
      refresh();
    });
    es.addEventListener("status", function (ev) {
      try {
        var st = JSON.parse(ev.data).status;
        if (st === "COMPLETED" || st === "FAILED" || st === "KILLED") { es.close(); }
      } catch (e) { /* ignore */ }
    });
    es.addEventListener("end", function () { es.close(); refresh(); });
    // Fell behind and was dropped: catch up now; the browser reconnects by itself.
    es.addEventListener("dropped", function () { refresh(); });
    es.onerror = function () { /* the browser reconnects by itself */ };
  }

  // Buttons with data-action act on the flow after a confirmation.
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-action]");
    if (!b) { return; }
    ev.preventDefault();
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) { return; }
    var fid = b.closest("[data-flow-id]").dataset.flowId;
    var out = document.getElementById("action-result");
    b.disabled = true;
    fetch("/console/api/flows/" + encodeURIComponent(fid) + "/" + b.dataset.action, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json"}, body: "{}"
    }).then(function (r) { return r.json().then(function (d) { return [r, d]; }); })
      .then(function (rd) {
        var r = rd[0], d = rd[1];
        if (out) {
          out.textContent = r.ok ? (b.dataset.action + (d.done ? ": done" : ": nothing to do"))
                                 : ((d.error && d.error.message) || ("HTTP " + r.status));
        }
        if (r.ok) { b.remove(); }
        refresh();
      })
      .catch(function (e) { if (out) { out.textContent = String(e); } })
      .finally(function () { b.disabled = false; });
  });

  // Forms whose submit button asks first (draining).
  document.addEventListener("submit", function (ev) {
    var b = ev.submitter || ev.target.querySelector("button[data-confirm]");
    if (b && b.dataset && b.dataset.confirm && !window.confirm(b.dataset.confirm)) { ev.preventDefault(); }
  });

  // The filter form: changing the status select applies it at once.
  var status = document.getElementById("f-status");
  if (status) { status.addEventListener("change", function () { status.form.submit(); }); }

  schedule();
  watchEvents();
})();
