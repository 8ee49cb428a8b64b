// requestflow scoreboard: the selectors submit themselves (the form is a GET: the view's state is the URL), the
// table sorts by any column, and a table row and its point in the plot light up together. No library, no CDN.
(function () {
  "use strict";

  var form = document.getElementById("selectors");
  if (form) {
    // an axis set to the median or p90 latency chooses that statistic (unless the other axis shows a latency
    // statistic too): the server would otherwise show the statistic still chosen (scoreboard_data.latency_axes)
    var stat = document.getElementById("latency_stat");
    form.addEventListener("change", function (event) {
      var target = event.target;
      if (stat && (target.id === "x" || target.id === "y")) {
        var other = document.getElementById(target.id === "x" ? "y" : "x");
        var columns = Array.prototype.map.call(stat.options, function (o) { return o.getAttribute("data-column"); });
        var chosen = columns.indexOf(target.value);
        if (chosen >= 0 && columns.indexOf(other.value) < 0) { stat.selectedIndex = chosen; }
      }
      form.submit();
    });
  }

  function sortValue(cell, type) {
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent; }
    if (type === "number") {
      var n = parseFloat(raw);
      return isNaN(n) ? null : n;
    }
    return raw === "" ? null : raw.toLowerCase();
  }

  function sortTable(table, index, type, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortValue(a.cells[index], type), y = sortValue(b.cells[index], type);
      if (x === y) { return 0; }
      if (x === null) { return 1; }   // empty cells last, whatever the direction
      if (y === null) { return -1; }
      var order = x < y ? -1 : 1;
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, index) {
      th.setAttribute("role", "button");
      th.setAttribute("tabindex", "0");
      th.title = "sort by " + th.textContent;
      function activate() {
        var descending = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(headers, function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        sortTable(table, index, th.getAttribute("data-type") || "text", descending);
      }
      th.addEventListener("click", activate);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(); }
      });
    });
  });

  // a row and its mark share data-mark: a point shown on two image sets is two rows and two marks
  function point(mark) {
    return document.querySelector('#plot g.point[data-mark="' + mark + '"]');
  }
  Array.prototype.forEach.call(document.querySelectorAll("#points tbody tr"), function (row) {
    var id = row.getAttribute("data-mark");
    row.addEventListener("mouseenter", function () {
      var g = point(id);
      if (g) { g.classList.add("highlight"); }
    });
    row.addEventListener("mouseleave", function () {
      var g = point(id);
      if (g) { g.classList.remove("highlight"); }
    });
  });
})();
