"""The live dashboard: one HTML page that polls /api/summary and renders it."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ccaa</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; } h2 { font-size: 1em; margin: 1.2em 0 .4em; }
 .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(16em, 1fr)); gap: 1em; }
 table { border-collapse: collapse; width: 100%; }
 td, th { text-align: left; padding: .2em .5em; border-bottom: 1px solid #eee; }
 td.n { text-align: right; font-variant-numeric: tabular-nums; }
 #stamp { color: #888; font-size: .85em; }
</style></head>
<body>
<h1>ccaa <span id="stamp"></span></h1>
<div class="grid">
 <div><h2>Tasks</h2><table id="tasks_by_state"></table></div>
 <div><h2>Sessions</h2><table id="sessions_by_state"></table></div>
 <div><h2>Agents</h2><table id="agents_by_state"></table></div>
</div>
<h2>Waiting for an agent</h2><table id="waiting"></table>
<h2>Recent sessions</h2><table id="sessions"></table>
<h2>Agent activity</h2><table id="activity"></table>
<h2>Events</h2><table id="events_by_topic"></table>
<script>
const REFRESH_MS = __REFRESH_MS__;
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c])); }
function counts(id, obj) {
  const rows = Object.entries(obj || {}).sort();
  document.getElementById(id).innerHTML = rows.length
    ? rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="n">${v}</td></tr>`).join("")
    : "<tr><td>none yet</td></tr>";
}
async function refresh() {
  try {
    const s = await (await fetch("/api/summary" + location.search)).json();
    counts("tasks_by_state", s.tasks_by_state);
    counts("sessions_by_state", s.sessions_by_state);
    counts("agents_by_state", s.agents_by_state);
    counts("events_by_topic", s.events_by_topic);
    const ses = s.recent_sessions || [];
    document.getElementById("sessions").innerHTML = ses.length
      ? "<tr><th>session</th><th>type</th><th>state</th><th>cost</th><th>request</th></tr>" +
        ses.map(x => `<tr><td>${esc(x.id)}</td><td>${esc(x.type)}</td><td>${esc(x.state)}</td>` +
          `<td class="n">$${x.cost_usd.toFixed(4)}</td><td>${esc(x.text)}</td></tr>`).join("")
      : "<tr><td>no sessions yet</td></tr>";
    const wait = Object.entries(s.waiting_for_agents || {}).sort();
    document.getElementById("waiting").innerHTML = wait.length
      ? "<tr><th>task</th><th>session</th><th>why</th></tr>" + wait.map(([t, x]) =>
          `<tr><td>${esc(t)}</td><td>${esc(x.session_id)}</td><td>${esc(x.reason)}</td></tr>`).join("")
      : "<tr><td>nothing waits for a missing agent</td></tr>";
    const act = Object.entries(s.agent_activity || {}).sort();
    document.getElementById("activity").innerHTML = act.length
      ? "<tr><th>agent</th><th>task</th><th>doing</th></tr>" + act.map(([a, x]) =>
          `<tr><td>${esc(a)}</td><td>${esc(x.task_id)}</td><td>${esc(x.kind)}: ${esc(x.summary)}</td></tr>`).join("")
      : "<tr><td>no activity yet</td></tr>";
    document.getElementById("stamp").textContent = "updated " + new Date().toLocaleTimeString()
      + " · up " + Math.round(s.uptime_s) + " s";
  } catch (e) {
    document.getElementById("stamp").textContent = "reporter unreachable: " + e;
  }
}
refresh(); setInterval(refresh, REFRESH_MS);
</script></body></html>
"""


def page(refresh_seconds: float) -> bytes:
    return PAGE.replace("__REFRESH_MS__", str(int(refresh_seconds * 1000))).encode()
