// roost relay dashboard: keeps the figures and the chart current (the page works without it).
"use strict";
(function () {
  var root = document.querySelector("[data-poll]");
  if (!root || !window.fetch) { return; }
  var url = root.getAttribute("data-poll");
  var every = parseInt(root.getAttribute("data-every"), 10) || 2000;
  var layout = root.getAttribute("data-layout");

  function show(data) {
    // every element with a data-live key gets the text the server computed for it
    var live = data.live || {};
    var items = root.querySelectorAll("[data-live]");
    for (var i = 0; i < items.length; i++) {
      var key = items[i].getAttribute("data-live");
      if (Object.prototype.hasOwnProperty.call(live, key) && items[i].textContent !== live[key]) {
        items[i].textContent = live[key];
      }
    }
    var chart = root.querySelector("svg.chart");
    if (chart && data.chart) {
      chart.querySelector(".line").setAttribute("points", data.chart.points);
      chart.querySelector(".area").setAttribute("points", data.chart.area);
    }
    // rows come and go (a new host, a consumer leaving): say so rather than reload under the reader
    var stale = root.querySelector("[data-stale]");
    if (stale) { stale.hidden = data.layout === layout; }
  }

  function poll() {
    if (document.hidden) { window.setTimeout(poll, every); return; }
    // a request that hangs must not stop the updates: give up on it after a while
    var abort = window.AbortController ? new AbortController() : null;
    var timer = abort ? window.setTimeout(function () { abort.abort(); }, 5 * every) : 0;
    fetch(url, { credentials: "same-origin", cache: "no-store", signal: abort ? abort.signal : undefined })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) { show(data); } })
      .catch(function () { /* the relay is restarting: try again next time */ })
      .then(function () { window.clearTimeout(timer); window.setTimeout(poll, every); });
  }
  window.setTimeout(poll, every);
})();
