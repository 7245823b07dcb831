// FogVerse live view: polls /api/figures once a second, streams frames over WebSockets.
// Plain DOM and canvas, no build step. Everything from the server is set as text, never HTML.
"use strict";

const COLORS = ["#61afef", "#e5c07b", "#98c379", "#e06c75", "#c678dd", "#56b6c2", "#d19a66", "#abb2bf"];
const STAGE_COLORS = {
  receive_wait: "#5c6370", decode: "#61afef", queue_wait: "#d19a66", process: "#98c379",
  encode: "#c678dd", send: "#56b6c2", ack_wait: "#e06c75",
};
const HISTORY_POINTS = 300;

const token = new URLSearchParams(location.search).get("token");
function query(extra) {
  const p = new URLSearchParams(extra || {});
  if (token) p.set("token", token);
  const s = p.toString();
  return s ? "?" + s : "";
}

// The page's state, also for tests and curious people: window.fogverseView.
const view = { last: null, history: [], lastT: 0, frames: {}, polls: 0, errors: 0 };
window.fogverseView = view;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return typeof v === "number" ? v.toFixed(digits === undefined ? 1 : digits) : String(v);
}

// ---- charts --------------------------------------------------------------------------------

function sizeCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 320, h = canvas.clientHeight || 110;
  if (canvas.width !== w * ratio || canvas.height !== h * ratio) {
    canvas.width = w * ratio;
    canvas.height = h * ratio;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return [ctx, w, h];
}

// series: [{label, color, values}] aligned with times (epoch seconds).
function lineChart(canvas, times, series, unit) {
  const [ctx, w, h] = sizeCanvas(canvas);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 42, r: 6, t: 6, b: 14 };
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  max = max > 0 ? max * 1.15 : 1;
  const t0 = times.length ? times[0] : 0, t1 = times.length ? times[times.length - 1] : 1;
  const x = (t) => pad.l + ((t - t0) / Math.max(1e-9, t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#2c333d"; ctx.fillStyle = "#8d96a3"; ctx.font = "10px system-ui"; ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac / 1.15;
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(w - pad.r, y(v)); ctx.stroke();
    ctx.fillText(fmt(v, v < 10 ? 1 : 0) + (frac === 1 ? " " + unit : ""), 2, y(v) + 3);
  }
  if (times.length > 1) ctx.fillText(Math.round(t1 - t0) + " s", w - 30, h - 2);
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      if (pen) ctx.lineTo(x(times[i]), y(v)); else ctx.moveTo(x(times[i]), y(v));
      pen = true;
    });
    ctx.stroke();
  }
}

function legend(series) {
  return el("div", { class: "legend" },
    ...series.map((s) => el("span", { style: `color:${s.color}` }, "— " + s.label)));
}

function historyOf(pick) {
  return view.history.map((p) => { const v = pick(p); return v === undefined ? null : v; });
}

// ---- frames --------------------------------------------------------------------------------

function frameCard(topic) {
  const canvas = el("canvas", { width: 480, height: 270, "data-frame-canvas": topic });
  const caption = el("div", { class: "caption" }, "waiting for frames…");
  const card = el("div", { class: "card frame", "data-frame-topic": topic }, el("h3", {}, topic), canvas, caption);
  const state = { topic, canvas, caption, received: 0, broken: 0, pending: null, busy: false, times: [], meta: null };
  view.frames[topic] = state;
  openStream(state);
  return card;
}

function openStream(state) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws${query({ topic: state.topic })}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    state.pending = ev.data; // a newer frame replaces one not drawn yet
    if (!state.busy) drawPending(state);
  };
  ws.onclose = () => setTimeout(() => openStream(state), 1000);
}

async function drawPending(state) {
  state.busy = true;
  while (state.pending) {
    const buf = state.pending;
    state.pending = null;
    try {
      const n = new DataView(buf).getUint32(0);
      const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
      const bitmap = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + n)], { type: meta.type }));
      drawFrame(state, bitmap, meta);
    } catch (err) {
      state.broken += 1; // a frame the browser cannot decode: count it, keep going
    }
  }
  state.busy = false;
}

function drawFrame(state, bitmap, meta) {
  const { canvas } = state;
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const boxes = meta.boxes || [];
  const lw = Math.max(2, Math.round(canvas.width / 320));
  ctx.lineWidth = lw;
  ctx.font = `${6 * lw + 4}px system-ui`;
  boxes.forEach((b, i) => {
    ctx.strokeStyle = "#39ff14";
    ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    const score = meta.scores && meta.scores[i] !== null ? " " + meta.scores[i].toFixed(2) : "";
    const label = ((meta.labels && meta.labels[i]) || "") + score;
    if (label.trim()) {
      ctx.fillStyle = "#39ff14";
      ctx.fillText(label, b[0] + lw, Math.max(6 * lw + 4, b[1] - lw));
    }
  });
  const now = performance.now();
  state.times.push(now);
  while (state.times.length && now - state.times[0] > 2000) state.times.shift();
  state.received += 1;
  state.meta = meta;
  const fps = state.times.length / 2;
  state.caption.textContent =
    `frame ${meta.key ?? "?"}${meta.cam ? " · " + meta.cam : ""} · ${fmt(fps)} frames/s shown` +
    ` · age ${fmt(meta.age_ms, 0)} ms · ${boxes.length} box(es)` +
    (meta.waiting
      ? meta.behind_s === null
        ? " · waiting for detections (none read yet)"
        : ` · waiting for detections: detector ${fmt(meta.behind_s, 0)} s behind`
      : meta.boxes === null
        ? " (no detections)"
        : "") +
    (state.broken ? ` · ${state.broken} undecodable` : "");
  state.caption.setAttribute("data-received", state.received);
}

// ---- figures -------------------------------------------------------------------------------

function stageCard(stage) {
  const name = stage.name;
  const lat = stage.latency_ms || {};
  const nums = el("div", { class: "nums" },
    "in", el("b", { "data-figure": "in_per_s" }, fmt(stage.in_per_s) + " msg/s"),
    "out", el("b", { "data-figure": "out_per_s" }, fmt(stage.out_per_s) + " msg/s"),
    "lag", el("b", { "data-figure": "lag" }, fmt(stage.lag.total, 0) + " msgs"),
    "latency p50/p95/p99", el("b", { "data-figure": "latency" },
      lat.p50 === undefined ? "–" : `${fmt(lat.p50, 0)} / ${fmt(lat.p95, 0)} / ${fmt(lat.p99, 0)} ms`),
  );
  const times = view.history.map((p) => p.t);
  const rates = el("canvas", { class: "chart" });
  const rateSeries = [
    { label: "in msg/s", color: COLORS[0], values: historyOf((p) => p.stages[name] && p.stages[name].in) },
    { label: "out msg/s", color: COLORS[2], values: historyOf((p) => p.stages[name] && p.stages[name].out) },
  ];
  const latency = el("canvas", { class: "chart" });
  const latSeries = ["p50", "p95", "p99"].map((q, i) => ({
    label: q + " ms", color: COLORS[i + 3], values: historyOf((p) => p.stages[name] && p.stages[name][q]),
  }));
  const lag = el("canvas", { class: "chart" });
  const lagSeries = [{ label: "lag (messages)", color: COLORS[1], values: historyOf((p) => p.stages[name] && p.stages[name].lag) }];
  const parts = [];
  let maxLag = 1;
  for (const per of Object.values(stage.lag.partitions)) for (const v of Object.values(per)) if (v > maxLag) maxLag = v;
  for (const [topic, per] of Object.entries(stage.lag.partitions)) {
    for (const [p, v] of Object.entries(per)) {
      parts.push(el("div", { "data-partition": `${topic}[${p}]` }, `${topic}[${p}]: ${fmt(v, 0)}`,
        el("i", { style: `width:${Math.round(((v || 0) / maxLag) * 120)}px` })));
    }
  }
  const card = el("div", { class: "card", "data-stage": name },
    el("h3", {}, `${name}`, el("span", { class: "legend" }, `  group ${stage.group}: ${stage.inputs.join(", ")} → ${stage.output || "(sink)"}`)),
    nums, rates, legend(rateSeries), latency, legend(latSeries), lag, legend(lagSeries),
    el("div", { class: "lagbars" }, ...parts), profileBar(stage.profile));
  // Charts are drawn once the card is in the page (their size comes from CSS).
  requestAnimationFrame(() => {
    lineChart(rates, times, rateSeries, "msg/s");
    lineChart(latency, times, latSeries, "ms");
    lineChart(lag, times, lagSeries, "msgs");
  });
  return card;
}

function profileBar(profile) {
  if (!profile) return el("div", { class: "legend" }, "time split: run the node with profile=True");
  const entries = Object.entries(profile.mean_ms).filter(([, v]) => v > 0);
  const total = entries.reduce((a, [, v]) => a + v, 0) || 1;
  return el("div", { "data-figure": "profile" },
    el("h3", {}, `time split (mean ms over ${profile.sampled} timed of ${profile.messages})`),
    el("div", { class: "bar" }, ...entries.map(([k, v]) =>
      el("div", { title: `${k}: ${v.toFixed(2)} ms`, style: `width:${(v / total) * 100}%;background:${STAGE_COLORS[k] || "#888"}` }))),
    el("div", { class: "legend" }, ...entries.map(([k, v]) =>
      el("span", { style: `color:${STAGE_COLORS[k] || "#888"}` }, `${k} ${v.toFixed(2)}`))));
}

function renderTopics(snap) {
  const table = document.getElementById("topics");
  const rows = [el("tr", {}, ...["topic", "msg/s", "end offsets", "read here", "skipped", "latency p50"].map((h) => el("th", {}, h)))];
  const names = Object.keys(snap.topics);
  const series = names.map((n, i) => ({ label: n, color: COLORS[i % COLORS.length], values: historyOf((p) => p.topics[n]) }));
  for (const [name, t] of Object.entries(snap.topics)) {
    const skipped = Object.values(t.skipped).reduce((a, b) => a + b, 0);
    rows.push(el("tr", { "data-topic": name },
      el("td", {}, name + (t.exists ? "" : " (missing)")),
      el("td", { "data-figure": "per_s" }, fmt(t.per_s)),
      el("td", { "data-figure": "end_offsets" }, fmt(t.end_offsets, 0)),
      el("td", { "data-figure": "read" }, t.read),
      el("td", { "data-figure": "skipped", title: JSON.stringify(t.skipped) }, skipped),
      el("td", {}, t.latency_ms ? fmt(t.latency_ms.p50, 0) + " ms" : "–")));
  }
  table.replaceChildren(...rows);
  lineChart(document.getElementById("topics-chart"), view.history.map((p) => p.t), series, "msg/s");
  document.getElementById("topics-legend").replaceChildren(legend(series));
}

function renderAutoscale(auto) {
  const section = document.getElementById("autoscale");
  if (!auto) { section.hidden = true; return; }
  section.hidden = false;
  const rows = [el("tr", {}, ...["stage", "instances", "max", "provider", "live instance ids"].map((h) => el("th", {}, h)))];
  for (const s of auto.stages) {
    rows.push(el("tr", { "data-as-stage": s.name },
      el("td", {}, s.name), el("td", { "data-figure": "instances" }, s.instances), el("td", {}, s.max_instance),
      el("td", {}, `${s.provider}/${s.service}`), el("td", { class: "legend" }, s.instance_ids.join(", "))));
  }
  rows.push(el("tr", {}, el("td", { class: "legend", colspan: 5 },
    `${auto.live_instances} live instance(s) in all; ${auto.messages} control messages, ${auto.invalid} invalid skipped`)));
  document.getElementById("as-stages").replaceChildren(...rows);
  const series = auto.stages.map((s, i) => ({ label: s.name, color: COLORS[i % COLORS.length], values: historyOf((p) => p.instances[s.name]) }));
  lineChart(document.getElementById("instances-chart"), view.history.map((p) => p.t), series, "inst.");
  document.getElementById("as-legend").replaceChildren(legend(series));
  const drows = [el("tr", {}, ...["time", "decision", "stage", "instance", "reason"].map((h) => el("th", {}, h)))];
  for (const d of [...auto.decisions].reverse()) {
    drows.push(el("tr", { "data-decision": d.action },
      el("td", {}, new Date(d.ts * 1000).toLocaleTimeString()), el("td", {}, d.action),
      el("td", {}, `${d.source} → ${d.target}`), el("td", {}, d.instance_id), el("td", {}, d.reason || "–")));
  }
  if (drows.length === 1) drows.push(el("tr", {}, el("td", { colspan: 5, class: "legend" }, "no scale decision yet")));
  document.getElementById("decisions").replaceChildren(...drows);
}

function render(snap) {
  const frames = document.getElementById("frames");
  for (const topic of Object.keys(snap.frames)) {
    if (!view.frames[topic]) frames.append(frameCard(topic));
  }
  document.getElementById("frames-section").hidden = Object.keys(snap.frames).length === 0;
  document.getElementById("stages").replaceChildren(...snap.stages.map(stageCard));
  document.getElementById("stages-section").hidden = snap.stages.length === 0;
  renderTopics(snap);
  renderAutoscale(snap.autoscale);
  document.getElementById("skipped").textContent = snap.skipped ? `${snap.skipped} bad message(s) skipped` : "";
  const age = Math.round(Date.now() / 1000 - snap.started);
  document.getElementById("status").textContent =
    `live · up ${age} s · ${snap.clients} frame stream(s)` + (snap.poll_error ? ` · broker: ${snap.poll_error}` : "");
}

async function poll() {
  try {
    const since = view.lastT ? { since: view.lastT } : {};
    const response = await fetch("api/figures" + query(since), { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const snap = await response.json();
    view.history.push(...snap.history);
    if (view.history.length > HISTORY_POINTS) view.history.splice(0, view.history.length - HISTORY_POINTS);
    if (snap.history.length) view.lastT = snap.history[snap.history.length - 1].t;
    view.last = snap;
    view.polls += 1;
    render(snap);
  } catch (err) {
    view.errors += 1;
    document.getElementById("status").textContent = `figures unavailable (${err.message}); retrying`;
  }
  setTimeout(poll, 1000);
}

document.getElementById("json-link").href = "api/figures" + query();
poll();
