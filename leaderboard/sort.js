// Sortable leaderboard tables: click (or press Enter on) a column header to sort by it;
// click again to reverse. Cells sort by their data-sort attribute when present (numbers sort
// numerically; "-" / empty values always go last), else by their text. No dependencies.
(function () {
  "use strict";

  function key(cell) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (raw === "" || raw === "-") return { missing: true, num: false, value: "" };
    var num = Number(raw);
    if (!isNaN(num)) return { missing: false, num: true, value: num };
    return { missing: false, num: false, value: raw.toLowerCase() };
  }

  function compare(a, b, descending) {
    if (a.missing || b.missing) return (a.missing ? 1 : 0) - (b.missing ? 1 : 0);  // missing last, both ways
    var order;
    if (a.num && b.num) order = a.value - b.value;
    else order = String(a.value) < String(b.value) ? -1 : String(a.value) > String(b.value) ? 1 : 0;
    return descending ? -order : order;
  }

  function sortBy(table, th, column) {
    var descending = th.getAttribute("aria-sort") === "ascending";
    var headers = table.tHead.rows[0].cells;
    for (var i = 0; i < headers.length; i++) headers[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, key: key(row.cells[column]), index: index };
    });
    rows.sort(function (a, b) {
      return compare(a.key, b.key, descending) || a.index - b.index;  // stable
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }

  function init(table) {
    var headers = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(headers, function (th, column) {
      var button = document.createElement("button");
      button.type = "button";
      while (th.firstChild) button.appendChild(th.firstChild);
      th.appendChild(button);
      // on the cell, not only the button: a click anywhere in the header cell sorts (the button
      // gives keyboard users Enter/Space, and its click bubbles up to here)
      th.addEventListener("click", function () { sortBy(table, th, column); });
    });
  }

  document.querySelectorAll("table.sortable").forEach(init);
})();
