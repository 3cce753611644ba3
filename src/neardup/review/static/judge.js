// Judging page keys: S/1 same, D/0 different, K/space skip. One answer per page load.
(function () {
  "use strict";
  var keys = { s: "same", "1": "same", d: "different", "0": "different", k: "skip", " ": "skip" };
  var sent = false;
  document.addEventListener("keydown", function (e) {
    if (sent || e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && t.closest && t.closest("input, textarea, select")) return;
    var answer = keys[(e.key || "").toLowerCase()];
    if (!answer) return;
    var button = document.querySelector('#judge-form button[value="' + answer + '"]');
    if (!button) return;
    e.preventDefault();
    sent = true;
    button.click();
  });
})();
