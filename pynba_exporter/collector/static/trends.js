// The Trends view (#/trends): graphs of one key (all requests, a script, a timer group) over the
// last hour, day or week, zoomed by dragging across a graph, with the same time a day or a week
// before drawn dashed; the slowest keys and those whose time or error rate changed most.
//
// It is a function of app.js's helpers (app.js calls it once), so that it builds the page the
// same way: names only as text nodes or attributes, links percent-encoded by encodeName.
"use strict";
window.pynbaTrends = (h) => {
  const { el, svg, attrs, api, num, seconds, percent, count, cell, table, card, encodeName, decodeName } = h;
  const W = 600, H = 150, PAD = 8;
  const RANGES = [["hour", "Hour"], ["day", "Day"], ["week", "Week"]];
  const COMPARE = [["", "no comparison"], ["day", "the day before"], ["week", "the week before"]];
  const PARAMS = ["by", "key", "range", "compare", "from", "to", "lists"];

  // The view's state lives in its address (#/trends?by=script&key=...), so that a graph can be
  // bookmarked, reloaded and reached by a link. Keys are written by encodeName (lone
  // surrogates included) and read back by decodeName.
  function parse(query) {
    const t = { by: "total", key: null, range: "hour", compare: "day", from: null, to: null, lists: "script" };
    for (const part of (query || "").split("&")) {
      const [name, value] = part.split("=", 2);
      if (PARAMS.includes(name) && value !== undefined) t[name] = decodeName(value);
    }
    for (const name of ["from", "to"]) t[name] = t[name] === null || t[name] === "" ? null : Number(t[name]);
    if (!Number.isFinite(t.from) || !Number.isFinite(t.to)) t.from = t.to = null;
    return t;
  }

  function address(t) {
    return "#/trends?" + PARAMS.filter((n) => t[n] !== null && t[n] !== undefined && t[n] !== "")
      .map((n) => n + "=" + encodeName(String(t[n]))).join("&");
  }

  // A timer key is the JSON list of its tag values: shown as "db::select / db1".
  function keyName(by, key) {
    if (!by.startsWith("timer:")) return key;
    try {
      const values = JSON.parse(key);
      return Array.isArray(values) ? values.join(" / ") : key;
    } catch { return key; }
  }

  function what(t) {
    if (t.by === "total" || t.key === null) return "all requests";
    const kind = t.by === "script" ? "script" : t.by.startsWith("timer:") ? `timer ${t.by.slice(6)}` : t.by;
    return `${kind} ${keyName(t.by, t.key)}`;
  }

  function query(t, lists) {
    const q = new URLSearchParams();
    if (lists) {
      q.set("by", t.lists);
    } else {
      q.set("by", t.key === null ? "total" : t.by);
      if (t.key !== null) q.set("key", "KEY");
    }
    q.set("range", t.range);
    q.set("compare", t.compare || "none");
    if (t.from !== null) { q.set("from", t.from); q.set("to", t.to); }
    // The key goes in by encodeName: URLSearchParams would throw on a lone surrogate.
    return q.toString().replace("key=KEY", "key=" + encodeName(t.key || ""));
  }

  // -- the graphs

  const when = (s, span) => new Date(s * 1000).toLocaleString("en-GB", span > 86400
    ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false }
    : { hour: "2-digit", minute: "2-digit", hour12: false });

  function scale(answer, series) {
    const drawn = answer.series, before = answer.compare;
    const d0 = drawn.from, d1 = drawn.from + drawn.points.length * drawn.step;
    const values = [drawn, before].filter(Boolean).flatMap((s) => s.points.flatMap((p) => series.map((c) => c.value(p))));
    const peak = Math.max(0, ...values.filter((v) => v !== null && v !== undefined));
    const top = peak > 0 ? peak * 1.1 : 1;
    return { d0, d1, peak, x: (t) => ((t - d0) / (d1 - d0)) * W, y: (v) => H - PAD - (v / top) * (H - 2 * PAD) };
  }

  // One line per run of points with a value; the bucket still filling is left out (its rate
  // would read as a fall), and drawn at the middle of its bucket.
  function lines(points, step, shift, s, sc, dashed) {
    const out = [];
    let run = [];
    const flush = () => {
      if (run.length === 1) run.push([run[0][0] + 1, run[0][1]]);
      if (run.length) out.push(svg("polyline", { points: run.map((c) => c.map((v) => v.toFixed(1)).join(",")).join(" "),
        fill: "none", stroke: s.color, "stroke-width": dashed ? 1.5 : 2, "stroke-dasharray": dashed ? "5 4" : null,
        opacity: dashed ? 0.75 : null, "vector-effect": "non-scaling-stroke", "data-series": (dashed ? "compare-" : "") + s.key }));
      run = [];
    };
    for (const p of points) {
      const v = s.value(p);
      if (v === null || v === undefined || p.partial) flush();
      else run.push([sc.x(p.start + shift + step / 2), sc.y(v)]);
    }
    flush();
    return out;
  }

  function dataTable(id, title, points, series, format, extra) {
    return el("table", { class: "sr-only", "data-chart": id }, el("caption", null, title),
      el("tr", null, el("th", null, "start"), series.map((s) => el("th", null, s.label))),
      points.map((p) => el("tr", Object.assign({ "data-start": p.start, "data-requests": p.requests, "data-partial": p.partial }, extra),
        el("td", null, new Date(p.start * 1000).toISOString()), series.map((s) => cell(s.value(p), format)))));
  }

  function graph(id, title, answer, series, format, onZoom) {
    const sc = scale(answer, series), drawn = answer.series, before = answer.compare;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
    for (const f of [0, 0.5, 1]) {
      chart.append(svg("line", { x1: 0, x2: W, y1: sc.y(sc.peak * f), y2: sc.y(sc.peak * f), stroke: "#dde3e8",
        "vector-effect": "non-scaling-stroke" }));
    }
    for (const s of series) {
      if (before) chart.append(...lines(before.points, before.step, before.shift, s, sc, true));
      chart.append(...lines(drawn.points, drawn.step, 0, s, sc, false));
    }
    zoomable(chart, sc, onZoom);
    const span = sc.d1 - sc.d0;
    const legend = series.map((s) => el("span", null, attrs(el("i"), { "data-color": s.color }), s.label));
    if (before) legend.push(el("span", { class: "dashed" }, attrs(el("i"), { "data-color": "#66737f" }), COMPARE.find((c) => c[0] === before.name)[1]));
    return el("figure", { class: "chart trend", id: "chart-" + id },
      el("figcaption", null, el("span", null, title), el("span", { class: "now" }, "peak " + format(sc.peak))),
      chart,
      el("div", { class: "axis" }, el("span", null, when(sc.d0, span)), el("span", null, when(sc.d1, span))),
      el("div", { class: "legend" }, legend),
      dataTable(id, title, drawn.points, series, format),
      before ? dataTable(id + "-compare", title + ", " + before.name + " before", before.points, series, format,
        { "data-shift": before.shift }) : null);
  }

  // Drag across a graph to zoom into what the drag covered; the selection is drawn as it goes.
  // While a drag lasts the view's updates wait (a new graph would drop the one being dragged).
  let dragging = false;
  function zoomable(chart, sc, onZoom) {
    const band = svg("rect", { class: "selection", x: 0, y: 0, width: 0, height: H, fill: "#1f5f8b", opacity: 0.15 });
    chart.append(band);
    let start = null;
    const at = (e) => {
      const box = chart.getBoundingClientRect();
      return Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)) * W;
    };
    chart.addEventListener("pointerdown", (e) => {
      start = at(e);
      dragging = true;
      chart.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    // A drag ends without its pointerup when the graph is taken away under it (the user went
    // to another view meanwhile): the lost capture ends it, or the views would wait for good.
    const cancel = () => { start = null; dragging = false; attrs(band, { width: 0 }); };
    chart.addEventListener("pointercancel", cancel);
    chart.addEventListener("lostpointercapture", () => { if (start !== null) cancel(); });
    chart.addEventListener("pointermove", (e) => {
      if (start === null) return;
      const x = at(e);
      attrs(band, { x: Math.min(start, x).toFixed(1), width: Math.abs(x - start).toFixed(1) });
    });
    chart.addEventListener("pointerup", (e) => {
      if (start === null) return;
      const a = Math.min(start, at(e)), b = Math.max(start, at(e));
      start = null;
      dragging = false;
      attrs(band, { width: 0 });
      if (b - a < W / 100) return; // a click, not a drag
      const t = (x) => Math.round(sc.d0 + (x / W) * (sc.d1 - sc.d0));
      onZoom(t(a), t(b));
    });
  }

  // -- the lists

  function nameCell(t, r) {
    const target = address(Object.assign({}, t, { by: t.lists, key: r.key, from: null, to: null }));
    return el("td", { class: "name", "data-value": r.key }, el("a", { href: target }, r.name));
  }

  function change(ratio) {
    if (ratio === null || ratio === undefined) return "–";
    const p = (ratio - 1) * 100;
    return (p > 0 ? "+" : "") + num(p) + " %";
  }

  function listTables(t, d) {
    const noun = t.lists === "script" ? "scripts" : "timer groups";
    const name = { key: "key", label: t.lists === "script" ? "script" : "group", render: (r) => nameCell(t, r) };
    const unit = t.lists === "script" ? "mean time" : "mean per hit";
    const opts = (id, empty) => ({ id, empty, rowAttrs: (r) => ({ "data-key": r.key }) });
    const before = d.compare ? COMPARE.find((c) => c[0] === d.compare.name)[1] : null;
    const noHistory = "Comparisons need the history: start the collector with --db FILE.";
    return [
      el("section", null, el("h2", null, `Slowest ${noun}`),
        table([name, { key: "time_mean", label: unit, format: seconds }, { key: "p95", label: "p95", format: seconds },
          { key: "requests", label: "requests", format: count }, { key: "error_rate", label: "errors", format: (v) => percent(100 * v) }],
        d.slowest, opts("slowest", `no ${noun} in this range`))),
      el("section", null, el("h2", null, `Time changed most${before ? ` (against ${before}; ${d.min_requests}+ requests)` : ""}`),
        table([name, { key: "time_mean", label: unit, format: seconds },
          { key: "before", label: "before", format: (b) => seconds(b && b.time_mean), render: (r) => cell(r.before.time_mean, seconds) },
          { key: "time_ratio", label: "change", format: change }],
        d.time, opts("changed-time", before ? "no change to compare" : noHistory))),
      el("section", null, el("h2", null, `Error rate changed most${before ? ` (against ${before})` : ""}`),
        table([name, { key: "error_rate", label: "errors", format: (v) => percent(100 * v) },
          { key: "before", label: "before", render: (r) => cell(100 * r.before.error_rate, percent) },
          { key: "error_change", label: "change (points)", format: (v) => (v > 0 ? "+" : "") + num(v) }],
        d.errors, opts("changed-errors", before ? "no change to compare" : noHistory))),
    ];
  }

  // -- the view

  function totals(points) {
    const n = points.reduce((a, p) => a + p.requests, 0);
    const time = points.reduce((a, p) => a + p.time_total, 0);
    const hits = points.reduce((a, p) => a + (p.hit_count || 0), 0);
    const errors = points.reduce((a, p) => a + p.errors, 0);
    return { n, mean: (hits || n) ? time / (hits || n) : null, errors: n ? (100 * errors) / n : null };
  }

  function cards(d) {
    const now = totals(d.series.points), before = d.compare ? totals(d.compare.points) : null;
    const vs = (v, f) => (before ? el("div", { class: "label before" }, "before: " + f(v)) : null);
    const c = (label, value, id, b) => { const x = card(label, value, id); if (b) x.append(b); return x; };
    return [
      c("requests", count(now.n), "requests", before && vs(before.n, count)),
      c("mean time", seconds(now.mean), "mean", before && vs(before.mean, seconds)),
      c("error rate (5xx)", percent(now.errors), "errors", before && vs(before.errors, percent)),
    ];
  }

  const every = (step) => (step >= 86400 ? num(step / 86400) + " d" : step >= 3600 ? num(step / 3600) + " h"
    : step >= 60 ? num(step / 60) + " min" : num(step) + " s");

  function source(d) {
    const step = every(d.series.step);
    if (d.source === "window") {
      return `No database: the live window only (the last ${num(d.window)} s, held in memory), one point per ${step}; ` +
        "nothing to compare with. Start the collector with --db FILE for hours, days and weeks.";
    }
    return `From the history in the database (minutes for days, then hours), one point per ${step}.`;
  }

  return {
    t: null,
    load() {
      const t = this.t;
      return Promise.all([api("/api/series?" + query(t, false)), api("/api/changes?" + query(t, true))])
        .then(([series, changes]) => ({ series, changes }));
    },
    mount(root, arg) {
      dragging = false; // a drag on the graphs of the view left ends with them
      const t = (this.t = parse(arg));
      const go = (changes) => { location.hash = address(Object.assign({}, t, changes)); };
      const button = (label, id, on, pressed) => {
        const b = el("button", { type: "button", id, "aria-pressed": pressed === undefined ? null : String(pressed) }, label);
        b.addEventListener("click", on);
        return b;
      };
      const compare = el("select", { id: "compare", "aria-label": "compare with" },
        COMPARE.map(([v, label]) => el("option", { value: v, selected: v === (t.compare === "none" ? "" : t.compare) ? "" : null }, label)));
      compare.addEventListener("change", () => go({ compare: compare.value || "none" }));
      const groups = (h.config().timer_tags || []).map((tags) => "timer:" + tags.join(","));
      root.append(
        el("h1", null, "Trends: ", el("span", { id: "trend-key" }, what(t))),
        el("div", { class: "toolbar", id: "trend-tools" },
          el("span", { class: "group" }, RANGES.map(([v, label]) => button(label, "range-" + v,
            () => go({ range: v, from: null, to: null }), t.range === v && t.from === null))),
          compare,
          button("Zoom in", "zoom-in", () => this.zoom(0.5)), button("Zoom out", "zoom-out", () => this.zoom(2)),
          t.from !== null ? button("Whole " + t.range, "zoom-reset", () => go({ from: null, to: null })) : null,
          t.key !== null ? el("a", { href: address(Object.assign({}, t, { by: "total", key: null })) }, "all requests") : null),
        el("p", { id: "trend-source", class: "muted" }),
        el("div", { class: "cards", id: "trend-cards" }),
        el("div", { class: "charts", id: "trend-charts" }),
        el("div", { class: "toolbar" }, "Lists of ",
          el("span", { class: "group" }, ["script", ...groups].map((by) => button(by === "script" ? "scripts" : by.slice(6),
            "lists-" + by.replace(/\W+/g, "-"), () => go({ lists: by }), t.lists === by)))),
        el("div", { class: "two", id: "trend-lists" }));
      this.go = go;
    },
    zoom(factor) {
      const d = this.last;
      if (!d) return;
      const a = d.from, b = d.to; // the range asked for, not its buckets' edges
      const middle = (a + b) / 2, half = ((b - a) * factor) / 2;
      this.go({ from: Math.round(middle - half), to: Math.round(Math.min(middle + half, d.now)) });
    },
    update(d) {
      if (dragging) return false; // not drawn: the next refresh draws it
      const s = d.series, box = document.getElementById("trend-charts");
      if (s.error || d.changes.error) {
        box.replaceChildren(el("p", { class: "error" }, s.error || d.changes.error));
        return;
      }
      this.last = s;
      const timer = s.by.startsWith("timer:");
      const zoom = (from, to) => this.go({ from, to });
      document.getElementById("trend-source").textContent = source(s);
      for (const id of ["range-hour", "range-day", "range-week", "compare"]) {
        document.getElementById(id).disabled = s.source === "window";
      }
      document.getElementById("trend-cards").replaceChildren(...cards(s));
      box.replaceChildren(
        graph("trend-rps", timer ? "Requests with the timer/s" : "Requests/s", s,
          [{ key: "req_per_sec", label: "req/s", color: "#1f5f8b", value: (p) => p.req_per_sec }], num, zoom),
        graph("trend-time", timer ? "Time per hit" : "Request time", s, [
          { key: "time_mean", label: "mean", color: "#6b8e23", value: (p) => p.time_mean },
          { key: "p95", label: "p95", color: "#c0562b", value: (p) => p.p95 }], seconds, zoom),
        graph("trend-errors", "Error rate, 5xx", s,
          [{ key: "error_rate", label: "errors", color: "#b3261e", value: (p) => (p.error_rate === null ? null : 100 * p.error_rate) }],
          percent, zoom));
      h.colorLegends(box);
      document.getElementById("trend-lists").replaceChildren(...listTables(this.t, d.changes));
    },
  };
};
