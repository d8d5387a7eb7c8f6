// The wall follows /ws/wall: a snapshot of everything, then numbered events. On any disconnect
// it says so at once (the screen greys out: no stale data shown as live) and reconnects with the
// last event id it applied, so the server replays exactly what it missed; if it cannot, it sends
// a new snapshot. When the IOC cannot reach a dependency (its database, Kafka) the connection
// stays up and a banner says what is not updating, until a pulse says it is back. The map needs no internet: district outlines come from GET /map, and tiles
// only when the deployment configured a tile URL.
"use strict";
const $ = (id) => document.getElementById(id);
const OPEN = new Set(["new", "acknowledged", "dispatched", "en_route", "on_site"]);
const SEV_COLOUR = { 1: "#3d4b5c", 2: "#d29922", 3: "#e8702a", 4: "#f85149" };
const STATE_COLOUR = { healthy: "#2ea043", alerting: "#f85149", offline: "#8b949e", maintenance: "#58a6ff" };
const state = {
  incidents: new Map(), alerts: [], crews: new Map(), maintenance: new Map(), devices: new Map(),
  kpis: null, vitals: null, pipeline: null, areas: [], outlines: null, map: null, last: null,
  missing: [], dependencies: {},
};
// What each missing dependency means for the people watching the wall.
const MISSING = {
  postgres: "Database unreachable: incidents and readings are not updating",
  kafka: "Alert feed (Kafka) unreachable: new alerts are not arriving",
};
let token = sessionStorage.getItem("cityops-token");
let selected = null;
let lostAt = null;

// Leaflet puts tooltip and icon strings into innerHTML: names that come from users or the
// device registry are escaped first.
const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
function text(tag, value, cls) {
  const e = document.createElement(tag);
  e.textContent = value ?? "";
  if (cls) e.className = cls;
  return e;
}
function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
}
function duration(x) {
  if (x === null || x === undefined) return "–";
  return x < 120 ? `${x.toFixed(0)} s` : x < 7200 ? `${(x / 60).toFixed(1)} min` : `${(x / 3600).toFixed(1)} h`;
}
function sla(i) {
  const due = ["new", "acknowledged"].includes(i.state) && !i.acknowledged_at ? i.ack_due
    : ["dispatched", "en_route"].includes(i.state) ? i.arrive_due : null;
  if (!due) return { label: "", breached: false };
  const left = (Date.parse(due) - Date.now()) / 1000;
  if (left < 0) return { label: `+${duration(-left)}`, breached: true };
  return { label: `${Math.floor(left / 60)}:${String(Math.floor(left % 60)).padStart(2, "0")}`, breached: false };
}
function breached(i) { return i.ack_breached || i.arrive_breached || sla(i).breached; }
async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.json().catch(() => ({}))).detail || ""}`);
  return r.json();
}

// -- the map -----------------------------------------------------------------------------------

const layers = {};
const markers = { devices: new Map(), incidents: new Map(), crews: new Map() };
function initMap() {
  if (state.mapObj) return;
  const m = L.map("map", { zoomControl: false, attributionControl: false, preferCanvas: true, zoomSnap: 0.25 });
  state.mapObj = m;
  for (const name of ["tiles", "outlines", "areas", "devices", "incidents", "crews"]) layers[name] = L.layerGroup().addTo(m);
  m.setView([0, 0], 2);
  addEventListener("resize", () => m.invalidateSize());
}
// The outlines and tile settings, once per login: they hardly change.
async function loadMap() {
  try {
    state.map = await api("/map");
    setMapConfig(state.map, state.map.outlines);
  } catch (err) {
    setTimeout(loadMap, 5000);
  }
}
function setMapConfig(config, outlines) {
  initMap();
  const m = state.mapObj;
  layers.tiles.clearLayers();
  if (config && config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: esc(config.attribution), maxZoom: 19 }).addTo(layers.tiles);
    if (!state.attribution) state.attribution = L.control.attribution({ prefix: false }).addTo(m);
  }
  layers.outlines.clearLayers();
  const geo = L.geoJSON(outlines, {
    style: { color: "#3b4d61", weight: 2, fillColor: "#1a2633", fillOpacity: 0.55 },
    onEachFeature: (f, layer) => layer.bindTooltip(esc(f.properties.district), {
      permanent: true, direction: "center", className: "district-label",
    }),
  }).addTo(layers.outlines);
  // The city's outlines and devices, and the crews in or near it (not one parked far away).
  const bounds = geo.getBounds();
  for (const d of state.devices.values()) if (d.lat !== null) bounds.extend([d.lat, d.lon]);
  if (!bounds.isValid()) return;
  const near = bounds.pad(0.5);
  for (const c of state.crews.values()) if (c.lat !== null && near.contains([c.lat, c.lon])) bounds.extend([c.lat, c.lon]);
  // After this frame's layout (the KPI row above takes its height with the same snapshot).
  requestAnimationFrame(() => {
    m.invalidateSize();
    m.fitBounds(bounds, { paddingTopLeft: [36, 36], paddingBottomRight: [36, 70] });  // clear of the legend
  });
}
function renderDevices() {
  for (const d of state.devices.values()) {
    let mk = markers.devices.get(d.device_id);
    if (!mk) {
      mk = L.circleMarker([d.lat, d.lon], { radius: 7, weight: 1.5, color: "#0b0f14", fillOpacity: 0.95 })
        .bindTooltip("").addTo(layers.devices);
      markers.devices.set(d.device_id, mk);
    }
    const colour = STATE_COLOUR[d.state] || STATE_COLOUR.healthy;
    if (mk._state !== d.state) {
      mk.setStyle({ fillColor: colour, radius: d.state === "healthy" ? 7 : 10 });
      if (d.state !== "healthy") mk.bringToFront();
      mk._state = d.state;
    }
    mk.setTooltipContent(esc(`${d.device_id} · ${d.kind} · ${d.state}`));
    mk.getElement?.()?.setAttribute("data-state", d.state);
  }
}
function renderMapIncidents() {
  const open = new Set();
  for (const i of state.incidents.values()) {
    if (!OPEN.has(i.state) || i.lat === null || i.lat === undefined) continue;
    open.add(i.incident_id);
    const size = 16 + 8 * i.severity;
    const html = `<div class="incident-marker${selected === i.incident_id ? " selected" : ""}" ` +
      `data-id="${i.incident_id}" style="--sev:${SEV_COLOUR[i.severity]};width:${size}px;height:${size}px"></div>`;
    let mk = markers.incidents.get(i.incident_id);
    const icon = L.divIcon({ html, className: "", iconSize: [size, size] });
    if (!mk) {
      mk = L.marker([i.lat, i.lon], { icon, keyboard: false, zIndexOffset: 1000 })
        .on("click", () => openDetail(i.incident_id)).addTo(layers.incidents);
      markers.incidents.set(i.incident_id, mk);
    } else {
      mk.setLatLng([i.lat, i.lon]);
      mk.setIcon(icon);
    }
    mk.bindTooltip(esc(`#${i.incident_id} ${i.title}`));
  }
  for (const [id, mk] of markers.incidents) {
    if (!open.has(id)) { mk.remove(); markers.incidents.delete(id); }
  }
}
function renderMapCrews() {
  for (const c of state.crews.values()) {
    if (c.lat === null || c.lat === undefined) continue;
    const label = `${c.crew_id}${c.jobs && c.jobs.length ? ` → #${c.jobs.join(", #")}` : ""}`;
    const icon = L.divIcon({ html: esc(label), className: `crew-marker${c.jobs && c.jobs.length ? " busy" : ""}`, iconAnchor: [0, 0] });
    let mk = markers.crews.get(c.crew_id);
    if (!mk) {
      mk = L.marker([c.lat, c.lon], { icon, keyboard: false, zIndexOffset: 2000 }).addTo(layers.crews);
      markers.crews.set(c.crew_id, mk);
    } else {
      mk.setLatLng([c.lat, c.lon]);
      mk.setIcon(icon);
    }
    mk.bindTooltip(esc(`${c.name} · ${(c.skills || []).join(", ")}`));
  }
}
function renderAreas() {
  layers.areas.clearLayers();
  for (const a of state.areas) {
    if (!a.area) continue;
    L.geoJSON(a.area, {
      style: { color: "#58a6ff", weight: 2, dashArray: "6 6", fillColor: "#58a6ff", fillOpacity: 0.18 },
    }).bindTooltip(esc(`maintenance: ${a.reason}`)).addTo(layers.areas);
  }
}
function renderMap() {
  if (!state.mapObj) return;
  renderAreas();
  renderDevices();
  renderMapIncidents();
  renderMapCrews();
}

// -- the incident feed, alerts, crews, maintenance, KPIs -------------------------------------------

let feedKey = "";
function slaText(i) {
  const s = sla(i);
  return s.breached || i.ack_breached || i.arrive_breached ? `BREACHED ${s.label}` : s.label;
}
// The rows are rebuilt only when an incident changed (so an arriving row's animation plays out);
// every second only the age and SLA cells are rewritten.
function renderIncidents() {
  const rows = [...state.incidents.values()].filter((i) => OPEN.has(i.state))
    .sort((a, b) => (breached(b) - breached(a)) || (b.priority - a.priority) || (b.severity - a.severity));
  const body = $("incidents");
  const key = rows.map((i) => `${i.incident_id}:${i.version}:${breached(i)}:${selected === i.incident_id}`).join();
  if (key === feedKey) {
    for (const tr of body.children) {
      const i = state.incidents.get(Number(tr.dataset.id));
      if (!i) continue;
      tr.children[5].textContent = age(i.detected_at);
      tr.children[6].textContent = slaText(i);
    }
    return;
  }
  feedKey = key;
  const focused = document.activeElement?.dataset?.id;
  const now = Date.now();
  body.replaceChildren(...rows.map((i) => {
    const tr = document.createElement("tr");
    tr.dataset.id = i.incident_id;
    tr.tabIndex = 0;
    if (breached(i)) tr.classList.add("breach");
    if (i._freshUntil > now) tr.classList.add("new");
    if (selected === i.incident_id) tr.classList.add("selected");
    const sev = text("td", ""); sev.appendChild(text("span", i.severity, `sev sev${i.severity}`));
    tr.append(sev, text("td", `#${i.incident_id} ${i.title}`), text("td", i.district || "–"),
      text("td", i.state.replace("_", " ") + (i.resolve_pending ? " (resolving)" : "")),
      text("td", i.crew_id || "–"), text("td", age(i.detected_at)), text("td", slaText(i), "sla"));
    return tr;
  }));
  $("no-incidents").hidden = rows.length > 0;
  // Nothing scrolls on a wall: rows that do not fit are counted instead of cut off unseen.
  const box = body.closest(".scroll");
  let hidden = 0;
  for (const tr of body.children) {
    if (tr.offsetTop + tr.offsetHeight > box.clientHeight) { tr.hidden = true; hidden += 1; }
  }
  $("more-incidents").textContent = hidden ? `+ ${hidden} more open incident${hidden > 1 ? "s" : ""} (lower priority)` : "";
  if (focused) body.querySelector(`tr[data-id="${focused}"]`)?.focus();
}
// What the stream judged an alert to be, ahead of its explanation: a sensor fault is a repair
// job, a platform alert is the pipeline itself (neither is the city).
const CLASS_TAG = { sensor_fault: "sensor fault", platform: "platform" };
function why(a) {
  const td = text("td", "", "why");
  const tag = CLASS_TAG[a.alert_class];
  if (tag) td.appendChild(text("span", tag, `tag ${a.alert_class}`));
  td.appendChild(document.createTextNode(a.explanation || a.detector));
  return td;
}
function renderAlerts() {
  const num = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(2));
  $("alerts").replaceChildren(...state.alerts.slice(0, 12).map((a) => {
    const tr = document.createElement("tr");
    const where = a.maintenance_id ? "in maintenance" : a.incident_id ? `#${a.incident_id}` : "–";
    tr.append(text("td", new Date(a.ts).toLocaleTimeString([], { hour12: false })), text("td", a.device_id),
      text("td", a.metric), text("td", num(a.value)), text("td", where, a.maintenance_id ? "maint" : ""),
      why(a));
    return tr;
  }));
}
function renderSide() {
  $("crews").replaceChildren(...[...state.crews.values()].map((c) => text("li",
    `${c.crew_id} ${c.name} — ${c.on_shift ? (c.jobs && c.jobs.length ? `job #${c.jobs.join(", #")}` : "available") : "off shift"}`)));
  const now = Date.now();
  const windows = [...state.maintenance.values()].filter((w) => Date.parse(w.ends_at) > now);
  $("maintenance").replaceChildren(...(windows.length ? windows.map((w) =>
    text("li", `${w.device_id || w.group_key || "area"} until ${new Date(w.ends_at).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" })} — ${w.reason}`, "maint"))
    : [text("li", "none", "quiet")]));
}
function kpi(label, value, opts = {}) {
  const d = text("div", "", `kpi${opts.bad ? " bad" : ""}`);
  d.dataset.kpi = opts.key || label;
  if (opts.chips) {
    const b = text("b", value);
    const chips = text("div", "", "chips");
    for (const [sev, n] of opts.chips) chips.appendChild(text("span", n, `chip sev sev${sev}`));
    d.append(b, chips);
  } else d.append(text("b", value));
  d.append(text("span", label));
  return d;
}
function renderKpis() {
  const k = state.kpis, v = state.vitals, p = state.pipeline || { services: {} };
  const tiles = [];
  if (v) {
    tiles.push(kpi("devices online", `${v.devices_online} / ${v.devices}`, { key: "devices", bad: v.devices_online < v.devices }));
    tiles.push(kpi("readings per second", v.readings_per_s.toFixed(1), { key: "rate" }));
  }
  if (k) {
    // Open incidents from the feed itself: current with every incident event.
    const bySev = { 1: 0, 2: 0, 3: 0, 4: 0 };
    for (const i of state.incidents.values()) if (OPEN.has(i.state)) bySev[i.severity] += 1;
    const open = Object.values(bySev).reduce((a, b) => a + b, 0), o = k.overall;
    tiles.push(kpi("open incidents (sev 4 · 3 · 2 · 1)", open, { key: "open", chips: [4, 3, 2, 1].map((s) => [s, bySev[s]]) }));
    tiles.push(kpi("mean to acknowledge today", duration(o.acknowledge_s), { key: "mtta" }));
    tiles.push(kpi("mean to resolve today", duration(o.resolve_s), { key: "mttr" }));
    const breaches = o.ack_breaches + o.arrive_breaches;
    tiles.push(kpi("SLA breaches today", breaches, { key: "breaches", bad: breaches > 0 }));
  }
  const down = Object.entries(p.services || {}).filter(([, s]) => !s.up).map(([n]) => n);
  tiles.push(kpi(down.length ? `pipeline: ${down.join(", ")} down` : "stream lag (messages)",
    p.stream_lag === null || p.stream_lag === undefined ? "–" : Math.round(p.stream_lag), { key: "lag", bad: down.length > 0 || p.stream_lag > 10000 }));
  tiles.push(kpi("device → database p95", p.latency_p95_s === null || p.latency_p95_s === undefined ? "–" : `${p.latency_p95_s.toFixed(2)} s`,
    { key: "latency", bad: p.latency_p95_s > 5 }));
  $("kpis").replaceChildren(...tiles);
}
function renderHealth() {
  const missing = state.missing || [];
  const banner = $("deps-banner");
  banner.hidden = missing.length === 0;
  banner.dataset.missing = missing.join(" ");
  banner.replaceChildren(...missing.map((name) => {
    const since = state.dependencies?.[name]?.since;
    const at = since ? ` — since ${new Date(since).toLocaleTimeString([], { hour12: false })}` : "";
    return text("div", `${MISSING[name] || `${name} unreachable`}${at}`);
  }));
  document.body.classList.toggle("degraded", missing.length > 0);
}
function render() {
  renderIncidents(); renderAlerts(); renderSide(); renderKpis(); renderMap(); renderHealth();
  if (selected !== null && state.incidents.has(selected)) renderFacts(state.incidents.get(selected));
}

// -- the incident detail: timeline and sensor chart -----------------------------------------------

let charts = [];
function renderFacts(i) {
  $("d-title").textContent = `#${i.incident_id} ${i.title}`;
  const facts = [["severity", i.severity], ["state", i.state.replace("_", " ")], ["district", i.district || "–"],
    ["crew", i.crew_id || "–"], ["alerts", i.alert_count], ["assets", (i.assets || []).length],
    ["detected", new Date(i.detected_at).toLocaleTimeString([], { hour12: false })], ["SLA", sla(i).label || "–"]];
  $("d-facts").replaceChildren(...facts.map(([k, v]) => { const s = text("span", `${k} `); s.appendChild(text("b", v)); return s; }));
  $("d-why").textContent = i.explanation || "";
}
async function openDetail(id) {
  selected = id;
  const box = $("detail");
  box.hidden = false;
  box.dataset.id = id;
  $("d-charts").replaceChildren(text("div", "loading…", "quiet"));
  $("d-timeline").replaceChildren();
  render();
  await refreshDetail(id);
}
// The open incident's facts, timeline and charts; again whenever the incident changes.
let refreshing = null;
async function refreshDetail(id) {
  if (refreshing === id) return;  // one at a time; the next change asks again
  refreshing = id;
  try {
    const [incident, audit, chart] = await Promise.all([
      api(`/incidents/${id}`), api(`/incidents/${id}/audit`), api(`/incidents/${id}/chart`),
    ]);
    if (selected !== id) return;
    const known = state.incidents.get(id);
    if (!known || incident.version >= known.version) state.incidents.set(id, { ...known, ...incident });
    renderFacts(state.incidents.get(id));
    $("d-timeline").replaceChildren(...audit.map((a) => text("li",
      `${new Date(a.at).toLocaleTimeString([], { hour12: false })} — ${a.action.replace("_", " ")}${a.to_state && a.to_state !== a.action && a.action !== "opened" ? ` → ${a.to_state.replace("_", " ")}` : ""}` +
      ` by ${a.actor} (${a.role})${a.note ? `: ${a.note}` : ""}`)));
    drawCharts(chart);
  } catch (err) {
    $("d-charts").replaceChildren(text("div", String(err), "quiet"));
  } finally {
    refreshing = null;
  }
}
function closeDetail() {
  selected = null;
  $("detail").hidden = true;
  for (const c of charts) c.destroy();
  charts = [];
  render();
}
function drawCharts(chart) {
  for (const c of charts) c.destroy();
  charts = [];
  const box = $("d-charts");
  box.replaceChildren();
  if (!chart.series.length) { box.appendChild(text("div", "no sensor data for this incident", "quiet")); return; }
  const height = Math.max(110, Math.floor(box.clientHeight / chart.series.length) - 28);
  const hhmm = uPlot.fmtDate("{HH}:{mm}");
  for (const s of chart.series) {
    // One x axis: every reading's time and every alert's; the alerts as red points on their own series.
    const xs = new Map();
    for (const p of s.points) xs.set(Date.parse(p.ts) / 1000, [p.value, null]);
    for (const a of s.alerts) {
      const t = Date.parse(a.ts) / 1000;
      xs.set(t, [xs.get(t)?.[0] ?? null, a.value]);
    }
    const times = [...xs.keys()].sort((a, b) => a - b);
    const data = [times, times.map((t) => xs.get(t)[0]), times.map((t) => xs.get(t)[1])];
    const title = text("div", `${s.device_id} · ${s.metric} · ${s.alerts.length} anomalous point(s)` +
      (s.alerts.length ? ` — ${s.alerts[s.alerts.length - 1].explanation}` : ""), "chart-title");
    const holder = document.createElement("div");
    holder.className = "chart";
    holder.dataset.series = `${s.device_id}/${s.metric}`;
    box.append(title, holder);
    const u = new uPlot({
      width: box.clientWidth - 4, height, legend: { show: false },
      scales: { x: { time: true } },
      axes: [
        { stroke: "#8fa1b3", grid: { stroke: "#263240" }, ticks: { stroke: "#263240" },
          values: (u, ticks) => ticks.map((t) => hhmm(new Date(t * 1000))) },
        { stroke: "#8fa1b3", grid: { stroke: "#263240" }, ticks: { stroke: "#263240" }, size: 70 },
      ],
      series: [
        {},
        { label: s.metric, stroke: "#58a6ff", width: 2, spanGaps: true, points: { show: false } },
        { label: "anomalous", stroke: "#f85149", width: 0, paths: () => null, points: { show: true, size: 12, fill: "#f85149", stroke: "#fff" } },
      ],
    }, data, holder);
    charts.push(u);
  }
}
$("close").onclick = closeDetail;
$("incidents").addEventListener("click", (e) => {
  const tr = e.target.closest("tr");
  if (tr) openDetail(Number(tr.dataset.id));
});
$("incidents").addEventListener("keydown", (e) => {
  const tr = e.target.closest("tr");
  if (!tr) return;
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDetail(Number(tr.dataset.id)); }
  if (e.key === "ArrowDown") { e.preventDefault(); tr.nextElementSibling?.focus(); }
  if (e.key === "ArrowUp") { e.preventDefault(); tr.previousElementSibling?.focus(); }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && selected !== null) closeDetail();
  // From anywhere: the first incident gets the focus, so the screen works with a keyboard alone.
  if ((e.key === "ArrowDown" || e.key === "j") && !e.target.closest?.("tr, input")) $("incidents").querySelector("tr")?.focus();
});

// -- the live channel ------------------------------------------------------------------------------

function setDevice(d) {
  const known = state.devices.get(d.device_id);
  state.devices.set(d.device_id, { ...known, ...d });
}
function apply(m) {
  if (m.type === "snapshot") {
    state.incidents = new Map(m.incidents.map((i) => [i.incident_id, i]));
    state.alerts = m.alerts;
    state.crews = new Map(m.crews.map((c) => [c.crew_id, c]));
    state.maintenance = new Map(m.maintenance.map((w) => [w.window_id, w]));
    state.kpis = m.kpis;
    state.devices = new Map();
    for (const d of m.devices || []) setDevice(d);
    pulseS = m.pulse_s || pulseS;
    state.vitals = m.vitals; state.pipeline = m.pipeline; state.areas = m.maintenance_areas || [];
    for (const mk of markers.devices.values()) mk.remove();
    markers.devices.clear();
    if (state.map) setMapConfig(state.map, state.map.outlines);  // refit to the devices
  } else if (m.type === "incident") {
    const known = state.incidents.get(m.incident.incident_id);
    m.incident._freshUntil = known ? known._freshUntil : Date.now() + 2500;
    state.incidents.set(m.incident.incident_id, m.incident);
    if (m.incident.incident_id === selected) refreshDetail(selected);
  } else if (m.type === "alerts") {
    // Newest first by the reading's time (a late alert can be older), once each.
    const known = new Set(state.alerts.map((a) => a.alert_id));
    state.alerts.push(...m.alerts.filter((a) => !known.has(a.alert_id)));
    state.alerts.sort((a, b) => Date.parse(b.ts) - Date.parse(a.ts));
    state.alerts.length = Math.min(state.alerts.length, 200);
    for (const a of m.alerts) {  // shown at once; the next status event confirms
      const d = state.devices.get(a.device_id);
      if (d && !a.maintenance_id && a.detector !== "staleness" && d.state !== "maintenance") d.state = "alerting";
    }
  } else if (m.type === "crew") {
    state.crews.set(m.crew.crew_id, m.crew);
  } else if (m.type === "maintenance") {
    state.maintenance.set(m.window.window_id, m.window);
  } else if (m.type === "pulse") {
    // The whole truth each time: the devices it names are not healthy, every other one is.
    for (const d of state.devices.values()) d.state = m.devices[d.device_id] || "healthy";
    state.vitals = m.vitals; state.pipeline = m.pipeline; state.kpis = m.kpis; state.areas = m.maintenance_areas;
  }
  // Snapshots and pulses say which dependencies are missing (none: all back); while the
  // database is away, "health" messages say it instead of pulses.
  if (["snapshot", "pulse", "health"].includes(m.type)) {
    state.missing = m.missing || [];
    state.dependencies = m.dependencies || {};
  }
  pruneClosed();
  if (m.id !== undefined) state.last = m.id;
}
function setLive(live) {
  $("state").textContent = live ? "live" : "connection lost — reconnecting";
  $("state").className = live ? "" : "lost";
  document.body.classList.toggle("stale", !live && state.last !== null);
  if (!live && lostAt === null) lostAt = new Date();
  if (live) lostAt = null;
  $("lost-at").textContent = lostAt ? lostAt.toLocaleTimeString([], { hour12: false }) : "";
}

let socket = null;
let pulseS = 10;
let heard = Date.now();
let holdUntil = 0;
function connect() {
  if (!token) { showLogin(); return; }
  const wait = holdUntil - Date.now();
  if (wait > 0) { setTimeout(connect, wait); return; }
  const q = new URLSearchParams({ token });
  if (state.last !== null) q.set("last_event_id", state.last);
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/wall?${q}`);
  socket = ws;
  heard = Date.now();
  ws.onmessage = (e) => {
    heard = Date.now();
    const m = JSON.parse(e.data);
    if (m.type === "resync") return;  // the server closes next; we reconnect from state.last
    apply(m);
    if (m.type === "snapshot" || m.type === "resume") setLive(true);
    render();
  };
  ws.onclose = (e) => {
    if (socket !== ws) return;
    socket = null;
    setLive(false);
    if (e.code === 1008) { token = null; sessionStorage.removeItem("cityops-token"); showLogin(e.reason); return; }
    setTimeout(connect, 2000);
  };
}
// A connection that went half-open (a cable pulled somewhere) sends no close: when the pulses
// stop for three periods, the screen says so and reconnects.
setInterval(() => {
  if (socket && socket.readyState === WebSocket.OPEN && Date.now() - heard > 3 * pulseS * 1000 + 5000) socket.close();
}, 1000);
// A wall is left running for days: renew the token at half its life (token_ttl_s, 8 h), so
// that a reconnect at any hour is let in. The token's own iat/exp say when.
function tokenTimes(t) {
  try {
    const claims = JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return { iat: claims.iat * 1000, exp: claims.exp * 1000 };
  } catch { return null; }
}
let renewal = null;
function scheduleRenewal() {
  clearTimeout(renewal);
  const times = token && tokenTimes(token);
  if (!times) return;
  const at = times.iat + (times.exp - times.iat) / 2;
  renewal = setTimeout(async () => {
    const r = await fetch("/token/refresh", { method: "POST", headers: { Authorization: `Bearer ${token}` } }).catch(() => null);
    if (r && r.ok) { token = (await r.json()).access_token; sessionStorage.setItem("cityops-token", token); }
    scheduleRenewal();
  }, Math.max(1000, Math.min(at - Date.now(), 2 ** 31 - 1)));
}
// Resolved and closed incidents stay in the feed's memory until midnight only.
function pruneClosed() {
  const midnight = new Date().setHours(0, 0, 0, 0);
  for (const [id, i] of state.incidents) {
    if (!OPEN.has(i.state) && Date.parse(i.updated_at) < midnight && id !== selected) state.incidents.delete(id);
  }
}
// For tests and operators' consoles: drop the connection as a network fault would (staying
// away ``holdMs``), and look at what the screen holds (map markers are on a canvas, not in the DOM).
window.cityopsDropConnection = (holdMs = 0) => { holdUntil = Date.now() + holdMs; socket?.close(); };
window.cityopsState = state;
window.cityopsCharts = () => charts.map((u) => ({ points: u.data[1].filter((v) => v !== null).length,
  anomalous: u.data[2].filter((v) => v !== null).length }));

function showLogin(message) {
  $("login").style.display = "flex";
  $("loginerr").textContent = message || "";
}
$("loginform").onsubmit = async (e) => {
  e.preventDefault();
  const body = new URLSearchParams({ username: $("username").value, password: $("password").value });
  const r = await fetch("/token", { method: "POST", body });
  if (!r.ok) { showLogin((await r.json()).detail); return; }
  token = (await r.json()).access_token;
  sessionStorage.setItem("cityops-token", token);
  scheduleRenewal();
  loadMap();
  $("login").style.display = "none";
  whoami();
  connect();
};
async function whoami() {
  const r = await fetch("/me", { headers: { Authorization: `Bearer ${token}` } });
  if (r.ok) { const me = await r.json(); $("who").textContent = `${me.username} (${me.role})`; }
}
setInterval(() => {  // clock, ages and SLA countdowns
  $("clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
  renderIncidents();
}, 1000);
initMap();
if (token) { whoami(); scheduleRenewal(); loadMap(); }
connect();
