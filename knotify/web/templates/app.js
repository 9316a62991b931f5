// knotify pages: hover details for timeline marks, and live updates (server-sent events).
(function () {
  "use strict";
  var tip = null;
  function showTip(ev) {
    // The detail is the SVG <title> of a band or mark (the browser's own tooltip too).
    var target = ev.target.closest ? ev.target.closest("g.mark, rect.band") : null;
    if (!tip) { tip = document.getElementById("tip"); }
    if (!tip) { return; }
    var title = target ? target.querySelector("title") : null;
    if (!title) { tip.style.display = "none"; return; }
    tip.textContent = title.textContent;
    tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 540) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  }
  document.addEventListener("mouseover", showTip);
  document.addEventListener("mousemove", function (ev) {
    if (tip && tip.style.display === "block") { showTip(ev); }
  });

  var live = document.getElementById("live");
  var stream = document.body.getAttribute("data-stream");
  if (!live || !stream || !window.EventSource) { return; }
  var badge = document.getElementById("live-state");
  var timer = null, again = null;
  function refresh() {
    var url = window.location.pathname + window.location.search;
    url += (url.indexOf("?") < 0 ? "?" : "&") + "fragment=1";
    fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error(r.status); }
      return r.text();
    }).then(function (html) {
      live.innerHTML = html;
      live.setAttribute("data-updated", String(Date.now()));
    }).catch(function () {});
  }
  function soon() {
    // Throttled, not debounced: a steady stream must still repaint. Once quickly, and
    // once more a little later, since an outcome may commit just after its message.
    if (!timer) { timer = setTimeout(function () { timer = null; refresh(); }, 150); }
    if (!again) { again = setTimeout(function () { again = null; refresh(); }, 1500); }
  }
  var source = new EventSource(stream, {withCredentials: true});
  source.onopen = function () {
    if (badge) { badge.className = "live on"; badge.textContent = "live"; }
  };
  source.onerror = function () {
    if (badge) { badge.className = "live"; badge.textContent = "reconnecting"; }
  };
  source.onmessage = function () { soon(); };
})();
