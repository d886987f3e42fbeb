// xrl serve: the page. Plain JavaScript and canvas, no libraries; every request goes to this server.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  agents: [], agent: null, seed: 0, episode: null, t: 0, playing: false, timer: null,
  methods: [], method: null, target: null, rects: [], kind: "blur", compare: new Set(),
  frame: null, overlay: null, bars: null, poked: null, gen: 0, scale: 4, drag: null,
  overlayMethod: null, autoTarget: false, scaling: "own", ranges: {}, lastRange: null, progressTimer: null,
};
// matplotlib's "jet" at 0, 0.1, ..., 1: the colours of xrl.viz.overlay.overlay (xrl.viz.overlay.key_colours())
const JET = ["#000080", "#0000f1", "#004cff", "#00b0ff", "#29ffce", "#7dff7a", "#ceff29", "#ffc400", "#ff6800",
  "#f10800", "#800000"];
const RAMP = `linear-gradient(to right, ${JET.join(", ")})`;
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

// the progress line: a finished job's line goes away after 2 s, so it never describes an old episode
function progressLine(text, fade = false) {
  if (S.progressTimer) clearTimeout(S.progressTimer);
  S.progressTimer = null;
  $("progress").textContent = text;
  if (fade && text) S.progressTimer = setTimeout(() => { $("progress").textContent = ""; }, 2000);
}

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
    progressLine(describe(p));
    await new Promise((r) => setTimeout(r, 200));
    if (gen !== undefined && gen !== S.gen) { $("progress").textContent = ""; throw new Stale(); }
    const r = await fetch(`/api/jobs/${p.job}`);
    p = await r.json();
    if (!r.ok) throw new Error(p.error || r.statusText);
  }
  progressLine(p.state === "done" ? `${p.what}: done in ${p.elapsed.toFixed(1)} s` : "", true);
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
    o.textContent = a.source === "zoo" ? `${a.id} (${[a.env || "?", a.role].filter(Boolean).join(", ")})` :
      `${a.id} (command line)`;
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
  const unit = a.role && a.role.startsWith("DIGR") ? "updates" : "steps";
  const parts = [a.role, a.kind, a.arch, a.score, a.trained ? `${a.trained} ${unit}` : ""].filter(Boolean);
  $("card").textContent = parts.join(" · ");
  $("card").title = a.command || "";
}

async function loadEpisode() {
  stop();
  showError("");
  progressLine("");
  const agent = $("agent").value;
  const seed = Number($("seed").value);
  const gen = ++S.gen;
  try {
    const ep = await api("/api/episode", { agent, seed: Number.isInteger(seed) ? seed : $("seed").value }, gen);
    const methods = await api(`/api/methods?agent=${encodeURIComponent(agent)}`, undefined, gen);
    S.agent = agent; S.seed = seed; S.episode = ep; S.t = 0; S.target = null; S.rects = []; S.autoTarget = false;
    S.ranges = {};
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
    o.textContent = (m.label || m.id) + (m.lane === "slow" ? " (slow)" : "");
    sel.appendChild(o);
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = m.id; box.checked = S.compare.has(m.id);
    box.addEventListener("change", () => {
      if (box.checked) S.compare.add(m.id); else S.compare.delete(m.id);
      drawCompare();
    });
    label.append(box, " " + (m.label || m.id));
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
  $("step").textContent = `step ${S.t} / ${S.episode.length - 1}` + (S.episode.truncated ?
    ` · cut at ${S.episode.max_steps} steps (--max-steps)` : " · episode ended");
  $("step").title = S.episode.truncated ? "the server records at most --max-steps steps: the episode went on" :
    "the episode ended (terminated) at its last step";
  $("scores").innerHTML = '<p class="muted">Not computed yet: the button scores the map shown.</p>';
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
  $("view-wrap").dataset.computing = "1";
  let r;
  try {
    r = await scaled(m.id, gen);
  } finally {
    if (gen === S.gen) $("view-wrap").dataset.computing = "0";
  }
  if (gen !== S.gen) return;
  S.overlay = await loadImage(r.overlay);
  S.overlayMethod = r.method;
  S.lastRange = r.range;
  $("view").dataset.overlay = r.overlay.length + ":" + r.overlay.slice(-40);
  drawKey(r);
  drawView();
}

// a map's overlay at the chosen scaling: its own min-max, or one [lo, hi] per method grown over the
// maps of this episode seen so far (a map beyond it widens it and is drawn again, from the cache)
async function scaled(id, gen) {
  for (let i = 0; ; i++) {
    const body = request(id);
    const shared = S.scaling === "shared" ? S.ranges[id] : undefined;
    if (shared && shared[1] > shared[0]) body.scale = shared;
    const r = await api("/api/saliency", body, gen);
    if (S.scaling !== "shared") return r;
    const [lo, hi] = S.ranges[id] || r.range;
    const grown = [Math.min(lo, r.range[0]), Math.max(hi, r.range[1])];
    S.ranges[id] = grown;
    const used = r.scale === "own" ? r.range : r.scale;
    if (i > 1 || (r.scale !== "own" && used[0] <= grown[0] && used[1] >= grown[1]) || !(grown[1] > grown[0])) return r;
  }
}

function num(v) { return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toPrecision(3); }

// the colour key under the map: the ramp, the values at its ends, how the map was scaled
function drawKey(r) {
  const [lo, hi] = r.scale === "own" ? r.range : r.scale;
  $("key").dataset.scaling = r.scale === "own" ? "own" : "shared";
  $("key-range").textContent = `${num(lo)} … ${num(hi)}`;
  $("key-text").textContent = r.scale === "own"
    ? `Scaled to this map's own min–max (${num(r.range[0])} to ${num(r.range[1])}): colours are not comparable between frames or methods. Opacity grows with √value.`
    : `Shared scale for ${r.method}: min–max over its maps seen in this episode (this map ${num(r.range[0])} to ${num(r.range[1])}); values beyond are clipped.`;
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
    row.addEventListener("click", () => { S.target = S.target === k ? null : k; S.autoTarget = false; show(); });
    box.appendChild(row);
  });
  $("map-label").textContent = `map of ${names[shown]}` + (S.target === null ? " (the action taken)" : " (chosen)") +
    (S.rects.length ? ` · on the poked frame (${S.rects.length} poke${S.rects.length > 1 ? "s" : ""})` : "");
  $("map-label").dataset.action = String(shown);
  $("bars-legend").querySelectorAll(".sw.poked").forEach((e) => { e.style.opacity = S.poked ? 1 : 0.3; });
  const res = $("poke-result");
  if (S.poked) {
    const before = names[S.bars.action], after = names[S.poked.action];
    const changes = S.poked.action !== S.bars.action;
    res.className = changes ? "changes" : "";
    const shownName = names[shown];
    res.textContent = changes
      ? `Poked: the agent would take ${after} instead of ${before}. The map still shows ${shownName}` +
        (shown === S.poked.action ? "." : ` (click ${after} for its map).`)
      : `Poked: the agent still takes ${before}`;
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
  const legend = $("strip-legend");
  if (legend.dataset.for !== S.agent) {
    legend.dataset.for = S.agent;
    legend.innerHTML = "action taken: ";
    S.episode.action_names.forEach((name, k) => {
      const sw = document.createElement("span");
      sw.className = "sw"; sw.style.background = COLORS[k % COLORS.length];
      legend.append(sw, ` ${name}`);
    });
    const now = document.createElement("span");
    now.className = "sw"; now.style.background = "#000";
    legend.append(now, " this step");
  }
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
    title.className = "title";
    title.textContent = `${id}: computing…`;
    const key = document.createElement("div");
    key.className = "key";
    tile.append(c, key, title);
    box.appendChild(tile);
    return { id, c, title, key };
  });
  await Promise.all(tiles.map(async ({ id, c, title, key }) => {
    const m = methodInfo(id);
    if (S.playing && m.lane === "slow") { title.textContent = `${id}: paused while playing`; return; }
    try {
      const r = await scaled(id, gen === undefined ? S.gen : gen);
      const img = await loadImage(r.overlay);
      const g = c.getContext("2d");
      g.imageSmoothingEnabled = false;
      g.drawImage(img, 0, 0, c.width, c.height);
      c.dataset.overlay = r.overlay.length + ":" + r.overlay.slice(-40);
      title.textContent = `${(methodInfo(id) || {}).label || id}${r.cached ? " (cached)" : ""}`;
      const [lo, hi] = r.scale === "own" ? r.range : r.scale;
      key.innerHTML = `<span>${num(lo)}</span><span class="ramp" style="background:${RAMP}"></span><span>${num(hi)}</span>`;
      key.title = r.scale === "own" ? "this map's own min–max" : "shared scale of this method over the episode";
      c.dataset.range = `${lo},${hi}`;
    } catch (err) {
      if (!(err instanceof Stale)) title.textContent = `${id}: ${err.message}`;
    }
  }));
}

// ------------------------------------------------------------------ scores

function clearCurves() {
  const c = $("curves"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  c.hidden = true;
  delete c.dataset.drawn;
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
  const W = c.width, H = c.height, L = 34, B = 34, T = 8, R = 8;
  c.hidden = false;
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
  [0, 0.25, 0.5, 0.75, 1].forEach((x) => {  // x ticks: the fraction of pixels deleted / inserted
    g.fillRect(px(x), H - B, 1, 4);
    g.fillText(String(x), px(x) - (x === 1 ? 8 : x === 0 ? 0 : 10), H - B + 15);
  });
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
  // pointer events: mouse, pen and touch alike (the canvas has touch-action: none)
  c.addEventListener("pointerdown", (ev) => {
    if (!S.episode || (ev.pointerType === "mouse" && ev.button !== 0)) return;
    ev.preventDefault();
    try { c.setPointerCapture(ev.pointerId); } catch (err) { /* synthetic events have no capture */ }
    const p = fraction(ev);
    S.drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y };
  });
  c.addEventListener("pointermove", (ev) => {
    if (!S.drag) return;
    const p = fraction(ev);
    S.drag.x1 = p.x; S.drag.y1 = p.y;
    drawView();
  });
  c.addEventListener("pointercancel", () => { S.drag = null; drawView(); });
  window.addEventListener("pointerup", () => {
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
    // the map stays the one of the action shown: a poke that changes the action says so, it does
    // not switch the map to the new action (click that action's bar for its map)
    if (S.target === null && S.bars) { S.target = S.bars.action; S.autoTarget = true; }
    show();
  });
}

// ------------------------------------------------------------------ timeline

function typing(el) {
  return el && (el.tagName === "TEXTAREA" || el.isContentEditable ||
    (el.tagName === "INPUT" && !["checkbox", "radio", "range", "button", "submit"].includes(el.type)));
}

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "Escape") { $("help").hidden = true; return; }
  if (typing(ev.target)) return;
  const keys = {
    ArrowRight: () => { stop(); go(S.t + 1); },
    ArrowLeft: () => { stop(); go(S.t - 1); },
    Home: () => { stop(); go(0); },
    End: () => { stop(); if (S.episode) go(S.episode.length - 1); },
    " ": togglePlay,
    Backspace: undo,
    "?": () => { $("help").hidden = !$("help").hidden; },
  };
  const act = keys[ev.key];
  if (!act) return;
  ev.preventDefault();
  ev.stopPropagation();
  act();
}

function releaseTarget() {
  if (S.autoTarget && !S.rects.length) { S.target = null; S.autoTarget = false; }
}

function undo() {
  if (!S.rects.length) return;
  S.rects.pop();
  releaseTarget();
  show();
}

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
  const keyH = 34;  // the colour key under the view
  const W = Math.max(view.width + 320, tileW + 8);
  const H = Math.max(view.height + keyH, barsH + 40) + (tiles.length ? tiles[0].height + 44 : 0) + 30;
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
  // legends: the bars (before / after a poke) and the map's colour key with its scaling
  const ly = 30 + 18 * names.length + 8;
  g.fillStyle = "#90a4ae"; g.fillRect(x0, ly, 14, 8); g.fillStyle = "#000"; g.fillText("recorded frame", x0 + 18, ly + 8);
  if (S.poked) {
    g.fillStyle = "#ef6c00"; g.fillRect(x0 + 130, ly, 14, 8); g.fillStyle = "#000"; g.fillText("poked frame", x0 + 148, ly + 8);
  }
  const ramp = (x, y, w, h) => {
    const grad = g.createLinearGradient(x, 0, x + w, 0);
    JET.forEach((colour, i) => grad.addColorStop(i / (JET.length - 1), colour));
    g.fillStyle = grad; g.fillRect(x, y, w, h); g.strokeStyle = "#999"; g.strokeRect(x, y, w, h);
  };
  if (S.overlay && $("show-overlay").checked) {
    const ky = 20 + view.height + 6;
    ramp(4, ky, 160, 10);
    g.fillStyle = "#000"; g.font = "11px sans-serif";
    g.fillText($("key-range").textContent, 170, ky + 9);
    g.fillText($("key").dataset.scaling === "own" ? "each map scaled to its own min–max" :
      "shared scale per method over this episode", 4, ky + 24);
    g.font = "13px sans-serif";
  }
  let x = 4;
  const ty = Math.max(view.height + keyH, barsH + 40) + 40;
  tiles.forEach((t) => {
    g.drawImage(t, x, ty);
    g.fillStyle = "#000"; g.fillText(t.dataset.method, x, ty - 4);
    if (t.dataset.range) {
      const [lo, hi] = t.dataset.range.split(",").map(Number);
      ramp(x, ty + t.height + 4, Math.min(90, t.width - 4), 8);
      g.fillStyle = "#000"; g.font = "11px sans-serif";
      g.fillText(`${num(lo)} … ${num(hi)}`, x + Math.min(94, t.width), ty + t.height + 12);
      g.font = "13px sans-serif";
    }
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
    const match = document.createElement("span");
    match.id = "mp4-match";
    match.dataset.same = String(r.same_episode);
    match.className = r.same_episode ? "muted" : "changes";
    match.textContent = r.same_episode
      ? ` ✓ the replay took the recorded actions (${r.steps} steps)`
      : ` ⚠ the replay took other actions than the recorded episode (${r.steps} steps): the video is another episode`;
    $("export-links").replaceChildren(a, match);
  } catch (err) {
    $("export-links").textContent = "";
    showError(err.message);
  }
}

// ------------------------------------------------------------------ wiring

window.addEventListener("DOMContentLoaded", () => {
  document.querySelector("#key .ramp").style.background = RAMP;
  $("agent").addEventListener("change", () => { showCard(); loadEpisode(); });
  $("load").addEventListener("click", loadEpisode);
  $("method").addEventListener("change", () => { S.method = $("method").value; $("settings").value = ""; show(); });
  $("settings").addEventListener("change", () => { showError(""); show(); });
  $("show-overlay").addEventListener("change", () => show());
  $("kind").addEventListener("change", () => { S.kind = $("kind").value; });
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => { S.rects = []; releaseTarget(); show(); });
  $("first").addEventListener("click", () => { stop(); go(0); });
  $("prev").addEventListener("click", () => { stop(); go(S.t - 1); });
  $("next").addEventListener("click", () => { stop(); go(S.t + 1); });
  $("play").addEventListener("click", togglePlay);
  $("scrub").addEventListener("input", () => { stop(); go(Number($("scrub").value)); });
  $("scores-btn").addEventListener("click", computeScores);
  $("png").addEventListener("click", exportPng);
  $("mp4").addEventListener("click", exportMp4);
  // keys act on the timeline whatever control has focus (a select list, the scrub bar, a
  // button), caught before the control sees them; only a text box keeps its own keys
  window.addEventListener("keydown", onKey, true);
  $("help-btn").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  $("scaling").addEventListener("change", () => { S.scaling = $("scaling").value; show(); });
  setupPoking();
  init().catch((err) => showError(err.message));
});
