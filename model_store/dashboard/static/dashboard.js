// The edgefabric fleet dashboard: reads /api/* every few seconds and redraws.
// Every value from the API is set as text (textContent, SVG attributes), never parsed as
// markup: device ids, labels and event messages come from the field.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.max(1000, Number(params.get("refresh_s") || 3) * 1000);
  const WINDOW_S = Math.max(60, Number(params.get("window") || 3600));
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "edgefabric-dashboard-token";

  // A token may come as #token=... (a fragment is never sent to the server or its logs).
  const token = (() => {
    const found = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (found) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(found[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  })();

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clock(seconds) {
    if (!seconds) return "never";
    return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  function age(seconds, now) {
    if (!seconds) return "never";
    const s = Math.max(0, now - seconds);
    if (s >= 86400) return `${Math.floor(s / 86400)}d ago`;
    if (s >= 3600) return `${Math.floor(s / 3600)}h ago`;
    if (s >= 60) return `${Math.floor(s / 60)}m ago`;
    return `${Math.floor(s)}s ago`;
  }

  function number(value, digits) {
    return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
  }

  async function get(path) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error || message;
      } catch (_) {
        // not JSON: keep the status text
      }
      throw new Error(`${path}: ${response.status} ${message}`);
    }
    return response.json();
  }

  // -- devices ------------------------------------------------------------------------------

  function slotsOf(device, model) {
    const cell = el("td");
    for (const slot of device.slots.filter((s) => s.model === model)) {
      const classes = ["slot", slot.active ? "active" : "", slot.state === "FAILED" ? "failed" : ""];
      const text = `v${slot.version} ${slot.state}${slot.active ? " (active)" : ""}`;
      const span = el("span", classes.join(" ").trim(), text);
      if (slot.reason) span.title = slot.reason;
      cell.append(span);
    }
    return cell;
  }

  function renderDevices(doc) {
    const body = document.querySelector("#devices tbody");
    const rows = [];
    for (const device of doc.devices) {
      const models = device.models.length ? device.models : [null];
      models.forEach((model, index) => {
        const tr = el("tr", index === 0 ? "first" : "");
        tr.dataset.device = device.id;
        if (index === 0) {
          const state = el("span", `badge ${device.online ? "online" : "offline"}`,
            device.online ? "online" : "offline");
          const labels = el("td");
          for (const [key, value] of Object.entries(device.labels)) {
            labels.append(el("span", "label", `${key}=${value}`));
          }
          const name = el("td", "device", device.id);
          if (device.agent_version) name.title = `agent ${device.agent_version}`;
          tr.append(name, el("td", "", state), el("td", "", age(device.last_seen_s, doc.now_s)),
            labels);
        } else {
          tr.append(el("td"), el("td"), el("td"), el("td"));
        }
        if (model === null) {
          tr.append(el("td", "muted", "no models"), ...Array.from({ length: 7 }, () => el("td")));
        } else {
          const failed = model.failed.length ? ` (failed: ${model.failed.join(", ")})` : "";
          const errors = model.error_rate === null ? String(model.errors)
            : `${model.errors} (${(100 * model.error_rate).toFixed(1)}%)`;
          const selfTest = { true: "passed", false: "FAILED", null: "-" }[String(model.self_test)];
          tr.append(
            el("td", "model", model.model),
            el("td", "num version", model.active === null ? "-" : `v${model.active}`),
            el("td", "num", model.previous === null ? "-" : `v${model.previous}${failed}`),
            slotsOf(device, model.model),
            el("td", "num", model.requests),
            el("td", "num", errors),
            el("td", "num", number(model.p99_ms, 1)),
            el("td", "", selfTest),
          );
        }
        rows.push(tr);
      });
    }
    body.replaceChildren(...rows);
    document.getElementById("summary").textContent =
      `${doc.total} devices, ${doc.online} online`;
  }

  // -- rollouts -----------------------------------------------------------------------------

  function progressBar(stage) {
    const total = Math.max(stage.planned, 1);
    const share = (n) => Math.min(100, (100 * n) / total);
    const bar = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", role: "img" });
    bar.append(svg("title", {}, `${stage.installed} of ${stage.planned} installed`));
    bar.append(svg("rect", { class: "bar-bg", x: 0, y: 0, width: 100, height: 10 }));
    bar.append(svg("rect", { class: "bar-assigned", x: 0, y: 0, width: share(stage.assigned), height: 10 }));
    bar.append(svg("rect", { class: "bar-done", x: 0, y: 0, width: share(stage.installed), height: 10 }));
    const failed = share(stage.failed + stage.reverted);
    bar.append(svg("rect", { class: "bar-failed", x: 100 - failed, y: 0, width: failed, height: 10 }));
    return bar;
  }

  function renderRollouts(doc) {
    const cards = doc.rollouts.slice(0, 12).map((rollout) => {
      const card = el("article", "rollout");
      card.dataset.rollout = rollout.id;
      const selector = Object.entries(rollout.selector).map(([k, v]) => `${k}=${v}`).join(",");
      card.append(el("h3", "",
        el("span", "", rollout.id),
        el("strong", "target", rollout.target),
        el("span", `phase ${rollout.phase}`, rollout.phase),
        el("span", "muted", `stage ${rollout.stage}/${rollout.stages.length}`),
        el("span", "muted", `selector ${selector || "(every device)"}, ${rollout.selected} devices`),
        el("span", "muted", rollout.gates.length ? `gates ${rollout.gates.join(", ")}` : "no gates"),
      ));
      if (rollout.reason) {
        const failing = ["ROLLING_BACK", "ROLLED_BACK", "ABORTED"].includes(rollout.phase);
        card.append(el("p", failing ? "reason" : "muted", rollout.reason));
      }
      for (const stage of rollout.stages) {
        const extra = [];
        if (stage.failed) extra.push(`${stage.failed} failed`);
        if (stage.reverted) extra.push(`${stage.reverted} reverted`);
        const text = `${stage.installed}/${stage.planned} installed` +
          (extra.length ? `, ${extra.join(", ")}` : "");
        const row = el("div", `stage ${stage.state}`,
          el("span", "", `stage ${stage.stage} (${Math.round(stage.fraction * 100)}%)`),
          progressBar(stage),
          el("span", "muted progress", text));
        card.append(row);
      }
      return card;
    });
    const target = document.getElementById("rollouts");
    target.replaceChildren(...(cards.length ? cards : [el("p", "muted", "no rollouts yet")]));
  }

  // -- charts -------------------------------------------------------------------------------

  const W = 600, H = 150, LEFT = 44, RIGHT = 8, TOP = 8, BOTTOM = 18;

  function frame(chart, maxValue, unit, start, end) {
    const plotH = H - TOP - BOTTOM;
    for (const fraction of [0, 0.5, 1]) {
      const y = TOP + plotH * (1 - fraction);
      chart.append(svg("line", { class: "axis", x1: LEFT, x2: W - RIGHT, y1: y, y2: y }));
      chart.append(svg("text", { class: "axis-text", x: LEFT - 4, y: y + 3, "text-anchor": "end" },
        `${(maxValue * fraction).toFixed(maxValue * fraction >= 10 ? 0 : 1)}${fraction ? unit : ""}`));
    }
    chart.append(svg("text", { class: "axis-text", x: LEFT, y: H - 4 }, clock(start)));
    chart.append(svg("text", { class: "axis-text", x: W - RIGHT, y: H - 4, "text-anchor": "end" },
      clock(end)));
  }

  function latencyChart(series, start, end) {
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "latency" });
    chart.append(svg("title", {}, `${series.model} · ${series.pool} latency p50 and p99 (ms)`));
    const values = series.points.flatMap((p) => [p.p50_ms, p.p99_ms]).filter((v) => v !== null);
    const maxValue = Math.max(1, ...values) * 1.1;
    frame(chart, maxValue, " ms", start, end);
    const x = (t) => LEFT + ((t - start) / (end - start)) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (H - TOP - BOTTOM) * (1 - v / maxValue);
    for (const key of ["p50_ms", "p99_ms"]) {
      let run = [];
      const flush = () => {
        if (run.length === 1) {  // a lone point: a dot, since a line needs two
          chart.append(svg("circle", { class: `${key.slice(0, 3)} dot`, cx: run[0][0], cy: run[0][1], r: 2.5 }));
        } else if (run.length) {
          chart.append(svg("polyline", { class: key.slice(0, 3), points: run.map((p) => p.join(",")).join(" ") }));
        }
        run = [];
      };
      for (const point of series.points) {
        if (point[key] === null) flush();
        else run.push([x(point.t_s).toFixed(1), y(point[key]).toFixed(1)]);
      }
      flush();
    }
    return chart;
  }

  function errorChart(series, start, end, step) {
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "errors" });
    chart.append(svg("title", {},
      `${series.model} · ${series.pool} requests and errors per ${step} s`));
    const maxValue = Math.max(1, ...series.points.map((p) => p.requests)) * 1.1;
    frame(chart, maxValue, "", start, end);
    const width = ((W - LEFT - RIGHT) * step) / (end - start);
    const x = (t) => LEFT + ((t - start) / (end - start)) * (W - LEFT - RIGHT);
    const h = (v) => (H - TOP - BOTTOM) * (v / maxValue);
    for (const point of series.points) {
      if (point.requests) {
        chart.append(svg("rect", { class: "req", x: x(point.t_s), y: H - BOTTOM - h(point.requests),
          width: Math.max(1, width - 1), height: h(point.requests) }));
      }
      if (point.errors) {
        chart.append(svg("rect", { class: "err", x: x(point.t_s), y: H - BOTTOM - h(point.errors),
          width: Math.max(1, width - 1), height: Math.max(1, h(point.errors)) }));
      }
    }
    return chart;
  }

  function renderCharts(doc) {
    const end = doc.now_s;
    const start = end - doc.window_s;
    const cards = doc.series.map((series) => {
      const points = series.points;
      const step = points.length > 1 ? points[1].t_s - points[0].t_s : doc.resolution_s;
      const requests = points.reduce((sum, p) => sum + p.requests, 0);
      const errors = points.reduce((sum, p) => sum + p.errors, 0);
      const last = [...points].reverse().find((p) => p.p99_ms !== null);
      const card = el("div", "chart");
      card.dataset.model = series.model;
      card.dataset.pool = series.pool;
      // Devices report the edge pool; a gateway its own pools, labelled with its name.
      if (series.gateway) card.dataset.gateway = series.gateway;
      const label = series.gateway
        ? `${series.model} · ${series.pool} (${series.gateway})`
        : `${series.model} · ${series.pool} pool`;
      card.append(
        el("h3", "", label),
        el("p", "legend",
          el("span", "k50", "— p50"), " ", el("span", "k99", "— p99"),
          ` latest ${number(last && last.p50_ms, 1)} / ${number(last && last.p99_ms, 1)} ms`),
        latencyChart(series, start, end),
        el("p", "legend", el("span", "kerr", "■ errors"), ` of ■ requests per ${step} s: `,
          `${errors} of ${requests} in the window`),
        errorChart(series, start, end, step),
      );
      return card;
    });
    document.getElementById("window").textContent =
      doc.window_s === 3600 ? "hour" : `${Math.round(doc.window_s / 60)} minutes`;
    const target = document.getElementById("charts");
    target.replaceChildren(...(cards.length ? cards
      : [el("p", "muted", "no health or gateway reports yet in this window")]));
  }

  // -- events and models --------------------------------------------------------------------

  function renderEvents(doc) {
    const items = doc.events.map((event) => {
      const item = el("li", event.level,
        el("time", "", clock(event.at_s)),
        el("span", "source", event.source),
        el("span", "kind", event.kind),
        el("span", "subject", event.subject),
        el("span", "text", event.text));
      item.dataset.source = event.source;
      return item;
    });
    document.getElementById("events").replaceChildren(...items);
  }

  function renderModels(doc) {
    const rows = doc.models.map((model) => el("tr", "",
      el("td", "", model.ref),
      el("td", "", model.stage),
      el("td", "num", model.serving_devices),
      el("td", "", model.created_at),
      el("td", "", model.created_by)));
    document.querySelector("#models tbody").replaceChildren(...rows);
  }

  // -- refresh ------------------------------------------------------------------------------

  const parts = [
    ["/api/devices", renderDevices],
    ["/api/rollouts", renderRollouts],
    [`/api/metrics?window=${WINDOW_S}`, renderCharts],
    ["/api/events?limit=200", renderEvents],
    ["/api/models", renderModels],
  ];

  async function refresh() {
    const results = await Promise.allSettled(parts.map(([path]) => get(path)));
    const problems = [];
    results.forEach((result, index) => {
      if (result.status === "fulfilled") {
        try {
          parts[index][1](result.value);
        } catch (error) {
          problems.push(`${parts[index][0]}: ${error}`);
        }
      } else {
        problems.push(String(result.reason.message || result.reason));
      }
    });
    const problem = document.getElementById("problem");
    problem.hidden = problems.length === 0;
    problem.textContent = problems.join("; ");
    document.getElementById("updated").textContent = `updated ${clock(Date.now() / 1000)}`;
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  }

  async function loop() {
    try {
      await refresh();
    } finally {
      setTimeout(loop, REFRESH_MS);
    }
  }

  loop();
})();
