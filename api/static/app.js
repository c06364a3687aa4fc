// counters dashboard: plain JS, no build step. Polls the read API every few seconds; the
// browser revalidates with the ETag, so an unchanged answer costs a 304.
"use strict";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
let timer = null;

function headers() {
  return { Authorization: "Bearer " + $("key").value.trim() };
}

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    for (const one of [].concat(v)) url.searchParams.append(k, one);
  }
  const r = await fetch(url, { headers: headers(), cache: "no-cache" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

function precisionFor(rangeMs) {
  if (rangeMs <= 3600000) return "1m";
  if (rangeMs <= 86400000) return "1h";
  return "1d";
}

function spark(svg, values) {
  const path = svg.querySelector("path");
  if (!values.length) { path.setAttribute("d", ""); return; }
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 300 / (values.length - 1) : 0;
  path.setAttribute("d", values.map((v, i) =>
    (i ? "L" : "M") + (i * step).toFixed(1) + "," + (58 - (v / max) * 56).toFixed(1)).join(" "));
}

function fmt(v) {
  return typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: 2 }) : v;
}

function card(name) {
  let el = document.querySelector(`.card[data-name="${CSS.escape(name)}"]`);
  if (!el) {
    el = $("card").content.firstElementChild.cloneNode(true);
    el.dataset.name = name;
    el.dataset.testid = "card-" + name;
    el.querySelector(".name").textContent = name;
    $("cards").appendChild(el);
  }
  return el;
}

async function refresh() {
  const project = $("project").value;
  if (!project) return;
  const rangeMs = Number($("range").value);
  const precision = $("precision").value === "auto" ? precisionFor(rangeMs) : $("precision").value;
  const tz = $("tz").value.trim() || "UTC";
  const now = Date.now();
  const common = { precision, tz, from: String(now - rangeMs), excluding_current: "false" };
  try {
    const cat = await api(`/v1/projects/${encodeURIComponent(project)}/catalog`);
    for (const { name, dims } of cat.names) {
      const el = card(name);
      const s = await api(`/v1/projects/${encodeURIComponent(project)}/series`, { ...common, name });
      const total = s.data.reduce((a, p) => a + p.value, 0);
      el.querySelector(".total").textContent = fmt(total);
      el.querySelector(".total").dataset.value = String(total);
      el.querySelector(".range").textContent =
        `${s.data.length} × ${s.precision} buckets, ${s.tz}, from ${s.from}`;
      spark(el.querySelector(".spark"), s.data.map((p) => p.value));
      const box = el.querySelector(".dims");
      const tables = [];
      for (const dim of dims.slice(0, 4)) {
        const b = await api(`/v1/projects/${encodeURIComponent(project)}/series`,
          { ...common, name, group_by: dim, limit: "5" });
        const rows = b.series.filter((x) => x.total > 0).map((x) =>
          `<tr><td>${escapeHtml(x.dims[dim])}</td><td class="v">${fmt(x.total)}</td></tr>`);
        tables.push(`<table data-dim="${escapeHtml(dim)}"><tr><th colspan="2">${escapeHtml(dim)}</th></tr>${rows.join("")}</table>`);
      }
      box.innerHTML = tables.join("");
    }
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("status").textContent = "error: " + err.message;
  }
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function start(event) {
  if (event) event.preventDefault();
  try {
    const me = await api("/v1/whoami");
    const sel = $("project");
    const keep = sel.value;
    sel.innerHTML = me.projects.map((p) => `<option>${escapeHtml(p)}</option>`).join("");
    if (me.projects.includes(keep)) sel.value = keep;
    localStorage.setItem("counters.key", $("key").value.trim());
  } catch (err) {
    $("status").textContent = "error: " + err.message;
    return;
  }
  $("cards").innerHTML = "";
  clearInterval(timer);
  await refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

$("tz").value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
$("key").value = localStorage.getItem("counters.key") || "";
$("controls").addEventListener("submit", start);
for (const id of ["project", "range", "precision", "tz"]) $(id).addEventListener("change", () => {
  $("cards").innerHTML = ""; refresh();
});
if ($("key").value) start();
