// canary dashboard: on open, draws the router's last 15 minutes (/status/history), then
// polls /status and the new points every second, and draws them with uPlot (vendored beside
// this file). /status holds no secret; the admin token typed for "Reload config" lives in
// sessionStorage only and travels in a header.
"use strict";

(function () {
  const POLL_MS = 1000;
  const KEEP_S = 900; // the router's ring: 15 minutes
  const SHARE_S = 3;
  const TOKEN_KEY = "canary.adminToken";
  const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#9c36b5", "#0b7285", "#c2255c", "#5c940d"];
  const CIRCUIT_FILL = { closed: "#69db7c", half_open: "#ffc078", open: "#ff6b6b" };
  const THRESHOLD_COLOR = "#c92a2a";

  const $ = (id) => document.getElementById(id);

  // --- small DOM helpers: text only, never HTML, so nothing from /status is markup -------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setText(id, text, cls) {
    const node = $(id);
    node.textContent = text;
    if (cls !== undefined) node.className = cls;
  }

  const int = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const dec = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  function money(value) {
    if (value === null) return null;
    if (typeof value !== "number") return undefined;
    const digits = Math.abs(value) > 0 && Math.abs(value) < 1 ? 4 : 2;
    return new Intl.NumberFormat("en-US", {
      style: "currency",
      currency: "USD",
      minimumFractionDigits: 2,
      maximumFractionDigits: digits,
    }).format(value);
  }

  // A price the router could not compute is shown as such, never as $0.
  function moneyNode(value, nullText) {
    const text = money(value);
    if (text === null) return el("span", { class: "unknown-value", text: nullText || "no price" });
    if (text === undefined) return el("span", { class: "unknown-value", text: "unknown" });
    return document.createTextNode(text);
  }

  // Too little traffic yet for a monthly projection (the router says on what it rests).
  function projectionPending(cost) {
    return (
      !!cost &&
      typeof cost.projection_span_s === "number" &&
      typeof cost.projection_needs_s === "number" &&
      cost.projection_span_s < cost.projection_needs_s
    );
  }

  function pct(rate) {
    return (100 * rate).toFixed(rate > 0 && rate < 0.01 ? 2 : 1) + " %";
  }

  function clock(iso) {
    const when = new Date(iso);
    return isNaN(when) ? String(iso) : when.toLocaleTimeString([], { hour12: false });
  }

  function circuitBadge(state) {
    return el("span", { class: "badge circuit " + state, text: String(state).replace("_", "-") });
  }

  // --- history: the router's one-second points (GET /status/history) --------------------
  // On open the page asks for the router's whole ring (the last 15 minutes, every worker
  // and replica merged), then each second for the points after the last one it holds; so
  // the charts show what happened before the page was opened. One row per second.
  const history = { t: [], threshold: [], backends: new Map() };
  const COLUMNS = ["calls", "errors", "share", "err", "p50", "p99", "circuit", "sessions", "cost"];
  const colors = new Map();
  const rules = { windowS: 60, bar: null }; // the rollback window and threshold, from /status

  function colorOf(name) {
    if (!colors.has(name)) colors.set(name, PALETTE[colors.size % PALETTE.length]);
    return colors.get(name);
  }

  function track(name) {
    let h = history.backends.get(name);
    if (!h) {
      h = { canary: false };
      for (const key of COLUMNS) h[key] = history.t.map(() => null);
      history.backends.set(name, h);
    }
    return h;
  }

  // The roles and the rollback rules come with /status; the points with /status/history.
  function noteStatus(doc) {
    for (const [name, b] of Object.entries((doc && doc.backends) || {})) {
      colorOf(name);
      track(name).canary = b.role === "canary";
    }
    const rb = doc && doc.rollback;
    if (rb) Object.assign(rules, { windowS: rb.window_s || 60, bar: rb.max_error_rate });
  }

  function absorb(doc) {
    const t = (doc && doc.t) || [];
    const got = doc.backends || {};
    for (const name of Object.keys(got)) {
      colorOf(name);
      track(name);
    }
    const last = history.t.length ? history.t[history.t.length - 1] : -Infinity;
    t.forEach((second, i) => {
      if (second <= last) return; // each second once, in order
      for (const [name, h] of history.backends) {
        const b = got[name];
        const at = (field) => (b && b[field] ? b[field][i] : null);
        h.calls.push(at("calls"));
        h.errors.push(at("errors"));
        h.p50.push(at("p50_ms"));
        h.p99.push(at("p99_ms"));
        h.circuit.push(at("circuit"));
        h.sessions.push(at("sessions_open"));
        h.cost.push(at("cost_usd"));
      }
      history.t.push(second);
      history.threshold.push(rules.bar === null ? null : 100 * rules.bar);
      derive();
    });
    trim();
  }

  // For the newest row: each backend's error rate over the rollback window (what the trip
  // rule sees) and its share of all calls over the last few seconds (one alone is noisy).
  function derive() {
    const n = history.t.length - 1;
    const now = history.t[n];
    const sums = new Map();
    let all = 0;
    for (const [name, h] of history.backends) {
      let calls = 0;
      let errors = 0;
      let recent = 0;
      for (let i = n; i >= 0 && history.t[i] > now - rules.windowS; i--) {
        calls += h.calls[i] || 0;
        errors += h.errors[i] || 0;
        if (history.t[i] > now - SHARE_S) recent += h.calls[i] || 0;
      }
      h.err.push(calls > 0 && h.calls[n] !== null ? (100 * errors) / calls : null);
      sums.set(name, recent);
      all += recent;
    }
    for (const [name, h] of history.backends) {
      h.share.push(all > 0 && h.calls[n] !== null ? (100 * sums.get(name)) / all : null);
    }
  }

  function trim() {
    const now = history.t.length ? history.t[history.t.length - 1] : 0;
    let drop = 0;
    while (drop < history.t.length && history.t[drop] <= now - KEEP_S) drop++;
    if (drop === 0) return;
    history.t.splice(0, drop);
    history.threshold.splice(0, drop);
    for (const [name, h] of history.backends) {
      for (const key of COLUMNS) h[key].splice(0, drop);
      if (h.circuit.every((v) => v === null)) history.backends.delete(name);
    }
  }

  // --- charts ---------------------------------------------------------------------------
  const charts = {};
  let chartKey = "";

  const axisStyle = {
    stroke: "#3b4350",
    grid: { stroke: "#eceff3", width: 1 },
    ticks: { stroke: "#d5dae1", width: 1 },
  };

  const SECOND_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const hhmmss = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  function xAxis() {
    return Object.assign(
      {
        label: "time",
        labelSize: 18,
        size: 30,
        space: 70,
        incrs: SECOND_STEPS, // whole seconds only: each second is labelled once
        values: (u, splits) => splits.map(hhmmss),
      },
      axisStyle,
    );
  }

  function yAxis(label, values) {
    const axis = Object.assign({ size: 54, values: values }, axisStyle);
    if (label) Object.assign(axis, { label: label, labelSize: 20 });
    return axis;
  }

  function baseOpts(container, extra) {
    return Object.assign(
      {
        width: Math.max(320, container.clientWidth),
        height: 230,
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        hooks: { draw: [(u) => drawEvents(u, true)] },
      },
      extra,
    );
  }

  function line(label, color, more) {
    return Object.assign({ label: label, stroke: color, width: 2, points: { show: false } }, more);
  }

  // Circuit changes as labelled vertical lines, so every chart shows when a rollback began.
  let events = [];

  function drawEvents(u, labelled) {
    const [min, max] = [u.scales.x.min, u.scales.x.max];
    if (min === undefined || min === null) return;
    const ctx = u.ctx;
    const px = devicePixelRatio || 1;
    ctx.save();
    ctx.font = 11 * px + "px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const e of events) {
      const t = Date.parse(e.at) / 1000;
      if (!(t >= min && t <= max)) continue;
      const x = Math.round(u.valToPos(t, "x", true));
      ctx.strokeStyle = e.to === "closed" ? "#2f9e44" : e.to === "open" ? "#c92a2a" : "#b35c00";
      ctx.lineWidth = px;
      ctx.setLineDash([2 * px, 3 * px]);
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
      if (!labelled) continue;
      ctx.fillStyle = ctx.strokeStyle;
      const text = e.backend + " " + String(e.to).replace("_", "-");
      const width = ctx.measureText(text).width;
      const left =
        x + 4 * px + width > u.bbox.left + u.bbox.width ? x - 4 * px - width : x + 4 * px;
      ctx.fillText(text, left, u.bbox.top + 3 * px);
    }
    ctx.restore();
  }

  function names() {
    return [...history.backends.keys()];
  }

  function lighten(hex, amount) {
    const n = parseInt(hex.slice(1), 16);
    const mix = (c) => Math.round(c + (255 - c) * amount);
    const [r, g, b] = [(n >> 16) & 255, (n >> 8) & 255, n & 255].map(mix);
    return "rgb(" + r + "," + g + "," + b + ")";
  }

  function trafficChart(container) {
    const list = names();
    const series = [{}];
    const bands = [];
    list.forEach((name, i) => {
      series.push(line(name, colorOf(name), { width: 1.5, fill: lighten(colorOf(name), 0.55) }));
      if (i > 0) bands.push({ series: [i + 1, i] });
    });
    return new uPlot(
      baseOpts(container, {
        series: series,
        bands: bands,
        scales: { x: { time: true }, y: { range: [0, 100] } },
        axes: [xAxis(), yAxis("share of calls (%)", (u, splits) => splits.map((v) => v + "%"))],
      }),
      trafficData(),
      container,
    );
  }

  function trafficData() {
    const data = [history.t];
    let below = null;
    for (const name of names()) {
      const share = history.backends.get(name).share;
      const stacked = share.map((v, i) => (v === null ? null : v + (below ? below[i] || 0 : 0)));
      data.push(stacked);
      below = stacked;
    }
    return data;
  }

  function errorChart(container) {
    const series = [{}];
    for (const name of names()) series.push(line(name, colorOf(name)));
    series.push(line("rollback threshold", THRESHOLD_COLOR, { width: 1.5, dash: [6, 4] }));
    return new uPlot(
      baseOpts(container, {
        series: series,
        scales: {
          x: { time: true },
          y: {
            range: (u, min, max) => {
              const bar = lastNumber(history.threshold) || 0;
              return [0, Math.max(5, (max || 0) * 1.1, bar * 1.6)];
            },
          },
        },
        axes: [xAxis(), yAxis("error rate (%)", (u, splits) => splits.map((v) => v + "%"))],
      }),
      errorData(),
      container,
    );
  }

  function errorData() {
    const data = [history.t];
    for (const name of names()) data.push(history.backends.get(name).err);
    data.push(history.threshold);
    return data;
  }

  function latencyChart(container) {
    const series = [{}];
    for (const name of names()) {
      series.push(line(name + " p50", colorOf(name)));
      series.push(line(name + " p99", colorOf(name), { width: 1.5, dash: [4, 3] }));
    }
    return new uPlot(
      baseOpts(container, {
        series: series,
        scales: {
          x: { time: true },
          y: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.15)] },
        },
        axes: [xAxis(), yAxis("latency (ms)")],
      }),
      latencyData(),
      container,
    );
  }

  function latencyData() {
    const data = [history.t];
    for (const name of names()) {
      const h = history.backends.get(name);
      data.push(h.p50, h.p99);
    }
    return data;
  }

  function canaries() {
    return names().filter((name) => history.backends.get(name).canary);
  }

  // One band per canary backend, coloured by circuit state at each poll.
  function circuitChart(container) {
    const rows = canaries();
    return new uPlot(
      baseOpts(container, {
        height: Math.max(120, 70 + 46 * rows.length),
        legend: { show: false },
        cursor: { show: false },
        series: [{}, { label: "circuit", stroke: "transparent", points: { show: false } }],
        scales: { x: { time: true }, y: { range: [0, Math.max(1, rows.length)] } },
        axes: [
          xAxis(),
          Object.assign(yAxis(), {
            size: 70,
            splits: () => rows.map((_, i) => rows.length - i - 0.5),
            values: () => rows,
            grid: { show: false },
            ticks: { show: false },
          }),
        ],
        hooks: { draw: [(u) => drawCircuits(u, rows), (u) => drawEvents(u, false)] },
      }),
      [history.t, history.t.map(() => null)],
      container,
    );
  }

  function drawCircuits(u, rows) {
    const ctx = u.ctx;
    const t = history.t;
    ctx.save();
    rows.forEach((name, r) => {
      const states = history.backends.get(name).circuit;
      const starts = changeTimes(name, states);
      const top = u.valToPos(rows.length - r - 0.15, "y", true);
      const bottom = u.valToPos(rows.length - r - 0.85, "y", true);
      for (let i = 0; i < t.length; i++) {
        const fill = CIRCUIT_FILL[states[i]];
        if (!fill) continue;
        const x0 = u.valToPos(starts[i], "x", true);
        const end = i + 1 < t.length ? starts[i + 1] : t[i] + POLL_MS / 1000;
        const x1 = u.valToPos(end, "x", true);
        ctx.fillStyle = fill;
        ctx.fillRect(x0, top, Math.max(1, x1 - x0 + 0.5), bottom - top);
      }
    });
    ctx.restore();
  }

  // When each polled state began: the poll's time, or the router's own time for the change
  // when an event between two polls says so (polls only see a change up to a second late).
  function changeTimes(name, states) {
    const t = history.t;
    return t.map((at, i) => {
      if (i === 0 || states[i] === states[i - 1] || !states[i]) return at;
      for (const e of events) {
        const when = Date.parse(e.at) / 1000;
        if (e.backend === name && e.to === states[i] && when > t[i - 1] && when <= at) return when;
      }
      return at;
    });
  }

  function drawCharts() {
    const key = names().join(",") + "|" + canaries().join(",");
    if (key !== chartKey) {
      for (const chart of Object.values(charts)) chart.destroy();
      charts.traffic = trafficChart($("chart-traffic"));
      charts.errors = errorChart($("chart-errors"));
      charts.latency = latencyChart($("chart-latency"));
      charts.circuits = circuitChart($("chart-circuits"));
      chartKey = key;
    } else {
      charts.traffic.setData(trafficData());
      charts.errors.setData(errorData());
      charts.latency.setData(latencyData());
      charts.circuits.setData([history.t, history.t.map(() => null)]);
    }
    const points = String(history.t.length);
    for (const id of ["chart-traffic", "chart-errors", "chart-latency", "chart-circuits"]) {
      $(id).dataset.points = points;
    }
  }

  function resizeCharts() {
    const boxes = {
      traffic: "chart-traffic",
      errors: "chart-errors",
      latency: "chart-latency",
      circuits: "chart-circuits",
    };
    for (const [name, id] of Object.entries(boxes)) {
      const chart = charts[name];
      if (chart) chart.setSize({ width: Math.max(320, $(id).clientWidth), height: chart.height });
    }
  }

  function lastNumber(list) {
    for (let i = list.length - 1; i >= 0; i--) if (typeof list[i] === "number") return list[i];
    return null;
  }

  // --- panels ---------------------------------------------------------------------------
  function renderHeader(doc) {
    const state = String(doc.state || "unknown");
    setText("state", "state: " + state, "badge " + state);
    const cfg = doc.config || {};
    const version = cfg.version ? String(cfg.version).slice(0, 12) : "none";
    const loaded = cfg.loaded_at ? " · loaded " + clock(cfg.loaded_at) : "";
    setText("config-version", "config " + version + loaded);
    $("config-version").title = (cfg.path || "") + (cfg.version ? " sha256 " + cfg.version : "");
    const error = $("config-error");
    if (cfg.error) {
      error.replaceChildren(
        el("strong", { text: "routes.yaml not applied:" }),
        String(cfg.error),
        cfg.error_at ? " (" + clock(cfg.error_at) + "; the last good config keeps serving)" : "",
      );
      error.hidden = false;
    } else {
      error.hidden = true;
    }
  }

  function renderVerdict(doc) {
    const m = doc.migration || {};
    const ready = m.ready_for_full_migration === true;
    $("verdict").className = "verdict " + (ready ? "ready" : "not-ready");
    setText("verdict-title", ready ? "Ready for full migration" : "Not ready for full migration");
    setText("verdict-reason", m.reason || "");
    const open = Object.entries(doc.backends || {})
      .filter(([, b]) => b.role === "canary" && b.circuit === "open")
      .map(([name]) => name);
    const note = $("rollback-note");
    note.hidden = open.length === 0;
    note.textContent = open.length
      ? "Rolled back: " +
        open.join(", ") +
        (open.length > 1 ? " are" : " is") +
        " open; " +
        (open.length > 1 ? "their" : "its") +
        " traffic goes to each route's baseline"
      : "";
  }

  function renderTiles(doc) {
    let total = 0;
    let qps = 0;
    for (const b of Object.values(doc.backends || {})) {
      total += b.total_requests || 0;
      qps += b.qps || 0;
    }
    setText("total-requests", int.format(total));
    setText("total-qps", dec.format(qps));
    const rb = doc.rollback;
    setText("threshold", rb ? pct(rb.max_error_rate) : "–");
    setText(
      "threshold-sub",
      rb
        ? "over " +
            rb.window_s +
            " s, at least " +
            rb.min_requests +
            " calls; reopen after " +
            rb.open_s +
            " s"
        : "",
    );
    const m = doc.migration || {};
    const savings = $("savings");
    const cost = doc.cost || null;
    const projected =
      "projected_monthly_savings_usd" in m
        ? m.projected_monthly_savings_usd
        : cost && "projected_monthly_savings_usd" in cost
          ? cost.projected_monthly_savings_usd
          : undefined;
    const pending = projected === null && projectionPending(cost);
    savings.replaceChildren(moneyNode(projected, pending ? "not yet" : "unknown"));
    let sub = "at the live token rate, all traffic on the canary";
    if (m.projection_basis) sub += " (" + m.projection_basis + ")";
    if (projected === null) sub = "some traffic has no price in routes.yaml";
    if (pending) sub = m.projection_basis || "too little traffic yet";
    if (projected === undefined) sub = "this router does not report cost";
    setText("savings-sub", sub);
  }

  function renderBackends(doc) {
    const bar = doc.rollback ? doc.rollback.max_error_rate : null;
    const rows = Object.entries(doc.backends || {}).map(([name, b]) => {
      const lat = b.latency_ms || {};
      const over = bar !== null && b.requests > 0 && b.error_rate > bar;
      const tokens = b.tokens
        ? int.format(b.tokens.input) + " / " + int.format(b.tokens.output)
        : "unknown";
      return el(
        "tr",
        { data: { backend: name } },
        el(
          "td",
          {},
          el("span", { class: "dot", "aria-hidden": "true", data: { color: colorOf(name) } }),
          el("strong", { text: name }),
          el("span", { class: "role", text: b.role || "" }),
        ),
        el(
          "td",
          {},
          b.role === "canary"
            ? circuitBadge(b.circuit)
            : el("span", { class: "badge baseline", text: "baseline" }),
        ),
        el("td", { class: "num", text: int.format(b.requests) }),
        el("td", { class: "num", text: int.format(b.errors) }),
        el("td", {
          class: "num" + (over ? " over" : ""),
          text: b.requests > 0 ? pct(b.error_rate) : "–",
        }),
        el("td", {
          class: "num",
          text: b.requests > 0 ? int.format(lat.p50) + " / " + int.format(lat.p99) : "–",
        }),
        el("td", { class: "num", text: dec.format(b.qps || 0) }),
        el("td", { class: "num", text: int.format(b.in_flight || 0) }),
        el("td", { class: "num total", text: int.format(b.total_requests || 0) }),
        el("td", { class: "num", text: tokens }),
        el("td", { class: "num" }, moneyNode("cost_usd" in b ? b.cost_usd : undefined)),
      );
    });
    $("backends").tBodies[0].replaceChildren(...rows);
    // Colour dots through the CSSOM (allowed by the page's CSP), not inline style attributes.
    for (const dot of $("backends").querySelectorAll(".dot"))
      dot.style.background = dot.dataset.color;
  }

  function renderRoutes(doc) {
    const rows = (doc.routes || []).map((route) => {
      const weights = el("td");
      for (const [name, configured] of Object.entries(route.configured || {})) {
        const effective = route.effective ? route.effective[name] : configured;
        weights.append(
          el(
            "span",
            { class: "weight", data: { backend: name } },
            el("strong", { text: name + " " }),
            String(configured) + " → ",
            el("span", {
              class: effective !== configured ? "changed" : "",
              text: String(effective),
            }),
          ),
        );
      }
      return el(
        "tr",
        { data: { route: route.name } },
        el("td", {}, el("strong", { text: route.name })),
        el("td", { text: route.baseline }),
        weights,
        el("td", { class: "num", text: dec.format(route.canary_percentage) + " %" }),
        el("td", { text: route.fallback ? "yes" : "no" }),
      );
    });
    $("routes").tBodies[0].replaceChildren(...rows);
  }

  function renderCost(doc) {
    const summary = $("cost-summary");
    const items = [];
    const add = (label, value) => items.push(el("dt", { text: label }), el("dd", {}, value));
    const cost = doc.cost;
    for (const [name, b] of Object.entries(doc.backends || {})) {
      add(name + " so far", moneyNode("cost_usd" in b ? b.cost_usd : undefined));
    }
    if (cost) {
      add("total (priced)", moneyNode(cost.total_usd));
      add("same tokens, 100% baseline", moneyNode(cost.at_100_baseline_usd));
      add("same tokens, 100% canary", moneyNode(cost.at_100_canary_usd));
      if (cost.token_rate_per_s) {
        const r = cost.token_rate_per_s;
        add(
          "token rate (5 min)",
          dec.format(r.input) + " in / " + dec.format(r.output) + " out per s",
        );
      }
      if (cost.unpriced && cost.unpriced.length) {
        add("no price for", el("span", { class: "unknown-value", text: cost.unpriced.join(", ") }));
      }
      if (cost.unmetered_requests) add("calls without usage", int.format(cost.unmetered_requests));
      if (cost.since) add("since", clock(cost.since));
    }
    const m = doc.migration || {};
    add(
      "projected savings / month",
      moneyNode(
        "projected_monthly_savings_usd" in m ? m.projected_monthly_savings_usd : undefined,
        projectionPending(cost) ? "not yet" : "unknown",
      ),
    );
    if (m.projection_basis) add("projection rests on", m.projection_basis);
    summary.replaceChildren(...items);

    const models = (cost && cost.by_model) || [];
    const table = $("cost-models");
    table.hidden = models.length === 0;
    table.tBodies[0].replaceChildren(
      ...models.map((row) =>
        el(
          "tr",
          {},
          el("td", { text: row.backend }),
          el("td", { class: "mono", text: row.model }),
          el("td", { class: "num", text: int.format(row.requests) }),
          el("td", {
            class: "num",
            text: int.format(row.input_tokens) + " / " + int.format(row.output_tokens),
          }),
          el("td", { class: "num" }, moneyNode(row.cost_usd)),
        ),
      ),
    );
  }

  function renderEvents(doc) {
    events = (doc.events || []).slice(0, 100);
    const list = $("events");
    if (!events.length) {
      list.replaceChildren(el("li", { class: "empty", text: "no circuit changes yet" }));
      return;
    }
    list.replaceChildren(
      ...events.map((e) =>
        el(
          "li",
          { data: { backend: e.backend, from: e.from, to: e.to } },
          el("span", { class: "when", text: clock(e.at) }),
          el("span", { class: "who", text: e.backend }),
          circuitBadge(e.from),
          "→",
          circuitBadge(e.to),
          el("span", { class: "why", text: e.reason || "" }),
        ),
      ),
    );
  }

  function share(value) {
    return value === null || value === undefined ? "–" : pct(value);
  }

  function ratio(value) {
    return value === null || value === undefined ? "–" : value.toFixed(2) + "×";
  }

  function renderEquivalence(doc) {
    const audits = [];
    for (const [backend, models] of Object.entries(doc.audit || {})) {
      for (const [model, a] of Object.entries(models)) {
        audits.push(
          el(
            "tr",
            { class: a.mismatch > 0 ? "bad" : "" },
            el("td", {}, el("strong", { text: backend })),
            el("td", { text: model }),
            el("td", { class: "num", text: String(a.match) }),
            el("td", { class: "num", text: String(a.variant) }),
            el("td", { class: "num", text: String(a.mismatch) }),
            el("td", { class: "num", text: String(a.absent) }),
            el("td", { text: a.last_mismatch || "–" }),
          ),
        );
      }
    }
    $("audit").tBodies[0].replaceChildren(...audits);
    const pairs = Object.entries(doc.shadow || {}).map(([route, s]) => {
      const c = s.compare || {};
      const skipped = Object.values(s.skipped || {}).reduce((a, b) => a + b, 0);
      return el(
        "tr",
        {},
        el("td", {}, el("strong", { text: route + " → " + s.backend })),
        el("td", { class: "num", text: String(c.pairs || 0) }),
        el("td", { class: "num", text: share(c.status_agreement) }),
        el("td", { class: "num", text: share(c.prompt_tokens_match) }),
        el("td", {
          class: "num",
          text: ratio(c.latency_ratio_p50) + " / " + ratio(c.latency_ratio_p95),
        }),
        el("td", { class: "num", text: ratio(c.completion_tokens_ratio_p50) }),
        el("td", { class: "num", text: share(c.exact_match) }),
        el("td", { class: "num", text: String(skipped) }),
        el("td", {}, moneyNode(s.cost_usd, "–")),
      );
    });
    $("shadow").tBodies[0].replaceChildren(...pairs);
    // A table with no rows says nothing: not drawn (a route without shadow has no pairs).
    $("audit").hidden = audits.length === 0;
    $("shadow").hidden = pairs.length === 0;
    $("equivalence").hidden = audits.length === 0 && pairs.length === 0;
  }

  function render(doc) {
    renderHeader(doc);
    renderVerdict(doc);
    renderTiles(doc);
    renderBackends(doc);
    renderRoutes(doc);
    renderCost(doc);
    renderEvents(doc);
    renderEquivalence(doc);
  }

  // --- polling --------------------------------------------------------------------------
  let failures = 0;

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  // The points after the last one held; the whole ring on open.
  function historyURL() {
    const n = history.t.length;
    return n ? "/status/history?since=" + (history.t[n - 1] + 1) : "/status/history";
  }

  async function poll() {
    const started = Date.now();
    try {
      const [doc, points] = await Promise.all([
        getJSON("/status"),
        getJSON(historyURL()).catch(() => null), // an older router keeps no history
      ]);
      failures = 0;
      noteStatus(doc);
      if (points) absorb(points);
      render(doc);
      document.dispatchEvent(new CustomEvent("canary:status", { detail: doc }));
      if (points) document.dispatchEvent(new CustomEvent("canary:history", { detail: history }));
      $("disconnected").hidden = true;
      setText(
        "live",
        "live · " + new Date(started).toLocaleTimeString([], { hour12: false }),
        "live ok",
      );
    } catch (err) {
      failures += 1;
      setText("live", "no answer", "live down");
      const banner = $("disconnected");
      banner.textContent = "/status did not answer (" + err.message + "); retrying every second.";
      banner.hidden = failures < 2;
    }
    drawCharts();
    setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }

  // --- reload config --------------------------------------------------------------------
  function setupReload() {
    const dialog = $("reload-dialog");
    const input = $("reload-token");
    const result = $("reload-result");
    const remembered = () => sessionStorage.getItem(TOKEN_KEY) || "";

    function showResult(text, ok) {
      result.textContent = text;
      result.className = "result " + (ok ? "ok" : "fail");
    }

    $("reload-open").addEventListener("click", () => {
      input.value = "";
      input.placeholder = remembered()
        ? "saved for this tab (type to replace)"
        : "paste the admin token";
      result.textContent = "";
      dialog.showModal();
      input.focus();
    });
    $("reload-close").addEventListener("click", () => dialog.close());
    $("reload-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      input.placeholder = "paste the admin token";
      showResult("Token forgotten.", true);
    });
    $("reload-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = input.value.trim() || remembered();
      if (!token) {
        showResult("Enter the admin token (auth.admin_token in routes.yaml).", false);
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = "";
      showResult("Reloading…", true);
      try {
        const response = await fetch("/admin/reload", {
          method: "POST",
          cache: "no-store",
          headers: { authorization: "Bearer " + token },
        });
        const body = await response.json().catch(() => ({}));
        if (response.ok) {
          const version = body.version ? String(body.version).slice(0, 12) : "?";
          showResult(
            (body.changed ? "Applied a new config: " : "Config unchanged: ") + version,
            true,
          );
        } else if (response.status === 401 || response.status === 403) {
          if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
          showResult(
            (body.error && body.error.message) || "Refused (HTTP " + response.status + ").",
            false,
          );
        } else {
          showResult(
            "Not applied: " +
              (body.error && body.error.message
                ? body.error.message
                : body.error || "HTTP " + response.status),
            false,
          );
        }
      } catch (err) {
        showResult("No answer from the router: " + err.message, false);
      }
      input.placeholder = remembered()
        ? "saved for this tab (type to replace)"
        : "paste the admin token";
    });
  }

  function start() {
    // Read-only view of the history for devtools and the browser test.
    window.canaryDashboard = Object.freeze({ history: history, charts: charts });
    setupReload();
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(resizeCharts, 100);
    });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
