"""The dashboard: one static page that reads the JSON API (no build step, no assets)."""

from .status import RunStatus

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stepwise</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}
 h1{font-size:1.3rem} table{border-collapse:collapse;width:100%}
 td,th{padding:.3rem .5rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
 tr.run{cursor:pointer} tr.run:hover{background:#f4f6ff}
 .completed{color:#16794a}.failed{color:#b3261e}.running,.queued{color:#8a6100}
 .cancelled{color:#666} pre{background:#f6f6f6;padding:.5rem;overflow:auto;max-height:20rem}
 select,input,button{font:inherit;margin-right:.5rem}
</style></head><body>
<h1>stepwise runs</h1>
<form id="f">
 <select id="status"><option value="">any status</option>{status_options}</select>
 <input id="function" placeholder="function id"> <button>Search</button>
</form>
<table><thead><tr><th>run</th><th>function</th><th>status</th><th>attempts</th>
<th>started</th><th>ended</th></tr></thead><tbody id="runs"></tbody></table>
<div id="detail"></div>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",
  '"':"&quot;"}[c]));
async function load() {
  const q = new URLSearchParams();
  for (const k of ["status", "function"]) { const v = document.getElementById(k).value;
    if (v) q.set(k, v); }
  const r = await fetch("/api/v1/runs?" + q); const body = await r.json();
  document.getElementById("runs").innerHTML = (body.runs || []).map(run =>
    `<tr class="run" data-id="${esc(run.id)}"><td>${esc(run.id)}</td>
     <td>${esc(run.function_id)}</td><td class="${esc(run.status)}">${esc(run.status)}</td>
     <td>${esc(run.attempts)}</td><td>${esc(run.started_at)}</td><td>${esc(run.ended_at)}</td>
     </tr>`).join("");
  for (const tr of document.querySelectorAll("tr.run")) tr.onclick = () => show(tr.dataset.id);
}
async function act(id, what) {
  const r = await fetch(`/api/v1/runs/${id}/${what}`, {method: "POST"});
  if (!r.ok) alert((await r.json()).error); show(id); load();
}
async function show(id) {
  const run = await (await fetch("/api/v1/runs/" + encodeURIComponent(id))).json();
  document.getElementById("detail").innerHTML = `<h2>${esc(run.function_id)} / ${esc(run.id)}</h2>
   <button onclick="act('${esc(run.id)}','replay')">Replay</button>
   <button onclick="act('${esc(run.id)}','cancel')">Cancel</button>
   <p class="${esc(run.status)}">${esc(run.status)}</p>
   <table><tr><th>step</th><th>status</th><th>attempts</th><th>output / error</th></tr>
   ${(run.steps || []).map(s => `<tr><td>${esc(s.id)}</td><td class="${esc(s.status)}">
   ${esc(s.status)}</td><td>${esc(s.attempts)}</td><td><pre>${esc(JSON.stringify(
   s.error ?? s.output, null, 1))}</pre></td></tr>`).join("")}</table>
   ${(run.failures || []).length ? `<h3>failed attempts</h3><table><tr><th>step</th>
   <th>attempt</th><th>when</th><th>error</th></tr>${run.failures.map(f => `<tr>
   <td>${esc(f.step_id ?? "(function)")}</td><td>${esc(f.attempt)}</td><td>${esc(f.ended_at)}</td>
   <td>${esc(f.error.name)}: ${esc(f.error.message)}</td></tr>`).join("")}</table>` : ""}
   <h3>output / error</h3><pre>${esc(JSON.stringify(run.error ?? run.output, null, 2))}</pre>`;
}
document.getElementById("f").onsubmit = e => { e.preventDefault(); load(); };
load(); setInterval(load, 3000);
</script></body></html>
"""

PAGE = _PAGE.replace("{status_options}", "".join(f"<option>{s}</option>" for s in RunStatus))
