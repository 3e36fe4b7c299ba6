// The Flywheel operator console: models -> aliases -> versions per replica, rollouts with their charts and
// decisions, feedback per version, datasets, retraining runs, the alias history, the fleet.
// Every fact on these pages comes from a public read API (see /docs); the page polls them every 2 s.
"use strict";

const {esc, lineChart} = Charts;
const POLL_MS = 2000;
const view = document.getElementById("view");
const tokenInput = document.getElementById("token");
const openDetails = new Set();  // keys of <details> the operator opened (kept across re-renders)
let lastAction = "";

tokenInput.value = sessionStorage.getItem("flywheel-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("flywheel-token", tokenInput.value));

const pct = (x) => x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
const ms = (x) => x === null || x === undefined ? "–" : x.toFixed(1) + " ms";
const when = (t) => t ? new Date(t).toLocaleString() : "–";
const status = (s) => `<span class="pill status-${esc(s)}">${esc(s)}</span>`;
const link = (url, text) => url ? `<a href="${esc(url)}" target="_blank" rel="noopener">${esc(text)}</a>` : esc(text);
const modelHref = (m) => `#/models/${encodeURIComponent(m)}`;
const versions = (aliases) => Object.entries(aliases || {}).map(([a, v]) => `${esc(a)}&nbsp;<b>v${esc(v)}</b>`).join(", ") || "–";

async function getJson(url) {
  const resp = await fetch(url, {headers: {Accept: "application/json"}});
  if (resp.status === 404) return null;
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  return resp.json();
}

function table(headers, rows, cls = "") {
  const head = headers.map((h) => `<th class="${h.endsWith("#") ? "num" : ""}">${esc(h.replace(/#$/, ""))}</th>`).join("");
  return `<table class="${cls}"><thead><tr>${head}</tr></thead><tbody>${rows.join("") ||
    `<tr><td colspan="${headers.length}" class="muted">none yet</td></tr>`}</tbody></table>`;
}

function details(key, summary, body) {
  return `<details data-key="${esc(key)}" ${openDetails.has(key) ? "open" : ""}><summary>${summary}</summary>${body}</details>`;
}

// ---- pages -------------------------------------------------------------------------------------------

async function modelsPage() {
  const report = await getJson("/v1/status");
  const rows = report.models.map((m) => {
    const r = m.rollout, fb = m.feedback?.totals, ds = m.latest_dataset, rt = m.latest_retraining;
    const rollout = r ? `${status(r.status)} v${esc(r.challenger_version)} ${r.shadow ? "shadow" : esc(r.weight) + " %"}` : "–";
    const up = fb ? `${fb.thumbs_up + fb.thumbs_down} · ${pct(fb.thumbs_up_rate)}` : "–";
    return `<tr data-model="${esc(m.model)}"><td><a href="${modelHref(m.model)}">${esc(m.model)}</a></td>
      <td>${versions(m.aliases)}</td><td class="num">${Object.keys(m.replicas).length}</td><td>${rollout}</td>
      <td class="num">${up}</td><td>${ds ? `v${ds.dataset_version} (${ds.rows} rows)` : "–"}</td>
      <td>${rt ? status(rt.outcome) : "–"}</td><td>${link(m.mlflow_url, "MLflow")}</td></tr>`;
  });
  return `<h1>Models</h1>
    ${report.ledger_error ? `<p class="bad">datasets and retraining unavailable: ${esc(report.ledger_error)}</p>` : ""}
    ${webhookBanner(report.webhook)}
    ${table(["model", "aliases", "replicas#", "rollout", "ratings · thumbs-up#", "latest dataset", "last retraining", ""], rows, "models")}
    <h2>Fleet</h2>${fleetTable(report.fleet)}`;
}

function webhookBanner(w) {
  if (!w || w.status !== "failing") return "";
  const since = new Date(w.failing_since * 1000).toLocaleString();
  return `<div class="bad" id="webhook-failing"><p><b>webhook deliveries failing since ${esc(since)}</b>:
    the poller repaired ${esc(w.repaired_changes)} alias change(s) no delivery brought; Flywheel runs on the
    poller alone. Likely:</p><ul>${w.causes.map((c) => `<li>${esc(c)}</li>`).join("")}</ul></div>`;
}

function fleetTable(replicas) {
  const rows = replicas.map((r) => {
    const serving = r.serving.map((s) => `${esc(s.model)}@${esc(s.alias)}&nbsp;<b>v${esc(s.version)}</b>`).join("<br>") || "–";
    const swap = r.last_swap ? `${esc(r.last_swap.model)}@${esc(r.last_swap.alias)} v${esc(r.last_swap.previous_version ?? "–")} → v${esc(r.last_swap.version)}<br><span class="muted">${when(r.last_swap.at)}, preload ${r.last_swap.load_seconds.toFixed(2)} s</span>` : "–";
    const errors = r.reload_errors.map((e) => `<div class="bad">${esc(e.model)}@${esc(e.alias)} v${esc(e.wanted_version)}: ${esc(e.message)}</div>`).join("") || `<span class="ok">none</span>`;
    return `<tr data-replica="${esc(r.replica)}"><td>${r.url ? link(r.url + "/docs", r.replica) : esc(r.replica)}</td>
      <td>${r.ready ? '<span class="ok">ready</span>' : '<span class="bad">preloading</span>'}</td><td>${serving}</td>
      <td>${swap}</td><td class="num">${r.swaps} / ${r.failed_loads}</td><td>${errors}</td><td>${when(r.heartbeat_at)}</td></tr>`;
  });
  return table(["replica", "state", "serving", "last swap", "swaps / failed loads#", "reload errors", "last heartbeat"], rows, "fleet");
}

async function fleetPage() {
  const fleet = await getJson("/v1/fleet");
  return `<h1>Fleet</h1><p class="muted">Gateway replicas that reported within the last 15 s.</p>${fleetTable(fleet.replicas)}`;
}

async function modelPage(model) {
  const enc = encodeURIComponent(model);
  const [overview, rollout, feedback, datasets, retraining, history] = await Promise.all([
    getJson(`/v1/models/${enc}`), getJson(`/v1/rollouts/${enc}`), getJson(`/v1/models/${enc}/feedback`),
    getJson(`/v1/models/${enc}/datasets?limit=20`), getJson(`/v1/models/${enc}/retraining?limit=20`),
    getJson(`/v1/models/${enc}/history?holds=false&limit=200`).catch(() => null),
  ]);
  if (!overview) return `<h1>${esc(model)}</h1><p>Flywheel has not seen this model.</p>`;
  return `<h1>${esc(model)} ${link(overview.mlflow_url, "↗ MLflow")}</h1>
    <div class="cards">
      <div class="card"><b>Aliases</b> (registry, as cached)<br>${versions(overview.aliases)}</div>
      <div class="card"><b>Watch</b><br>${overview.watch ? `v${esc(overview.watch.version)} watched against v${esc(overview.watch.previous_version)} until ${when(overview.watch.until)}` : "no promotion under watch"}</div>
      <div class="card"><b>Traffic split</b><br>${overview.traffic_split ? `challenger ${esc(overview.traffic_split.weight)} %${overview.traffic_split.shadow_share ? `, shadow ${pct(overview.traffic_split.shadow_share)}` : ""}` : "none (all traffic to champion)"}</div>
    </div>
    <h2>Versions per replica</h2>${replicaTable(overview)}
    <h2>Rollout</h2>${rollout ? rolloutSection(model, rollout) : "<p class=muted>No rollout yet.</p>"}
    <h2>Feedback per version</h2>${feedbackTable(feedback, overview.mlflow_url)}
    <h2>Datasets</h2>${datasetTable(datasets)}
    <h2>Retraining runs</h2>${retrainingTable(retraining)}
    <h2>Alias history</h2>${historyTimeline(history)}`;
}

function replicaTable(overview) {
  const aliases = [...new Set([...Object.keys(overview.aliases), ...Object.values(overview.replicas).flatMap(Object.keys)])].sort();
  const rows = Object.entries(overview.replicas).map(([replica, served]) =>
    `<tr><td>${esc(replica)}</td>${aliases.map((a) => {
      const v = served[a], want = overview.aliases[a];
      return `<td class="${v && want && v !== want ? "bad" : ""}">${v ? "v" + esc(v) : "–"}</td>`;
    }).join("")}</tr>`);
  return table(["replica", ...aliases], rows, "replicas");
}

function rolloutSection(model, r) {
  const decisions = (r.decisions || []).filter((d) => d.rollout_id === r.rollout_id);
  const t = (d) => Date.parse(d.at);
  const series = (field) => ["champion", "challenger"].map((v, i) => ({
    name: v, color: i ? "#d9480f" : "#0a58ca",
    points: decisions.map((d) => [t(d), d.metrics?.[v]?.[field] ?? null]),
  }));
  const charts = [
    lineChart({title: "challenger weight (%)", slug: "weight", step: true, yMax: 100, format: (v) => v.toFixed(0),
      series: [{name: "weight", color: "#0a58ca", points: decisions.map((d) => [t(d), d.weight])}]}),
    lineChart({title: "error rate", slug: "error_rate", series: series("error_rate"), format: pct}),
    lineChart({title: "p95 latency", slug: "p95_latency_ms", series: series("p95_latency_ms"), format: ms}),
    lineChart({title: "thumbs-up rate", slug: "thumbs_up_rate", series: series("thumbs_up_rate"), format: pct, yMax: 1}),
  ].join("");
  const totals = ["champion", "challenger"].map((v) => {
    const x = r.totals?.[v] || {};
    return `<tr><td>${v} v${esc(v === "champion" ? r.champion_version : r.challenger_version)}</td><td class="num">${x.requests ?? 0}</td>
      <td class="num">${pct(x.error_rate)}</td><td class="num">${(x.thumbs_up ?? 0) + (x.thumbs_down ?? 0)}</td><td class="num">${pct(x.thumbs_up_rate)}</td></tr>`;
  });
  const rows = decisions.slice().reverse().slice(0, 100).map((d) =>
    `<tr class="decision-${esc(d.decision)}"><td>${when(d.at)}</td><td>${status(d.decision)}</td><td class="num">${d.weight} %</td>
      <td>${esc(d.actor)}</td><td>${details(`${r.rollout_id}:${d.seq}`, esc(d.reason), `<pre>${esc(JSON.stringify(d.metrics, null, 1))}</pre>`)}</td></tr>`);
  const stepText = r.shadow ? "<b>shadow step</b> (mirrored requests only)" : `step ${r.step + 1}/${r.weights.length}`;
  return `<div class="rollout" data-rollout="${esc(r.rollout_id)}" data-status="${esc(r.status)}">
    <p>${status(r.status)} v${esc(r.challenger_version)} against v${esc(r.champion_version)} · ${stepText} ·
      challenger weight <b class="weight">${esc(r.weight)} %</b> · failed checks ${esc(r.failed_checks)} · rollout <code>${esc(r.rollout_id)}</code></p>
    <div class="actions">${["pause", "resume", "promote", "abort"].map((a) =>
      `<button data-action="${a}" data-model="${esc(model)}">${a}</button>`).join("")}
      <span id="action-result">${lastAction}</span></div>
    <div class="charts">${charts}</div>
    ${table(["variant", "requests#", "error rate#", "ratings#", "thumbs-up#"], totals)}
    ${table(["at", "decision", "weight#", "actor", "reason and evidence"], rows, "decisions")}</div>`;
}

function feedbackTable(summary, modelUrl) {
  if (!summary) return "<p class=muted>No feedback aggregated yet.</p>";
  const rows = Object.entries(summary.versions).map(([v, s]) => {
    const x = s.totals;
    return `<tr data-version="${esc(v)}"><td>${modelUrl ? link(`${modelUrl}/versions/${encodeURIComponent(v)}`, "v" + v) : "v" + esc(v)}</td><td class="num">${x.inferences}</td><td class="num">${x.errors}</td><td class="num">${x.thumbs_up}</td>
      <td class="num">${x.thumbs_down}</td><td class="num">${pct(x.thumbs_up_rate)}</td><td class="num">${x.corrections ?? 0}</td>
      <td class="num">${s.windows.length}</td></tr>`;
  });
  const trig = summary.trigger || {};
  return table(["version", "inferences#", "errors#", "thumbs up#", "thumbs down#", "thumbs-up rate#", "corrections#", "windows#"], rows, "feedback") +
    `<p>retraining trigger: <b>${esc(trig.verdict ?? "not evaluated")}</b> ${esc(trig.explanation ?? "")}
     <span class="muted">(summary updated ${when(summary.updated_at)})</span></p>`;
}

function datasetTable(page) {
  const rows = (page?.items || []).map((d) => `<tr><td>${esc(d.dataset_name)} v${d.dataset_version}</td><td>${when(d.published_at)}</td>
    <td class="num">${d.rows}</td><td class="num">${d.corrected_rows}</td><td>${d.model_versions.map((v) => "v" + esc(v)).join(", ")}</td>
    <td>${details(`ds:${d.run_id}`, `${d.files.length} files`, `<pre>${esc(JSON.stringify(d.files, null, 1))}</pre>`)}</td>
    <td>${link(d.run_url, "run")}</td></tr>`);
  return table(["dataset", "published", "rows#", "corrected#", "from versions", "manifest", "MLflow"], rows, "datasets");
}

function retrainingTable(page) {
  const rows = (page?.items || []).map((r) => {
    const gates = r.gates.map((g) => `<div class="${g.passed ? "gate-pass" : "gate-fail"}">${g.passed ? "✓" : "✗"} ${esc(g.name)}
      ${g.value === null ? "" : esc(+g.value.toFixed(4))}${g.threshold === null ? "" : " / " + esc(g.threshold)}</div>`).join("") || "–";
    return `<tr><td>${when(r.requested_at)}</td><td>${esc(r.reason)}</td><td>${r.dataset_version ? "v" + r.dataset_version : "–"}</td>
      <td>${gates}</td><td>${status(r.outcome)}${r.version ? ` → v${esc(r.version)}` : ""}<div class="muted">${esc(r.message)}</div></td>
      <td>${link(r.run_url, "run")}</td></tr>`;
  });
  return table(["requested", "trigger", "dataset", "gates (value / threshold)", "outcome", "MLflow"], rows, "retraining");
}

function historyTimeline(history) {
  if (!history) return "<p class=muted>History unavailable (Kafka cannot be read).</p>";
  const items = history.entries.slice().reverse().map((e) => e.kind === "alias"
    ? `<li class="alias"><b>${esc(e.alias)}</b> → ${e.version ? "v" + esc(e.version) : "deleted"} <span class="muted">(was ${e.previous_version ? "v" + esc(e.previous_version) : "–"}; ${esc(e.actor ?? "")} via ${esc(e.source)}) ${when(e.at)}</span></li>`
    : `<li class="decision">${status(e.decision)} v${esc(e.challenger_version)} at ${esc(e.weight)} % <span class="muted">${esc(e.actor ?? "")} ${when(e.at)}</span></li>`);
  return `<ol class="timeline">${items.join("") || "<li class=muted>nothing yet</li>"}</ol>`;
}

// ---- routing, polling, actions -----------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  if (hash.startsWith("/models/")) return () => modelPage(decodeURIComponent(hash.slice(8)));
  if (hash === "/fleet") return fleetPage;
  return modelsPage;
}

let rendering = false;
async function render() {
  if (rendering) return;
  rendering = true;
  try {
    const html = await route()();
    const scroll = window.scrollY;
    view.innerHTML = html;
    window.scrollTo(0, scroll);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  } finally {
    rendering = false;
  }
}

view.addEventListener("toggle", (ev) => {
  const key = ev.target.dataset?.key;
  if (key) ev.target.open ? openDetails.add(key) : openDetails.delete(key);
}, true);

view.addEventListener("click", async (ev) => {
  const button = ev.target.closest("button[data-action]");
  if (!button) return;
  const {action, model} = button.dataset;
  const resp = await fetch(`/v1/rollouts/${encodeURIComponent(model)}/${action}`, {
    method: "POST",
    headers: {"Content-Type": "application/json", Authorization: `Bearer ${tokenInput.value}`},
    body: JSON.stringify({actor: "console", reason: `${action} from the console`}),
  });
  const body = await resp.json().catch(() => ({}));
  lastAction = resp.ok
    ? `<span class="ok">${esc(action)}: done</span>`
    : `<span class="bad">${esc(action)} refused: HTTP ${resp.status} ${esc(body.detail ?? "")}</span>`;
  document.getElementById("action-result").innerHTML = lastAction;
  await render();
});

window.addEventListener("hashchange", () => { lastAction = ""; view.innerHTML = ""; render(); });
render();
setInterval(render, POLL_MS);
