// Live rows: the server pushes a table body (server-sent events) whenever what it shows changes.
(function () {
  var body = document.querySelector("[data-stream]");
  if (!body || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var source = new EventSource(body.getAttribute("data-stream"));
  source.addEventListener("rows", function (e) {
    body.innerHTML = e.data;
    if (status) { status.textContent = "live · updated " + new Date().toLocaleTimeString(); status.className = "live"; }
  });
  source.onerror = function () {
    if (status) { status.textContent = "reconnecting…"; status.className = "live stale"; }
  };
})();
