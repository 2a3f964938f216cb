// GridPatrol 监管台: live updates. The overview page lists patrols as they sync (server-sent
// events from /console/events) and refreshes its figures from the server, without a reload.
(function () {
  "use strict";
  var record = document.getElementById("record");
  var list = document.getElementById("live");
  if (!record || !list || !window.EventSource) {
    return;
  }
  var after = record.getAttribute("data-live-after") || "0";
  var source = new EventSource("/console/events?after=" + encodeURIComponent(after));
  var pending = null;

  function refresh() {
    // The same page again; only the figures and tables are swapped in.
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("record");
        if (!fresh) { return; }
        var kept = list.cloneNode(true);
        record.replaceWith(fresh);
        record = fresh;
        var slot = document.getElementById("live");
        slot.replaceWith(kept);
        list = kept;
      });
  }

  // The session ended elsewhere (signed out in another tab, revoked by an admin): stop, and do
  // not reconnect; the next page load asks to sign in.
  source.addEventListener("signed-out", function () {
    source.close();
  });

  source.addEventListener("patrol", function (message) {
    var event = JSON.parse(message.data);
    var empty = list.querySelector(".empty");
    if (empty) { empty.remove(); }
    var item = document.createElement("li");
    item.className = "new";
    var link = document.createElement("a");
    link.href = "/console/patrols/" + encodeURIComponent(event.id);
    link.textContent = event.grid_name + " · " + event.inspector;
    item.appendChild(link);
    item.appendChild(document.createTextNode(" · " + event.received_at.replace("T", " ").slice(0, 19) + " UTC"));
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 20) { list.removeChild(list.lastChild); }
    // Several patrols often arrive together (a phone coming back into coverage): refresh once.
    clearTimeout(pending);
    pending = setTimeout(refresh, 1500);
  });
})();
