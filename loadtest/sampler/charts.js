// Draws every `.stack-charts` element's specs (the JSON in its `script.stack-specs`) as SVG line charts on
// one time axis, with vertical markers; window.drawStackCharts(element, specs) redraws one (the live view).
// Each element gets data-drawn="<charts drawn>"; an error is written into the page, not only the console.
// loadtest/sampler/charts.py inlines this file into every page that shows the charts: no CDN, no library.
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
  var MARK = {start: "#16a34a", end: "#dc2626", event: "#2563eb"};
  var W = 900, H = 190, L = 56, R = 12, T = 10, B = 24;
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function nice(max) {
    if (!(max > 0)) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(max)));
    var m = max / step;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * step;
  }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
  function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : +v.toFixed(2) + ""; }
  function draw(box, chart, t0, t1) {
    var div = document.createElement("div");
    div.className = "stack-chart";
    var title = document.createElement("div");
    title.className = "stack-chart-title";
    title.textContent = chart.title;
    div.appendChild(title);
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": chart.title}, div);
    var ymax = 0;
    chart.series.forEach(function (s) { s.points.forEach(function (p) { if (p[1] !== null && p[1] > ymax) ymax = p[1]; }); });
    ymax = nice(ymax * 1.05);
    var span = Math.max(t1 - t0, 1);
    function x(t) { return L + (t - t0) / span * (W - L - R); }
    function y(v) { return H - B - v / ymax * (H - T - B); }
    for (var i = 0; i <= 4; i++) {
      var v = ymax * i / 4;
      el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e5e7eb"}, svg);
      el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7280"}, svg).textContent = fmt(v);
    }
    var ticks = Math.min(6, Math.max(2, Math.round(span / 5)));
    for (var j = 0; j <= ticks; j++) {
      var t = t0 + span * j / ticks;
      el("text", {x: x(t), y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#6b7280"}, svg).textContent = clock(t);
    }
    (chart.markers || []).forEach(function (m) {
      if (m.t < t0 || m.t > t1) return;
      var line = el("line", {x1: x(m.t), x2: x(m.t), y1: T, y2: H - B, stroke: MARK[m.kind] || "#111",
                             "stroke-dasharray": m.kind === "event" ? "6 3" : "2 3", "stroke-width": 1.5,
                             "class": "stack-marker stack-marker-" + m.kind}, svg);
      el("title", {}, line).textContent = clock(m.t) + " " + m.label;
      var tag = m.kind === "end" ? m.label.split(": ").pop() : m.kind === "event" ? "event" : "";
      if (tag) {
        el("text", {x: x(m.t) + 3, y: T + 9, "font-size": 10, fill: MARK[m.kind] || "#111",
                    "class": "stack-marker-label"}, svg).textContent = tag;
      }
    });
    var legend = document.createElement("div");
    legend.className = "stack-legend";
    chart.series.forEach(function (s, k) {
      var color = COLORS[k % COLORS.length], d = "", pen = "M";
      s.points.forEach(function (p) {
        if (p[1] === null || p[1] === undefined) { pen = "M"; return; }
        if (chart.step && pen === "L") d += "H" + x(p[0]).toFixed(1);
        d += pen + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1);
        pen = "L";
      });
      if (d) {
        var path = el("path", {d: d, fill: "none", stroke: color, "stroke-width": 1.6, "class": "stack-series"}, svg);
        el("title", {}, path).textContent = s.name;
      }
      var item = document.createElement("span");
      item.innerHTML = '<i style="background:' + color + '"></i>';
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
    div.appendChild(legend);
    box.appendChild(div);
  }
  function drawStackCharts(box, specs) {
    try {
      box.innerHTML = "";
      var list = document.createElement("ul");
      list.className = "stack-findings";
      (specs.findings || []).forEach(function (line) {
        var li = document.createElement("li"); li.textContent = line; list.appendChild(li);
      });
      if (list.childNodes.length) box.appendChild(list);
      if (!specs.charts.length) {
        var none = document.createElement("p");
        none.textContent = "No samples of the stack yet.";
        box.appendChild(none);
      }
      specs.charts.forEach(function (chart) { draw(box, chart, specs.start, Math.max(specs.end, specs.start + 1)); });
      box.setAttribute("data-drawn", String(specs.charts.length));
    } catch (error) {
      box.setAttribute("data-error", String(error));
      box.textContent = "The stack charts failed: " + error;
    }
  }
  window.drawStackCharts = drawStackCharts;
  function drawAll() {
    var boxes = document.querySelectorAll(".stack-charts");
    for (var i = 0; i < boxes.length; i++) {
      var data = boxes[i].querySelector("script.stack-specs");
      if (data) drawStackCharts(boxes[i], JSON.parse(data.textContent));
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll); else drawAll();
})();
