// xrl serve: the page. Plain JavaScript and canvas, no libraries; every request goes to this server.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  agents: [], agent: null, seed: 0, episode: null, t: 0, playing: false, timer: null,
  methods: [], method: null, target: null, rects: [], kind: "blur", compare: new Set(),
  frame: null, overlay: null, bars: null, poked: null, gen: 0, scale: 4, drag: null,
  overlayMethod: null,
};
const COLORS = ["#1e88e5", "#43a047", "#fdd835", "#e53935", "#8e24aa", "#00acc1", "#fb8c00",
  "#6d4c41", "#3949ab", "#c0ca33", "#d81b60", "#546e7a", "#00897b", "#5e35b1", "#f4511e",
  "#7cb342", "#039be5", "#ffb300"];

// ------------------------------------------------------------------ requests

let busy = 0;
function setBusy(delta) {
  busy += delta;
  document.body.dataset.busy = String(busy);
}

class Stale extends Error {}

function showError(message) {
  const box = $("error");
  if (!message) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = message;
}

function describe(p) {
  let text = `${p.what}: ${p.state}, ${p.elapsed.toFixed(1)} s, ${p.forwards} forward passes`;
  if (p.fraction !== null && p.fraction !== undefined) text += ` (${Math.round(100 * p.fraction)} %)`;
  return text;
}

async function waitJob(progress, gen) {
  let p = progress;
  while (p.state === "queued" || p.state === "running") {
    $("progress").textContent = describe(p);
    await new Promise((r) => setTimeout(r, 200));
    if (gen !== undefined && gen !== S.gen) { $("progress").textContent = ""; throw new Stale(); }
    const r = await fetch(`/api/jobs/${p.job}`);
    p = await r.json();
    if (!r.ok) throw new Error(p.error || r.statusText);
  }
  $("progress").textContent = p.state === "done" ? `${p.what}: done in ${p.elapsed.toFixed(1)} s` : "";
  if (p.state === "error") throw new Error(p.error);
  return p;
}

// GET (body undefined) or POST JSON; a 202 answer is a job: wait for it, then ask again
async function api(path, body, gen, resend = true) {
  setBusy(1);
  try {
    const opts = body === undefined ? {} :
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    for (;;) {
      const r = await fetch(path, opts);
      const j = await r.json();
      if (r.status === 202) {
        const done = await waitJob(j, gen);
        if (!resend) return done.result;
        continue;
      }
      if (!r.ok) throw new Error(j.error || `${r.status} ${r.statusText}`);
      return j;
    }
  } finally {
    setBusy(-1);
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("image failed to load"));
    img.src = url;
  });
}

// ------------------------------------------------------------------ agents and episodes

async function init() {
  const data = await api("/api/agents");
  S.agents = data.agents;
  const sel = $("agent");
  for (const a of S.agents) {
    const o = document.createElement("option");
    o.value = a.id;
    o.textContent = a.source === "zoo" ? `${a.id} (${a.env || "?"})` : `${a.id} (command line)`;
    sel.appendChild(o);
  }
  if (data.default.agent) sel.value = data.default.agent;
  $("seed").value = data.default.seed;
  showCard();
  if (sel.value) await loadEpisode();
}

function showCard() {
  const a = S.agents.find((x) => x.id === $("agent").value);
  if (!a) { $("card").textContent = ""; return; }
  const parts = [a.kind, a.arch, a.score, a.trained ? `${a.trained} steps` : ""].filter(Boolean);
  $("card").textContent = parts.join(" · ");
  $("card").title = a.command || "";
}

async function loadEpisode() {
  stop();
  showError("");
  const agent = $("agent").value;
  const seed = Number($("seed").value);
  const gen = ++S.gen;
  try {
    const ep = await api("/api/episode", { agent, seed: Number.isInteger(seed) ? seed : $("seed").value }, gen);
    const methods = await api(`/api/methods?agent=${encodeURIComponent(agent)}`, undefined, gen);
    S.agent = agent; S.seed = seed; S.episode = ep; S.t = 0; S.target = null; S.rects = [];
    S.methods = methods.methods;
    const [h, w] = ep.frame_size;
    const fit = 480 / Math.max(h, w);  // whole-number zoom keeps pixel art sharp; big frames fit as they can
    S.scale = fit >= 2 ? Math.floor(fit) : Math.max(fit, 1);
    $("view").width = Math.round(w * S.scale); $("view").height = Math.round(h * S.scale);
    $("strip").width = Math.round(w * S.scale);
    $("scrub").max = ep.length - 1;
    fillMethods(methods);
    drawStrip();
    await show();
  } catch (err) {
    if (!(err instanceof Stale)) showError(err.message);
  }
}

function fillMethods(listing) {
  const sel = $("method");
  const keep = sel.value;
  sel.innerHTML = "";
  const pick = $("compare-pick");
  pick.innerHTML = "";
  for (const m of listing.methods) {
    const o = document.createElement("option");
    o.value = m.id;
    o.textContent = m.id + (m.lane === "slow" ? " (slow)" : "");
    sel.appendChild(o);
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = m.id; box.checked = S.compare.has(m.id);
    box.addEventListener("change", () => {
      if (box.checked) S.compare.add(m.id); else S.compare.delete(m.id);
      drawCompare();
    });
    label.append(box, " " + m.id);
    pick.appendChild(label);
  }
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  S.method = sel.value;
  S.compare = new Set([...S.compare].filter((id) => listing.methods.some((m) => m.id === id)));
  const off = Object.keys(listing.unavailable);
  $("method-note").textContent = off.length ? `Not available for this agent: ${off.join(", ")} (hover for why)` : "";
  $("method-note").title = off.map((k) => `${k}: ${listing.unavailable[k]}`).join("\n");
}

// ------------------------------------------------------------------ one frame

// the settings box applies to the chosen method (side-by-side methods use their defaults)
function settingsOf(method) {
  const text = $("settings").value.trim();
  if (!text || method !== S.method) return undefined;
  let value;
  try { value = JSON.parse(text); } catch (err) { throw new Error(`settings must be JSON, e.g. {"n_masks": 500}: ${err.message}`); }
  return value;
}

function request(method) {
  const body = { agent: S.agent, seed: S.seed, t: S.t, method, target: S.target };
  const settings = settingsOf(method);
  if (settings !== undefined) body.settings = settings;
  if (S.rects.length) body.rects = S.rects;
  return body;
}

function methodInfo(id) { return S.methods.find((m) => m.id === id); }

async function show() {
  if (!S.episode) return;
  const gen = ++S.gen;
  $("scrub").value = S.t;
  $("step").textContent = `step ${S.t} / ${S.episode.length - 1}`;
  $("scores").innerHTML = "";
  clearCurves();
  drawStrip();
  try {
    const f = await api(`/api/frame?agent=${encodeURIComponent(S.agent)}&seed=${S.seed}&t=${S.t}`, undefined, gen);
    if (gen !== S.gen) return;
    S.bars = f.bars; S.action = f.action;
    S.poked = null;
    let frameUrl = f.frame;
    if (S.rects.length) {
      const p = await api("/api/probabilities", { agent: S.agent, seed: S.seed, t: S.t, rects: S.rects }, gen);
      if (gen !== S.gen) return;
      S.poked = p.poked;
      frameUrl = p.frame;
    }
    S.frame = await loadImage(frameUrl);
    S.overlay = null;
    drawBars();
    drawView();
    await Promise.all([drawOverlay(gen), drawCompare(gen)]);
  } catch (err) {
    if (!(err instanceof Stale)) showError(err.message);
  }
}

async function drawOverlay(gen) {
  const m = methodInfo(S.method);
  if (!m || !$("show-overlay").checked) { drawView(); return; }
  if (S.playing && m.lane === "slow") {
    $("progress").textContent = `${m.id} is slow: maps are computed when paused`;
    return;
  }
  const r = await api("/api/saliency", request(m.id), gen);
  if (gen !== S.gen) return;
  S.overlay = await loadImage(r.overlay);
  S.overlayMethod = r.method;
  $("view").dataset.overlay = r.overlay.length + ":" + r.overlay.slice(-40);
  drawView();
}

function drawView() {
  const c = $("view"), g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height);
  const img = $("show-overlay").checked && S.overlay ? S.overlay : S.frame;
  if (img) g.drawImage(img, 0, 0, c.width, c.height);
  g.lineWidth = 2;
  for (const r of S.rects) {
    g.strokeStyle = r.kind === "black" ? "#fff" : r.kind === "noise" ? "#e040fb" : "#00e5ff";
    g.strokeRect(r.x0 * c.width, r.y0 * c.height, (r.x1 - r.x0) * c.width, (r.y1 - r.y0) * c.height);
  }
  if (S.drag) {
    g.setLineDash([4, 3]); g.strokeStyle = "#ffeb3b";
    const { x0, y0, x1, y1 } = S.drag;
    g.strokeRect(Math.min(x0, x1) * c.width, Math.min(y0, y1) * c.height,
      Math.abs(x1 - x0) * c.width, Math.abs(y1 - y0) * c.height);
    g.setLineDash([]);
  }
}

function fmt(v, kind) { return kind === "q_values" ? v.toFixed(2) : v.toFixed(3); }

function drawBars() {
  const box = $("bars");
  box.innerHTML = "";
  const names = S.episode.action_names;
  const kind = S.bars.kind;
  $("bars-kind").textContent = kind === "q_values" ? "(Q-values)" : "(probabilities)";
  const all = S.bars.values.concat(S.poked ? S.poked.values : []);
  const lo = kind === "q_values" ? Math.min(0, ...all) : 0;
  const hi = kind === "q_values" ? Math.max(...all) : 1;
  S.barFraction = (v) => Math.max(0, (v - lo) / ((hi - lo) || 1));  // the export draws the same bars
  const width = (v) => `${100 * S.barFraction(v)}%`;
  const shown = S.target === null ? (S.poked ? S.poked.action : S.bars.action) : S.target;
  names.forEach((name, k) => {
    const row = document.createElement("div");
    row.className = "bar" + (k === shown ? " selected" : "");
    row.id = `bar-${k}`;
    row.dataset.value = S.bars.values[k];
    if (S.poked) row.dataset.poked = S.poked.values[k];
    row.title = S.target === k ? "showing this action's map (click again: the agent's action)" : "show this action's map";
    const label = document.createElement("span");
    label.className = "name" + (k === S.bars.action ? " taken" : "");
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill"; fill.style.width = width(S.bars.values[k]);
    track.appendChild(fill);
    if (S.poked) {
      const p = document.createElement("span");
      p.className = "poked"; p.style.width = width(S.poked.values[k]);
      track.appendChild(p);
    }
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = fmt(S.bars.values[k], kind) + (S.poked ? ` → ${fmt(S.poked.values[k], kind)}` : "");
    row.append(label, track, value);
    row.addEventListener("click", () => { S.target = S.target === k ? null : k; show(); });
    box.appendChild(row);
  });
  const res = $("poke-result");
  if (S.poked) {
    const before = names[S.bars.action], after = names[S.poked.action];
    const changes = S.poked.action !== S.bars.action;
    res.className = changes ? "changes" : "";
    res.textContent = changes ? `Poked: the agent would take ${after} instead of ${before}` :
      `Poked: the agent still takes ${before}`;
    res.dataset.changes = String(changes);
  } else {
    res.className = ""; res.textContent = ""; delete res.dataset.changes;
  }
}

function drawStrip() {
  const c = $("strip"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (!S.episode) return;
  const n = S.episode.length, w = c.width / n;
  S.episode.actions.forEach((a, i) => {
    g.fillStyle = COLORS[a % COLORS.length];
    g.fillRect(i * w, 0, Math.max(1, w), c.height);
  });
  g.fillStyle = "#000";
  g.fillRect(S.t * w, 0, Math.max(2, w), c.height);
  c.title = S.episode.action_names.map((name, k) => `${name}: ${COLORS[k % COLORS.length]}`).join("  ");
}

// ------------------------------------------------------------------ side by side

async function drawCompare(gen) {
  const box = $("compare");
  const ids = [...S.compare];
  box.innerHTML = "";
  if (!S.episode || !ids.length) return;
  const [h, w] = S.episode.frame_size;
  const scale = Math.max(1, Math.floor(220 / Math.max(h, w)));
  const tiles = ids.map((id) => {
    const tile = document.createElement("div");
    tile.className = "tile";
    const c = document.createElement("canvas");
    c.width = w * scale; c.height = h * scale;
    c.dataset.method = id;
    const title = document.createElement("div");
    title.textContent = `${id}: computing…`;
    tile.append(c, title);
    box.appendChild(tile);
    return { id, c, title };
  });
  await Promise.all(tiles.map(async ({ id, c, title }) => {
    const m = methodInfo(id);
    if (S.playing && m.lane === "slow") { title.textContent = `${id}: paused while playing`; return; }
    try {
      const r = await api("/api/saliency", request(id), gen === undefined ? S.gen : gen);
      const img = await loadImage(r.overlay);
      const g = c.getContext("2d");
      g.imageSmoothingEnabled = false;
      g.drawImage(img, 0, 0, c.width, c.height);
      c.dataset.overlay = r.overlay.length + ":" + r.overlay.slice(-40);
      title.textContent = `${id}${r.cached ? " (cached)" : ""}`;
    } catch (err) {
      if (!(err instanceof Stale)) title.textContent = `${id}: ${err.message}`;
    }
  }));
}

// ------------------------------------------------------------------ scores

function clearCurves() {
  const c = $("curves"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
}

async function computeScores() {
  const gen = S.gen;
  try {
    const body = { agent: S.agent, seed: S.seed, t: S.t, method: S.method, target: S.target };
    const settings = settingsOf(S.method);
    if (settings !== undefined) body.settings = settings;
    const r = await api("/api/scores", body, gen);
    if (gen !== S.gen) return;
    drawCurves(r);
    const loc = r.localization;
    let html = `<table><tr><th>map of</th><th>deletion AUC ↓</th><th>insertion AUC ↑</th>` +
      (loc ? `<th>localization AUC ↑</th><th>important ↑</th><th>unimportant ↓</th>` : "") + `</tr><tr>` +
      `<td>${S.episode.action_names[r.target]}</td><td id="deletion-auc">${r.deletion.auc.toFixed(3)}</td>` +
      `<td id="insertion-auc">${r.insertion.auc.toFixed(3)}</td>`;
    if (loc) {
      const f = (v) => (v === null ? "n/a" : v.toFixed(3));
      html += `<td id="localization-auc">${f(loc.auc)}</td><td>${f(loc.important)}</td><td>${f(loc.unimportant)}</td>`;
    }
    html += `</tr></table>`;
    if (!loc) html += `<p class="muted">No localization: ${r.localization_reason}</p>`;
    $("scores").innerHTML = html;
  } catch (err) {
    if (!(err instanceof Stale)) showError(err.message);
  }
}

function drawCurves(r) {
  const c = $("curves"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 34, B = 22, T = 8, R = 8;
  g.clearRect(0, 0, W, H);
  const ys = r.deletion.y.concat(r.insertion.y);
  const top = 1, bottom = 0;  // the curves score the action's softmax probability (docs/metrics.md)
  const px = (x) => L + x * (W - L - R), py = (y) => H - B - (y - bottom) / ((top - bottom) || 1) * (H - B - T);
  g.strokeStyle = "#999"; g.strokeRect(L, T, W - L - R, H - B - T);
  g.fillStyle = "#444"; g.font = "11px sans-serif";
  g.fillText("fraction of pixels moved", L + 60, H - 6);
  g.save(); g.translate(11, H - B - 4); g.rotate(-Math.PI / 2);
  g.fillText("probability of the action", 0, 0); g.restore();
  g.fillText(top.toFixed(1), 16, T + 8); g.fillText(bottom.toFixed(1), 16, H - B);
  [["deletion", "#e53935"], ["insertion", "#1e88e5"]].forEach(([name, color], i) => {
    const curve = r[name];
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    curve.x.forEach((x, j) => (j ? g.lineTo(px(x), py(curve.y[j])) : g.moveTo(px(x), py(curve.y[j]))));
    g.stroke();
    g.fillStyle = color;
    g.fillText(`${name} AUC ${curve.auc.toFixed(3)}`, W - 150, T + 14 + 14 * i);
  });
  c.dataset.drawn = "1";
}

// ------------------------------------------------------------------ poking

function fraction(ev) {
  const c = $("view"), b = c.getBoundingClientRect();
  return { x: Math.min(1, Math.max(0, (ev.clientX - b.left) / b.width)),
           y: Math.min(1, Math.max(0, (ev.clientY - b.top) / b.height)) };
}

function setupPoking() {
  const c = $("view");
  c.addEventListener("mousedown", (ev) => {
    if (!S.episode) return;
    const p = fraction(ev);
    S.drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y };
  });
  c.addEventListener("mousemove", (ev) => {
    if (!S.drag) return;
    const p = fraction(ev);
    S.drag.x1 = p.x; S.drag.y1 = p.y;
    drawView();
  });
  window.addEventListener("mouseup", () => {
    if (!S.drag) return;
    const d = S.drag;
    S.drag = null;
    let x0 = Math.min(d.x0, d.x1), x1 = Math.max(d.x0, d.x1), y0 = Math.min(d.y0, d.y1), y1 = Math.max(d.y0, d.y1);
    if (x1 - x0 < 0.01 || y1 - y0 < 0.01) {  // a click: a square of 1/8 of the frame around it
      const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, half = 1 / 16;
      x0 = Math.max(0, cx - half); x1 = Math.min(1, cx + half);
      y0 = Math.max(0, cy - half); y1 = Math.min(1, cy + half);
    }
    S.rects.push({ x0, y0, x1, y1, kind: $("kind").value });
    show();
  });
}

// ------------------------------------------------------------------ timeline

function go(t) {
  if (!S.episode) return;
  S.t = Math.max(0, Math.min(S.episode.length - 1, t));
  show();
}

function stop() {
  S.playing = false;
  if (S.timer) clearTimeout(S.timer);
  S.timer = null;
  $("play").textContent = "Play";
}

async function tick() {
  if (!S.playing) return;
  if (S.t >= S.episode.length - 1) { stop(); show(); return; }
  S.t += 1;
  await show();
  if (S.playing) S.timer = setTimeout(tick, 100);
}

function togglePlay() {
  if (!S.episode) return;
  if (S.playing) { stop(); show(); return; }
  S.playing = true;
  $("play").textContent = "Pause";
  tick();
}

// ------------------------------------------------------------------ export

function exportPng() {
  // the view, the bars and the side-by-side tiles in one picture, drawn from what is shown
  const view = $("view");
  const tiles = [...document.querySelectorAll("#compare canvas")];
  const names = S.episode.action_names;
  const barsH = 18 * names.length + 30;
  const tileW = tiles.reduce((s, t) => s + t.width + 8, 0);
  const W = Math.max(view.width + 320, tileW + 8), H = Math.max(view.height, barsH) + (tiles.length ? tiles[0].height + 30 : 0) + 30;
  const c = document.createElement("canvas");
  c.width = W; c.height = H;
  const g = c.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);
  g.drawImage(view, 0, 20);
  g.fillStyle = "#000"; g.font = "13px sans-serif";
  g.fillText(`${S.agent} seed ${S.seed} step ${S.t} · ${S.method}` +
    (S.target !== null ? ` · map of ${names[S.target]}` : "") + (S.rects.length ? ` · ${S.rects.length} poke(s)` : ""), 4, 14);
  const x0 = view.width + 16;
  names.forEach((name, k) => {
    const y = 30 + 18 * k;
    g.fillStyle = "#000"; g.fillText(name, x0, y + 11);
    g.fillStyle = "#90a4ae"; g.fillRect(x0 + 80, y, 180 * S.barFraction(S.bars.values[k]), 7);
    if (S.poked) { g.fillStyle = "#ef6c00"; g.fillRect(x0 + 80, y + 7, 180 * S.barFraction(S.poked.values[k]), 7); }
    g.fillStyle = "#000"; g.fillText(fmt(S.bars.values[k], S.bars.kind) + (S.poked ? ` → ${fmt(S.poked.values[k], S.bars.kind)}` : ""), x0 + 266, y + 11);
  });
  let x = 4;
  const ty = Math.max(view.height, barsH) + 40;
  tiles.forEach((t) => {
    g.drawImage(t, x, ty);
    g.fillStyle = "#000"; g.fillText(t.dataset.method, x, ty - 4);
    x += t.width + 8;
  });
  const url = c.toDataURL("image/png");
  window.xrlLastExport = url;
  const a = document.createElement("a");
  a.href = url; a.download = `xrl-${S.agent}-seed${S.seed}-step${S.t}.png`;
  a.textContent = "PNG";
  $("export-links").replaceChildren(a);
  a.click();
}

async function exportMp4() {
  const methods = [S.method, ...[...S.compare].filter((m) => m !== S.method)];
  $("export-links").textContent = "making the video…";
  try {
    const body = { agent: S.agent, seed: S.seed, methods };
    const settings = settingsOf(S.method);
    if (settings !== undefined) body.settings = settings;
    const r = await api("/api/video", body, undefined, false);
    const a = document.createElement("a");
    a.href = r.download; a.textContent = "MP4"; a.download = `xrl-${S.agent}-seed${S.seed}.mp4`;
    $("export-links").replaceChildren(a);
  } catch (err) {
    $("export-links").textContent = "";
    showError(err.message);
  }
}

// ------------------------------------------------------------------ wiring

window.addEventListener("DOMContentLoaded", () => {
  $("agent").addEventListener("change", () => { showCard(); loadEpisode(); });
  $("load").addEventListener("click", loadEpisode);
  $("method").addEventListener("change", () => { S.method = $("method").value; $("settings").value = ""; show(); });
  $("settings").addEventListener("change", () => { showError(""); show(); });
  $("show-overlay").addEventListener("change", () => show());
  $("kind").addEventListener("change", () => { S.kind = $("kind").value; });
  $("undo").addEventListener("click", () => { if (S.rects.length) { S.rects.pop(); show(); } });
  $("clear").addEventListener("click", () => { S.rects = []; show(); });
  $("first").addEventListener("click", () => { stop(); go(0); });
  $("prev").addEventListener("click", () => { stop(); go(S.t - 1); });
  $("next").addEventListener("click", () => { stop(); go(S.t + 1); });
  $("play").addEventListener("click", togglePlay);
  $("scrub").addEventListener("input", () => { stop(); go(Number($("scrub").value)); });
  $("scores-btn").addEventListener("click", computeScores);
  $("png").addEventListener("click", exportPng);
  $("mp4").addEventListener("click", exportMp4);
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    if (ev.key === " ") { ev.preventDefault(); togglePlay(); }
    else if (ev.key === "ArrowRight") { stop(); go(S.t + 1); }
    else if (ev.key === "ArrowLeft") { stop(); go(S.t - 1); }
    else if (ev.key === "Home") { stop(); go(0); }
    else if (ev.key === "Backspace" && S.rects.length) { S.rects.pop(); show(); }
  });
  setupPoking();
  init().catch((err) => showError(err.message));
});
