// The dashboard's pages: one script, no build step, nothing fetched from outside this server.
// Each page listens to /events (server-sent events: a snapshot of the cluster every half second
// and the tasks finished since the last one) and redraws from it.
"use strict";

const STATE_COLORS = {
  released: "#b8bfcc", waiting: "#c9b458", "no-worker": "#e07b39", queued: "#8fa6d6",
  processing: "#3b6fd8", memory: "#2f9e62", erred: "#d64545",
};
const WINDOW = 30; // seconds of task stream shown
const stream = []; // finished tasks: [number, key, prefix, worker, start, stop, erred]

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") node.style.cssText = v; else if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

function prefixColor(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360}, 62%, 52%)`;
}

function bar(parts, total, ticks) {
  // parts: [[value, color, title]]; ticks: fractions of total marked with a line
  const node = el("div", { class: "bar" });
  for (const [value, color, title] of parts) {
    if (value > 0 && total > 0) node.append(el("span", { style: `width:${Math.min(100, 100 * value / total)}%;background:${color}`, title }));
  }
  for (const t of ticks || []) if (t) node.append(el("span", { class: "tick", style: `left:${100 * t}%`, title: `${Math.round(100 * t)}%` }));
  return node;
}

function row(name, barNode, fig, href) {
  const label = href ? el("a", { href, class: "name", title: name }, name) : el("span", { class: "name", title: name }, name);
  return el("div", { class: "row" }, label, barNode, el("span", { class: "fig" }, fig));
}

function fill(id, nodes, emptyText) {
  const box = document.getElementById(id);
  if (!box) return;
  box.replaceChildren(...(nodes.length ? nodes : [el("div", { class: "empty" }, emptyText)]));
}

// -- the status page ------------------------------------------------------------------------

function drawSummary(s) {
  const threads = s.workers.reduce((a, w) => a + w.nthreads, 0);
  const tiles = [
    [s.workers.length, "workers"], [threads, "threads"], [s.nodes.length, "nodes"], [s.clients, "clients"],
    [s.tasks.total, "tasks held"], [s.tasks.states.processing, "processing"], [s.tasks.forgotten_total, "forgotten"],
  ];
  fill("summary", tiles.map(([n, l]) => el("div", { class: "tile" }, el("div", { class: "n" }, n.toLocaleString()), el("div", { class: "l" }, l))), "");
}

function drawStream(s) {
  const canvas = document.getElementById("stream");
  const width = canvas.clientWidth;
  const lanes = [];
  for (const w of s.workers) for (let t = 0; t < w.nthreads; t++) lanes.push([w.address, t]);
  const laneHeight = Math.max(8, Math.min(22, Math.floor(260 / Math.max(1, lanes.length))));
  const labelWidth = 150;
  const height = Math.max(60, lanes.length * laneHeight + 24);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio; canvas.height = height * ratio; canvas.style.height = `${height}px`;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const now = s.time, from = now - WINDOW, plot = width - labelWidth - 10;
  const x = (t) => labelWidth + plot * (t - from) / WINDOW;
  g.font = "11px ui-monospace, 'DejaVu Sans Mono', monospace";
  g.textBaseline = "middle";
  const laneOf = {};
  lanes.forEach(([address, t], i) => {
    if (t === 0) laneOf[address] = i;
    g.fillStyle = i % 2 ? "#f7f8fa" : "#ffffff";
    g.fillRect(labelWidth, i * laneHeight, plot, laneHeight);
    if (t === 0) { g.fillStyle = "#6b7385"; g.fillText(address.length > 22 ? "…" + address.slice(-21) : address, 4, i * laneHeight + laneHeight / 2); }
  });
  const free = {}; // per worker: when each of its lanes is free again
  const seen = new Set();
  for (const [, key, prefix, worker, start, stop, erred] of stream) {
    if (stop < from || !(worker in laneOf)) continue;
    const w = s.workers.find((w) => w.address === worker);
    const ends = free[worker] || (free[worker] = new Array(w ? w.nthreads : 1).fill(-Infinity));
    let lane = ends.findIndex((end) => end <= start);
    if (lane < 0) lane = ends.indexOf(Math.min(...ends));
    ends[lane] = stop;
    const y = (laneOf[worker] + lane) * laneHeight;
    g.fillStyle = erred ? STATE_COLORS.erred : prefixColor(prefix);
    const x0 = Math.max(labelWidth, x(start));
    g.fillRect(x0, y + 1, Math.max(1.5, x(stop) - x0), laneHeight - 2);
    seen.add(prefix);
  }
  g.fillStyle = "#6b7385"; g.textBaseline = "top";
  for (let t = 0; t <= WINDOW; t += 5) {
    const px = labelWidth + plot * t / WINDOW;
    g.fillRect(px, lanes.length * laneHeight, 1, 4);
    g.fillText(t === WINDOW ? "now" : `-${WINDOW - t}s`, Math.min(px - 8, width - 30), lanes.length * laneHeight + 7);
  }
  if (!lanes.length) { g.textBaseline = "middle"; g.fillText("no workers", labelWidth + 10, 20); }
  fill("legend", [...seen].sort().map((p) => el("span", {}, el("i", { style: `background:${prefixColor(p)}` }), p)), "");
}

function drawProgress(s) {
  const active = s.prefixes.filter((p) => p.size > 0);
  const finished = s.prefixes.filter((p) => p.size === 0 && p.totals.forgotten > 0).slice(-Math.max(0, 12 - active.length));
  fill("progress", [...active, ...finished].slice(0, 30).map((p) => {
    const st = p.states, done = st.memory + p.totals.forgotten - (p.totals.erred || 0) * 0;
    const total = p.size + p.totals.forgotten;
    const color = prefixColor(p.name);
    const parts = [
      [st.erred, STATE_COLORS.erred, `erred: ${st.erred}`],
      [done, color, `in memory or done: ${done}`],
      [st.processing, STATE_COLORS.processing, `processing: ${st.processing}`],
      [st.queued, STATE_COLORS.queued, `queued: ${st.queued}`],
      [st["no-worker"], STATE_COLORS["no-worker"], `no-worker: ${st["no-worker"]}`],
      [st.waiting, STATE_COLORS.waiting, `waiting: ${st.waiting}`],
    ];
    const fig = `${done.toLocaleString()} / ${total.toLocaleString()}` + (st.erred ? ` · ${st.erred} erred` : "") + (st.processing ? ` · ${st.processing} running` : "");
    return row(p.name, bar(parts, total), fig);
  }), "no tasks yet");
}

function drawStates(s) {
  const total = s.tasks.total;
  fill("states", Object.entries(s.tasks.states).map(([state, n]) =>
    row(state, bar([[n, STATE_COLORS[state], `${state}: ${n}`]], total), n.toLocaleString())), "");
}

function memoryRows(s) {
  const th = s.thresholds, ticks = [th.spill, th.pause, th.terminate];
  const most = Math.max(1, ...s.workers.map((w) => w.memory.own));
  return s.workers.map((w) => {
    const m = w.memory, limit = m.limit || most;
    const f = m.own / limit;
    const color = m.limit && th.terminate && f >= th.terminate ? "var(--bad)" : m.limit && th.pause && f >= th.pause ? "var(--warn)" : "var(--accent)";
    const fig = `${bytes(m.own)} / ${m.limit ? bytes(m.limit) : "no limit"}`;
    return [w, bar([[m.own, color, `own memory ${bytes(m.own)}; values it computed: ${bytes(m.managed)}`]], limit, m.limit ? ticks : []), fig];
  });
}

function storeRows(s) {
  return s.nodes.map((n) => {
    const st = n.store, limit = st.limit || Math.max(1, st.used);
    const parts = [[st.used, "var(--ok)", `in shared memory: ${bytes(st.used)}`]];
    const fig = `${bytes(st.used)} / ${bytes(st.limit)}` + (st.spilled ? ` · ${bytes(st.spilled)} spilled` : "");
    return [n, bar(parts, limit, [0.6, 0.8]), fig];
  });
}

function drawStatus(s) {
  drawSummary(s);
  drawStream(s);
  drawProgress(s);
  drawStates(s);
  fill("memory", memoryRows(s).map(([w, b, fig]) => row(w.address, b, fig, "/workers")), "no workers");
  fill("store", storeRows(s).map(([n, b, fig]) => row(n.node, b, fig, "/workers")), "no nodes");
}

// -- the workers page -----------------------------------------------------------------------

function drawWorkers(s) {
  const mem = new Map(memoryRows(s).map(([w, b, fig]) => [w.address, [b, fig]]));
  document.querySelector("#workers tbody").replaceChildren(...s.workers.map((w) => {
    const [b, fig] = mem.get(w.address);
    return el("tr", {},
      el("td", { class: "mono" }, w.address), el("td", { class: "mono" }, w.node), el("td", {}, w.host), el("td", {}, w.pid),
      el("td", {}, w.nthreads), el("td", { class: `status-${w.status}` }, w.status), el("td", {}, w.processing),
      el("td", {}, b, el("div", { class: "fig" }, fig)), el("td", {}, bytes(w.memory.rss)), el("td", {}, bytes(w.memory.managed)));
  }));
  const stores = new Map(storeRows(s).map(([n, b, fig]) => [n.node, [b, fig]]));
  document.querySelector("#nodes tbody").replaceChildren(...s.nodes.map((n) => {
    const [b, fig] = stores.get(n.node);
    return el("tr", {},
      el("td", { class: "mono" }, n.node), el("td", {}, n.host), el("td", {}, n.workers.length),
      el("td", {}, b, el("div", { class: "fig" }, fig)), el("td", {}, bytes(n.store.spilled)),
      el("td", {}, `${n.transfers.copies} (${bytes(n.transfers.bytes)})`));
  }));
  fill("deaths", [...s.deaths].reverse().map((d) => el("div", { class: "death" },
    el("div", {}, el("b", { class: "mono" }, d.worker), ` on ${d.node}`),
    el("div", { class: "when" }, new Date(d.time * 1000).toLocaleString()),
    el("pre", {}, d.cause))), "no worker has died");
}

// -- the task page --------------------------------------------------------------------------

const taskKey = () => decodeURIComponent(location.pathname.slice("/task/".length));

async function drawTask() {
  const key = taskKey();
  document.getElementById("title").textContent = `Task ${key}`;
  document.title = `runtime · ${key}`;
  const response = await fetch(`/api/v1/task/${encodeURIComponent(key)}`);
  const t = await response.json();
  if (!response.ok) {
    fill("task", [el("p", { class: "error" }, t.error)], "");
    document.querySelector("#story tbody").replaceChildren();
    return;
  }
  const link = (k) => el("a", { href: `/task/${encodeURIComponent(k)}`, class: "mono" }, k);
  const list = (keys, n) => keys.length ? el("span", {}, ...keys.flatMap((k, i) => (i ? [", ", link(k)] : [link(k)])), n > keys.length ? ` … (${n} in all)` : "") : "none";
  const facts = [
    ["state", el("span", { class: "state", style: `background:${STATE_COLORS[t.state] || "#888"}` }, t.state)],
    ["prefix", t.prefix], ["running on", t.worker || "—"], ["held by", t.who_has.join(", ") || "—"],
    ["bytes", t.nbytes ? bytes(t.nbytes) : "—"], ["stored", t.stored ? t.stored.join(" · ") : "inline or not in memory"],
    ["depends on", list(t.dependencies, t.n_dependencies)], ["needed by", list(t.dependents, t.n_dependents)],
    ["wanted by", t.wanted_by.join(", ") || "no client"], ["workers died running it", t.suspicious],
  ];
  const nodes = [el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))];
  if (t.exception) nodes.push(el("pre", {}, t.exception + (t.traceback ? "\n\n" + t.traceback : "")));
  fill("task", nodes, "");
  document.querySelector("#story tbody").replaceChildren(...t.story.map((e, i) => el("tr", {},
    el("td", {}, i + 1), el("td", { class: "mono" }, e.stimulus_id), el("td", {}, e.key === key ? el("span", { class: "mono" }, e.key) : link(e.key)),
    el("td", {}, `${e.start} → ${e.finish}`),
    el("td", { class: "mono" }, Object.entries(e.recommendations || {}).map(([k, v]) => `${k}: ${v}`).join(", ")))));
}

// -- wiring ---------------------------------------------------------------------------------

function connect() {
  const page = document.body.dataset.page;
  const conn = document.getElementById("conn");
  const source = new EventSource("/events");
  source.onopen = () => { conn.textContent = "live"; conn.className = "conn live"; };
  source.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn down"; };
  source.onmessage = (event) => {
    const { snapshot, stream: fresh } = JSON.parse(event.data);
    for (const entry of fresh) stream.push(entry);
    const cutoff = snapshot.time - WINDOW - 5;
    while (stream.length && (stream[0][5] < cutoff || stream.length > 20000)) stream.shift();
    if (page === "status") drawStatus(snapshot);
    else if (page === "workers") drawWorkers(snapshot);
    else if (page === "task") drawTask();
  };
}

const find = document.getElementById("find");
if (find) find.addEventListener("submit", (e) => {
  e.preventDefault();
  const key = find.elements.key.value.trim();
  if (key) location.href = `/task/${encodeURIComponent(key)}`;
});
if (document.body.dataset.page !== "login") connect();
