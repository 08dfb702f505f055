// canary dashboard: the panels of capabilities a router may or may not have. dashboard.js
// hands every /status document over in a "canary:status" event, and its history in
// "canary:history"; a panel is drawn only when /status has something for it to say:
//   WebSocket sessions   backends.<b>.sessions {open, total, cut}, and the history's
//                        sessions_open series
//   spend audit          billing.<b> {api, balance_usd, billed_usd, metered_usd, ratio,
//                        runway_h, polled_at, error}
//   same model           same_model (the last `canary verify --distribution` against this
//                        config) and shadow.<route>.compare.same_model_p
// Text only, never HTML: nothing from /status becomes markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#9c36b5", "#0b7285", "#c2255c", "#5c940d"];
  const int = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const dec = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
  const usd = new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: "USD",
    minimumFractionDigits: 2,
    maximumFractionDigits: 2,
  });
  const isNum = (v) => typeof v === "number" && isFinite(v);

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function row(cells, cls) {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    tr.append(...cells);
    return tr;
  }

  function money(v) {
    return isNum(v) ? usd.format(v) : "–";
  }

  function clock(iso) {
    const when = new Date(iso);
    return isNaN(when) ? "–" : when.toLocaleTimeString([], { hour12: false });
  }

  // Shows a panel only when it has rows; says whether it did.
  function show(panel, rows, body) {
    $(panel).hidden = rows.length === 0;
    if (body) $(body).tBodies[0].replaceChildren(...rows);
    return rows.length > 0;
  }

  // --- WebSocket sessions ----------------------------------------------------------------
  function sessions(doc) {
    const rows = [];
    const backends = Object.entries(doc.backends || {});
    // A router that has never held a session has nothing to say here: no panel.
    const any = backends.some(([, b]) => b.sessions && (b.sessions.total > 0 || b.sessions.open > 0));
    for (const [name, b] of any ? backends : []) {
      const s = b.sessions;
      if (!s || !isNum(s.total)) continue;
      rows.push(
        row(
          [
            cell(name),
            cell(int.format(s.open || 0), "num"),
            cell(int.format(s.total), "num"),
            cell(int.format(s.cut || 0), "num" + (s.cut > 0 ? " over" : "")),
          ],
          "",
        ),
      );
      rows[rows.length - 1].dataset.backend = name;
    }
    show("sessions-panel", rows, "sessions");
  }

  let sessionChart = null;
  let sessionKey = "";

  function sessionSeries(history) {
    const names = [...history.backends.keys()].filter((n) =>
      history.backends.get(n).sessions.some((v) => isNum(v) && v > 0),
    );
    return { names: names, data: [history.t, ...names.map((n) => history.backends.get(n).sessions)] };
  }

  function drawSessions(history) {
    const box = $("chart-sessions");
    if ($("sessions-panel").hidden || typeof uPlot === "undefined") return;
    const { names, data } = sessionSeries(history);
    box.hidden = names.length === 0;
    if (!names.length) return;
    const key = names.join(",");
    if (sessionChart && key === sessionKey) {
      sessionChart.setData(data);
      return;
    }
    if (sessionChart) sessionChart.destroy();
    const series = [{}];
    names.forEach((n, i) =>
      series.push({ label: n, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: false } }),
    );
    const axis = { stroke: "#3b4350", grid: { stroke: "#eceff3", width: 1 } };
    sessionChart = new uPlot(
      {
        width: Math.max(300, box.clientWidth),
        height: 160,
        legend: { live: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(2, max || 0)] } },
        series: series,
        axes: [
          Object.assign(
            {
              incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900], // each second labelled once
              space: 70,
              values: (u, splits) =>
                splits.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false })),
            },
            axis,
          ),
          Object.assign({ label: "open", size: 44 }, axis),
        ],
      },
      data,
      box,
    );
    sessionKey = key;
  }

  // --- spend audit -----------------------------------------------------------------------
  function billing(doc) {
    const limit = doc.readiness ? doc.readiness.max_billing_ratio : undefined;
    const rows = [];
    for (const [name, b] of Object.entries(doc.billing || {})) {
      const ratio = isNum(b.ratio) ? b.ratio.toFixed(2) + "×" : "–";
      const over = isNum(b.ratio) && isNum(limit) && b.ratio > limit;
      const runway = isNum(b.runway_h) ? " (" + dec.format(b.runway_h) + " h)" : "";
      const tr = row([
        cell(name),
        cell(money(b.balance_usd) + runway, "num"),
        cell(money(b.billed_usd) + " / " + money(b.metered_usd), "num"),
        cell(ratio, "num" + (over ? " over" : "")),
      ]);
      tr.dataset.backend = name;
      const api = b.api ? b.api + " billing API" : "billing API";
      tr.title = api + (b.polled_at ? ", last polled " + clock(b.polled_at) : "");
      rows.push(tr);
      if (b.error) {
        // A failed poll is shown, never fatal: a line of its own under the backend's.
        const why = cell("poll failed: " + String(b.error));
        why.colSpan = 4;
        rows.push(row([why], "bad"));
      }
    }
    show("billing-panel", rows, "billing");
  }

  // --- same model --------------------------------------------------------------------------
  function sameModel(doc) {
    const s = doc.same_model;
    const verdict = $("same-model-verdict");
    const facts = [];
    if (s && typeof s.verdict === "string") {
      const differs = s.verdict === "differs";
      verdict.className = "same-verdict " + (differs ? "bad" : "ok");
      const p = isNum(s.p_value) ? "p = " + s.p_value.toPrecision(2) : "no p-value";
      verdict.textContent =
        (differs ? "Answers differ from the baseline's" : "No difference found") +
        " (" + p + (isNum(s.alpha) ? ", alpha " + s.alpha : "") + ")";
      facts.push(
        ["test", String(s.test || "–")],
        ["prompts × samples", int.format(s.prompts || 0) + " × " + int.format(s.samples || 0)],
        ["calls, cost", int.format(s.calls || 0) + ", " + money(s.cost_usd)],
        ["ran at", clock(s.at)],
      );
    }
    verdict.hidden = !(s && typeof s.verdict === "string");
    $("same-model-facts").replaceChildren(
      ...facts.flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        const dd = document.createElement("dd");
        dt.textContent = k;
        dd.textContent = v;
        return [dt, dd];
      }),
    );
    const rows = [];
    for (const [route, sh] of Object.entries(doc.shadow || {})) {
      const p = sh && sh.compare ? sh.compare.same_model_p : undefined;
      if (!isNum(p)) continue;
      rows.push(row([cell(route + " → " + sh.backend), cell(p.toPrecision(2), "num")]));
    }
    $("same-model-shadow").hidden = rows.length === 0;
    $("same-model-shadow").tBodies[0].replaceChildren(...rows);
    $("same-model-panel").hidden = verdict.hidden && rows.length === 0;
  }

  function all(doc) {
    sessions(doc);
    billing(doc);
    sameModel(doc);
    const any = ["sessions-panel", "billing-panel", "same-model-panel"].some((id) => !$(id).hidden);
    $("capabilities").hidden = !any;
  }

  document.addEventListener("canary:status", (event) => all(event.detail || {}));
  document.addEventListener("canary:history", (event) => drawSessions(event.detail));
})();
