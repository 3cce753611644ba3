// Keyboard review: A accept, K keep all, M master, N not a duplicate (selected member),
// 1-9 / ArrowUp/ArrowDown select, J/ArrowRight next group, P/ArrowLeft previous, U undo, C compare.
(function () {
  "use strict";
  var members = Array.prototype.slice.call(document.querySelectorAll(".review-member"));
  var field = document.getElementById("selected-id");
  var sel = 0;
  var sent = false;
  function select(i) {
    if (!members.length) return;
    sel = (i + members.length) % members.length;
    members.forEach(function (m, k) { m.classList.toggle("selected", k === sel); });
    if (field) field.value = members[sel].getAttribute("data-image-id");
    members[sel].scrollIntoView({ block: "nearest" });
  }
  members.forEach(function (m, k) { m.addEventListener("click", function () { select(k); }); });
  function press(selector) {
    var el = document.querySelector(selector);
    if (!el || el.disabled) return false;
    sent = true;
    el.click();
    return true;
  }
  document.addEventListener("keydown", function (e) {
    if (sent || e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && t.closest && t.closest("input, textarea, select")) return;
    var k = e.key || "";
    var lk = k.toLowerCase();
    var done = false;
    if (/^[1-9]$/.test(k)) { select(parseInt(k, 10) - 1); done = true; }
    else if (k === "ArrowDown") { select(sel + 1); done = true; }
    else if (k === "ArrowUp") { select(sel - 1); done = true; }
    else if (lk === "j" || k === "ArrowRight") done = press("#next-group");
    else if (lk === "p" || k === "ArrowLeft") done = press("#prev-group");
    else if (lk === "u") done = press('#undo-form button[data-key="u"]');
    else if (lk === "c" && members.length) {
      var link = members[sel].querySelector("a.compare");
      if (link) { sent = true; window.location.href = link.href; done = true; }
    }
    else if ("akmn".indexOf(lk) >= 0 && lk) done = press('#review-form button[data-key="' + lk + '"]');
    if (done) e.preventDefault();
  });
})();
