// Live updates for the report pages: chips and counts follow new fetches and clicks without a
// reload, and (if the user allows it) the first real read of a copy (an open, or a person's
// click before any open) raises a browser notification, whichever page is open, once per copy.
// Times arrive in the user's time zone. On a message's page each recipient's section (its
// fetches and clicks, with their reasons) is fetched again from the server and swapped in, so
// the page says what a reload would say, rendered in one place (the template).
(function () {
  "use strict";
  if (!window.EventSource) return;
  var button = document.getElementById("notify");
  if (button && window.Notification && Notification.permission === "default") {
    button.hidden = false;
    button.addEventListener("click", function () {
      Notification.requestPermission().then(function () { button.hidden = true; });
    });
  }
  var notified = {};
  var busy = false, again = false;
  function refreshSections() {
    if (busy) { again = true; return; }
    busy = true;
    window.setTimeout(function () {  // events of one click or batch arrive together
      fetch(window.location.pathname, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : ""; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html");
          document.querySelectorAll("section.recipient[id]").forEach(function (section) {
            var next = fresh.getElementById(section.id);
            if (next) section.replaceWith(document.importNode(next, true));
          });
        })
        .catch(function () { /* offline for a moment: the next event tries again */ })
        .finally(function () {
          busy = false;
          if (again) { again = false; refreshSections(); }
        });
    }, 250);
  }
  var source = new EventSource("/events");
  source.addEventListener("state", function (event) {
    var change = JSON.parse(event.data);
    var rows = document.querySelectorAll('[data-delivery="' + change.delivery + '"]');
    var sections = false;
    rows.forEach(function (row) {
      if (row.tagName === "SECTION") sections = true;
      row.setAttribute("data-state", change.state);
      var chip = row.querySelector(".chip");
      if (chip) { chip.textContent = change.chip; chip.className = "chip " + change.state; }
      var humans = row.querySelector(".humans");
      if (humans) humans.textContent = change.humans;
      var machines = row.querySelector(".machines");
      if (machines) machines.textContent = change.machines;
      var first = row.querySelector(".first-open");
      if (first) first.textContent = change.first_open + (change.after_sending ? " " + change.after_sending : "");
      var last = row.querySelector(".last-open");
      if (last) last.textContent = change.last_open;
      var clicks = row.querySelector(".clicks");
      if (clicks) clicks.textContent = change.clicks;
    });
    if (sections) refreshSections();
    if (change.first_open_now && !notified[change.delivery] && window.Notification &&
        Notification.permission === "granted") {
      notified[change.delivery] = true;
      new Notification((change.read_by_click ? "Clicked: " : "Opened: ") + change.subject, {
        body: change.recipient + " — " + change.chip + " at " + change.opened_at +
          (change.after_sending ? " (" + change.after_sending + ")" : ""),
        tag: "mailping-open-" + change.delivery
      });
    }
  });
})();
