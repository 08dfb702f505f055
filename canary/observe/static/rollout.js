// canary dashboard: the progressive rollout strip (SPEC §10). dashboard.js hands every
// /status document over in a "canary:status" event; this file draws doc.rollout and sends
// the steering buttons to POST /admin/rollout/<verb> with the admin token kept in this
// tab's sessionStorage (the same one "Reload config" uses), never in a URL.
"use strict";

(function () {
  const TOKEN_KEY = "canary.adminToken";
  const $ = (id) => document.getElementById(id);
  const VERBS = {
    progressing: ["pause", "abort"],
    awaiting_promotion: ["promote", "pause", "abort"],
    paused: ["resume", "abort"],
    promoted: ["abort"],
    failed: [],
    aborted: [],
  };

  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function drawSteps(r) {
    const list = $("rollout-steps");
    list.replaceChildren();
    r.steps.forEach((s, i) => {
      let cls = "step";
      if (i + 1 < r.step || (i + 1 === r.step && r.state === "promoted")) cls += " done";
      if (i + 1 === r.step && r.state !== "promoted") cls += " current";
      if (r.gates.includes(s)) cls += " gate";
      const item = node("li", cls, s + "%");
      if (r.gates.includes(s)) item.title = "gate: waits for promote";
      list.append(item);
    });
  }

  function draw(r) {
    const strip = $("rollout");
    strip.hidden = !r;
    if (!r) return;
    strip.className = "rollout " + r.state;
    $("rollout-title").textContent =
      "Rollout of " + r.backend + ": " + r.state.replace("_", " ") + " at " + r.percent + "%";
    drawSteps(r);
    $("rollout-needs").textContent = "needs: " + r.needs;
    const checks = r.analysis.checks.map(
      (c) =>
        c.check.replaceAll("_", " ") +
        " " +
        (c.value === null ? "no data" : c.value.toFixed(3)) +
        " (bar " +
        c.threshold +
        ", " +
        c.verdict +
        ")",
    );
    $("rollout-analysis").textContent =
      "step " + r.step + " of " + r.steps.length + ", " + r.analysis.elapsed_s + " s of " +
      r.analysis.step_s + ", " + r.analysis.canary.requests + " of " +
      r.analysis.step_min_requests + " calls" + (checks.length ? "; " + checks.join("; ") : "");
    $("rollout-line").textContent = r.weights_line
      ? "write into routes.yaml: " + Object.entries(r.weights_line).map(([k, v]) => k + ": " + v).join("; ")
      : "";
    const allowed = VERBS[r.state] || [];
    for (const verb of ["promote", "pause", "resume", "abort"]) {
      $("rollout-" + verb).hidden = !allowed.includes(verb);
    }
    $("rollout-token").hidden = !!sessionStorage.getItem(TOKEN_KEY);
  }

  async function steer(verb) {
    const input = $("rollout-token");
    const typed = input.value.trim();
    if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
    input.value = "";
    const token = sessionStorage.getItem(TOKEN_KEY) || "";
    const result = $("rollout-result");
    if (!token) {
      result.textContent = "Enter the admin token first (auth.admin_token in routes.yaml).";
      input.hidden = false;
      return;
    }
    if (verb === "abort" && !window.confirm("Abort the rollout? The backend goes to 0%.")) return;
    try {
      const response = await fetch("/admin/rollout/" + verb, {
        method: "POST",
        cache: "no-store",
        headers: { authorization: "Bearer " + token },
      });
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      result.textContent = response.ok
        ? verb + ": now " + body.state + " at " + body.percent + "%"
        : (body.error && body.error.message) || "Refused (HTTP " + response.status + ").";
    } catch (err) {
      result.textContent = "No answer from the router: " + err.message;
    }
  }

  function start() {
    for (const verb of ["promote", "pause", "resume", "abort"]) {
      $("rollout-" + verb).addEventListener("click", () => steer(verb));
    }
    document.addEventListener("canary:status", (event) => draw(event.detail.rollout));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
