// counters dashboard: plain JS, no build step, hand-written SVG charts.
//
// One request per refresh: the whole page (catalog, KPI totals, a series per measure, the
// top-N breakdowns per dim) is ONE batch, GET /v1/projects/{p}/query?q=<JSON>. `from`/`to`
// are rounded down to the precision, so the URL stays the same between polls and the page
// revalidates with If-None-Match: a quiet dashboard costs one 304 per poll.
//
// The view lives in the URL fragment (#project=demo&key=…&range=24h&…, see README
// "Dashboard"); the read key is read from there and only ever sent as the Bearer header.
"use strict";

const $ = (id) => document.getElementById(id);
const MEASURES = ["count", "sum", "uniques"];
const MEASURE_LABEL = { count: "events", sum: "sum of values", uniques: "unique users" };
const KPI_LABEL = { count: "Events", sum: "Sum", uniques: "Uniques" };
const DEFAULT_REFRESH_MS = 3000;
const TOP_N = 5;
const DIMS_SHOWN = 4;

// Read limits the service enforces (counters/engines/read/limits.py, plan.py and the
// settings' defaults): a precision that must fail is never offered.
const MAX_SERIES_BUCKETS = 10000; // plan.MAX_SERIES_BUCKETS
const MAX_POINTS = 100000; // settings.max_points
const MINUTE_RETENTION_MS = 14 * 86400000; // settings.minute_retention_days
const MAX_QUERIES = 50; // batch.MAX_QUERIES
const MAX_NAMES = 20; // parse.MAX_NAMES: names per query
const MAX_FILTERS = 8; // parse.MAX_FILTERS: filtered dims per read
const DRAW_CAP = 3000; // more buckets than this are not worth drawing

const MIN = 60000;
const HOUR = 3600000;
const DAY = 86400000;
const PRECISIONS = ["1m", "5m", "15m", "1h", "1d", "1w", "1mo"];
const FIXED = { "1m": MIN, "5m": 5 * MIN, "15m": 15 * MIN, "1h": HOUR };
// the shortest period of each precision in any zone (core/periods.shortest_period_ms) and
// its longest (how far the service may round `from` down)
const SHORTEST = { ...FIXED, "1d": 23 * HOUR, "1w": 167 * HOUR, "1mo": 28 * 24 * HOUR - HOUR };
const LONGEST = { ...FIXED, "1d": 25 * HOUR, "1w": 169 * HOUR, "1mo": 31 * DAY + HOUR };
const RANGES = { "1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY };

// ---------------------------------------------------------------- state in the fragment

/** The view as the fragment describes it (defaults filled in). */
function readState() {
  const p = new URLSearchParams(location.hash.replace(/^#/, ""));
  const st = {
    project: p.get("project") || "",
    key: p.get("key") || "",
    range: p.get("range") || "24h",
    from: p.get("from") || "",
    to: p.get("to") || "",
    precision: p.get("precision") || "auto",
    tz: p.get("tz") || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC",
    measure: MEASURES.includes(p.get("measure")) ? p.get("measure") : "count",
    compare: ["previous_period", "previous_year"].includes(p.get("compare")) ? p.get("compare") : "",
    filters: [],
    pin: list(p.get("pin")),
    order: list(p.get("order")),
    more: list(p.get("more")),
    cm: {},
    refresh: Math.max(200, Number(p.get("refresh")) || DEFAULT_REFRESH_MS),
  };
  if (!(st.range in RANGES) && st.range !== "custom") st.range = "24h";
  for (const [k, v] of p) {
    if (k.startsWith("d.") && k.length > 2 && v !== "") st.filters.push([k.slice(2), v]);
    if (k.startsWith("m.") && MEASURES.includes(v)) st.cm[k.slice(2)] = v;
  }
  return st;
}

function list(s) {
  return s ? s.split(",").filter(Boolean) : [];
}

/** The fragment for a state (fixed key order, so equal views give equal links). */
function fragmentOf(st) {
  const p = new URLSearchParams();
  if (st.project) p.set("project", st.project);
  if (st.key) p.set("key", st.key);
  p.set("range", st.range);
  if (st.range === "custom") { p.set("from", st.from); p.set("to", st.to); }
  p.set("precision", st.precision);
  p.set("tz", st.tz);
  p.set("measure", st.measure);
  for (const [d, v] of st.filters) p.append("d." + d, v);
  if (st.compare) p.set("compare", st.compare);
  for (const [name, m] of Object.entries(st.cm)) if (m !== st.measure) p.set("m." + name, m);
  if (st.pin.length) p.set("pin", st.pin.join(","));
  if (st.order.length) p.set("order", st.order.join(","));
  if (st.more.length) p.set("more", st.more.join(","));
  if (st.refresh !== DEFAULT_REFRESH_MS) p.set("refresh", String(st.refresh));
  return "#" + p.toString();
}

let state = readState();

/** Writes the state to the fragment (history.replaceState: no new history entry). */
function saveState() {
  const frag = fragmentOf(state);
  if (frag !== location.hash) history.replaceState(null, "", frag);
}

// ---------------------------------------------------------------- time zones and ranges

const dtfCache = new Map();
function dtf(tz, opts) {
  const k = tz + JSON.stringify(opts);
  let f = dtfCache.get(k);
  if (!f) { f = new Intl.DateTimeFormat("en-US", { timeZone: tz, ...opts }); dtfCache.set(k, f); }
  return f;
}

function validZone(tz) {
  try { dtf(tz, {}); return true; } catch (e) { return false; }
}

/** The zone's offset from UTC at instant ms, in minutes. */
function offsetMin(ms, tz) {
  const parts = dtf(tz, {
    hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric",
    hour: "numeric", minute: "numeric", second: "numeric",
  }).formatToParts(new Date(ms));
  const g = (t) => Number(parts.find((x) => x.type === t).value);
  const local = Date.UTC(g("year"), g("month") - 1, g("day"), g("hour") % 24, g("minute"), g("second"));
  return Math.round((local - Math.floor(ms / 1000) * 1000) / MIN);
}

/** The instant a local date (YYYY-MM-DD) starts in the zone. */
function zonedMidnight(date, tz) {
  const [y, m, d] = date.split("-").map(Number);
  const guess = Date.UTC(y, m - 1, d);
  let at = guess - offsetMin(guess, tz) * MIN;
  at = guess - offsetMin(at, tz) * MIN;
  return at;
}

function localDate(ms, tz) {
  const parts = dtf(tz, { year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(new Date(ms));
  const g = (t) => parts.find((x) => x.type === t).value;
  return `${g("year")}-${g("month")}-${g("day")}`;
}

function nextDate(date) {
  const [y, m, d] = date.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + 1)).toISOString().slice(0, 10);
}

/** [from, to) of the view for a precision: `to` is the end of the bucket in progress
 * (rounded down to the precision, so it changes only when a new bucket starts). */
function windowFor(st, precision, now) {
  const step = FIXED[precision] || HOUR;
  const end = Math.floor(now / step) * step + step;
  if (st.range === "custom" && st.from && st.to) {
    const from = zonedMidnight(st.from, st.tz);
    const to = Math.min(zonedMidnight(nextDate(st.to), st.tz), end);
    return { from, to: Math.max(to, from + step) };
  }
  return { from: end - RANGES[st.range === "custom" ? "24h" : st.range], to: end };
}

function wholeHourZone(tz, from, to) {
  return [from, (from + to) / 2, to].every((t) => offsetMin(t, tz) % 60 === 0);
}

/** Whether the service answers this precision over this range (the bucket cap, the
 * points cap, minute retention — sub-hour precisions and half-hour zones read minutes). */
function precisionWorks(st, precision, now) {
  const { from, to } = windowFor(st, precision, now);
  const span = to - from;
  if (span < (FIXED[precision] || SHORTEST[precision])) return false;
  const buckets = Math.ceil(span / SHORTEST[precision]) + 1;
  if (buckets > MAX_SERIES_BUCKETS || buckets > DRAW_CAP || buckets * (TOP_N + 2) > MAX_POINTS) return false;
  const minutes = precision in FIXED && FIXED[precision] < HOUR || !wholeHourZone(st.tz, from, to);
  const oldestMinute = Math.floor(now / MIN) * MIN - MINUTE_RETENTION_MS;
  return !minutes || from - LONGEST[precision] >= oldestMinute + MIN;
}

function autoPrecision(span) {
  if (span <= HOUR) return "1m";
  if (span <= 6 * HOUR) return "5m";
  if (span <= 8 * DAY) return "1h";
  if (span <= 120 * DAY) return "1d";
  return "1w";
}

/** The precisions offered for the view's range (never one that must fail). */
function workingPrecisions(st, now) {
  return PRECISIONS.filter((p) => precisionWorks(st, p, now));
}

/** The precision to read at: the chosen one when it works, else the auto choice, else
 * the working one with the bucket count nearest 100. */
function pickPrecision(st, now) {
  const ok = workingPrecisions(st, now);
  if (st.precision !== "auto" && ok.includes(st.precision)) return st.precision;
  const span = windowFor(st, "1h", now).to - windowFor(st, "1h", now).from;
  const auto = autoPrecision(span);
  if (ok.includes(auto)) return auto;
  const score = (p) => Math.abs(Math.log(span / SHORTEST[p] / 100));
  return ok.slice().sort((a, b) => score(a) - score(b))[0] || null;
}

// ---------------------------------------------------------------- formatting

function fmt(v) {
  return typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: 2 }) : String(v);
}

function fmtShort(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return +(v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return +(v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return +(v / 1e3).toFixed(1) + "k";
  return fmt(v);
}

function fmtTick(ms, precision, tz, span) {
  if (precision === "1mo") return dtf(tz, { month: "short", year: "2-digit" }).format(ms);
  if (precision === "1d" || precision === "1w") return dtf(tz, { month: "short", day: "numeric" }).format(ms);
  if (span > DAY) return dtf(tz, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(ms);
  return dtf(tz, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(ms);
}

function fmtFull(ms, precision, tz) {
  if (precision === "1mo") return dtf(tz, { month: "long", year: "numeric" }).format(ms);
  if (precision === "1w") return "week of " + dtf(tz, { weekday: "short", month: "short", day: "numeric", year: "numeric" }).format(ms);
  if (precision === "1d") return dtf(tz, { weekday: "short", month: "short", day: "numeric", year: "numeric" }).format(ms);
  return dtf(tz, { weekday: "short", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(ms);
}

function pctChange(now, before) {
  if (before === 0) return now === 0 ? "±0%" : "new";
  const p = ((now - before) / before) * 100;
  return (p >= 0 ? "+" : "−") + Math.abs(p).toFixed(Math.abs(p) < 10 ? 1 : 0) + "%";
}

function dimValueLabel(v) {
  if (v === "__other__") return "Other";
  if (v === "__none__") return "(none)";
  return v;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ---------------------------------------------------------------- the batch

let catalog = null; // the last catalog reply: {names: [{name, dims}]}
let lastReply = null; // {body, meta} of the last answer drawn (redrawn on resize, pin, move)
let cache = { url: "", etag: "", body: null };
let lastOrder = []; // the card names as last drawn

function cardMeasure(name) {
  return state.cm[name] || state.measure;
}

/** The dims a card lists (all its dims; beyond DIMS_SHOWN only when expanded). */
function shownDims(entry) {
  return state.more.includes(entry.name) ? entry.dims : entry.dims.slice(0, DIMS_SHOWN);
}

function chunks(items, size) {
  const out = [];
  for (let i = 0; i < items.length; i += Math.max(1, size)) out.push(items.slice(i, i + Math.max(1, size)));
  return out;
}

/** The one batch that draws the page: the catalog, per measure the names' totals (KPIs
 * and card totals), a series per card measure, and per (measure, dim) the breakdown of
 * every card listing that dim. */
function buildBatch(precision, win, ordered) {
  const common = { precision, tz: state.tz, from: String(win.from), to: String(win.to), excluding_current: "false" };
  const byDim = {};
  for (const [d, v] of state.filters) (byDim[d] = byDim[d] || []).push(v);
  for (const [d, vs] of Object.entries(byDim)) common["d." + d] = vs.length === 1 ? vs[0] : vs;
  const cmp = state.compare ? { compare: state.compare } : {};
  const queries = [{ id: "catalog", kind: "catalog" }];
  // in the order the cards were last shown: past the batch cap the last cards go unread
  const shown = (n) => { const i = lastOrder.indexOf(n.name); return i < 0 ? Infinity : i; };
  const names = !catalog ? [] : ordered ? catalog.names.slice().sort((a, b) => shown(a) - shown(b)) : catalog.names;
  if (names.length) {
    const buckets = bucketsOf(precision, win);
    const all = names.map((n) => n.name);
    for (const m of MEASURES) {
      chunks(all, MAX_NAMES).forEach((ns, i) =>
        queries.push({ id: `k.${m}.${i}`, kind: "total", name: ns, measure: m, ...cmp }));
    }
    const breakdowns = [];
    for (const m of MEASURES) {
      const mine = names.filter((n) => cardMeasure(n.name) === m);
      if (!mine.length) continue;
      chunks(mine.map((n) => n.name), Math.min(MAX_NAMES, Math.floor(MAX_POINTS / (2 * buckets)))).forEach((ns, i) =>
        queries.push({ id: `s.${m}.${i}`, kind: "series", name: ns, measure: m, ...cmp }));
      const dimNames = {};
      for (const n of mine) {
        for (const d of shownDims(n)) (dimNames[d] = dimNames[d] || []).push(n.name);
      }
      for (const [d, ns] of Object.entries(dimNames)) {
        // a filtered dim's table lists its values without its own filter (an empty list
        // drops the common parameter), so more values can be picked (any of them)
        const own = d in byDim ? { ["d." + d]: [] } : {};
        chunks(ns, Math.min(MAX_NAMES, Math.floor(MAX_POINTS / ((TOP_N + 2) * buckets)))).forEach((part, i) =>
          breakdowns.push({ id: `b.${m}.${d}.${i}`, kind: "series", name: part, measure: m, group_by: d, limit: String(TOP_N), ...own }));
      }
    }
    queries.push(...breakdowns);
  }
  // one reply holds at most MAX_POINTS points in all (a compared read counts twice) and
  // MAX_QUERIES queries: past either, the last cards' breakdowns (then series) are left
  // out, the cards read first in the order they are shown (they say what is missing)
  const kept = [];
  let points = MAX_POINTS;
  let full = false;
  for (const q of queries) {
    const per = q.kind !== "series" ? 1 : (q.group_by ? TOP_N + 2 : 1) * bucketsOf(precision, win);
    const each = per * (q.compare ? 2 : 1);
    const names = q.name ? q.name.length : 0;
    if (full || kept.length >= MAX_QUERIES) { full = true; continue; }
    if (names * each <= points) { kept.push(q); points -= names * each; continue; }
    full = true;
    const fit = Math.floor(points / each);
    if (fit >= 1) { kept.push({ ...q, name: q.name.slice(0, fit) }); points -= fit * each; }
  }
  if (full && !ordered) return buildBatch(precision, win, true);
  return { common, queries: kept };
}

/** An upper bound on the buckets of a read over the window (the service's period_count). */
function bucketsOf(precision, win) {
  return Math.ceil((win.to - win.from) / SHORTEST[precision]) + 1;
}

/** GET the batch; with the last ETag of the same URL as If-None-Match (a 304 keeps the
 * last body). Returns {body, fresh}; throws the API's error message. */
async function fetchBatch(batch) {
  const url = `/v1/projects/${encodeURIComponent(state.project)}/query?q=${encodeURIComponent(JSON.stringify(batch))}`;
  const headers = { Authorization: "Bearer " + state.key };
  if (cache.url === url && cache.etag) headers["If-None-Match"] = cache.etag;
  const r = await fetch(url, { headers, cache: "no-store" });
  if (r.status === 304 && cache.url === url) return { body: cache.body, fresh: false };
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  cache = { url, etag: r.headers.get("ETag") || "", body };
  return { body, fresh: true };
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + state.key }, cache: "no-cache" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

function catalogSig(cat) {
  return JSON.stringify(cat ? cat.names.map((n) => [n.name, n.dims]) : null);
}

// ---------------------------------------------------------------- reply → per-name data

/** Entries of a series or total reply by name (one name answers without a list). */
function byName(reply, listKey) {
  const out = {};
  if (!reply) return out;
  const items = reply[listKey] || [reply];
  for (const it of items) out[it.name] = it;
  return out;
}

function collect(results) {
  const totals = { count: {}, sum: {}, uniques: {} };
  const unions = [];
  const series = {};
  const breakdowns = {};
  for (const [id, reply] of Object.entries(results)) {
    const parts = id.split(".");
    if (parts[0] === "k") Object.assign(totals[parts[1]], byName(reply, "totals"));
    if (parts[0] === "k" && parts[1] === "uniques") {
      // uids across every name (the API's union); one name's reply is its own union
      unions.push(reply.totals ? reply.union || null : { value: reply.value, comparison: reply.comparison });
    }
    if (parts[0] === "s") Object.assign(series, byName(reply, "series"));
    if (parts[0] === "b") {
      const dim = parts.slice(2, -1).join(".");
      for (const s of reply.series) {
        const key = s.name + "\u0000" + dim;
        (breakdowns[key] = breakdowns[key] || []).push(s);
      }
    }
  }
  // a union only when one query held every name (names go 20 to a query)
  totals.uniquesUnion = unions.length === 1 ? unions[0] : null;
  return { totals, series, breakdowns };
}

// ---------------------------------------------------------------- card order

/** Pinned cards first (in pin order), then the explicit order, then by volume. */
function cardOrder(names, totals) {
  const vol = (n) => Number((totals.count[n] || {}).value || 0);
  const pinned = state.pin.filter((n) => names.includes(n));
  const rest = names.filter((n) => !pinned.includes(n));
  const pos = (n) => { const i = state.order.indexOf(n); return i < 0 ? Infinity : i; };
  rest.sort((a, b) => pos(a) - pos(b) || vol(b) - vol(a) || (a < b ? -1 : 1));
  return [...pinned, ...rest];
}

/** Swaps a card with its neighbour (pinned cards stay above the others: a move across
 * that border does nothing; pin or unpin instead). */
function moveCard(name, delta) {
  const names = [...document.querySelectorAll("#cards .card")].map((c) => c.dataset.name);
  const i = names.indexOf(name);
  const j = i + delta;
  if (i < 0 || j < 0 || j >= names.length) return;
  const pinned = new Set(state.pin);
  if (pinned.has(names[i]) !== pinned.has(names[j])) return;
  [names[i], names[j]] = [names[j], names[i]];
  state.pin = names.filter((n) => pinned.has(n));
  state.order = names.filter((n) => !pinned.has(n));
  changed({ refetch: false });
}

// ---------------------------------------------------------------- charts (SVG)

function niceStep(v) {
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  const f = v / e;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
}

/** Draws a line chart into box: gridlines, y labels, x time labels in the zone, the
 * partial last point dashed and labelled, the comparison as a lighter second line, and a
 * hover/touch tooltip (.tip) with the bucket's local time and value. */
function drawChart(box, pts, cmp, o) {
  const W = Math.max(220, Math.round(box.clientWidth || 300));
  const H = o.height;
  const L = 44, R = 12, T = 14, B = 22;
  const n = pts.length;
  const vals = pts.map((p) => Number(p.value));
  const cvals = cmp ? cmp.map((p) => Number(p.value)) : [];
  const hi = Math.max(0, ...vals, ...cvals);
  const step = hi > 0 ? Math.max(o.integer ? 1 : 0, niceStep(hi / 4)) : 1;
  const top = Math.max(step, Math.ceil(hi / step) * step);
  const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : (W - L - R) / 2);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const times = pts.map((p) => Date.parse(p.bucket));
  const span = n > 1 ? times[n - 1] - times[0] : 0;
  const out = [];
  for (let v = 0; v <= top + step / 2; v += step) {
    out.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}"/>`);
    out.push(`<text class="ylab" x="${L - 6}" y="${(y(v) + 4).toFixed(1)}">${escapeHtml(fmtShort(v))}</text>`);
  }
  out.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`);
  const sample = fmtTick(times[0] || 0, o.precision, o.tz, span);
  const labels = Math.max(1, Math.floor((W - L - R) / (sample.length * 6 + 24)));
  const every = Math.max(1, Math.ceil(n / labels));
  for (let i = Math.floor((every - 1) / 2); i < n; i += every) {
    const half = (fmtTick(times[i], o.precision, o.tz, span).length * 5.6) / 2;
    const anchor = x(i) + half > W ? "end" : x(i) - half < 0 ? "start" : "middle";
    out.push(`<line class="tick" x1="${x(i).toFixed(1)}" x2="${x(i).toFixed(1)}" y1="${H - B}" y2="${H - B + 4}"/>`);
    out.push(`<text class="xlab" text-anchor="${anchor}" x="${x(i).toFixed(1)}" y="${H - 6}">${escapeHtml(fmtTick(times[i], o.precision, o.tz, span))}</text>`);
  }
  const path = (vs, a, b) => vs.slice(a, b + 1).map((v, k) =>
    (k ? "L" : "M") + x(a + k).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
  if (cmp && cvals.length) {
    out.push(`<path class="cmp" data-series="comparison" d="${path(cvals.slice(0, n), 0, Math.min(n, cvals.length) - 1)}"/>`);
  }
  const partial = n > 0 && pts[n - 1].partial === true;
  const last = partial ? n - 2 : n - 1;
  if (last >= 1) out.push(`<path class="line" data-series="current" d="${path(vals, 0, last)}"/>`);
  else if (last === 0) out.push(`<circle class="dot" cx="${x(0)}" cy="${y(vals[0])}" r="2.5"/>`);
  if (partial) {
    if (n >= 2) out.push(`<path class="line partial" data-series="partial" d="${path(vals, n - 2, n - 1)}"/>`);
    out.push(`<circle class="pdot" cx="${x(n - 1).toFixed(1)}" cy="${y(vals[n - 1]).toFixed(1)}" r="3"/>`);
    out.push(`<text class="plabel" x="${(x(n - 1) - 4).toFixed(1)}" y="${Math.max(10, y(vals[n - 1]) - 7).toFixed(1)}">partial</text>`);
  }
  out.push(`<line class="guide" x1="0" x2="0" y1="${T}" y2="${H - B}" visibility="hidden"/>`);
  out.push(`<circle class="hdot" r="4" cx="0" cy="0" visibility="hidden"/>`);
  out.push(`<rect class="hit" x="${L}" y="0" width="${W - L - R}" height="${H}"/>`);
  let svg = box.querySelector("svg.plot");
  if (!svg) {
    box.innerHTML = `<svg class="plot" xmlns="http://www.w3.org/2000/svg"></svg><div class="tip" role="tooltip" hidden></div>`;
    svg = box.querySelector("svg.plot");
    hookHover(box);
  }
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("aria-label", `${o.label}: ${n} buckets`);
  svg.innerHTML = out.join("");
  box.dataset.points = String(n);
  box.dataset.series = cmp && cvals.length ? "2" : "1";
  box._chart = { pts, vals, cvals, cmp, x, y, n, o, L, R, W };
  const tip = box.querySelector(".tip");
  if (!tip.hidden && tip.dataset.index !== undefined) showTip(box, Number(tip.dataset.index));
}

function showTip(box, i) {
  const c = box._chart;
  if (!c || !c.n) return;
  i = Math.max(0, Math.min(c.n - 1, i));
  const p = c.pts[i];
  const svg = box.querySelector("svg.plot");
  const guide = svg.querySelector(".guide");
  const dot = svg.querySelector(".hdot");
  guide.setAttribute("x1", c.x(i)); guide.setAttribute("x2", c.x(i)); guide.setAttribute("visibility", "visible");
  dot.setAttribute("cx", c.x(i)); dot.setAttribute("cy", c.y(c.vals[i])); dot.setAttribute("visibility", "visible");
  const tip = box.querySelector(".tip");
  const when = fmtFull(Date.parse(p.bucket), c.o.precision, c.o.tz);
  let html = `<time datetime="${escapeHtml(p.bucket)}">${escapeHtml(when)}</time>` +
    `<b class="tv">${escapeHtml(fmt(c.vals[i]))}</b> <span>${escapeHtml(c.o.mlabel)}</span>`;
  if (p.partial) html += ` <em class="tpartial">partial</em>`;
  if (c.cmp && i < c.cmp.length) {
    const cp = c.cmp[i];
    html += `<span class="tcmp">previous: ${escapeHtml(fmt(Number(cp.value)))} (${escapeHtml(fmtFull(Date.parse(cp.bucket), c.o.precision, c.o.tz))})</span>`;
  }
  tip.innerHTML = html;
  tip.dataset.index = String(i);
  tip.dataset.value = String(p.value);
  tip.dataset.bucket = p.bucket;
  tip.hidden = false;
  const W = box.clientWidth || c.W;
  const left = Math.min(Math.max(0, c.x(i) - tip.offsetWidth / 2), Math.max(0, W - tip.offsetWidth));
  tip.style.left = left + "px";
}

function hideTip(box) {
  const tip = box.querySelector(".tip");
  tip.hidden = true;
  delete tip.dataset.index;
  for (const cls of [".guide", ".hdot"]) box.querySelector(cls)?.setAttribute("visibility", "hidden");
}

function hookHover(box) {
  const at = (ev) => {
    const c = box._chart;
    if (!c || !c.n) return;
    const rect = box.querySelector("svg.plot").getBoundingClientRect();
    const px = ((ev.clientX - rect.left) * c.W) / rect.width;
    const i = c.n > 1 ? Math.round(((px - c.L) * (c.n - 1)) / (c.W - c.L - c.R)) : 0;
    showTip(box, i);
  };
  box.addEventListener("pointermove", at);
  box.addEventListener("pointerdown", at);
  box.addEventListener("pointerleave", (ev) => { if (ev.pointerType === "mouse") hideTip(box); });
}

// ---------------------------------------------------------------- rendering

function setStatus(text) {
  $("status").textContent = text;
}

function renderChips() {
  $("chips").innerHTML = state.filters.map(([d, v], i) =>
    `<span class="chip" data-dim="${escapeHtml(d)}" data-value="${escapeHtml(v)}">${escapeHtml(d)} = ${escapeHtml(v)}` +
    ` <button type="button" data-i="${i}" aria-label="remove filter ${escapeHtml(d)} = ${escapeHtml(v)}">×</button></span>`).join("");
}

function kpiValues(totals, m, names) {
  const items = names.map((n) => totals[m][n]).filter(Boolean);
  const cmpOf = (it) => (it.comparison ? Number(it.comparison.value) : null);
  if (m === "uniques" && totals.uniquesUnion && items.length) {
    // the uids seen under any name, once each (the API unites the names' sketches)
    const u = totals.uniquesUnion;
    const some = items.filter((it) => Number(it.value) !== 0).map((it) => it.name);
    const sub = some.length === 1 ? "in " + some[0] : some.length ? `across ${some.length} event names` : "";
    return { value: Number(u.value), cmp: u.comparison ? Number(u.comparison.value) : null, sub };
  }
  if (m === "uniques") {
    // uniques do not add up across event names: without the union (more names than one
    // query holds), the headline is the event with most
    let best = null;
    for (const it of items) if (!best || Number(it.value) > Number(best.value)) best = it;
    return best ? { value: Number(best.value), cmp: cmpOf(best), sub: "in " + best.name } : { value: 0, cmp: null, sub: "" };
  }
  const value = items.reduce((a, it) => a + Number(it.value), 0);
  const cmps = items.map(cmpOf);
  const cmp = cmps.length && cmps.every((c) => c !== null) ? cmps.reduce((a, c) => a + c, 0) : null;
  const some = items.filter((it) => Number(it.value) !== 0).map((it) => it.name);
  const sub = some.length === 1 ? "in " + some[0] : some.length ? `across ${some.length} event names` : "";
  return { value, cmp, sub };
}

function renderKpis(totals, names) {
  const tiles = [];
  for (const m of MEASURES) {
    const k = kpiValues(totals, m, names);
    if (m === "sum" && k.value === 0 && state.measure !== "sum") continue; // no values sent
    const delta = state.compare && k.cmp !== null ? pctChange(k.value, k.cmp) : "";
    const cls = delta.startsWith("+") || delta === "new" ? "up" : delta.startsWith("−") ? "down" : "";
    tiles.push(`<button type="button" class="kpi" data-measure="${m}" aria-pressed="${state.measure === m}">` +
      `<span class="kl">${KPI_LABEL[m]}</span>` +
      `<span class="kv" data-value="${escapeHtml(String(k.value))}">${escapeHtml(fmt(k.value))}</span>` +
      `<span class="ks">${escapeHtml(k.sub)}</span>` +
      (delta ? `<span class="kd ${cls}" data-cmp="${escapeHtml(String(k.cmp))}">${delta} vs ${state.compare === "previous_year" ? "last year" : "previous period"}</span>` : "") +
      `</button>`);
  }
  $("kpis").innerHTML = tiles.join("");
}

function card(name) {
  let el = document.querySelector(`.card[data-name="${CSS.escape(name)}"]`);
  if (!el) {
    el = $("card").content.firstElementChild.cloneNode(true);
    el.dataset.name = name;
    el.dataset.testid = "card-" + name;
    el.querySelector(".name").textContent = name;
  }
  return el;
}

function renderTable(entry, dim, rows, total, m, picked) {
  if (!rows) return `<table data-dim="${escapeHtml(dim)}"><tr><th colspan="3">${escapeHtml(dim)}</th></tr><tr><td colspan="3" class="muted">not loaded: more than one reply holds (a coarser precision or fewer cards)</td></tr></table>`;
  const shown = rows.filter((r) => Number(r.total) > 0);
  // a filtered dim's rows are read without its filter: shares of their own sum
  if (picked.length) total = shown.reduce((a, r) => a + Number(r.total), 0);
  const body = shown.map((r) => {
    const v = r.dims[dim];
    const real = v !== "__other__" && v !== "__none__";
    const on = picked.includes(v);
    const share = total > 0 ? (Number(r.total) / total) * 100 : 0;
    const title = on ? "remove this filter" : picked.length ? "add this value (any of them)" : "filter on this value";
    return `<tr class="${real ? "row" : "row rest"}${on ? " on" : ""}" data-dim="${escapeHtml(dim)}" data-value="${escapeHtml(v)}"${real ? ` tabindex="0" title="${title}" aria-selected="${on}"` : ""}>` +
      `<td class="k"><span class="b" style="width:${Math.min(100, share).toFixed(1)}%"></span>` +
      `<span class="t">${escapeHtml(dimValueLabel(v))}</span></td>` +
      `<td class="v">${escapeHtml(fmt(Number(r.total)))}</td>` +
      `<td class="pct">${share.toFixed(share < 10 ? 1 : 0)}%</td></tr>`;
  });
  if (!body.length) body.push(`<tr><td colspan="3" class="muted">no ${escapeHtml(MEASURE_LABEL[m])} in range</td></tr>`);
  return `<table data-dim="${escapeHtml(dim)}"><tr><th colspan="3">${escapeHtml(dim)}</th></tr>${body.join("")}</table>`;
}

function renderCard(el, entry, data, meta) {
  const m = cardMeasure(entry.name);
  el.dataset.measure = m;
  for (const b of el.querySelectorAll(".measure button")) b.setAttribute("aria-pressed", String(b.dataset.m === m));
  const pin = el.querySelector(".pin");
  const pinned = state.pin.includes(entry.name);
  pin.setAttribute("aria-pressed", String(pinned));
  pin.textContent = pinned ? "★" : "☆";
  el.classList.toggle("pinned", pinned);
  const t = data.totals[m][entry.name];
  const total = t ? Number(t.value) : 0;
  const tot = el.querySelector(".total");
  tot.textContent = t ? fmt(total) : "…";
  tot.dataset.value = t ? String(t.value) : "";
  tot.dataset.measure = m;
  el.querySelector(".mlabel").textContent = MEASURE_LABEL[m];
  const delta = el.querySelector(".delta");
  if (state.compare && t && t.comparison) {
    const d = pctChange(total, Number(t.comparison.value));
    delta.textContent = `${d} (${fmt(Number(t.comparison.value))} before)`;
    delta.className = "delta " + (d.startsWith("+") || d === "new" ? "up" : d.startsWith("−") ? "down" : "");
  } else {
    delta.textContent = "";
  }
  const s = data.series[entry.name];
  const box = el.querySelector(".chart");
  const featured = el === $("cards").firstElementChild;
  if (s) {
    const cmp = state.compare && s.comparison ? s.comparison.data : null;
    drawChart(box, s.data, cmp, { height: featured ? 220 : 150, precision: meta.precision, tz: meta.tz, label: `${entry.name} ${MEASURE_LABEL[m]}`, mlabel: MEASURE_LABEL[m], integer: m !== "sum" });
  } else {
    box._chart = null;
    box.innerHTML = `<p class="muted">not loaded: more cards than one batch reads (pin or move this card up)</p>`;
  }
  el.querySelector(".range").textContent =
    `${s ? s.data.length : 0} × ${meta.precision} buckets, ${meta.tz}, from ${meta.from}` +
    (state.compare && s && s.comparison ? ` · compared with ${s.comparison.from} – ${s.comparison.to}` : "");
  const tables = [];
  for (const dim of shownDims(entry)) {
    const picked = state.filters.filter(([d]) => d === dim).map(([, v]) => v);
    tables.push(renderTable(entry, dim, data.breakdowns[entry.name + "\u0000" + dim], total, m, picked));
  }
  el.querySelector(".dims").innerHTML = tables.join("");
  const more = el.querySelector(".more");
  const hidden = entry.dims.length - DIMS_SHOWN;
  more.hidden = hidden <= 0;
  more.textContent = state.more.includes(entry.name) ? "fewer dims" : `${hidden} more dim${hidden === 1 ? "" : "s"}`;
}

/** Copy-paste first events for the project: curl to /v1/events and the pixel tag (the
 * ingest key names the project; `counters keys create` makes one). */
function snippets(project) {
  const host = location.origin;
  return {
    curl: `INGEST=$(counters keys create --project ${project} --scope ingest | tail -1)\n` +
      `curl -H "Authorization: Bearer $INGEST" -H "Content-Type: application/json" \\\n` +
      `  -d '[{"name":"pageview","dims":{"page":"/"},"uid":"visitor-1"}]' \\\n  ${host}/v1/events`,
    pixel: `<!-- PIXEL_KEY: a public pixel key (single events only), from\n` +
      `     counters keys create --project ${project} --scope pixel --name pageview -->\n` +
      `<img src="${host}/v1/pixel.gif?key=PIXEL_KEY&name=pageview&d.page=%2F" width="1" height="1" alt="">`,
  };
}

function renderZero(empty) {
  $("zero").hidden = !empty;
  $("kpis").hidden = empty;
  $("cards").hidden = empty;
  if (!empty) return;
  for (const el of document.querySelectorAll(".zp")) el.textContent = state.project;
  const s = snippets(state.project);
  for (const pre of document.querySelectorAll("#zero .snippet")) pre.querySelector("code").textContent = s[pre.dataset.snippet];
}

/** Draws the page from a batch reply. */
function render(body, meta) {
  const results = body.results;
  const names = catalog ? catalog.names : [];
  renderChips();
  renderZero(names.length === 0 && state.filters.length === 0);
  if (!names.length) { $("kpis").innerHTML = ""; $("cards").innerHTML = ""; return; }
  const data = collect(results);
  const first = results["k.count.0"] || {};
  meta = { ...meta, from: first.from || meta.from };
  renderKpis(data.totals, names.map((n) => n.name));
  const order = cardOrder(names.map((n) => n.name), data.totals);
  lastOrder = order;
  const entries = Object.fromEntries(names.map((n) => [n.name, n]));
  const box = $("cards");
  const els = order.map((n) => card(n));
  els.forEach((el, i) => { if (box.children[i] !== el) box.insertBefore(el, box.children[i] || null); });
  while (box.children.length > els.length) box.lastElementChild.remove();
  for (const el of els) renderCard(el, entries[el.dataset.name], data, meta);
}

// ---------------------------------------------------------------- the refresh loop

let timer = null;
let fallback = ""; // why the range shown is not the one asked for (until the next choice)
let generation = 0;
let polls = 0;
let view = null; // what the last batch was built for

/** Sets a control's value, unless the user is typing in it (a poll must not undo that). */
function show(id, value) {
  const el = $(id);
  if (document.activeElement !== el) el.value = value;
}

function syncControls(now) {
  show("key", state.key);
  show("range", state.range);
  show("tz", state.tz);
  show("compare", state.compare);
  for (const el of document.querySelectorAll(".custom")) el.hidden = state.range !== "custom";
  if (state.range === "custom") {
    if (!state.from) state.from = localDate(now - 7 * DAY, state.tz);
    if (!state.to) state.to = localDate(now, state.tz);
    show("from", state.from); show("to", state.to);
  }
  // ranges no precision can answer (e.g. 30 days in a half-hour zone, past minute
  // retention) are not offered
  for (const opt of $("range").options) {
    if (opt.value === "custom") continue;
    opt.disabled = workingPrecisions({ ...state, range: opt.value }, now).length === 0;
  }
  if (state.range !== "custom" && !pickPrecision(state, now)) {
    // e.g. 30 days in a half-hour zone: the longest range that can be read instead
    const fits = Object.keys(RANGES).filter((r) => pickPrecision({ ...state, range: r }, now));
    if (fits.length) {
      fallback = `${state.range} cannot be read in ${state.tz} (its buckets need minute data, kept 14 days): showing ${fits[fits.length - 1]}`;
      state.range = fits[fits.length - 1]; $("range").value = state.range; saveState();
    }
  }
  const ok = workingPrecisions(state, now);
  const chosen = pickPrecision(state, now);
  const auto = state.precision === "auto" || !ok.includes(state.precision);
  $("precision").innerHTML = `<option value="auto">auto${chosen ? " (" + chosen + ")" : ""}</option>` +
    ok.map((p) => `<option>${p}</option>`).join("");
  $("precision").value = auto ? "auto" : state.precision;
  const note = $("note");
  if (!chosen) {
    note.hidden = false;
    note.textContent = `no precision can answer this range in ${state.tz}: minute data is kept 14 days; pick a shorter range or a whole-hour zone`;
  } else if (fallback) {
    note.hidden = false;
    note.textContent = fallback;
  } else if (state.precision !== "auto" && !ok.includes(state.precision)) {
    note.hidden = false;
    note.textContent = `${state.precision} cannot answer this range (too many buckets or past minute retention): using ${chosen}`;
  } else {
    note.hidden = true;
  }
  return chosen;
}

async function refresh() {
  clearTimeout(timer);
  const gen = ++generation;
  if (!state.project || !state.key) return;
  if (document.hidden && lastReply) { timer = setTimeout(refresh, state.refresh); return; } // no polls unseen
  const now = Date.now();
  const precision = syncControls(now);
  if (!precision) return;
  const win = windowFor(state, precision, now);
  const sig = catalogSig(catalog);
  const batch = buildBatch(precision, win);
  let again = false;
  polls += 1;
  document.documentElement.dataset.polls = String(polls); // one batch request per poll
  try {
    const { body, fresh } = await fetchBatch(batch);
    if (gen !== generation) return; // a newer refresh started meanwhile
    const cat = body.results.catalog;
    if (cat && catalogSig(cat) !== sig) { catalog = cat; again = true; }
    const v = JSON.stringify(batch) + fragmentOf(state);
    if (fresh || v !== view || again) {
      view = v;
      lastReply = { body, meta: { precision, tz: state.tz, from: new Date(win.from).toISOString() } };
      render(body, lastReply.meta);
    }
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    if (gen !== generation) return;
    setStatus("error: " + err.message);
  }
  // new names or dims in the catalog: the next batch asks for them at once
  timer = setTimeout(refresh, again ? 0 : state.refresh);
}

/** A view change: save it to the fragment and draw it (a new batch unless only the
 * card order changed). */
function changed(opts) {
  saveState();
  if (opts && opts.refetch === false && lastReply) {
    render(lastReply.body, lastReply.meta);
    return;
  }
  refresh();
}

async function start() {
  if (!state.key) { setStatus(""); return; }
  try {
    const me = await api("/v1/whoami");
    const sel = $("project");
    sel.innerHTML = me.projects.map((p) => `<option>${escapeHtml(p)}</option>`).join("");
    if (!me.projects.includes(state.project)) state.project = me.projects[0] || "";
    sel.value = state.project;
  } catch (err) {
    setStatus("error: " + err.message);
    return;
  }
  catalog = null;
  cache = { url: "", etag: "", body: null };
  $("cards").innerHTML = "";
  saveState();
  refresh();
}

// ---------------------------------------------------------------- wiring

$("controls").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("key").value.trim();
  start();
});
$("project").addEventListener("change", () => {
  state.project = $("project").value;
  state.filters = []; state.pin = []; state.order = []; state.cm = {}; state.more = [];
  catalog = null; $("cards").innerHTML = "";
  changed();
});
$("range").addEventListener("change", () => { state.range = $("range").value; fallback = ""; changed(); });
$("from").addEventListener("change", () => { if ($("from").value) { state.from = $("from").value; changed(); } });
$("to").addEventListener("change", () => { if ($("to").value) { state.to = $("to").value; changed(); } });
$("precision").addEventListener("change", () => { state.precision = $("precision").value; changed(); });
$("tz").addEventListener("change", () => {
  const tz = $("tz").value.trim() || "UTC";
  if (!validZone(tz)) { setStatus(`error: unknown time zone '${tz}'`); return; }
  state.tz = tz; fallback = ""; changed();
});
$("compare").addEventListener("change", () => { state.compare = $("compare").value; changed(); });
$("kpis").addEventListener("click", (ev) => {
  const tile = ev.target.closest(".kpi");
  if (!tile) return;
  state.measure = tile.dataset.measure;
  state.cm = {};
  changed();
});
$("chips").addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-i]");
  if (!b) return;
  state.filters.splice(Number(b.dataset.i), 1);
  changed();
});
$("cards").addEventListener("click", (ev) => {
  const el = ev.target.closest(".card");
  if (!el) return;
  const name = el.dataset.name;
  const mb = ev.target.closest(".measure button");
  if (mb) { state.cm[name] = mb.dataset.m; changed(); return; }
  if (ev.target.closest(".pin")) {
    state.pin = state.pin.includes(name) ? state.pin.filter((n) => n !== name) : [...state.pin, name];
    changed({ refetch: false }); return;
  }
  if (ev.target.closest(".up")) { moveCard(name, -1); return; }
  if (ev.target.closest(".down")) { moveCard(name, 1); return; }
  if (ev.target.closest(".more")) {
    state.more = state.more.includes(name) ? state.more.filter((n) => n !== name) : [...state.more, name];
    changed(); return;
  }
  const row = ev.target.closest("tr.row:not(.rest)");
  if (row) toggleFilter(row.dataset.dim, row.dataset.value);
});
$("cards").addEventListener("keydown", (ev) => {
  const row = ev.target.closest && ev.target.closest("tr.row:not(.rest)");
  if (row && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); toggleFilter(row.dataset.dim, row.dataset.value); }
});
$("zero").addEventListener("click", (ev) => {
  const b = ev.target.closest(".copy");
  if (!b) return;
  const text = document.querySelector(`#zero .snippet[data-snippet="${b.dataset.copy}"] code`).textContent;
  if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => { b.textContent = "copied"; }, () => {});
});

/** A clicked row: adds d.<dim>=<value> (a second value of a dim means any of them), or
 * removes it when it is already a filter. */
function toggleFilter(dim, value) {
  const at = state.filters.findIndex(([d, v]) => d === dim && v === value);
  if (at >= 0) { state.filters.splice(at, 1); changed(); return; }
  const dims = new Set(state.filters.map(([d]) => d));
  if (!dims.has(dim) && dims.size >= MAX_FILTERS) {
    setStatus(`error: at most ${MAX_FILTERS} dims can be filtered at once (remove a filter first)`);
    return;
  }
  state.filters.push([dim, value]);
  changed();
}

window.addEventListener("hashchange", () => {
  if (location.hash === fragmentOf(state)) return; // our own replaceState
  const before = state.key + "\u0000" + state.project;
  state = readState();
  if (state.key + "\u0000" + state.project !== before) start();
  else refresh();
});

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (lastReply) render(lastReply.body, lastReply.meta); }, 150);
});

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

$("tz").value = state.tz;
if (!validZone(state.tz)) state.tz = "UTC";
start();
