// The collector's live page: reads /api/* every few seconds and draws tables and SVG charts.
//
// Every name shown here came from a packet anyone could send, so names only ever reach the page
// as text nodes (append/textContent) or through setAttribute, and links carry them percent-encoded
// (encodeName: encodeURIComponent, and lone surrogates too). Nothing is parsed as HTML (no innerHTML), nothing is evaluated, and the
// server's Content-Security-Policy refuses inline scripts should a bug let markup through.
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const MAX_ROWS = 500; // rows drawn per table: a browser stays fast with 10,000 script names
  const state = {
    config: null,
    view: null,
    busy: false,
    timer: null,
    updates: 0,
    nav: 0, // bumped on every navigation: an answer for an older page is dropped
    drawnNav: -1, // the navigation and the answer (as JSON) last drawn
    drawnText: "",
    sort: { key: "req_time_total", desc: true },
    filter: "",
  };

  // -- building the DOM without ever parsing markup

  // Names come from packets: control, bidi and invisible characters are shown as escapes
  // (\u202e), as the terminal output shows them, so that "/f\u202egnp.exe" cannot pass for
  // "/fexe.png". Backslashes are doubled so an escape cannot be forged.
  const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]|[\ud800-\udfff]/gu;
  function shown(text) {
    const s = String(text);
    return s.replace(/\\/g, "\\\\").replace(HIDDEN, (c) => "\\u" + c.codePointAt(0).toString(16).padStart(4, "0"));
  }

  function add(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(shown(child)));
    }
    return node;
  }

  function attrs(node, values) {
    for (const [name, value] of Object.entries(values || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, String(value));
    }
    return node;
  }

  function el(tag, values, ...children) {
    return add(attrs(document.createElement(tag), values), children);
  }

  function svg(tag, values, ...children) {
    return add(attrs(document.createElementNS(SVG, tag), values), children);
  }

  // -- numbers as people read them

  // One formatter made once: toLocaleString makes one per call (a tenth of a second for the
  // rows of 10,000 scripts).
  const GROUPED = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  function num(x, digits = 3) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "–";
    const a = Math.abs(x);
    if (a === 0) return "0";
    if (a >= 1000) return GROUPED.format(Math.round(x));
    return String(Number(x.toPrecision(digits)));
  }
  function seconds(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "–";
    const a = Math.abs(s);
    if (a === 0) return "0";
    if (a < 1e-3) return num(s * 1e6) + " µs";
    if (a < 1) return num(s * 1e3) + " ms";
    return num(s) + " s";
  }
  const percent = (x) => num(x) + " %";
  const rate = (x) => num(x) + "/s";
  function kbytes(kb) {
    if (kb === null || kb === undefined || !Number.isFinite(kb)) return "–";
    if (kb < 1) return num(kb * 1024) + " B";
    if (kb < 1024) return num(kb) + " KB";
    if (kb < 1024 * 1024) return num(kb / 1024) + " MB";
    return num(kb / 1024 / 1024) + " GB";
  }
  const count = (x) => num(x, 6);
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });

  // -- talking to the collector

  async function api(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    // 404 (no such script) and 400 (a query refused) come with a message the view shows.
    if (!response.ok && response.status !== 404 && response.status !== 400) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // -- pieces

  function card(label, value, id) {
    return el("div", { class: "card", "data-card": id }, el("div", { class: "label" }, label),
      el("div", { class: "value" }, value));
  }

  // A cell shows its value formatted and keeps the raw number in data-value (for tests, and for
  // anyone reading the page with tools).
  function cell(value, format, extra) {
    const raw = typeof value === "object" ? null : value;
    return el("td", Object.assign({ "data-value": raw }, extra || {}), format(value));
  }

  // A table, in a box that scrolls sideways, whose header sorts it when `sort` is given.
  // Columns are {key, label, format} or {key, label, render(row) -> td}.
  function table(columns, rows, options) {
    const opts = options || {};
    const head = el("tr", null, columns.map((c) => {
      const th = el("th", { scope: "col", "data-key": c.key });
      if (opts.sort) {
        if (opts.sort.key === c.key) th.setAttribute("aria-sort", opts.sort.desc ? "descending" : "ascending");
        th.append(el("button", { type: "button" }, c.label));
        th.firstChild.addEventListener("click", () => opts.onSort(c.key));
      } else {
        th.append(c.label);
      }
      return th;
    }));
    const body = el("tbody", null, rows.slice(0, MAX_ROWS).map((row) =>
      el("tr", opts.rowAttrs ? opts.rowAttrs(row) : null, columns.map((c) => c.render
        ? c.render(row) : cell(row[c.key], c.format || String)))));
    return el("div", { class: "report" },
      el("div", { class: "scroll" }, el("table", { id: opts.id }, el("thead", null, head), body)),
      rows.length > MAX_ROWS ? el("p", { class: "muted" }, `first ${MAX_ROWS} of ${rows.length} rows`) : null,
      rows.length ? null : el("p", { class: "muted empty" }, opts.empty || "nothing in the window yet"));
  }

  // A name whose bytes were not UTF-8 arrives with lone surrogates (U+DC80..U+DCFF, the
  // collector's surrogate escapes), on which encodeURIComponent throws: one such name would
  // blank the whole table. Each lone surrogate is written as the three bytes of its code unit
  // (%ED%B2%80 for U+DC80), which the server reads back exactly (surrogatepass) and
  // decodeName below turns back into the same code unit.
  function encodeName(name) {
    let out = "";
    for (let i = 0; i < name.length; i++) {
      const c = name.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < name.length) {
        const d = name.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) { out += encodeURIComponent(name.slice(i, i + 2)); i++; continue; }
      }
      if (c >= 0xd800 && c <= 0xdfff) {
        out += [0xe0 | c >> 12, 0x80 | c >> 6 & 0x3f, 0x80 | c & 0x3f]
          .map((b) => "%" + b.toString(16).toUpperCase()).join("");
      } else {
        out += encodeURIComponent(name[i]);
      }
    }
    return out;
  }

  function decodeName(text) {
    // Encoded surrogates (%ED%A0..%ED%BF, never valid UTF-8) apart; the rest is ordinary.
    return text.split(/(%ED%[AB][0-9A-F]%[89AB][0-9A-F])/i).map((part, i) => {
      if (i % 2) return String.fromCharCode(0xd000 | (parseInt(part.slice(4, 6), 16) & 0x3f) << 6 | parseInt(part.slice(7, 9), 16) & 0x3f);
      try { return decodeURIComponent(part); } catch { return part; }
    }).join("");
  }

  function scriptLink(name) {
    return el("a", { href: "#/script/" + encodeName(name) }, name);
  }

  function statusBadges(statuses) {
    return Object.entries(statuses || {}).sort((a, b) => b[1] - a[1]).map(([status, n]) =>
      el("span", { class: "status s" + String(status).charAt(0), "data-status": status }, `${status} ×${n}`));
  }

  // A line chart of history points: series are {key, label, color, scale}. A point without a
  // value (a time percentile of an interval without requests) leaves a gap in its line.
  function lineChart(id, title, points, series, format) {
    const W = 600, H = 120, PAD = 6;
    const value = (p, s) => (p[s.key] === null || p[s.key] === undefined ? null : p[s.key] * (s.scale || 1));
    const peak = Math.max(0, ...points.flatMap((p) => series.map((s) => value(p, s) ?? 0)));
    const top = peak > 0 ? peak * 1.1 : 1;
    const x = (i) => (points.length <= 1 ? W / 2 : (i / (points.length - 1)) * W);
    const y = (v) => H - PAD - (v / top) * (H - 2 * PAD);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": title });
    for (const f of [0, 0.5, 1]) {
      chart.append(svg("line", { x1: 0, x2: W, y1: y(peak * f), y2: y(peak * f), stroke: "#dde3e8",
        "vector-effect": "non-scaling-stroke" }));
    }
    for (const s of series) {
      let run = [];
      const runs = [run];
      points.forEach((p, i) => {
        const v = value(p, s);
        if (v === null) runs.push((run = []));
        else run.push([x(i), y(v)]);
      });
      for (const xy of runs) {
        if (!xy.length) continue;
        if (xy.length === 1) xy.push([xy[0][0] + (points.length <= 1 ? W / 2 : W / (points.length - 1) / 2), xy[0][1]]);
        if (points.length <= 1) xy[0][0] = 0;
        chart.append(svg("polyline", { points: xy.map((c) => c.map((v) => v.toFixed(1)).join(",")).join(" "),
          fill: "none", stroke: s.color, "stroke-width": 2, "vector-effect": "non-scaling-stroke",
          "data-series": s.key }));
      }
    }
    // The figure shown is the last whole interval's: the current one has only begun.
    const whole = points.filter((p) => !p.partial);
    const last = whole.length ? whole[whole.length - 1] : points[points.length - 1];
    const now = series.map((s) => (series.length > 1 ? s.label + " " : "") + format(last ? value(last, s) : null)).join(" · ");
    const data = el("table", { class: "sr-only", "data-chart": id }, el("caption", null, title),
      el("tr", null, el("th", null, "interval"), series.map((s) => el("th", null, s.label))),
      points.map((p) => el("tr", { "data-start": p.start, "data-requests": p.requests, "data-partial": p.partial },
        el("td", null, clock(p.start)), series.map((s) => cell(value(p, s), format)))));
    const first = points[0], end = points[points.length - 1];
    return el("figure", { class: "chart", id: "chart-" + id },
      el("figcaption", null, el("span", null, title), el("span", { class: "now", "data-start": last ? last.start : null }, now)),
      chart,
      el("div", { class: "axis" }, el("span", null, first ? clock(first.start) : ""),
        el("span", null, "peak " + format(peak)), el("span", null, end ? clock(end.start) : "")),
      series.length > 1
        ? el("div", { class: "legend" }, series.map((s) => el("span", null, attrs(el("i"), { "data-color": s.color }), s.label)))
        : null,
      data);
  }

  function colorLegends(root) {
    // Colors set through the CSSOM: the policy forbids style attributes in markup.
    for (const i of root.querySelectorAll("i[data-color]")) i.style.background = i.dataset.color;
  }

  function histogramChart(bins) {
    const W = 600, H = 120;
    const peak = Math.max(1, ...bins.map((b) => b.count));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": "request time histogram" });
    const w = W / Math.max(1, bins.length);
    bins.forEach((b, i) => {
      const h = (b.count / peak) * (H - 4);
      chart.append(svg("rect", { x: (i * w + 1).toFixed(1), y: (H - h).toFixed(1), width: Math.max(1, w - 2).toFixed(1),
        height: h.toFixed(1), fill: "#1f5f8b" }, svg("title", null, `${seconds(b.low)} – ${seconds(b.high)}: ${b.count}`)));
    });
    const data = el("table", { class: "sr-only", "data-chart": "histogram" }, el("caption", null, "request time histogram"),
      bins.map((b) => el("tr", null, el("td", null, `${seconds(b.low)} – ${seconds(b.high)}`), cell(b.count, count))));
    return el("figure", { class: "chart", id: "chart-histogram" },
      el("figcaption", null, el("span", null, "Request time histogram"),
        el("span", { class: "now" }, bins.length ? `${seconds(bins[0].low)} – ${seconds(bins[bins.length - 1].high)}` : "")),
      chart, data);
  }

  // -- views: each mounts once, then updates with fresh data every few seconds

  const views = {};

  views.overview = {
    load: () => api("/api/overview"),
    mount(root) {
      root.append(el("h1", null, "Overview"), el("div", { class: "cards", id: "cards" }),
        el("div", { class: "charts", id: "charts" }), el("div", { class: "two", id: "seen" }));
    },
    update(d) {
      const info = d.info;
      document.getElementById("cards").replaceChildren(
        card("requests in window", count(info.req_count), "requests"),
        card("requests/s", num(d.req_per_sec), "req_per_sec"),
        card("median time", seconds(info.req_time_median), "median"),
        card("error rate (5xx)", percent(100 * d.error_rate), "error_rate"),
        card("packets received", count(d.packets_received), "packets"),
        card("hosts", count(d.hosts_count), "hosts"),
        card("servers", count(d.servers_count), "servers"));
      const interval = `per ${num(d.interval)} s`;
      const charts = document.getElementById("charts");
      charts.replaceChildren(
        lineChart("rps", `Requests/s (${interval})`, d.history, [{ key: "req_per_sec", label: "req/s", color: "#1f5f8b" }], num),
        lineChart("time", `Request time (${interval})`, d.history, [
          { key: "p50", label: "p50", color: "#6b8e23" },
          { key: "p95", label: "p95", color: "#1f5f8b" },
          { key: "p99", label: "p99", color: "#c0562b" }], seconds),
        lineChart("errors", `Error rate, 5xx (${interval})`, d.history, [{ key: "error_rate", label: "errors", color: "#b3261e", scale: 100 }], percent));
      colorLegends(charts);
      const names = (rows) => [
        { key: "name", label: "name", render: (r) => el("td", { class: "name" }, r.name) },
        { key: "req_count", label: "requests", format: count },
        { key: "req_per_sec", label: "req/s", format: num }];
      document.getElementById("seen").replaceChildren(
        el("section", null, el("h2", null, `Hosts (${d.hosts_count})`), table(names(), d.hosts, { id: "hosts" })),
        el("section", null, el("h2", null, `Servers (${d.servers_count})`), table(names(), d.servers, { id: "servers" })));
    },
  };

  function scriptColumns() {
    const columns = [
      { key: "script_name", label: "script", render: (r) => el("td", { class: "name", "data-value": r.script_name }, scriptLink(r.script_name)) },
      { key: "req_per_sec", label: "req/s", format: num },
      { key: "req_count", label: "requests", format: count },
      { key: "req_time_total", label: "time total", format: seconds },
      { key: "req_time_percent", label: "time %", format: percent },
      { key: "req_time_median", label: "median", format: seconds },
    ];
    for (const p of state.config.percentiles) {
      columns.push({ key: `req_time_p${num(p, 6)}`, label: `p${num(p, 6)}`, format: seconds });
    }
    columns.push(
      { key: "cpu_total", label: "CPU", format: seconds },
      { key: "traffic_total", label: "traffic", format: kbytes },
      { key: "memory_per_request", label: "memory/req", format: kbytes },
      { key: "statuses", label: "statuses", render: (r) => el("td", { class: "statuses" }, statusBadges(r.statuses)) });
    return columns;
  }

  views.scripts = {
    load: () => api("/api/scripts"),
    mount(root) {
      const input = el("input", { type: "search", id: "filter", placeholder: "filter scripts", "aria-label": "filter scripts",
        autocomplete: "off", spellcheck: "false" });
      input.value = state.filter;
      input.addEventListener("input", () => { state.filter = input.value; views.scripts.draw(); });
      root.append(el("h1", null, "Scripts"), el("div", { class: "toolbar" }, input, el("span", { id: "shown", class: "muted" })),
        el("div", { id: "scripts" }));
    },
    update(d) {
      this.rows = d.rows;
      this.draw();
    },
    draw() {
      if (!this.rows) return;
      const needle = state.filter.toLowerCase();
      const rows = this.rows.filter((r) => String(r.script_name).toLowerCase().includes(needle));
      const { key, desc } = state.sort;
      rows.sort((a, b) => {
        const x = a[key], y = b[key];
        const order = typeof x === "number" && typeof y === "number" ? x - y
          : key === "statuses" ? Object.keys(x).join().localeCompare(Object.keys(y).join())
          : String(x).localeCompare(String(y));
        return desc ? -order : order;
      });
      document.getElementById("shown").textContent = `${rows.length} of ${this.rows.length} scripts`;
      document.getElementById("scripts").replaceChildren(table(scriptColumns(), rows, {
        id: "scripts-table", sort: state.sort, rowAttrs: (r) => ({ "data-script": r.script_name }),
        onSort: (k) => {
          state.sort = { key: k, desc: state.sort.key === k ? !state.sort.desc : k !== "script_name" };
          this.draw();
        },
      }));
    },
  };

  const timerColumns = (first) => [first,
    { key: "req_count", label: "requests", format: count },
    { key: "hit_count", label: "hits", format: count },
    { key: "hits_per_request", label: "hits/request", format: num },
    { key: "time_per_request", label: "time/request", format: seconds },
    { key: "time_percent", label: "share of request time", format: percent },
    { key: "timer_median", label: "median per hit", format: seconds },
  ];

  views.script = {
    load() { return api("/api/script?name=" + encodeName(this.name)); },
    mount(root, name) {
      this.name = name;
      root.append(el("p", null, el("a", { href: "#/scripts" }, "← scripts")),
        el("h1", null, "Script ", el("span", { id: "script-name" }, name)),
        el("p", null, el("a", { id: "script-trends", href: "#/trends?by=script&key=" + encodeName(name) }, "Trends of this script: hour, day, week")),
        el("div", { id: "script" }));
    },
    update(d) {
      const box = document.getElementById("script");
      if (d.error) {
        box.replaceChildren(el("p", { class: "muted empty" }, "No request of this script in the window."));
        return;
      }
      const r = d.row;
      box.replaceChildren(
        el("div", { class: "cards" },
          card("requests", count(r.req_count), "requests"), card("requests/s", num(r.req_per_sec), "req_per_sec"),
          card("share of all time", percent(r.req_time_percent), "time_percent"),
          card("median", seconds(d.percentiles.p50), "p50"), card("p95", seconds(d.percentiles.p95), "p95"),
          card("p99", seconds(d.percentiles.p99), "p99"),
          card("CPU", seconds(r.ru_utime_total + r.ru_stime_total), "cpu"),
          card("traffic", kbytes(r.traffic_total), "traffic")),
        el("div", { class: "charts" }, histogramChart(d.histogram)),
        el("h2", null, "Statuses"),
        table([{ key: "status", label: "status", format: String }, { key: "req_count", label: "requests", format: count },
          { key: "req_time_median", label: "median", format: seconds }], d.statuses, { id: "statuses" }),
        el("h2", null, "Timers by group"),
        table(timerColumns({ key: "group", label: "group", render: (t) => el("td", { class: "name" },
          el("a", { href: "#/trends?by=timer:group&lists=timer:group&key=" + encodeName(JSON.stringify([t.group])) }, t.group)) }),
          d.timers_by_group, { id: "timers-group", empty: "no timers with a group tag", rowAttrs: (t) => ({ "data-group": t.group }) }),
        el("h2", null, "Timers by group and server"),
        table(timerColumns({ key: "group", label: "group / server", render: (t) => el("td", { class: "name" }, t.group, " / ", t.server) }),
          d.timers_by_group_server, { id: "timers-group-server", empty: "no timers with group and server tags" }));
    },
  };

  function reportTables(reports, kind, extra, emptyText) {
    if (!reports.length) return [el("p", { class: "muted empty" }, emptyText)];
    return reports.flatMap((report) => [
      el("h2", null, `${kind} by ${report.tags.join(", ")}`),
      table([
        ...report.tags.map((tag) => ({ key: tag, label: tag, render: (r) => el("td", { class: "name" }, r[tag]) })),
        ...extra], report.rows, { id: `${kind.toLowerCase().replace(/\W+/g, "-")}-${report.tags.join("-").replace(/\W+/g, "_")}` }),
    ]);
  }

  views.timers = {
    load: () => api("/api/timers"),
    mount(root) { root.append(el("h1", null, "Timers"), el("div", { id: "reports" })); },
    update(d) {
      const columns = [
        { key: "req_count", label: "requests", format: count },
        { key: "hit_count", label: "hits", format: count },
        { key: "hit_per_sec", label: "hits/s", format: num },
        { key: "timer_value", label: "time total", format: seconds },
        { key: "timer_median", label: "median per hit", format: seconds },
        ...state.config.percentiles.map((p) => ({ key: `timer_p${num(p, 6)}`, label: `p${num(p, 6)}`, format: seconds })),
        { key: "ru_utime_value", label: "CPU user", format: seconds },
      ];
      document.getElementById("reports").replaceChildren(...reportTables(d.reports, "Timers", columns,
        "No timer reports configured (pynba collect --timer-tags group,server)."));
    },
  };

  views.tags = {
    load: () => api("/api/tags"),
    mount(root) { root.append(el("h1", null, "Request tags"), el("div", { id: "reports" })); },
    update(d) {
      const columns = [
        { key: "req_count", label: "requests", format: count },
        { key: "req_per_sec", label: "req/s", format: num },
        { key: "req_time_total", label: "time total", format: seconds },
        { key: "req_time_median", label: "median", format: seconds },
        ...state.config.percentiles.map((p) => ({ key: `req_time_p${num(p, 6)}`, label: `p${num(p, 6)}`, format: seconds })),
        { key: "traffic_total", label: "traffic", format: kbytes },
      ];
      document.getElementById("reports").replaceChildren(...reportTables(d.reports, "Requests", columns,
        "No request-tag reports: start the collector with --request-tags NAME (e.g. user_type)."));
    },
  };

  views.health = {
    load: () => api("/api/health"),
    mount(root) { root.append(el("h1", null, "Health"), el("div", { id: "health" })); },
    update(d) {
      const s = d.status, m = d.memory;
      const used = m.bytes_bound ? Math.min(100, (100 * m.bytes) / m.bytes_bound) : 0;
      const mib = (b) => num(b / 1048576, 3) + " MiB";
      const bar = el("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": m.bytes_bound,
        "aria-valuenow": m.bytes, "aria-label": "memory held against the bound" }, el("div"));
      bar.firstChild.style.width = used.toFixed(2) + "%";
      const pairs = (obj) => Object.entries(obj).map(([k, v]) => ({ k, v }));
      const kv = [{ key: "k", label: "name", render: (r) => el("td", { class: "name" }, r.k) },
        { key: "v", label: "value", format: (v) => (typeof v === "number" ? num(v, 6) : JSON.stringify(v)) }];
      document.getElementById("health").replaceChildren(
        el("div", { class: "cards" },
          card("packets received", count(s.packets_received), "packets"),
          card("requests received", count(s.requests_total), "requests"),
          card("invalid packets", count(s.invalid_packets), "invalid"),
          card("dropped from memory", count(s.evicted_records), "evicted"),
          card("dropped by the database", count(s.store_dropped ?? 0), "store_dropped"),
          card("uptime", seconds(d.uptime), "uptime")),
        el("h2", null, "Memory"),
        el("p", { id: "memory" }, `${mib(m.bytes)} of ${mib(m.bytes_bound)} held (${num(used)} %) by ${count(m.records)} requests, window ${num(s.window)} s`),
        bar,
        el("h2", null, "Invalid packets by reason"),
        table(kv, pairs(s.invalid_by_reason), { id: "invalid", empty: "none" }),
        el("h2", null, "Collector status"),
        table(kv, pairs(Object.fromEntries(Object.entries(s).filter(([k]) => k !== "invalid_by_reason"))), { id: "status" }),
        el("h2", null, "Library errors in the collector's process"),
        table(kv, pairs(d.internal_errors), { id: "internal", empty: "none" }),
        el("p", { class: "muted" }, "Prometheus metrics: ", el("a", { href: "/metrics" }, "/metrics"), "; JSON: ",
          el("a", { href: "/api/health" }, "/api/health")));
    },
  };

  // The Trends view (trends.js) builds its page with the same helpers.
  views.trends = window.pynbaTrends({ el, svg, attrs, api, num, seconds, percent, count, cell, table, card,
    encodeName, decodeName, colorLegends, config: () => state.config });

  // -- routing and refreshing

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    if (hash.startsWith("/script/")) {
      return ["script", decodeName(hash.slice("/script/".length))];
    }
    const [name, query] = hash.slice(1).split(/\?(.*)/s);
    return [Object.hasOwn(views, name) && name !== "script" ? name : "overview", query || null];
  }

  async function refresh() {
    if (state.busy || !state.view) return;
    state.busy = true;
    const view = state.view, nav = state.nav;
    const status = document.getElementById("updated");
    try {
      const data = await view.load();
      if (nav !== state.nav) return; // the user went elsewhere meanwhile
      // An answer the same as the one drawn is not drawn again: a redraw replaces the elements
      // under the pointer, and a click pressed before it and released after it would be lost.
      const text = JSON.stringify(data);
      // (A view may decline to draw, false: the Trends view while a graph is being dragged;
      // the same answer is drawn at the next refresh then.)
      if ((nav !== state.drawnNav || text !== state.drawnText) && view.update(data) !== false) {
        state.drawnNav = nav;
        state.drawnText = text;
      }
      state.updates += 1;
      document.body.dataset.updates = String(state.updates);
      status.className = "muted";
      status.textContent = "updated " + new Date().toLocaleTimeString("en-GB", { hour12: false });
    } catch (err) {
      status.className = "error";
      status.textContent = "cannot reach the collector (retrying)";
    } finally {
      if (nav === state.nav) state.busy = false;
    }
  }

  function show() {
    const [name, arg] = route();
    state.view = views[name];
    state.nav += 1;
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("active", a.dataset.view === name || (name === "script" && a.dataset.view === "scripts"));
    }
    const main = document.getElementById("main");
    main.replaceChildren();
    state.view.mount(main, arg);
    state.busy = false;
    refresh();
  }

  async function start() {
    try {
      state.config = await api("/api/config");
    } catch (err) {
      document.getElementById("updated").textContent = "cannot reach the collector";
      setTimeout(start, 3000);
      return;
    }
    window.addEventListener("hashchange", show);
    show();
    state.timer = setInterval(refresh, Math.max(0.5, state.config.refresh) * 1000);
  }

  start();
})();
