// Live updates for the report pages: chips and counts follow new fetches without a reload,
// and (if the user allows it) the first real open of a copy raises a browser notification,
// whichever page is open, once per copy. Times arrive in the user's time zone.
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
  var source = new EventSource("/events");
  source.addEventListener("state", function (event) {
    var change = JSON.parse(event.data);
    var rows = document.querySelectorAll('[data-delivery="' + change.delivery + '"]');
    rows.forEach(function (row) {
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
    });
    if (change.first_open_now && !notified[change.delivery] && window.Notification &&
        Notification.permission === "granted") {
      notified[change.delivery] = true;
      new Notification("Opened: " + change.subject, {
        body: change.recipient + " — " + change.chip + " at " + change.opened_at +
          (change.after_sending ? " (" + change.after_sending + ")" : ""),
        tag: "mailping-open-" + change.delivery
      });
    }
  });
})();
