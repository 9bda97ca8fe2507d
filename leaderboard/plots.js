// Draws the page's charts: each <div class="chart" data-spec="ID"> gets the Vega-Lite specification in
// <script type="application/json" id="ID">, rendered as SVG by the site's own copy of Vega-Embed
// (assets/vega.js): no network. Legends toggle entries; hovering a point shows its entry, seed and value.
(function () {
  "use strict";
  function draw() {
    var charts = document.querySelectorAll("div.chart[data-spec]");
    Array.prototype.forEach.call(charts, function (el) {
      var source = document.getElementById(el.getAttribute("data-spec"));
      if (!source || typeof window.vegaEmbed !== "function") return;
      var spec = JSON.parse(source.textContent);
      window.vegaEmbed(el, spec, { renderer: "svg", actions: false }).then(function () {
        el.setAttribute("data-rendered", "true");
      }).catch(function (err) {
        el.setAttribute("data-error", String(err));
        el.textContent = "This chart could not be drawn: " + err;
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
