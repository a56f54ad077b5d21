// roost feed catalogue: keep the previews and counters fresh (the page works without it).
"use strict";
(function () {
  var box = document.getElementById("feeds");
  if (!box || !window.fetch) { return; }
  var url = box.getAttribute("data-refresh");
  var seconds = parseInt(box.getAttribute("data-interval"), 10) || 10;
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    // a request that hangs must not stop the refreshing: give up on it after a while
    var abort = window.AbortController ? new AbortController() : null;
    var timer = abort ? window.setTimeout(function () { abort.abort(); }, 3000 * seconds) : 0;
    var options = { credentials: "same-origin", cache: "no-store" };
    if (abort) { options.signal = abort.signal; }
    fetch(url, options)
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        box.innerHTML = html;  // server-rendered and escaped, from this origin
        box.removeAttribute("data-stale");
      }, function () {
        box.setAttribute("data-stale", "true");
      })
      .then(function () { window.clearTimeout(timer); busy = false; });
  }
  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });
})();
