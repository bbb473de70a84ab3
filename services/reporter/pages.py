"""The dashboard's two pages. Plain HTML and JavaScript (no build step, nothing fetched
from elsewhere): they read /api/summary and /api/session/ID, and follow /api/events
(server-sent events) to change as the work does. A ?token=... in the page's address is
passed on to every request it makes."""

from __future__ import annotations

import html
import json

STYLE = """
 body { font: 14px system-ui, sans-serif; margin: 1.2em 1.5em; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .5em; } h2 { font-size: 1em; margin: 1.2em 0 .4em; }
 a { color: #2456a4; text-decoration: none; } a:hover { text-decoration: underline; }
 .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(16em, 1fr)); gap: 1em; }
 table { border-collapse: collapse; width: 100%; }
 td, th { text-align: left; padding: .2em .5em; border-bottom: 1px solid #eee; vertical-align: top; }
 td.n { text-align: right; font-variant-numeric: tabular-nums; }
 #live { font-size: .8em; padding: .1em .5em; border-radius: 1em; background: #eee; }
 #live.on { background: #d4f4dd; } #live.off { background: #f8d7da; }
 .muted { color: #888; } pre { white-space: pre-wrap; max-height: 20em; overflow: auto;
   background: #f6f6f6; padding: .5em; margin: .3em 0; }
 .s-succeeded { fill: #d4f4dd; background: #d4f4dd; } .s-failed, .s-timed_out { fill: #f8d7da; background: #f8d7da; }
 .s-running, .s-assigned { fill: #fff3cd; background: #fff3cd; } .s-queued, .s-ready { fill: #e2ecfb; background: #e2ecfb; }
 .s-cancelled, .s-pending { fill: #eee; background: #eee; } .s-partial { background: #fff3cd; }
 svg text { font: 11px system-ui, sans-serif; } svg .edge { stroke: #999; fill: none; }
 svg rect.node { stroke: #666; rx: 4; } .bar { stroke: #666; }
"""

COMMON_JS = r"""
const TOKEN = new URLSearchParams(location.search).get("token");
const Q = TOKEN ? "?token=" + encodeURIComponent(TOKEN) : "";
function withToken(url) { return TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : url; }
function esc(s) { return String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c])); }
function stamp(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; }
async function getJSON(url) {
  const r = await fetch(withToken(url));
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}
const REFRESH_MS = __REFRESH_MS__, LIVE = __LIVE__;
// live: change on each bus event (server-sent events), with a slow safety refresh;
// otherwise (reporting.real_time_updates = false) refresh every REFRESH_MS
function follow(url, onEvent, refresh) {
  const live = document.getElementById("live");
  if (!LIVE) {
    live.textContent = "every " + REFRESH_MS / 1000 + " s";
    setInterval(refresh, REFRESH_MS);
    return null;
  }
  setInterval(refresh, Math.max(REFRESH_MS, 10000));
  const source = new EventSource(withToken(url));
  source.onopen = () => { live.textContent = "live"; live.className = "on"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "off"; };
  source.onmessage = m => onEvent(JSON.parse(m.data));
  return source;
}
function debounce(fn, ms) { let t = null; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; }
"""

OVERVIEW = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>ccaa</title><style>__STYLE__</style></head>
<body>
<h1>ccaa <span id="live">connecting</span> <span id="stamp" class="muted"></span></h1>
<div class="grid">
 <div><h2>Sessions</h2><table id="sessions_by_state"></table></div>
 <div><h2>Tasks</h2><table id="tasks_by_state"></table></div>
 <div><h2>Agents by state</h2><table id="agents_by_state"></table></div>
</div>
<h2>Agents by host and role</h2><table id="agents"></table>
<h2>Waiting for an agent</h2><table id="waiting"></table>
<h2>Recent sessions</h2><table id="sessions"></table>
<h2>Live events</h2><table id="events"></table>
<script>__COMMON__
function counts(id, obj) {
  const rows = Object.entries(obj || {}).sort();
  document.getElementById(id).innerHTML = rows.length
    ? rows.map(([k, v]) => `<tr><td class="s-${esc(k)}">${esc(k)}</td><td class="n">${v}</td></tr>`).join("")
    : "<tr><td class='muted'>none</td></tr>";
}
function table(id, head, rows) {
  document.getElementById(id).innerHTML = rows.length
    ? "<tr>" + head.map(h => `<th>${h}</th>`).join("") + "</tr>" + rows.join("")
    : "<tr><td class='muted'>none</td></tr>";
}
async function refresh() {
  try {
    const s = await getJSON("/api/summary");
    counts("sessions_by_state", s.sessions_by_state);
    counts("tasks_by_state", s.tasks_by_state);
    counts("agents_by_state", s.agents_by_state);
    table("agents", ["host", "role", "agent", "state", "load", "running"], (s.agents || []).map(a =>
      `<tr><td>${esc(a.host)}</td><td>${esc(a.role)}</td><td>${esc(a.name)}</td>` +
      `<td class="s-${esc(a.state)}">${esc(a.state)}</td><td class="n">${a.load}/${a.capacity}</td>` +
      `<td>${esc((a.running || []).join(", "))}</td></tr>`));
    table("waiting", ["task", "session", "why"], Object.entries(s.waiting_for_agents || {}).map(([t, w]) =>
      `<tr><td>${esc(t)}</td><td><a href="${withToken("/session/" + w.session_id)}">${esc(w.session_id)}</a></td><td>${esc(w.reason)}</td></tr>`));
    table("sessions", ["session", "type", "state", "cost", "what", "detail"], (s.recent_sessions || []).map(x =>
      `<tr><td><a href="${withToken("/session/" + x.id)}">${esc(x.id)}</a></td><td>${esc(x.type)}</td>` +
      `<td class="s-${esc(x.state)}">${esc(x.state)}</td><td class="n">$${Number(x.cost_usd).toFixed(4)}</td>` +
      `<td>${esc(x.text)}</td><td>${esc(x.detail)}</td></tr>`));
    document.getElementById("stamp").textContent = "counts from the " + s.counts_from + ", " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("stamp").textContent = "reporter unreachable: " + e.message;
  }
}
const events = [];
const soon = debounce(refresh, 400);
follow("/api/events", e => {
  events.unshift(e); events.length = Math.min(events.length, 50);
  table("events", ["time", "topic", "what"], events.map(x =>
    `<tr><td>${stamp(x.ts)}</td><td>${esc(x.topic)}</td><td>${esc(x.session_id || x.name || "")} ` +
    `${esc(x.task_id || "")} ${esc(x.agent_id || "")} ${esc(x.summary || x.detail || "")}</td></tr>`));
  soon();
}, refresh);
refresh();
</script></body></html>
"""

SESSION = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>ccaa session __SID_TEXT__</title><style>__STYLE__</style></head>
<body>
<h1><a href="/" id="home">ccaa</a> session <span id="sid"></span> <span id="state"></span> <span id="live">connecting</span></h1>
<div id="summary" class="muted"></div>
<h2>Tasks</h2><div id="dag"></div>
<h2>Attempts by agent</h2><div id="timeline"></div>
<h2>Details</h2><table id="tasks"></table>
<h2>History</h2><table id="history"></table>
<script>__COMMON__
const SID = __SID_JSON__;
document.getElementById("sid").textContent = SID;
document.getElementById("home").href = withToken("/");
function label(t) { return t.kind + (t.key ? " " + t.key : ""); }
function drawDag(tasks) {
  const byId = Object.fromEntries(tasks.map(t => [t.task_id, t]));
  const deps = t => [...(t.depends_on || []), ...(t.parent && byId[t.parent] ? [t.parent] : [])].filter(d => byId[d]);
  const depth = {};
  const level = (t, seen = new Set()) => {
    if (depth[t.task_id] !== undefined) return depth[t.task_id];
    if (seen.has(t.task_id)) return 0;
    seen.add(t.task_id);
    const d = deps(t).reduce((m, id) => Math.max(m, level(byId[id], seen) + 1), 0);
    return depth[t.task_id] = d;
  };
  tasks.forEach(t => level(t));
  const cols = {};
  tasks.forEach(t => (cols[depth[t.task_id]] = cols[depth[t.task_id]] || []).push(t));
  const W = 170, H = 40, GX = 50, GY = 14, pos = {};
  Object.entries(cols).forEach(([c, ts]) => ts.forEach((t, i) => pos[t.task_id] = {x: c * (W + GX) + 5, y: i * (H + GY) + 5}));
  const width = (Object.keys(cols).length) * (W + GX) + 10;
  const height = Math.max(...Object.values(cols).map(ts => ts.length)) * (H + GY) + 10;
  let svg = `<svg id="dag-svg" width="${width}" height="${height}" xmlns="http://www.w3.org/2000/svg">`;
  tasks.forEach(t => deps(t).forEach(d => {
    const a = pos[d], b = pos[t.task_id];
    svg += `<path class="edge" d="M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}"/>`;
  }));
  tasks.forEach(t => {
    const p = pos[t.task_id];
    svg += `<g class="task" id="task-${esc(t.task_id)}" data-state="${esc(t.state)}"><title>${esc(t.title)}</title>` +
      `<rect class="node s-${esc(t.state)}" x="${p.x}" y="${p.y}" width="${W}" height="${H}"/>` +
      `<text x="${p.x + 6}" y="${p.y + 15}">${esc(label(t)).slice(0, 28)}</text>` +
      `<text class="state" x="${p.x + 6}" y="${p.y + 31}">${esc(t.state)} ${esc(t.agent_id || "")}</text></g>`;
  });
  document.getElementById("dag").innerHTML = svg + "</svg>";
}
function markState(taskId, state, agent) {
  const g = document.getElementById("task-" + taskId);
  if (!g) return false;
  g.dataset.state = state;
  g.querySelector("rect").setAttribute("class", "node s-" + state);
  g.querySelector("text.state").textContent = state + " " + (agent || "");
  return true;
}
function drawTimeline(attempts, tasks) {
  // one bar per attempt (the orchestrator's attempt rows), on its agent's row
  const byId = Object.fromEntries(tasks.map(t => [t.task_id, t]));
  const now = Date.now() / 1000;
  const runs = attempts.filter(a => a.agent_id).map(a => ({agent: a.agent_id, task: a.task_id,
    start: a.started_at, end: a.ended_at || now, state: a.ended_at ? a.state : "running"}));
  if (!runs.length) { document.getElementById("timeline").innerHTML = "<p class='muted'>no attempt has run yet</p>"; return; }
  const agents = [...new Set(runs.map(r => r.agent))].sort();
  const t0 = Math.min(...runs.map(r => r.start)), t1 = Math.max(...runs.map(r => r.end));
  const span = Math.max(t1 - t0, 1), LEFT = 190, WIDTH = 700, ROW = 22;
  let svg = `<svg id="timeline-svg" width="${LEFT + WIDTH + 10}" height="${agents.length * ROW + 24}" xmlns="http://www.w3.org/2000/svg">`;
  agents.forEach((a, i) => svg += `<text x="4" y="${i * ROW + 15}">${esc(a)}</text>`);
  runs.forEach(r => {
    const x = LEFT + (r.start - t0) / span * WIDTH, w = Math.max(2, (r.end - r.start) / span * WIDTH);
    const t = byId[r.task] || {};
    svg += `<rect class="bar s-${esc(r.state)}" x="${x}" y="${agents.indexOf(r.agent) * ROW + 3}" width="${w}" height="${ROW - 6}">` +
      `<title>${esc(label(t))}: ${esc(r.state)}, ${(r.end - r.start).toFixed(1)} s</title></rect>`;
  });
  svg += `<text x="${LEFT}" y="${agents.length * ROW + 18}" class="muted">${stamp(t0)}</text>` +
         `<text x="${LEFT + WIDTH - 60}" y="${agents.length * ROW + 18}">${span.toFixed(1)} s</text>`;
  document.getElementById("timeline").innerHTML = svg + "</svg>";
}
function details(t) {
  const m = t.meta || {}, r = t.result || {}, out = [];
  if (m.verdict) out.push("gate" + (m.gate ? " " + esc(m.gate) : "") + ": " + esc(m.verdict));
  if (m.review_verdict) out.push("review: " + esc(m.review_verdict) + (m.reasons && m.reasons.length ? " — " + m.reasons.map(esc).join("; ") : ""));
  const d = r.data || {};
  if (d.total_cost_usd) out.push("$" + Number(d.total_cost_usd).toFixed(4));
  if (r.error) out.push("error: " + esc(r.error));
  const text = [r.stdout, r.stderr].filter(Boolean).join("\\n");
  if (text) out.push(`<details><summary>output</summary><pre>${esc(text)}</pre></details>`);
  return out.join("<br>");
}
async function load() {
  try {
    const st = await getJSON("/api/session/" + encodeURIComponent(SID));
    const s = st.session;
    const state = document.getElementById("state");
    state.textContent = s.state; state.className = "s-" + s.state;
    document.getElementById("summary").textContent =
      `${s.type}: ${s.text.split("\\n")[0]} — cost $${Number(s.cost_usd).toFixed(4)}` + (s.detail ? " — " + s.detail : "");
    drawDag(st.tasks);
    drawTimeline(st.attempts || [], st.tasks);
    document.getElementById("tasks").innerHTML = "<tr><th>task</th><th>role</th><th>state</th><th>agent</th><th>attempt</th><th></th></tr>" +
      st.tasks.map(t => `<tr><td title="${esc(t.task_id)}">${esc(label(t))}: ${esc(t.title)}</td><td>${esc(t.role)}</td>` +
        `<td class="s-${esc(t.state)}">${esc(t.state)}</td><td>${esc(t.agent_id)}</td><td class="n">${t.attempt}</td><td>${details(t)}</td></tr>`).join("");
    const named = Object.fromEntries(st.tasks.map(t => [t.task_id, label(t)]));
    document.getElementById("history").innerHTML = (st.history || []).slice(-200).reverse().map(h =>
      `<tr><td>${stamp(h.ts)}</td><td>${esc(h.kind)}</td><td>${esc(named[h.task_id] || "")}</td>` +
      `<td>${esc(h.to_state || "")}</td><td>${esc(h.detail || "")}</td></tr>`).join("");
  } catch (e) {
    document.getElementById("summary").textContent = "could not load the session: " + e.message;
  }
}
const reload = debounce(load, 300);
follow("/api/events?session=" + encodeURIComponent(SID), e => {
  // the node changes at once; the rest of the page (new tasks, the timeline, details)
  // is read again shortly after
  if (e.topic.startsWith("task.") && e.state && e.task_id) markState(e.task_id, e.state, e.agent_id);
  if (e.topic.startsWith("task.") || e.topic.startsWith("session.")) reload();
}, load);
load();
</script></body></html>
"""


def _page(template: str, refresh_ms: int, live: bool) -> str:
    return (template.replace("__STYLE__", STYLE).replace("__COMMON__", COMMON_JS)
            .replace("__REFRESH_MS__", str(refresh_ms))
            .replace("__LIVE__", "true" if live else "false"))


def overview(refresh_ms: int, live: bool = True) -> str:
    return _page(OVERVIEW, refresh_ms, live)


def session(session_id: str, refresh_ms: int, live: bool = True) -> str:
    return (_page(SESSION, refresh_ms, live)
            .replace("__SID_TEXT__", html.escape(session_id))
            # as a JS string, and never able to close the script element
            .replace("__SID_JSON__", json.dumps(session_id).replace("<", "\\u003c")))
